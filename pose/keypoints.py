"""The POSE_KEYPOINT format and a dense array view of it.

POSE_KEYPOINT is the OpenPose/DWPose JSON layout that comfyui_controlnet_aux emits: a list with one
dict per frame, ``{"people": [{"pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d",
"hand_right_keypoints_2d"}], "canvas_width", "canvas_height"}``, each keypoint an ``x, y, confidence``
triple. Body has 18 points (OpenPose COCO-18 order), face 70 (dlib 68 + two pupils), hands 21 each.
A missing point is ``0, 0, 0``. Coordinates may be pixels or normalised to 0..1 (controlnet_aux emits
both); :func:`from_pose_keypoint` accepts either and :func:`to_pose_keypoint` writes pixels.

Inside the pack a pose sequence is a :class:`PoseSequence`: one array ``[T, 130, 3]`` in pixel
coordinates (body 0..17, face 18..87, left hand 88..108, right hand 109..129) plus the canvas size.
"Left" and "right" are the person's own sides, as in OpenPose.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import public_name

N_BODY, N_FACE, N_HAND = 18, 70, 21
BODY = slice(0, 18)
FACE = slice(18, 88)
LHAND = slice(88, 109)
RHAND = slice(109, 130)
N_POINTS = 130

PART_KEYS = {
    "pose_keypoints_2d": BODY,
    "face_keypoints_2d": FACE,
    "hand_left_keypoints_2d": LHAND,
    "hand_right_keypoints_2d": RHAND,
}

# OpenPose COCO-18 body order.
BODY_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
B = {name: i for i, name in enumerate(BODY_NAMES)}

# OpenPose limb pairs (body), in the order the DWPose/OpenPose renderer colours them.
BODY_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
# Upper-body points used for frame similarity (paper Eq. 1): body without hips, knees, ankles.
UPPER_BODY = (0, 1, 2, 3, 4, 5, 6, 7, 14, 15, 16, 17)

# dlib-68 face layout (indices within the 70 face points); 68/69 are the right/left pupils.
FACE_JAW = tuple(range(0, 17))
FACE_R_BROW = tuple(range(17, 22))
FACE_L_BROW = tuple(range(22, 27))
FACE_NOSE = tuple(range(27, 36))
FACE_R_EYE = tuple(range(36, 42))
FACE_L_EYE = tuple(range(42, 48))
FACE_OUTER_LIP = tuple(range(48, 60))
FACE_INNER_LIP = tuple(range(60, 68))
FACE_R_PUPIL, FACE_L_PUPIL = 68, 69

# Hand: 0 wrist, then thumb, index, middle, ring, pinky (4 points each, base to tip).
HAND_FINGERS = tuple(tuple(range(1 + 4 * f, 5 + 4 * f)) for f in range(5))
HAND_EDGES = tuple((0 if j == 0 else fing[j - 1], fing[j]) for fing in HAND_FINGERS for j in range(4))


@public_name
class PoseFormatError(ValueError):
    """A POSE_KEYPOINT value that does not follow the OpenPose JSON layout."""


@dataclass
class PoseSequence:
    """Keypoints of one person over T frames, pixels, ``points[t, k] = (x, y, confidence)``."""

    points: np.ndarray  # float32 [T, 130, 3]
    width: int
    height: int

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float32)
        if self.points.ndim != 3 or self.points.shape[1:] != (N_POINTS, 3):
            raise PoseFormatError(f"PoseSequence.points must be [T, {N_POINTS}, 3], got {self.points.shape}")
        self.width, self.height = int(self.width), int(self.height)

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def xy(self) -> np.ndarray:
        return self.points[..., :2]

    @property
    def conf(self) -> np.ndarray:
        return self.points[..., 2]

    def part(self, part: slice) -> np.ndarray:
        return self.points[:, part]

    def visible(self, threshold: float = 0.3) -> np.ndarray:
        """Boolean [T, 130]: point present with confidence above ``threshold``."""
        return self.points[..., 2] > threshold

    def has_person(self) -> np.ndarray:
        """Boolean [T]: the frame has any confident body or face point."""
        vis = self.visible()
        return vis[:, BODY].any(axis=1) | vis[:, FACE].any(axis=1)

    def copy(self) -> "PoseSequence":
        return PoseSequence(self.points.copy(), self.width, self.height)

    def frame(self, t: int) -> "PoseSequence":
        return PoseSequence(self.points[t : t + 1].copy(), self.width, self.height)

    def scaled_to(self, width: int, height: int) -> "PoseSequence":
        """The same poses on a canvas of another size (coordinates scaled per axis)."""
        pts = self.points.copy()
        pts[..., 0] *= width / self.width
        pts[..., 1] *= height / self.height
        return PoseSequence(pts, width, height)

    def resampled(self, n_frames: int) -> "PoseSequence":
        """Linear resampling in time to ``n_frames`` (confidence takes the lower of the two neighbours)."""
        T = len(self)
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        if T == n_frames:
            return self.copy()
        if T == 1:
            return PoseSequence(np.repeat(self.points, n_frames, axis=0), self.width, self.height)
        pos = np.linspace(0.0, T - 1, n_frames)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, T - 1)
        w = (pos - lo)[:, None, None].astype(np.float32)
        a, b = self.points[lo], self.points[hi]
        out = a * (1 - w) + b * w
        out[..., 2] = np.minimum(a[..., 2], b[..., 2])
        # A point missing at either neighbour stays missing rather than sliding from (0, 0).
        missing = (a[..., 2] <= 0) | (b[..., 2] <= 0)
        out[missing] = 0.0
        return PoseSequence(out, self.width, self.height)


def _is_normalized(frame_people: list, width: int, height: int) -> bool:
    """controlnet_aux's rule: all coordinates within [0, 1] means normalised (pixels otherwise)."""
    coords = []
    for person in frame_people:
        for key in PART_KEYS:
            vals = person.get(key) or []
            arr = np.asarray(vals, dtype=np.float64).reshape(-1, 3)
            coords.append(arr[arr[:, 2] > 0, :2].ravel())
    if not coords:
        return False
    c = np.concatenate(coords)
    if c.size == 0:
        return False
    return bool(c.max() <= 1.0 and max(width, height) > 1)


