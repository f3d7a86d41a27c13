"""Synthetic test poses: a clean frontal upper body on a 512x512 canvas with face and hands."""
from __future__ import annotations

import numpy as np

from iasa.pose.keypoints import FACE, LHAND, N_POINTS, RHAND, B, PoseSequence

W = H = 512


def _face() -> np.ndarray:
    f = np.zeros((70, 2))
    k = np.arange(17)
    th = np.pi - np.pi * k / 16
    f[:17] = np.stack([256 + 40 * np.cos(th), 180 + 50 * np.sin(th)], axis=1)
    f[17:22] = np.stack([np.linspace(226, 250, 5), [168, 165, 164, 165, 167]], axis=1)
    f[22:27] = np.stack([np.linspace(262, 286, 5), [167, 165, 164, 165, 168]], axis=1)
    f[27:31] = np.stack([np.full(4, 256.0), [176, 183, 189, 195]], axis=1)
    f[31:36] = np.stack([np.linspace(248, 264, 5), [198, 199, 200, 199, 198]], axis=1)
    f[36:42] = [(231, 178), (237, 175), (243, 175), (249, 178), (243, 181), (237, 181)]
    f[42:48] = [(263, 178), (269, 175), (275, 175), (281, 178), (275, 181), (269, 181)]
    f[48:60] = [(244, 210), (248, 207), (252, 206), (256, 207), (260, 206), (264, 207),
                (268, 210), (264, 214), (260, 216), (256, 216.5), (252, 216), (248, 214)]
    f[60:68] = [(246, 210), (251, 210), (256, 210), (261, 210), (266, 210), (261, 210), (256, 210), (251, 210)]
    f[68:70] = [(240, 178), (272, 178)]
    return f


def _hand(wrist: np.ndarray, direction: np.ndarray, thumb_side: float, length: float = 52.0) -> np.ndarray:
    """Open hand: five fanned fingers of 4 joints each, OpenPose hand order."""
    d = direction / np.linalg.norm(direction)
    base_angle = np.arctan2(d[1], d[0])
    pts = [wrist]
    spreads = np.radians([-50, -18, -4, 10, 24]) * -thumb_side
    reach = ([0.22, 0.40, 0.55, 0.68], [0.45, 0.68, 0.82, 0.94], [0.47, 0.72, 0.88, 1.0],
             [0.45, 0.68, 0.82, 0.93], [0.42, 0.58, 0.68, 0.78])
    for spread, r in zip(spreads, reach):
        a = base_angle + spread
        u = np.array([np.cos(a), np.sin(a)])
        pts.extend(wrist + length * np.array(r)[:, None] * u)
    return np.array(pts)


def make_reference(hands: bool = True, face: bool = True, open_mouth: float = 0.0) -> PoseSequence:
    pts = np.zeros((1, N_POINTS, 3), np.float32)
    body = {
        "nose": (256, 195), "neck": (256, 265), "r_shoulder": (191, 275), "r_elbow": (170, 360),
        "r_wrist": (205, 425), "l_shoulder": (321, 275), "l_elbow": (342, 360), "l_wrist": (307, 425),
        "r_hip": (221, 470), "l_hip": (291, 470), "r_eye": (240, 178), "l_eye": (272, 178),
        "r_ear": (214, 182), "l_ear": (298, 182),
    }
    for name, xy in body.items():
        pts[0, B[name]] = (*xy, 0.9)
    if face:
        f = _face()
        if open_mouth:
            f[[55, 56, 57, 58, 59, 65, 66, 67]] += (0, open_mouth)
        pts[0, FACE, :2] = f
        pts[0, FACE, 2] = 0.9
    if hands:
        for hand, el, wr, side in ((RHAND, "r_elbow", "r_wrist", 1.0), (LHAND, "l_elbow", "l_wrist", -1.0)):
            w = np.array(body[wr], float)
            pts[0, hand, :2] = _hand(w, w - np.array(body[el], float), side)
            pts[0, hand, 2] = 0.85
    return PoseSequence(pts, W, H)
