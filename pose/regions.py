"""Body-part regions from keypoints: the masks that the sparse attention, the region loss and the
Extract Pose node's MASK outputs all use.

One frame's keypoints give boolean masks for face, lips, left hand, right hand, arms (shoulder-elbow-
wrist capsules, shoulders included) and torso. Sizes scale with the person: dilations and capsule
radii are fractions of a body scale (shoulder width, else face width). :func:`label_map` collapses the
masks into one label per pixel with a fixed priority (face > hands > arms > torso > background).
"""
from __future__ import annotations

import cv2
import numpy as np

from .keypoints import B, BODY, FACE, FACE_OUTER_LIP, LHAND, RHAND, PoseSequence

REGIONS = ("face", "left_hand", "right_hand", "arms", "torso")
LABELS = {"background": 0, "face": 1, "left_hand": 2, "right_hand": 3, "arms": 4, "torso": 5}
MASK_NAMES = ("face", "lips", "left_hand", "right_hand", "arms", "torso")
CONF = 0.3


def body_scale(frame: np.ndarray) -> float:
    """A length in pixels that grows with the person: shoulder width, else 2.2x face width, else 0."""
    vis = frame[:, 2] > CONF
    rs, ls = B["r_shoulder"], B["l_shoulder"]
    if vis[rs] and vis[ls]:
        return float(np.linalg.norm(frame[rs, :2] - frame[ls, :2]))
    face = frame[FACE]
    fv = face[:, 2] > CONF
    if fv.sum() >= 3:
        span = face[fv, 0].max() - face[fv, 0].min()
        return float(2.2 * span)
    return 0.0


def _hull(mask: np.ndarray, pts: np.ndarray, grow: float) -> None:
    """Fill the convex hull of ``pts`` (N, 2), pushed outwards from its centroid by ``grow`` pixels."""
    if len(pts) < 1:
        return
    c = pts.mean(axis=0)
    d = pts - c
    n = np.linalg.norm(d, axis=1, keepdims=True)
    pts = pts + d / np.maximum(n, 1e-6) * grow
    if len(pts) < 3:
        cv2.circle(mask, tuple(int(round(v)) for v in c), max(1, int(round(grow))), 1, -1)
        return
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)


def _capsule(mask: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> None:
    r = max(1, int(round(radius)))
    cv2.line(mask, tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b), 1, thickness=2 * r)
    cv2.circle(mask, tuple(int(round(v)) for v in a), r, 1, -1)
    cv2.circle(mask, tuple(int(round(v)) for v in b), r, 1, -1)