def from_pose_keypoint(frames, person: int = 0, input_name: str = "pose") -> PoseSequence:
    """POSE_KEYPOINT (list of frame dicts, or one dict) -> PoseSequence of one person.

    Frames without that person become all-zero (no person). Raises :class:`PoseFormatError` naming
    ``input_name`` and the frame when the layout is wrong.
    """
    if isinstance(frames, dict):
        frames = [frames]
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise PoseFormatError(f"{input_name}: expected a non-empty list of OpenPose frame dicts, got {type(frames).__name__}")
    width = height = None
    out = np.zeros((len(frames), N_POINTS, 3), dtype=np.float32)
    for t, fr in enumerate(frames):
        if not isinstance(fr, dict) or "people" not in fr:
            raise PoseFormatError(f"{input_name}: frame {t} is not an OpenPose dict with a 'people' list")
        w = int(fr.get("canvas_width") or 0)
        h = int(fr.get("canvas_height") or 0)
        if w <= 0 or h <= 0:
            raise PoseFormatError(f"{input_name}: frame {t} has no canvas_width/canvas_height")
        if width is None:
            width, height = w, h
        people = fr["people"] or []
        if person >= len(people):
            continue
        norm = _is_normalized(people, w, h)
        p = people[person]
        for key, sl in PART_KEYS.items():
            vals = p.get(key)
            if not vals:
                continue
            arr = np.asarray(vals, dtype=np.float32).reshape(-1, 3)
            n = sl.stop - sl.start
            if arr.shape[0] < n:
                # DWPose emits 68 face points (no pupils): pad the rest as missing.
                arr = np.concatenate([arr, np.zeros((n - arr.shape[0], 3), np.float32)])
            arr = arr[:n].copy()
            if norm:
                arr[:, 0] *= w
                arr[:, 1] *= h
            if (w, h) != (width, height):
                arr[:, 0] *= width / w
                arr[:, 1] *= height / h
            arr[arr[:, 2] <= 0] = 0.0
            out[t, sl] = arr
    return PoseSequence(out, width, height)


def to_pose_keypoint(seq: PoseSequence) -> list[dict]:
    """PoseSequence -> POSE_KEYPOINT list (pixel coordinates; a frame with no person has no people)."""
    frames = []
    has = seq.has_person()
    for t in range(len(seq)):
        people = []
        if has[t]:
            pts = seq.points[t]
            people.append({key: [round(float(v), 3) for v in pts[sl].ravel()] for key, sl in PART_KEYS.items()})
        frames.append({"people": people, "canvas_width": seq.width, "canvas_height": seq.height})
    return frames


def frames_without_person(seq: PoseSequence) -> list[int]:
    """Indices of frames with no confident body or face point."""
    return [int(t) for t in np.flatnonzero(~seq.has_person())]


def hold_nearest_person(seq: PoseSequence) -> PoseSequence:
    """Fill frames without a person with the nearest frame that has one (earlier frame wins ties).

    Raises PoseFormatError when no frame has a person.
    """
    has = seq.has_person()
    if not has.any():
        raise PoseFormatError("no frame has a person, nothing to hold")
    idx = np.flatnonzero(has)
    t = np.arange(len(seq))
    pos = np.clip(np.searchsorted(idx, t), 0, len(idx) - 1)
    prev = idx[np.maximum(pos - 1, 0)]
    nxt = idx[pos]
    src = np.where(np.abs(t - prev) <= np.abs(nxt - t), prev, nxt)
    src = np.where(has, t, src)
    return PoseSequence(seq.points[src].copy(), seq.width, seq.height)
