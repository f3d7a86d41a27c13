"""Arm and hand motion for audio-to-pose: forward kinematics by rotations only.

An arm is the chain neck -> shoulder -> elbow -> wrist -> hand. A gesture turns the shoulder about
the neck, the upper arm about the shoulder, the forearm about the elbow (each turn carries every point
further down the chain, the hand included) and curls each finger about its joints. Rotations keep
every bone length exact; a joint whose pivot is missing is simply not turned, and nothing missing is
invented (except the documented default hand, see :func:`attach_default_hands`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .keypoints import B, HAND_FINGERS, LHAND, RHAND
from .motion_geometry import cross2, largest_safe_scale, rotate_about
from .motion_signals import ArmAngles

log = logging.getLogger(__name__)

NECK = B["neck"]
ARMS = {
    "right": (B["r_shoulder"], B["r_elbow"], B["r_wrist"], RHAND),
    "left": (B["l_shoulder"], B["l_elbow"], B["l_wrist"], LHAND),
}
DEFAULT_HAND_CONF = 0.8
DEFAULT_HAND_MIN_CONF = 0.5      # elbow and wrist must be this sure before a hand is invented there
HAND_LENGTH_PER_FOREARM = 0.8   # template unit (wrist -> middle tip is 0.9 of it) per forearm length
MIN_ELBOW_ANGLE_DEG = 25.0      # flexion never folds the elbow tighter than this

# Relaxed open hand, OpenPose hand order; (along the forearm, towards the thumb side), hand lengths.
# NOTE: training/synth/templates.py RELAXED_HAND is a second copy of this template (owned by the training
# code, not changed here); it should import this one.
DEFAULT_HAND = np.array([
    (0.00, 0.00),
    (0.10, 0.10), (0.20, 0.19), (0.29, 0.24), (0.37, 0.27),       # thumb
    (0.40, 0.10), (0.60, 0.11), (0.72, 0.11), (0.82, 0.10),       # index
    (0.42, 0.02), (0.64, 0.02), (0.78, 0.015), (0.90, 0.01),      # middle
    (0.41, -0.06), (0.60, -0.07), (0.72, -0.075), (0.82, -0.08),  # ring
    (0.38, -0.13), (0.53, -0.15), (0.62, -0.16), (0.70, -0.17),   # pinky
])
FINGER_CURL_WEIGHTS = (0.6, 1.0, 0.8)   # share of the curl angle at the MCP, PIP and DIP joints


def _hand_idx(hand: slice) -> np.ndarray:
    return np.arange(hand.start, hand.stop)


def inward_sign(xy: np.ndarray, present: np.ndarray, side: str) -> float:
    """+1 if the body midline is towards +x from this arm's shoulder (person's right arm in a frontal
    view), -1 otherwise."""
    sh = ARMS[side][0]
    if present[NECK] and present[sh] and abs(xy[NECK, 0] - xy[sh, 0]) > 1e-6:
        return float(np.sign(xy[NECK, 0] - xy[sh, 0]))
    return 1.0 if side == "right" else -1.0


def default_hand(elbow: np.ndarray, wrist: np.ndarray, inward: float) -> np.ndarray:
    """The relaxed template hand ``[21, 2]`` at ``wrist``, pointing along the forearm, thumb towards
    the body midline and up, sized to the forearm."""
    f = wrist - elbow
    length = float(np.linalg.norm(f))
    ax = f / length
    perp = np.array([-ax[1], ax[0]])
    if perp @ np.array([inward, -1.0]) < 0:
        perp = -perp
    h = HAND_LENGTH_PER_FOREARM * length
    return wrist + h * (DEFAULT_HAND[:, :1] * ax + DEFAULT_HAND[:, 1:] * perp)


def attach_default_hands(frame: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Give each arm whose wrist and elbow are present but whose hand has no point the default hand
    (confidence :data:`DEFAULT_HAND_CONF`), so gestures show hands. Returns (frame copy, sides)."""
    out = frame.copy()
    present = frame[:, 2] > 0
    sides = []
    for side, (_, el, wr, hand) in ARMS.items():
        if frame[el, 2] >= DEFAULT_HAND_MIN_CONF and frame[wr, 2] >= DEFAULT_HAND_MIN_CONF \
                and not present[hand].any() \
                and np.linalg.norm(frame[wr, :2] - frame[el, :2]) > 1e-3:
            pts = default_hand(frame[el, :2].astype(np.float64), frame[wr, :2].astype(np.float64),
                               inward_sign(frame[:, :2], present, side))
            out[hand, :2] = pts
            out[hand, 2] = DEFAULT_HAND_CONF
            sides.append(side)
    if sides:
        log.warning("reference has wrists but no hand points (%s): attached a relaxed default hand sized "
                    "to the forearm so gestures show hands", ", ".join(sides))
    return out, sides


@dataclass
class ArmRig:
    """Which way each anatomical angle turns on screen for one arm of the reference, and limits."""

    side: str
    shoulder_sign: float
    upper_sign: float
    fore_sign: float
    fore_max: float              # radians of flexion allowed before the elbow folds too tight
    finger_signs: np.ndarray     # [5] curl direction per finger (towards the wrist)