def frame_masks(frame: np.ndarray, height: int, width: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Region masks of one frame ``[130, 3]`` (pixel coordinates) on an ``height x width`` grid.

    ``scale`` maps keypoint pixels to grid cells (e.g. 1/16 for a 16-px token grid); masks are
    rasterised at pixel resolution and pooled, so a cell is set when any of its pixels is.
    """
    if scale != 1.0:
        up = int(round(1.0 / scale)) if scale > 0 else 0
        if up < 1 or abs(up * scale - 1.0) > 1e-6:
            raise ValueError(f"frame_masks: scale must be 1/n for a whole number n (e.g. 1/16), got {scale}")
        full = frame_masks(frame, height * up, width * up, 1.0)
        return {k: v.reshape(height, up, width, up).any(axis=(1, 3)) for k, v in full.items()}
    masks = {name: np.zeros((height, width), np.uint8) for name in MASK_NAMES}
    s = body_scale(frame)
    if s <= 0:
        return {k: v.astype(bool) for k, v in masks.items()}
    vis = frame[:, 2] > CONF

    face = frame[FACE]
    fv = face[:, 2] > CONF
    if fv.sum() >= 3:
        _hull(masks["face"], face[fv, :2], 0.12 * s)
        # Forehead: the 68-point face stops at the brows; extend the hull upwards by a brow-to-chin fraction.
        top = face[fv, 1].min()
        chin = face[fv, 1].max()
        xs = face[fv, 0]
        extra = np.array([[xs.min(), top - 0.35 * (chin - top)], [xs.max(), top - 0.35 * (chin - top)]])
        _hull(masks["face"], np.concatenate([face[fv, :2], extra]), 0.08 * s)
    elif vis[B["nose"]]:
        cv2.circle(masks["face"], tuple(int(round(v)) for v in frame[B["nose"], :2]), int(0.35 * s), 1, -1)
    lips = face[list(FACE_OUTER_LIP)]
    lv = lips[:, 2] > CONF
    if lv.sum() >= 3:
        _hull(masks["lips"], lips[lv, :2], 0.03 * s)

    for name, part, wrist, elbow in (
        ("left_hand", LHAND, B["l_wrist"], B["l_elbow"]),
        ("right_hand", RHAND, B["r_wrist"], B["r_elbow"]),
    ):
        hand = frame[part]
        hv = hand[:, 2] > CONF
        if hv.sum() >= 3:
            _hull(masks[name], hand[hv, :2], 0.08 * s)
        elif vis[wrist]:
            # Hand not tracked but the wrist is: a disc where the hand must be, stretched past the wrist
            # along the forearm to OpenPose's hand-box centre (wrist + 0.33 * (wrist - elbow)).
            w_xy = frame[wrist, :2].astype(np.float64)
            centre = w_xy + 0.33 * (w_xy - frame[elbow, :2]) if vis[elbow] else w_xy
            _capsule(masks[name], w_xy, centre, 0.22 * s)

    for sh, el, wr in (("r_shoulder", "r_elbow", "r_wrist"), ("l_shoulder", "l_elbow", "l_wrist")):
        chain = [B[sh], B[el], B[wr]]
        for a, b in zip(chain[:-1], chain[1:]):
            if vis[a] and vis[b]:
                _capsule(masks["arms"], frame[a, :2], frame[b, :2], 0.14 * s)
    if vis[B["r_shoulder"]] and vis[B["l_shoulder"]] and vis[B["neck"]]:
        _capsule(masks["arms"], frame[B["r_shoulder"], :2], frame[B["l_shoulder"], :2], 0.12 * s)

    rs, ls = frame[B["r_shoulder"], :2], frame[B["l_shoulder"], :2]
    if vis[B["r_shoulder"]] and vis[B["l_shoulder"]]:
        rh, lh = B["r_hip"], B["l_hip"]
        down = np.array([-(ls - rs)[1], (ls - rs)[0]])  # perpendicular to the shoulder line
        if down[1] < 0:
            down = -down
        down = down / max(np.linalg.norm(down), 1e-6)
        r_bottom = frame[rh, :2] if vis[rh] else rs + down * 1.6 * s
        l_bottom = frame[lh, :2] if vis[lh] else ls + down * 1.6 * s
        poly = np.stack([rs, ls, l_bottom, r_bottom])
        # fillPoly, not fillConvexPoly: crossed hips (a turned body) make the quad non-convex.
        cv2.fillPoly(masks["torso"], [np.round(poly).astype(np.int32)], 1)
    return {k: v.astype(bool) for k, v in masks.items()}


def label_map(masks: dict[str, np.ndarray]) -> np.ndarray:
    """One uint8 label per cell from :func:`frame_masks` output (face > hands > arms > torso > bg)."""
    shape = next(iter(masks.values())).shape
    lab = np.zeros(shape, np.uint8)
    for name in ("torso", "arms", "right_hand", "left_hand", "face"):
        lab[masks[name]] = LABELS[name]
    return lab


def sequence_masks(seq: PoseSequence, height: int | None = None, width: int | None = None) -> dict[str, np.ndarray]:
    """Per-frame masks ``{name: bool [T, H, W]}`` at the canvas size or another size (poses scaled)."""
    height = height or seq.height
    width = width or seq.width
    pts = seq.scaled_to(width, height).points if (height, width) != (seq.height, seq.width) else seq.points
    per = [frame_masks(p, height, width) for p in pts]
    return {name: np.stack([m[name] for m in per]) for name in MASK_NAMES}
