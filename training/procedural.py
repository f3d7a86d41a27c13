"""Tiny procedural talking figures for tests and GPU smoke runs when no synthetic shards exist yet.

Each clip: a coloured background, a figure drawn from its own keypoints (thick limbs, head, mouth
opening with a "speech" rhythm, hands), seeded per clip. Frames follow the keypoints, so a pose
-> video model has something real to learn. Only numpy + cv2.
"""
from __future__ import annotations

import numpy as np

from ..pose.keypoints import FACE, LHAND, N_POINTS, RHAND, B

# Base pose on a 256 canvas (x, y).
_BODY = {"nose": (128, 92), "neck": (128, 128), "r_shoulder": (96, 134), "r_elbow": (84, 180),
         "r_wrist": (100, 214), "l_shoulder": (160, 134), "l_elbow": (172, 180), "l_wrist": (156, 214),
         "r_hip": (110, 236), "l_hip": (146, 236), "r_eye": (120, 86), "l_eye": (136, 86),
         "r_ear": (108, 90), "l_ear": (148, 90)}


def _face(cx: float, cy: float, mouth: float) -> np.ndarray:
    f = np.zeros((70, 2))
    th = np.pi - np.pi * np.arange(17) / 16
    f[:17] = np.stack([cx + 20 * np.cos(th), cy - 6 + 25 * np.sin(th)], 1)
    f[17:27] = np.stack([np.linspace(cx - 15, cx + 15, 10), np.full(10, cy - 12)], 1)
    f[27:36] = np.stack([np.full(9, cx), np.linspace(cy - 8, cy + 4, 9)], 1)
    ang = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    f[36:42] = np.stack([cx - 8 + 3 * np.cos(ang), cy - 6 + 1.5 * np.sin(ang)], 1)
    f[42:48] = np.stack([cx + 8 + 3 * np.cos(ang), cy - 6 + 1.5 * np.sin(ang)], 1)
    ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    f[48:68] = np.stack([cx + 7 * np.cos(ang), cy + 10 + (1 + 5 * mouth) * np.sin(ang)], 1)
    f[68:70] = [(cx - 8, cy - 6), (cx + 8, cy - 6)]
    return f


def _hand(wrist: np.ndarray, direction: np.ndarray) -> np.ndarray:
    d = direction / (np.linalg.norm(direction) + 1e-6)
    a0 = np.arctan2(d[1], d[0])
    pts = [wrist]
    for k, spread in enumerate(np.radians([-40, -15, 0, 15, 30])):
        u = np.array([np.cos(a0 + spread), np.sin(a0 + spread)])
        pts.extend(wrist + 18 * np.array([0.3, 0.55, 0.75, 0.95])[:, None] * u * (0.8 if k == 0 else 1.0))
    return np.array(pts)


