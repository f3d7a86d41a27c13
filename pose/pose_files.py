"""POSE_KEYPOINT from and to JSON files (OpenPose, DWPose, comfyui_controlnet_aux).

Accepted file contents:

* a list of frame dicts (what comfyui_controlnet_aux's DWPose / OpenPose nodes emit and save), or one
  frame dict: ``{"people": [{"pose_keypoints_2d": [...], "face_keypoints_2d": [...],
  "hand_left_keypoints_2d": [...], "hand_right_keypoints_2d": [...]}], "canvas_width": W,
  "canvas_height": H}``, coordinates in pixels or normalised to 0..1;
* OpenPose's own per-frame JSON (``{"version": ..., "people": [...]}``): it has no canvas size, so the
  caller passes one, and its BODY_25 body (25 points) is reordered to the COCO-18 body of POSE_KEYPOINT.

Per person every part is optional (missing = no points); present parts must be flat lists of finite
``x, y, confidence`` numbers with a known point count (body 18 or 25, face 68 or 70, hands 21).
Errors are :class:`PoseFileError` (a ``ValueError``) naming the input, the file, the place and the fix.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import public_name
from .keypoints import PART_KEYS, PoseFormatError, from_pose_keypoint

# BODY_25 index of each COCO-18 body point (BODY_25 adds MidHip at 8 and six foot points at 19..24).
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
POINT_COUNTS = {
    "pose_keypoints_2d": (18, 25),
    "face_keypoints_2d": (68, 70),
    "hand_left_keypoints_2d": (21,),
    "hand_right_keypoints_2d": (21,),
}
MAX_FILE_BYTES = 256 * 1024 * 1024


@public_name
class PoseFileError(PoseFormatError):
    """A pose JSON file that cannot be read as POSE_KEYPOINT."""


def _fail(where: str, what: str, fix: str) -> PoseFileError:
    return PoseFileError(f"{where}: {what}; {fix}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _clean_part(values, key: str, where: str) -> list[float]:
    if values is None:
        return []
    if not isinstance(values, list):
        raise _fail(where, f"'{key}' is a {type(values).__name__}, not a list of numbers",
                    "write each part as a flat list x1, y1, c1, x2, y2, c2, ...")
    if not values:
        return []
    bad = next((i for i, v in enumerate(values) if not _is_number(v)), None)
    if bad is not None:
        raise _fail(where, f"'{key}' value {bad} is {values[bad]!r}, not a finite number",
                    "use numbers only (0, 0, 0 for a missing point)")
    n, rest = divmod(len(values), 3)
    allowed = POINT_COUNTS[key]
    if rest or n not in allowed:
        raise _fail(where, f"'{key}' has {len(values)} numbers ({len(values) / 3:g} points)",
                    f"expected {' or '.join(str(3 * a) for a in allowed)} numbers "
                    f"({' or '.join(str(a) for a in allowed)} x, y, confidence triples)")
    if key == "pose_keypoints_2d" and n == 25:  # OpenPose BODY_25 -> COCO-18
        values = [values[3 * j + c] for j in BODY25_TO_COCO18 for c in range(3)]
    return [float(v) for v in values]


def _clean_frame(frame, t: int, where: str, canvas: tuple[int, int]) -> dict:
    here = f"{where}, frame {t}"
    if not isinstance(frame, dict) or not isinstance(frame.get("people", None), list):
        got = type(frame).__name__ if not isinstance(frame, dict) else f"a dict with keys {sorted(frame)[:6]}"
        raise _fail(here, f"expected an OpenPose frame dict with a 'people' list, got {got}",
                    "save the pose as DWPose / OpenPose JSON (a list of frames or one frame)")
    width, height = frame.get("canvas_width"), frame.get("canvas_height")
    if width is None and height is None:
        width, height = canvas
    for name, v in (("canvas_width", width), ("canvas_height", height)):
        if not _is_number(v) or v <= 0 or v != int(v):
            raise _fail(here, f"{name} is {v!r}",
                        "the file must give canvas_width and canvas_height (positive integers), or set the node's "
                        "canvas_width / canvas_height to the size of the video the pose was taken from")
    people = []
    for p, person in enumerate(frame["people"]):
        if not isinstance(person, dict):
            raise _fail(f"{here}, person {p}", f"expected a dict of keypoint lists, got {type(person).__name__}",
                        "write each person as {'pose_keypoints_2d': [...], 'face_keypoints_2d': [...], ...}")
        people.append({key: _clean_part(person.get(key), key, f"{here}, person {p}") for key in PART_KEYS})
    return {"people": people, "canvas_width": int(width), "canvas_height": int(height)}


def parse_pose_json(data, where: str = "pose", canvas: tuple[int, int] = (0, 0)) -> list[dict]:
    """Decoded JSON -> POSE_KEYPOINT (a list of frame dicts with all four parts per person, pixel or
    normalised coordinates as given). ``canvas`` (width, height) fills in a missing canvas size."""
    frames = [data] if isinstance(data, dict) else data
    if not isinstance(frames, list) or not frames:
        got = "an empty list" if isinstance(frames, list) else f"a JSON {type(frames).__name__}"
        raise _fail(where, f"expected a list of OpenPose frame dicts or one frame dict, got {got}",
                    "save the pose as DWPose / OpenPose JSON (e.g. with comfyui_controlnet_aux's Save Pose Keypoints)")
    out = [_clean_frame(f, t, where, canvas) for t, f in enumerate(frames)]
    seq = from_pose_keypoint(out, input_name=where)
    if not seq.has_person().any():
        raise _fail(where, f"no person with confident body or face points in any of its {len(out)} frame(s)",
                    "use a pose extracted from an image or video where a person is visible")
    return out


def read_pose_file(path: str | os.PathLike, input_name: str = "pose_file",
                   canvas: tuple[int, int] = (0, 0)) -> list[dict]:
    """POSE_KEYPOINT from a JSON file; errors name ``input_name`` and the file."""
    path = Path(path)
    where = f"{input_name} '{path.name}'"
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _fail(where, f"the file has {size / 2**20:.0f} MiB (limit {MAX_FILE_BYTES // 2**20} MiB)",
                    "split the pose sequence into shorter files")
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise _fail(where, "is not UTF-8 text", "choose a .json pose file (DWPose / OpenPose keypoints)") from None
    except json.JSONDecodeError as e:
        raise _fail(where, f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                    "fix the file or export the pose again as JSON") from None
    return parse_pose_json(data, where, canvas)


def write_pose_file(path: str | os.PathLike, frames: list[dict]) -> Path:
    """Write POSE_KEYPOINT as compact JSON (one frame per line), readable by :func:`read_pose_file`."""
    parse_pose_json(frames, f"write_pose_file({Path(path).name})")
    lines = ",\n".join(json.dumps(f, separators=(",", ":")) for f in frames)
    path = Path(path)
    path.write_text(f"[\n{lines}\n]\n")
    return path
