"""Small 2D geometry helpers shared by audio-to-pose and retargeting (pure numpy, float64).

Angles are radians in image coordinates (x right, y down): a positive angle turns a vector from +x
towards +y, which is clockwise on screen. Every motion is built from rotations about joints, so bone
lengths are preserved exactly (up to float rounding).
"""
from __future__ import annotations

import numpy as np


def rotate(vectors: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate ``vectors [T, ..., 2]`` by ``angle [T]`` (one angle per leading index)."""
    angle = np.asarray(angle, dtype=np.float64)
    c = np.cos(angle).reshape(angle.shape + (1,) * (vectors.ndim - 1 - angle.ndim))
    s = np.sin(angle).reshape(c.shape)
    x, y = vectors[..., 0], vectors[..., 1]
    return np.stack([x * c - y * s, x * s + y * c], axis=-1)


def rotate_about(points: np.ndarray, pivot: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate ``points [T, K, 2]`` about ``pivot [T, 2]`` by ``angle [T]``."""
    pivot = np.asarray(pivot, dtype=np.float64)[:, None, :]
    return rotate(points - pivot, angle) + pivot


def angle_of(v: np.ndarray) -> np.ndarray:
    """Direction angle of vectors ``[..., 2]``."""
    return np.arctan2(v[..., 1], v[..., 0])


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angle difference folded into (-pi, pi]."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def cross2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """z component of the 2D cross product; its sign is the rotation direction from a towards b."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def kabsch_angle(src: np.ndarray, dst: np.ndarray) -> float:
    """Rotation angle (no scale) that best maps the centred point set ``src [N, 2]`` onto ``dst``."""
    a = src - src.mean(axis=0)
    b = dst - dst.mean(axis=0)
    return float(np.arctan2(np.sum(cross2(a, b)), np.sum(a * b)))


def inside_canvas(points: np.ndarray, present: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean ``[...]`` over the leading axes of ``points [..., K, 2]``: every present point lies in
    the canvas ``[0, width-1] x [0, height-1]``."""
    x, y = points[..., 0], points[..., 1]
    ok = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    return np.all(ok | ~present, axis=-1)


def largest_safe_scale(candidate, present: np.ndarray, width: int, height: int, n_frames: int,
                       steps: int = 10, smooth_frames: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the largest motion scale s in {1, (steps-1)/steps, ..., 0} whose result stays inside
    the canvas. ``candidate(s [T]) -> points [T, K, 2]`` builds the motion scaled by s per frame (so
    angles are clamped, never points). Returns (scale [T], points [T, K, 2]); where even s = 0 leaves
    the canvas (the reference itself is outside), s = 0 is used.

    The scale is then smoothed in time (a min filter then a mean over +-``smooth_frames``, which never
    exceeds the per-frame safe scale) so a clamped motion eases in and out instead of jumping; frames
    where the smoothed scale would not be safe keep the per-frame one."""
    scale = np.zeros(n_frames)
    result = candidate(scale)
    chosen = np.zeros(n_frames, dtype=bool)
    for i in range(steps, 0, -1):
        s = np.full(n_frames, i / steps)
        pts = candidate(s)
        ok = inside_canvas(pts, present, width, height) & ~chosen
        result[ok] = pts[ok]
        scale[ok] = s[ok]
        chosen |= ok
        if chosen.all():
            break
    if smooth_frames > 0 and (scale < 1).any():
        w = smooth_frames
        padded = np.pad(scale, w, mode="edge")
        low = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1).min(axis=1)
        eased = np.lib.stride_tricks.sliding_window_view(np.pad(low, w, mode="edge"), 2 * w + 1).mean(axis=1)
        pts = candidate(eased)
        ok = inside_canvas(pts, present, width, height)
        result[ok] = pts[ok]
        scale[ok] = eased[ok]
    return scale, result