def make_keypoints(n_frames: int, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """``[T, 130, 3]`` pixels on a ``size`` canvas: swaying arms, nodding head, talking mouth."""
    t = np.arange(n_frames) / 25.0
    f_arm, f_head, f_mouth = rng.uniform(0.3, 1.2), rng.uniform(0.2, 0.8), rng.uniform(2.0, 5.0)
    amp_r, amp_l = rng.uniform(5, 30, 2)
    ph = rng.uniform(0, 2 * np.pi, 4)
    offset = rng.uniform(-12, 12, 2)
    out = np.zeros((n_frames, N_POINTS, 3), np.float32)
    for i in range(n_frames):
        body = {k: np.array(v, float) + offset for k, v in _BODY.items()}
        head = np.array([3 * np.sin(2 * np.pi * f_head * t[i] + ph[0]), 3 * np.sin(2 * np.pi * f_head * t[i] + ph[1])])
        for k in ("nose", "r_eye", "l_eye", "r_ear", "l_ear"):
            body[k] = body[k] + head
        body["r_elbow"] += (-0.3 * amp_r * np.sin(2 * np.pi * f_arm * t[i] + ph[2]), 0)
        body["r_wrist"] += (amp_r * np.cos(2 * np.pi * f_arm * t[i] + ph[2]), -amp_r * np.sin(2 * np.pi * f_arm * t[i] + ph[2]))
        body["l_elbow"] += (0.3 * amp_l * np.sin(2 * np.pi * f_arm * t[i] + ph[3]), 0)
        body["l_wrist"] += (-amp_l * np.cos(2 * np.pi * f_arm * t[i] + ph[3]), -amp_l * np.sin(2 * np.pi * f_arm * t[i] + ph[3]))
        for k, v in body.items():
            out[i, B[k]] = (*v, 0.9)
        mouth = 0.5 + 0.5 * np.sin(2 * np.pi * f_mouth * t[i]) * (np.sin(2 * np.pi * 0.7 * t[i] + ph[0]) > -0.3)
        out[i, FACE, :2] = _face(*(body["nose"] + (0, 2)), mouth)
        out[i, FACE, 2] = 0.9
        for part, el, wr in ((RHAND, "r_elbow", "r_wrist"), (LHAND, "l_elbow", "l_wrist")):
            out[i, part, :2] = _hand(body[wr], body[wr] - body[el])
            out[i, part, 2] = 0.85
    out[..., :2] *= size / 256.0
    return out


def draw_figure(kp: np.ndarray, size: int, colors: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """One frame uint8 ``[size, size, 3]`` from ``kp [130, 3]``."""
    import cv2

    img = np.empty((size, size, 3), np.uint8)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    img[:] = (np.array(colors["bg0"], np.float32) * (1 - ramp) + np.array(colors["bg1"], np.float32) * ramp).astype(np.uint8)
    s = size / 256.0
    p = lambda k: tuple(int(round(v)) for v in kp[B[k], :2])  # noqa: E731
    torso = np.array([p("r_shoulder"), p("l_shoulder"), p("l_hip"), p("r_hip")], np.int32)
    cv2.fillConvexPoly(img, torso, colors["shirt"], cv2.LINE_AA)
    for a, b in (("r_shoulder", "r_elbow"), ("r_elbow", "r_wrist"), ("l_shoulder", "l_elbow"), ("l_elbow", "l_wrist")):
        cv2.line(img, p(a), p(b), colors["shirt"], max(1, int(14 * s)), cv2.LINE_AA)
    cv2.line(img, p("neck"), p("nose"), colors["skin"], max(1, int(12 * s)), cv2.LINE_AA)
    cv2.ellipse(img, p("nose"), (int(21 * s), int(26 * s)), 0, 0, 360, colors["skin"], -1, cv2.LINE_AA)
    cv2.ellipse(img, (p("nose")[0], p("nose")[1] - int(16 * s)), (int(22 * s), int(13 * s)), 0, 180, 360, colors["hair"], -1, cv2.LINE_AA)
    face = kp[FACE, :2]
    for eye in (face[68], face[69]):
        cv2.circle(img, tuple(int(round(v)) for v in eye), max(1, int(2.5 * s)), (20, 20, 20), -1, cv2.LINE_AA)
    cv2.fillPoly(img, [np.round(face[48:68]).astype(np.int32)], (120, 30, 40), cv2.LINE_AA)
    for part in (RHAND, LHAND):
        for q in kp[part][::4, :2]:
            cv2.circle(img, tuple(int(round(v)) for v in q), max(1, int(4 * s)), colors["skin"], -1, cv2.LINE_AA)
    return img


def make_clip(seed: int, n_frames: int = 33, size: int = 256) -> dict:
    """``{"id", "frames" uint8 [T,S,S,3], "keypoints" float32 [T,130,3], "split"}`` from a seed."""
    rng = np.random.default_rng(seed)
    colors = {k: tuple(int(c) for c in rng.integers(20, 235, 3)) for k in ("bg0", "bg1", "shirt", "hair")}
    colors["skin"] = tuple(int(c) for c in np.array([230, 180, 150]) * rng.uniform(0.4, 1.05))
    kp = make_keypoints(n_frames, rng, size)
    frames = np.stack([draw_figure(kp[i], size, colors) for i in range(n_frames)])
    return {"id": f"proc-{seed}", "frames": frames, "keypoints": kp, "split": "train"}
