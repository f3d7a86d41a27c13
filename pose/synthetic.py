"""Synthetic poses in plain numpy: a frontal talking, gesturing upper body (benchmarks, tests, examples).

Not a motion model (audio_to_pose is): a fixed recipe of sways, nods, mouth cycles and arm lifts that
exercises every region of the sparse layout, with a hand that leaves the view for a few frames.
"""
from __future__ import annotations

import numpy as np

from .keypoints import BODY, FACE, LHAND, N_POINTS, RHAND, B, PoseSequence


def _hand(wrist: np.ndarray, direction: np.ndarray, size: float, spread: float) -> np.ndarray:
    """21 hand points: wrist then 5 fingers of 4 joints fanned around ``direction``."""
    pts = [wrist]
    base = np.arctan2(direction[1], direction[0])
    for f in range(5):
        ang = base + (f - 2) * spread
        d = np.array([np.cos(ang), np.sin(ang)])
        for j in range(4):
            pts.append(wrist + d * size * (0.45 + 0.18 * j))
    return np.array(pts)


def _face(center: np.ndarray, width: float, mouth_open: float, turn: float) -> np.ndarray:
    """70 face points (dlib-68 + 2 pupils) of a frontal face; ``turn`` shifts inner features sideways."""
    w, h = width, width * 1.25
    inner = center + np.array([turn * 0.15 * w, 0.0])
    jaw_a = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)
    jaw = np.stack([center[0] - np.cos(jaw_a) * w / 2, center[1] + np.sin(jaw_a) * h / 2 * 0.9 - 0.05 * h], 1)
    brow_r = np.stack([np.linspace(-0.38, -0.08, 5) * w, np.full(5, -0.28 * h)], 1) + inner
    brow_l = np.stack([np.linspace(0.08, 0.38, 5) * w, np.full(5, -0.28 * h)], 1) + inner
    nose = np.concatenate([np.stack([np.zeros(4), np.linspace(-0.18, 0.05, 4) * h], 1),
                           np.stack([np.linspace(-0.1, 0.1, 5) * w, np.full(5, 0.1 * h)], 1)]) + inner
    eye_a = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    eye = np.stack([np.cos(eye_a) * 0.09 * w, np.sin(eye_a) * 0.035 * h], 1)
    eye_r, eye_l = eye + inner + [-0.22 * w, -0.15 * h], eye + inner + [0.22 * w, -0.15 * h]
    lip_a = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    outer = np.stack([np.cos(lip_a) * 0.22 * w, np.sin(lip_a) * (0.05 + mouth_open * 0.1) * h], 1) + inner + [0, 0.28 * h]
    in_a = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    inner_lip = np.stack([np.cos(in_a) * 0.14 * w, np.sin(in_a) * mouth_open * 0.08 * h], 1) + inner + [0, 0.28 * h]
    pupils = np.stack([eye_r.mean(0), eye_l.mean(0)])
    return np.concatenate([jaw, brow_r, brow_l, nose, eye_r, eye_l, outer, inner_lip, pupils])


def talking_pose(n_frames: int = 33, width: int = 512, height: int = 512, seed: int = 0) -> PoseSequence:
    """A speaker facing the camera: head nods and turns, mouth opens and closes, both arms gesture,
    the right hand drops out of view for 3 frames mid-clip (clips of 8 frames or more)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames, dtype=np.float64)
    pts = np.zeros((n_frames, N_POINTS, 3), np.float32)
    s = min(width, height)
    phase = rng.uniform(0, 2 * np.pi, 6)
    for i, ti in enumerate(t):
        sway = np.array([0.02 * s * np.sin(0.11 * ti + phase[0]), 0.01 * s * np.sin(0.07 * ti + phase[1])])
        neck = np.array([0.5 * width, 0.42 * height]) + sway
        half = 0.13 * s
        body = np.zeros((18, 2))
        body[B["neck"]] = neck
        body[B["r_shoulder"]] = neck + [-half, 0.02 * s]
        body[B["l_shoulder"]] = neck + [half, 0.02 * s]
        for side, sign, ph in (("r", -1, phase[2]), ("l", 1, phase[3])):
            sh = body[B[f"{side}_shoulder"]]
            lift = 0.5 + 0.5 * np.sin(0.35 * ti + ph)            # gesture: 0 arm down, 1 hand at chest
            elbow = sh + [sign * 0.05 * s, 0.17 * s - 0.04 * s * lift]
            wrist = elbow + [-sign * 0.09 * s * lift, 0.16 * s - 0.2 * s * lift]
            body[B[f"{side}_elbow"]], body[B[f"{side}_wrist"]] = elbow, wrist
        body[B["r_hip"]] = neck + [-0.09 * s, 0.33 * s]
        body[B["l_hip"]] = neck + [0.09 * s, 0.33 * s]
        nod = 0.015 * s * np.sin(0.5 * ti + phase[4])
        turn = np.sin(0.2 * ti + phase[5])
        head = neck + [0.02 * s * turn, -0.14 * s + nod]
        body[B["nose"]] = head + [0.015 * s * turn, 0.0]
        body[B["r_eye"]] = head + [-0.03 * s, -0.025 * s]
        body[B["l_eye"]] = head + [0.03 * s, -0.025 * s]
        body[B["r_ear"]] = head + [-0.07 * s, -0.01 * s]
        body[B["l_ear"]] = head + [0.07 * s, -0.01 * s]
        pts[i, BODY, :2] = body
        pts[i, BODY, 2] = 0.9
        for k in ("r_knee", "r_ankle", "l_knee", "l_ankle"):
            pts[i, B[k]] = 0.0
        mouth = 0.5 + 0.5 * np.sin(1.7 * ti)
        pts[i, FACE, :2] = _face(head + [0, 0.005 * s], 0.16 * s, mouth, turn)
        pts[i, FACE, 2] = 1.0
        for part, side, sign in ((LHAND, "l", 1), (RHAND, "r", -1)):
            wrist = body[B[f"{side}_wrist"]]
            direction = wrist - body[B[f"{side}_elbow"]]
            pts[i, part, :2] = _hand(wrist, direction, 0.08 * s, 0.25 + 0.1 * np.sin(ti))
            pts[i, part, 2] = 1.0
    if n_frames >= 8:
        gone = slice(n_frames // 2, n_frames // 2 + 3)
        pts[gone, RHAND] = 0.0
        pts[gone, B["r_wrist"]] = 0.0
    return PoseSequence(pts, width, height)


def empty_pose(n_frames: int, width: int = 512, height: int = 512) -> PoseSequence:
    """``n_frames`` frames without a person."""
    return PoseSequence(np.zeros((n_frames, N_POINTS, 3), np.float32), width, height)
