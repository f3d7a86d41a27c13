"""Skeleton rendering in the OpenPose/DWPose style of comfyui_controlnet_aux, for pose-control video models.

The look follows controlnet_aux's ``draw_bodypose`` / ``draw_handpose`` / ``draw_facepose`` on black:
body limbs are filled ellipses in 17 colours at 60 % brightness with a full-colour dot per joint,
hand edges are an HSV rainbow with blue dots, face points are white dots. Colours are RGB, as in
controlnet_aux's output image. The reference draws at a 512 px detection resolution (short side);
here every size is scaled by ``short_side / 512``, and canvases smaller than 384 px are drawn
supersampled and area-downscaled so thin limbs stay visible and smooth.
"""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from .keypoints import BODY_LIMBS, FACE, HAND_EDGES, LHAND, RHAND, PoseSequence

# controlnet_aux body colours: limb i uses BODY_COLORS[i] (x0.6), joint k uses BODY_COLORS[k].
BODY_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
LIMB_COLORS: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(c * 0.6) for c in BODY_COLORS[i]) for i in range(len(BODY_LIMBS))
)
HAND_EDGE_COLORS: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
    for i in range(len(HAND_EDGES))
)
HAND_POINT_COLOR = (0, 0, 255)
FACE_POINT_COLOR = (255, 255, 255)

# Sizes in pixels at the reference 512 px short side (controlnet_aux defaults).
REF_SIDE = 512
STICK_HALF_WIDTH, BODY_RADIUS, HAND_THICKNESS, HAND_RADIUS, FACE_RADIUS = 4.0, 4.0, 2.0, 4.0, 3.0
SUPERSAMPLE_BELOW = 384
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel positions
_ONE = 1 << _SHIFT
_ELLIPSE_ANGLES = np.linspace(0.0, 2 * np.pi, 73)[:-1]


def _fx(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]) * _ONE)), int(round(float(p[1]) * _ONE))


def _size(base: float, unit: float) -> int:
    return max(1, int(round(base * unit)))


def _stick(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, half_width: float, color) -> None:
    """A filled ellipse from ``a`` to ``b`` (controlnet_aux's limb shape), sub-pixel accurate."""
    mid = (a + b) / 2.0
    d = b - a
    length = float(np.hypot(d[0], d[1]))
    ang = math.atan2(d[1], d[0])
    ca, sa = math.cos(ang), math.sin(ang)
    ex = length / 2.0 * np.cos(_ELLIPSE_ANGLES)
    ey = half_width * np.sin(_ELLIPSE_ANGLES)
    poly = np.stack([mid[0] + ex * ca - ey * sa, mid[1] + ex * sa + ey * ca], axis=1)
    cv2.fillConvexPoly(canvas, np.round(poly * _ONE).astype(np.int32), color, lineType=cv2.LINE_8, shift=_SHIFT)


def _dot(canvas: np.ndarray, p: np.ndarray, radius: int, color) -> None:
    cv2.circle(canvas, _fx(p), radius * _ONE, color, thickness=-1, lineType=cv2.LINE_8, shift=_SHIFT)


def draw_frame(
    canvas: np.ndarray,
    frame: np.ndarray,
    *,
    body: bool = True,
    face: bool = True,
    hands: bool = True,
    threshold: float = 0.3,
) -> np.ndarray:
    """Draw one frame's keypoints ``[130, 3]`` (pixels of ``canvas``) onto a uint8 RGB canvas in place."""
    unit = min(canvas.shape[:2]) / REF_SIDE
    vis = frame[:, 2] > threshold
    xy = frame[:, :2].astype(np.float64)
    if body:
        half = max(1.0, STICK_HALF_WIDTH * unit)
        for (i, j), color in zip(BODY_LIMBS, LIMB_COLORS):
            if vis[i] and vis[j]:
                _stick(canvas, xy[i], xy[j], half, color)
        r = _size(BODY_RADIUS, unit)
        for k in range(18):
            if vis[k]:
                _dot(canvas, xy[k], r, BODY_COLORS[k])
    if hands:
        thick, r = _size(HAND_THICKNESS, unit), _size(HAND_RADIUS, unit)
        for part in (LHAND, RHAND):
            hv, hxy = vis[part], xy[part]
            for (i, j), color in zip(HAND_EDGES, HAND_EDGE_COLORS):
                if hv[i] and hv[j]:
                    cv2.line(canvas, _fx(hxy[i]), _fx(hxy[j]), color, thick, cv2.LINE_8, _SHIFT)
            for k in np.flatnonzero(hv):
                _dot(canvas, hxy[k], r, HAND_POINT_COLOR)
    if face:
        r = _size(FACE_RADIUS, unit)
        fv, fxy = vis[FACE], xy[FACE]
        for k in np.flatnonzero(fv):
            _dot(canvas, fxy[k], r, FACE_POINT_COLOR)
    return canvas


def render_frame_uint8(
    frame: np.ndarray, width: int, height: int, *, body: bool = True, face: bool = True, hands: bool = True,
    threshold: float = 0.3,
) -> np.ndarray:
    """One frame ``[130, 3]`` already in the pixels of a ``width x height`` canvas -> uint8 [H, W, 3]."""
    short = min(width, height)
    ss = 1 if short >= SUPERSAMPLE_BELOW else min(8, math.ceil(REF_SIDE / short))
    canvas = np.zeros((height * ss, width * ss, 3), np.uint8)
    pts = frame.astype(np.float64).copy()
    # Pixel centres: point (x, y) of the small canvas lies at ((x + 0.5) * ss - 0.5) on the big one.
    pts[:, :2] = (pts[:, :2] + 0.5) * ss - 0.5
    draw_frame(canvas, pts, body=body, face=face, hands=hands, threshold=threshold)
    if ss > 1:
        canvas = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
    return canvas


def render_pose(
    seq: PoseSequence,
    width: int | None = None,
    height: int | None = None,
    *,
    body: bool = True,
    face: bool = True,
    hands: bool = True,
    threshold: float = 0.3,
    dtype: type = np.float32,
    progress=None,
) -> np.ndarray:
    """Render a :class:`PoseSequence` -> ``[T, H, W, 3]`` in 0..1 of ``dtype`` (a ComfyUI IMAGE batch as numpy).

    ``width``/``height`` default to the pose canvas; another size scales the poses per axis. Points with
    confidence at or below ``threshold`` are not drawn, nor are limbs or edges that touch them.
    ``dtype`` float16 halves the memory of long videos (every value k/255 is rounded once, so
    ``frame * 255`` gives back the drawn uint8 values, in float16 or float32 arithmetic).
    ``progress(done, total)`` is called after each frame.
    """
    width = int(width or seq.width)
    height = int(height or seq.height)
    if width < 1 or height < 1:
        raise ValueError(f"render size must be positive, got width={width}, height={height}")
    if (width, height) != (seq.width, seq.height):
        seq = seq.scaled_to(width, height)
    dtype = np.dtype(dtype)
    out = np.empty((len(seq), height, width, 3), dtype)
    # float32: assign then scale in place (several times faster than a ufunc cast); other dtypes: a lookup
    # table (numpy's float16 arithmetic is slow).
    lut = None if dtype == np.float32 else (np.arange(256, dtype=np.float64) / 255.0).astype(dtype)
    for t in range(len(seq)):
        img = render_frame_uint8(seq.points[t], width, height, body=body, face=face, hands=hands, threshold=threshold)
        if lut is None:
            out[t] = img
            out[t] *= np.float32(1.0 / 255.0)
        else:
            np.take(lut, img, out=out[t])
        if progress is not None:
            progress(t + 1, len(seq))
    return out
