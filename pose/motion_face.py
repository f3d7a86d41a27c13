"""Face deformations for audio-to-pose: lips and jaw from a mouth opening, blinks, nods.

Indices here are dlib-68 (+2 pupils) face indices 0..69 (global index = 18 + face index). Each
function takes the face points ``[70, 2]`` or ``[T, 70, 2]`` and a ``present [70]`` mask; missing
points are never moved or invented.

Mouth model: in a frame aligned with the lip corners (u along the mouth, v downwards), an opening of
``o`` pixels moves the upper lip up by 0.15*o and the lower lip down by 0.85*o, both weighted by an
elliptic profile along the lip (corners fixed), so the centre inner-lip gap (points 62-66) grows by
exactly ``o``; the jaw follows the lower lip with a weight that falls to 0 at the ears. Spread scales
the lips along u.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OUTER_LIP = tuple(range(48, 60))
INNER_LIP = tuple(range(60, 68))
LIPS = OUTER_LIP + INNER_LIP
UPPER_LIP = (49, 50, 51, 52, 53, 61, 62, 63)
LOWER_LIP = (55, 56, 57, 58, 59, 65, 66, 67)
INNER_PAIRS = ((61, 67), (62, 66), (63, 65))   # (upper, lower) inner-lip points facing each other
JAW = tuple(range(17))
UPPER_SHARE, LOWER_SHARE = 0.15, 0.85
OPEN_MAX_FRACTION = 0.35      # widest inner-lip gap, as a fraction of the outer mouth width
SPREAD_GAIN = 0.12            # lip width changes by up to +-12 %
CLOSED_TOLERANCE = 0.03       # a reference gap below 3 % of the mouth width counts as closed
# Eyelids: (upper, lower) pairs; both lids meet 75 % of the way down from the upper lid.
EYELID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))
PUPILS = ((68, (37, 38, 41, 40)), (69, (43, 44, 47, 46)))
LID_MEET = 0.75
NOSE_TIP = 30


@dataclass
class MouthFrame:
    origin: np.ndarray   # [2] midpoint of the lip corners
    ex: np.ndarray       # [2] unit vector from the right corner (48) to the left corner (54)
    ey: np.ndarray       # [2] unit vector pointing down the face (towards the chin)
    width: float         # outer mouth width in pixels

    def local(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = pts - self.origin
        return d @ self.ex, d @ self.ey

    def to_image(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.origin + u[..., None] * self.ex + v[..., None] * self.ey


def mouth_frame(face: np.ndarray, present: np.ndarray) -> MouthFrame | None:
    """The lip-corner frame of one face ``[70, 2]``, or None when no pair of lip corners is present."""
    for a, b, factor in ((48, 54, 1.0), (60, 64, 1.3)):
        if present[a] and present[b]:
            d = face[b] - face[a]
            w = float(np.linalg.norm(d))
            if w > 1e-6:
                ex = d / w
                return MouthFrame((face[a] + face[b]) / 2, ex, np.array([-ex[1], ex[0]]), w * factor)
    return None


def _lip_profile(u: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Weight per face point: 1 at the lip centre, 0 at the corners (an ellipse along each contour)."""
    prof = np.zeros(70)
    for contour in (OUTER_LIP, INNER_LIP):
        idx = np.array([k for k in contour if present[k]], dtype=int)
        if idx.size == 0:
            continue
        half = max(np.abs(u[idx]).max(), 1e-6)
        prof[idx] = np.sqrt(np.clip(1.0 - (u[idx] / half) ** 2, 0.0, 1.0))
    return prof


def _jaw_weight() -> np.ndarray:
    w = np.zeros(70)
    k = np.arange(17)
    w[:17] = np.cos(0.5 * np.pi * np.abs(k - 8) / 8.0) ** 1.5
    return w


def open_max_px(mf: MouthFrame) -> float:
    return OPEN_MAX_FRACTION * mf.width