def arm_rig(xy: np.ndarray, present: np.ndarray, side: str) -> ArmRig:
    sh, el, wr, hand = ARMS[side]
    s_in = inward_sign(xy, present, side)
    upper_sign, fore_sign, fore_max = s_in, -s_in, np.radians(180.0)
    if present[sh] and present[el]:
        v = xy[el] - xy[sh]
        if abs(v[1]) > 0.3 * np.linalg.norm(v):
            upper_sign = s_in * np.sign(v[1])         # hanging (or raised) upper arm: elbow outwards
        elif abs(v[0]) > 0:
            upper_sign = -np.sign(v[0])               # horizontal upper arm: elbow up
    if present[el] and present[wr]:
        f = xy[wr] - xy[el]
        if abs(f[1]) > 0.3 * np.linalg.norm(f):
            fore_sign = -s_in * np.sign(f[1])         # straight hanging forearm: hand inwards
        elif abs(f[0]) > 0:
            fore_sign = -np.sign(f[0])                # straight horizontal forearm: hand up
        if present[sh]:
            u = xy[sh] - xy[el]
            nf, nu = np.linalg.norm(f), np.linalg.norm(u)
            if nf > 1e-6 and nu > 1e-6:
                sin_a = cross2(f, u) / (nf * nu)
                interior = np.arccos(np.clip(f @ u / (nf * nu), -1.0, 1.0))
                if abs(sin_a) > np.sin(np.radians(15.0)):
                    fore_sign = float(np.sign(sin_a))     # flexion turns the forearm towards the upper arm
                    fore_max = max(0.0, interior - np.radians(MIN_ELBOW_ANGLE_DEG))
    finger_signs = np.ones(5)
    h = _hand_idx(hand)
    root = h[0] if present[h[0]] else wr
    for f_i, finger in enumerate(HAND_FINGERS):
        j = h[list(finger)]
        if present[root] and present[j].all():
            before = np.linalg.norm(xy[j[3]] - xy[root])
            turned = rotate_about(xy[None, j[3:4]], xy[None, j[0]], np.array([0.1]))[0, 0]
            if np.linalg.norm(turned - xy[root]) > before:
                finger_signs[f_i] = -1.0            # curl = the turn that brings the tip towards the wrist
    return ArmRig(side, s_in, float(upper_sign), float(fore_sign), float(fore_max), finger_signs)


def pose_arm(xy: np.ndarray, present: np.ndarray, rig: ArmRig, angles: ArmAngles) -> np.ndarray:
    """Turn one arm of every frame of ``xy [T, 130, 2]`` by ``angles``; returns a new array."""
    sh, el, wr, hand = ARMS[rig.side]
    out = xy.copy()
    hand_pts = [k for k in _hand_idx(hand) if present[k]]
    fore = np.minimum(angles.fore, rig.fore_max)
    steps = ((NECK, sh, (sh, el, wr), rig.shoulder_sign * angles.shoulder),
             (sh, sh, (el, wr), rig.upper_sign * angles.upper),
             (el, el, (wr,), rig.fore_sign * fore))
    for pivot, needed, distal, angle in steps:
        moved = [k for k in distal if present[k]] + hand_pts
        if present[pivot] and present[needed] and moved:
            out[:, moved] = rotate_about(out[:, moved], out[:, pivot], angle)
    h = _hand_idx(hand)
    for f_i, finger in enumerate(HAND_FINGERS):
        j = h[list(finger)]
        for k, weight in enumerate(FINGER_CURL_WEIGHTS):
            distal = [p for p in j[k + 1:] if present[p]]
            if present[j[k]] and distal:
                out[:, distal] = rotate_about(out[:, distal], out[:, j[k]],
                                              rig.finger_signs[f_i] * weight * angles.curl)
    return out


def arm_points(present: np.ndarray, side: str) -> np.ndarray:
    """Indices of the points one arm's gestures can move (present only)."""
    sh, el, wr, hand = ARMS[side]
    idx = [sh, el, wr] + list(_hand_idx(hand))
    return np.array([k for k in idx if present[k]], dtype=int)


def gesture_arms(xy: np.ndarray, present: np.ndarray, angles: dict[str, ArmAngles], width: int,
                 height: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Apply both arms' gestures to ``xy [T, 130, 2]``, scaling each arm's angles down per frame
    where a point would leave the canvas. Returns (xy, {side: scale [T]})."""
    out = xy.copy()
    scales = {}
    T = xy.shape[0]
    for side, ang in angles.items():
        idx = arm_points(present, side)
        if idx.size == 0:
            scales[side] = np.zeros(T)
            continue
        rig = arm_rig(xy[0], present, side)

        def candidate(s: np.ndarray, rig=rig, ang=ang, idx=idx) -> np.ndarray:
            return pose_arm(xy, present, rig, ang.scaled(s))[:, idx]

        scale, pts = largest_safe_scale(candidate, np.ones(idx.size, bool), width, height, T)
        out[:, idx] = pts
        scales[side] = scale
    return out, scales
