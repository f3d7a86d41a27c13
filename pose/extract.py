"""Pose extraction with mediapipe Holistic into the OpenPose/DWPose layout of :mod:`.keypoints`.

mediapipe 0.10.21's legacy ``solutions`` API is used because it runs offline with the models in the
wheel; only ``model_complexity=1`` is bundled (0 and 2 try to download their models and fail).
mediapipe's "left"/"right" are the person's own sides (not mirrored), as in OpenPose, and Holistic's
``left_hand_landmarks`` is the person's left hand (it is cropped around the pose's left wrist).

Conversion:
- body 33 -> OpenPose-18 (neck = shoulder midpoint), confidence = mediapipe visibility;
- face mesh 468/478 -> dlib-68 + 2 pupils (iris centres when refined, else eye centroids),
  confidence 1 (the face mesh has no per-point score);
- hands 21 each, same order as OpenPose, confidence 1.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .keypoints import (  # noqa: F401  (frames_without_person: re-exported for callers of this module)
    BODY, FACE, FACE_L_EYE, FACE_L_PUPIL, FACE_R_EYE, FACE_R_PUPIL, LHAND, N_POINTS, RHAND, PoseSequence,
    frames_without_person,
)
from .smoothing import smooth_sequence

# extract_pose's ``smoothing`` is a 0..1 strength (the node's slider); the filter's Gaussian sigma in frames
# is this times the strength, so the default 0.5 gives sigma 2 (measured as a good trade-off, smoothing.py).
SIGMA_PER_SMOOTHING = 4.0


# OpenPose-18 index -> mediapipe pose index (None: the neck, made from the shoulders).
MP_POSE_FOR_OPENPOSE: tuple[int | None, ...] = (
    0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7,
)
MP_L_SHOULDER, MP_R_SHOULDER = 11, 12

# dlib-68 index -> mediapipe face-mesh index. dlib's "right" is the person's right (image left on a
# frontal face), the same convention as mediapipe's mesh (33 = right eye outer corner).
MP_FACE_FOR_DLIB68: tuple[int, ...] = (
    # jaw 0..16, from the person's right temple over the chin to the left temple
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    71, 63, 105, 66, 107,  # right brow 17..21 (outer -> inner)
    336, 296, 334, 293, 301,  # left brow 22..26 (inner -> outer)
    168, 197, 5, 4,  # nose bridge 27..30
    75, 97, 2, 326, 305,  # nostrils 31..35 (right -> left)
    33, 160, 158, 133, 153, 144,  # right eye 36..41 (outer corner, upper lid, inner corner, lower lid)
    362, 385, 387, 263, 373, 380,  # left eye 42..47 (inner corner, upper lid, outer corner, lower lid)
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lip 48..59
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lip 60..67
)
MP_IRIS_CENTRES = (468, 473)  # present when refine_face_landmarks=True (478 landmarks)


def _landmarks(lms, width: int, height: int, visibility: bool) -> np.ndarray:
    """mediapipe NormalizedLandmarkList -> float32 [N, 3] (pixel x, pixel y, confidence)."""
    arr = np.array(
        [(lm.x * width, lm.y * height, lm.visibility if visibility else 1.0) for lm in lms.landmark],
        dtype=np.float32,
    )
    return arr.reshape(-1, 3)


def body_from_mediapipe(pose: np.ndarray) -> np.ndarray:
    """mediapipe pose [33, 3] (pixels, visibility) -> OpenPose-18 [18, 3]."""
    out = np.zeros((18, 3), np.float32)
    for op_idx, mp_idx in enumerate(MP_POSE_FOR_OPENPOSE):
        if mp_idx is not None:
            out[op_idx] = pose[mp_idx]
    ls, rs = pose[MP_L_SHOULDER], pose[MP_R_SHOULDER]
    out[1, :2] = (ls[:2] + rs[:2]) / 2
    out[1, 2] = min(ls[2], rs[2])
    return out


def face_from_mediapipe(mesh: np.ndarray) -> np.ndarray:
    """mediapipe face mesh [468 or 478, 3] -> dlib-68 + right pupil + left pupil [70, 3]."""
    out = np.zeros((70, 3), np.float32)
    out[:68] = mesh[list(MP_FACE_FOR_DLIB68)]
    r_eye = out[list(FACE_R_EYE), :2].mean(axis=0)
    l_eye = out[list(FACE_L_EYE), :2].mean(axis=0)
    out[FACE_R_PUPIL, :2], out[FACE_L_PUPIL, :2] = r_eye, l_eye
    if mesh.shape[0] >= 478:
        irises = [mesh[i, :2] for i in MP_IRIS_CENTRES]
        # Assign by distance rather than trusting the index order of the refined mesh.
        d_direct = np.linalg.norm(irises[0] - r_eye) + np.linalg.norm(irises[1] - l_eye)
        d_swapped = np.linalg.norm(irises[1] - r_eye) + np.linalg.norm(irises[0] - l_eye)
        r_iris, l_iris = (irises[0], irises[1]) if d_direct <= d_swapped else (irises[1], irises[0])
        out[FACE_R_PUPIL, :2], out[FACE_L_PUPIL, :2] = r_iris, l_iris
    out[FACE_R_PUPIL, 2] = out[FACE_L_PUPIL, 2] = 1.0
    return out


def holistic_to_points(result, width: int, height: int) -> np.ndarray:
    """A Holistic result -> one frame ``[130, 3]`` in pixels; parts not found stay all zero."""
    pts = np.zeros((N_POINTS, 3), np.float32)
    if getattr(result, "pose_landmarks", None) is not None:
        pts[BODY] = body_from_mediapipe(_landmarks(result.pose_landmarks, width, height, True))
    if getattr(result, "face_landmarks", None) is not None:
        pts[FACE] = face_from_mediapipe(_landmarks(result.face_landmarks, width, height, False))
    for attr, part in (("left_hand_landmarks", LHAND), ("right_hand_landmarks", RHAND)):
        hand = getattr(result, attr, None)
        if hand is not None:
            pts[part] = _landmarks(hand, width, height, False)[:21]
    return pts


def as_uint8_frames(frames, input_name: str = "frames") -> np.ndarray:
    """RGB frames ``[T, H, W, 3]`` or one ``[H, W, 3]`` (uint8, or float in 0..1) -> contiguous uint8 [T, H, W, 3]."""
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4) or arr.shape[0] == 0 or min(arr.shape[1:3]) < 1:
        raise ValueError(
            f"{input_name}: expected RGB frames shaped [T, H, W, 3] (or one [H, W, 3]), got shape {arr.shape}; "
            "pass images in channels-last RGB layout"
        )
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{input_name}: expected uint8 or float frames, got dtype {arr.dtype}; convert to uint8 0..255")
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _import_mediapipe():
    try:
        import mediapipe as mp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "pose extraction needs mediapipe==0.10.21 (the last release with the offline 'solutions' API): "
            "pip install mediapipe==0.10.21"
        ) from exc
    if not hasattr(mp, "solutions"):  # pragma: no cover
        raise ImportError(
            f"mediapipe {getattr(mp, '__version__', '?')} has no 'solutions' API; install mediapipe==0.10.21"
        )
    return mp


class PoseExtractor:
    """One mediapipe Holistic graph, opened once and reused; use as a context manager or call :meth:`close`.

    ``video_mode=True`` tracks across consecutive calls (frames of one video, in order);
    ``False`` treats every frame as an independent image. ``smooth_landmarks`` turns on mediapipe's own
    causal pose filter, off by default because it lags behind motion (measured 1-2 frames on a moving
    person); use the zero-lag ``sigma`` of :meth:`extract` instead. In video mode a second
    :meth:`extract` call continues the first one's track: open a new extractor per video.
    Not thread-safe: one extractor per thread.
    """

    def __init__(
        self,
        *,
        video_mode: bool = False,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        smooth_landmarks: bool = False,
    ):
        mp = _import_mediapipe()
        self.video_mode = bool(video_mode)
        self._holistic = mp.solutions.holistic.Holistic(
            static_image_mode=not self.video_mode,
            model_complexity=1,  # the only complexity whose model ships in the wheel
            smooth_landmarks=bool(smooth_landmarks),
            refine_face_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )

    def process(self, frame: np.ndarray) -> np.ndarray:
        """One RGB uint8 frame ``[H, W, 3]`` -> keypoints ``[130, 3]`` in pixels (all zero: no person)."""
        if self._holistic is None:
            raise RuntimeError("PoseExtractor is closed")
        frame = as_uint8_frames(frame)[0]
        h, w = frame.shape[:2]
        return holistic_to_points(self._holistic.process(frame), w, h)

    def extract(
        self,
        frames,
        *,
        sigma: float = 0.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> PoseSequence:
        """Frames ``[T, H, W, 3]`` -> :class:`PoseSequence` on a canvas of the frame size.

        ``sigma``: temporal smoothing in frames (:func:`.smoothing.smooth_sequence`; 0 = off).
        """
        frames = as_uint8_frames(frames)
        T, H, W = frames.shape[:3]
        out = np.zeros((T, N_POINTS, 3), np.float32)
        for t in range(T):
            out[t] = self.process(frames[t])
            if progress is not None:
                progress(t + 1, T)
        seq = PoseSequence(out, W, H)
        return smooth_sequence(seq, sigma) if sigma > 0 and T > 1 else seq

    def close(self) -> None:
        if self._holistic is not None:
            self._holistic.close()
            self._holistic = None

    def __enter__(self) -> "PoseExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; close() is the supported way
        try:
            self.close()
        except Exception:
            pass


def extract_pose(
    frames,
    *,
    video_mode: bool | None = None,
    smoothing: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> PoseSequence:
    """RGB frames ``uint8 [T, H, W, 3]`` (or one image) -> :class:`PoseSequence` (pixels, canvas = frame size).

    ``video_mode``: track across frames (default: True when there is more than one frame).
    ``smoothing``: temporal smoothing strength, 0 = off; 0..1 is the useful range and larger values
    smooth more. It is the zero-lag filter of :func:`.smoothing.smooth_sequence` with sigma =
    ``SIGMA_PER_SMOOTHING * smoothing`` frames: 0.5 (sigma 2 frames) removes most of mediapipe's body
    jitter in a 25 fps video and keeps lip motion. A single image is never smoothed.
    ``progress(done, total)`` is called after every frame (it may raise to abort).
    """
    frames = as_uint8_frames(frames)
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0 (0 = off), got {smoothing}")
    if video_mode is None:
        video_mode = frames.shape[0] > 1
    with PoseExtractor(video_mode=video_mode) as extractor:
        return extractor.extract(frames, sigma=SIGMA_PER_SMOOTHING * smoothing, progress=progress)


__all__: Sequence[str] = (
    "PoseExtractor", "extract_pose", "frames_without_person", "holistic_to_points", "SIGMA_PER_SMOOTHING",
    "body_from_mediapipe", "face_from_mediapipe", "as_uint8_frames", "MP_POSE_FOR_OPENPOSE", "MP_FACE_FOR_DLIB68",
)