def closed_mouth(face: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The reference face with its lips together: unchanged if the inner lips already (nearly) meet,
    otherwise the lower lip and jaw move up until each inner-lip pair coincides."""
    mf = mouth_frame(face, present)
    if mf is None or not (present[62] and present[66]):
        return face.copy()
    u, v = mf.local(face)
    gap = v[66] - v[62]
    if gap <= CLOSED_TOLERANCE * mf.width:
        return face.copy()
    prof = _lip_profile(u, present)
    v = v.copy()
    for up, lo in INNER_PAIRS:
        if present[up] and present[lo]:
            v[lo] = v[up]
    outer_lower = [k for k in (55, 56, 57, 58, 59) if present[k]]
    v[outer_lower] -= gap * prof[outer_lower]
    jaw = [k for k in JAW if present[k]]
    v[jaw] -= gap * _jaw_weight()[jaw]
    out = face.copy()
    moved = outer_lower + jaw + [lo for _, lo in INNER_PAIRS if present[lo]]
    out[moved] = mf.to_image(u[moved], v[moved])
    return out


def shape_mouth(closed: np.ndarray, present: np.ndarray, opening_px: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Faces ``[T, 70, 2]`` with the mouth opened by ``opening_px [T]`` (centre inner-lip gap) and lips
    widened by ``spread [T]`` (-1..1) around their centre."""
    T = len(opening_px)
    faces = np.repeat(closed[None].astype(np.float64), T, axis=0)
    mf = mouth_frame(closed, present)
    if mf is None:
        return faces
    u, v = mf.local(closed)
    prof = _lip_profile(u, present)
    share = np.zeros(70)
    share[list(UPPER_LIP)] = -UPPER_SHARE * prof[list(UPPER_LIP)]
    share[list(LOWER_LIP)] = LOWER_SHARE * prof[list(LOWER_LIP)]
    share[list(JAW)] = LOWER_SHARE * _jaw_weight()[list(JAW)]
    widen = np.zeros(70)
    widen[list(LIPS)] = 1.0
    o = np.asarray(opening_px, dtype=np.float64)[:, None]
    s = np.asarray(spread, dtype=np.float64)[:, None]
    uu = u[None] * (1.0 + SPREAD_GAIN * s * widen[None])
    vv = v[None] + o * share[None]
    moved = present & ((share != 0) | (widen != 0))
    faces[:, moved] = mf.to_image(uu[:, moved], vv[:, moved])
    return faces


def apply_blinks(faces: np.ndarray, present: np.ndarray, closure: np.ndarray) -> np.ndarray:
    """Close the eyelids by ``closure [T]`` (0 open .. 1 shut: upper and lower lid points coincide).
    Pupils slide to the closing lid line."""
    out = faces.copy()
    c = np.asarray(closure, dtype=np.float64)[:, None]
    for up, lo in EYELID_PAIRS:
        if present[up] and present[lo]:
            meet = faces[:, up] + LID_MEET * (faces[:, lo] - faces[:, up])
            out[:, up] = faces[:, up] + c * (meet - faces[:, up])
            out[:, lo] = faces[:, lo] + c * (meet - faces[:, lo])
    for pupil, lids in PUPILS:
        if present[pupil] and all(present[k] for k in lids):
            line = out[:, list(lids)].mean(axis=1)
            out[:, pupil] = faces[:, pupil] + c * (line - faces[:, pupil])
    return out


# Depth of each face point in front of the head's vertical plane, as a fraction of the face width.
_DEPTH = np.zeros(70)
_DEPTH[:17] = 0.5 * np.cos(0.5 * np.pi * np.abs(np.arange(17) - 8) / 8.0) ** 0.7
_DEPTH[17:27] = (0.35, 0.42, 0.47, 0.5, 0.5, 0.5, 0.5, 0.47, 0.42, 0.35)
_DEPTH[27:36] = (0.55, 0.62, 0.7, 0.8, 0.62, 0.65, 0.68, 0.65, 0.62)
_DEPTH[36:48] = 0.42
_DEPTH[[36, 45]] = 0.35
_DEPTH[48:68] = 0.6
_DEPTH[[48, 54, 60, 64]] = 0.52
_DEPTH[68:70] = 0.45


def face_width(face: np.ndarray, present: np.ndarray) -> float:
    """Jaw-to-jaw width (points 0-16), else 2.2x the eye-corner distance, else the span of the points."""
    if present[0] and present[16]:
        return float(np.linalg.norm(face[16] - face[0]))
    if present[36] and present[45]:
        return 2.2 * float(np.linalg.norm(face[45] - face[36]))
    if present.sum() >= 2:
        p = face[present]
        return float(np.ptp(p[:, 0]))
    return 0.0


def face_depth(width: float) -> np.ndarray:
    """Depth in pixels of each of the 70 face points in front of the head's vertical mid-plane."""
    return _DEPTH * width


# Depth (fraction of face width) of the body head points: nose tip, eyes, ears (on the mid-plane).
BODY_HEAD_DEPTH = {0: _DEPTH[NOSE_TIP], 14: 0.42, 15: 0.42, 16: 0.0, 17: 0.0}


def pseudo3d_rotate(points: np.ndarray, depth: np.ndarray, pivot: np.ndarray, pitch: np.ndarray,
                    yaw: np.ndarray) -> np.ndarray:
    """Project a small 3D pitch/yaw of points ``[T, K, 2]`` with depths ``[K]`` (pixels, towards the
    camera) about ``pivot [T, 2]`` (depth 0): a nod (pitch > 0) moves points in front of the pivot
    down, the nose tip most, so the face shows the parallax of a real nod."""
    p = np.asarray(pitch, dtype=np.float64)[:, None]
    y = np.asarray(yaw, dtype=np.float64)[:, None]
    d = points - pivot[:, None, :]
    out = np.empty_like(points, dtype=np.float64)
    out[..., 0] = pivot[:, None, 0] + d[..., 0] * np.cos(y) + depth[None] * np.sin(y)
    out[..., 1] = pivot[:, None, 1] + d[..., 1] * np.cos(p) + depth[None] * np.sin(p)
    return out
