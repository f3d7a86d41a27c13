"""Canonical keypoints of a synthetic presenter: a frontal face, a relaxed hand, a half-body skeleton.

Conventions follow pose/keypoints.py: pixels, ``x`` right and ``y`` down, OpenPose "left" / "right"
are the person's own sides, so for a frontal person the right side is on the image left.

Face units: the face template lives in a frame centred between the eyes, with the half jaw width as
unit (``x = -1`` is jaw point 0, the person's right cheek at eye height) and ``y`` down; the chin is
at ``y = CHIN_Y``. :data:`FACE_HEAD_TOP` is the skull top (for hair and framing).
"""
from __future__ import annotations

import numpy as np

from ...pose.keypoints import B, FACE, LHAND, N_POINTS, RHAND, PoseSequence
from .identity import Identity

CHIN_Y = 1.5
FACE_HEAD_TOP = -1.55          # top of the skull, face units
HAIR_TOP = -1.7                # top of a typical hair cap, face units
EYE_CENTRE_X = 0.5
EYE_HALF_W, EYE_TOP, EYE_BOTTOM = 0.26, -0.16, 0.11
NOSE_TOP_Y, NOSE_TIP_Y = 0.0, 0.6

# Framing, as fractions of the frame size (square frames).
HEAD_TOP_FRACTION = 0.10       # hair top this far from the top edge
FACE_UNIT_FRACTION = 0.1     # nominal half jaw width
HIP_FRACTION = 0.965           # hip line near the bottom edge
SHOULDER_HALF_UNITS = 2.3      # nominal half shoulder width, face units
SHOULDER_BELOW_CHIN = 0.6      # face units
UPPER_ARM_UNITS, FOREARM_UNITS = 2.3, 2.0
HAND_UNITS = 1.5               # wrist to middle fingertip, face units
HIP_HALF_FRACTION = 0.82       # hip half width relative to the shoulder half width


def _jaw() -> np.ndarray:
    phi = np.pi * np.arange(17) / 16
    c = np.cos(phi)
    x = -np.sign(c) * np.abs(c) ** 0.8
    y = CHIN_Y * np.sin(phi) ** 1.3
    return np.stack([x, y], axis=1)


def _brow_right() -> np.ndarray:
    k = np.arange(5) / 4
    x = -0.86 + 0.66 * k
    y = -0.2 - 0.14 * np.sin(np.pi * (0.15 + 0.7 * k))
    return np.stack([x, y], axis=1)


def _eye_right() -> np.ndarray:
    cx, hw = -EYE_CENTRE_X, EYE_HALF_W
    return np.array([
        (cx - hw, 0.0), (cx - 0.4 * hw, EYE_TOP), (cx + 0.4 * hw, EYE_TOP),
        (cx + hw, 0.0), (cx + 0.4 * hw, EYE_BOTTOM), (cx - 0.4 * hw, EYE_BOTTOM),
    ])


def _mirror(pts: np.ndarray) -> np.ndarray:
    out = np.asarray(pts, float).copy()
    out[:, 0] = -out[:, 0]
    return out


def canonical_face() -> np.ndarray:
    """Frontal face ``[70, 2]`` in face units: dlib-68 order plus the right and left pupils."""
    brow_r = _brow_right()
    brow_l = _mirror(brow_r[::-1])                       # 22 (inner) .. 26 (outer)
    nose_bridge = np.stack([np.zeros(4), np.linspace(NOSE_TOP_Y, NOSE_TIP_Y, 4)], axis=1)
    nostrils = np.array([(-0.22, 0.72), (-0.11, 0.76), (0.0, 0.78), (0.11, 0.76), (0.22, 0.72)])
    eye_r = _eye_right()
    eye_l = _mirror(eye_r[[3, 2, 1, 0, 5, 4]])          # 42 inner, 43/44 top, 45 outer, 46/47 bottom
    mouth_y = 1.1
    outer = np.array([
        (-0.4, mouth_y), (-0.26, mouth_y - 0.1), (-0.1, mouth_y - 0.14), (0.0, mouth_y - 0.12),
        (0.1, mouth_y - 0.14), (0.26, mouth_y - 0.1), (0.4, mouth_y),
        (0.26, mouth_y + 0.12), (0.11, mouth_y + 0.17), (0.0, mouth_y + 0.18), (-0.11, mouth_y + 0.17),
        (-0.26, mouth_y + 0.12),
    ])
    inner = np.array([
        (-0.33, mouth_y), (-0.12, mouth_y - 0.01), (0.0, mouth_y - 0.01), (0.12, mouth_y - 0.01),
        (0.33, mouth_y), (0.12, mouth_y - 0.01), (0.0, mouth_y - 0.01), (-0.12, mouth_y - 0.01),
    ])
    pupils = np.array([(-EYE_CENTRE_X, -0.01), (EYE_CENTRE_X, -0.01)])
    face = np.concatenate([_jaw(), brow_r, brow_l, nose_bridge, nostrils, eye_r, eye_l, outer, inner, pupils])
    assert face.shape == (70, 2)
    return face


# Relaxed right or left hand, OpenPose order: (along the hand, towards the thumb side), in hand lengths
# (wrist to middle fingertip = 1). Fingers slightly curled, so they look shorter than when stretched.
RELAXED_HAND = np.array([
    (0.00, 0.00),
    (0.11, 0.12), (0.23, 0.22), (0.33, 0.27), (0.42, 0.29),        # thumb
    (0.44, 0.13), (0.64, 0.14), (0.76, 0.13), (0.86, 0.11),        # index
    (0.46, 0.03), (0.68, 0.03), (0.81, 0.02), (0.92, 0.01),        # middle
    (0.44, -0.06), (0.64, -0.08), (0.76, -0.09), (0.85, -0.10),    # ring
    (0.40, -0.14), (0.55, -0.17), (0.64, -0.19), (0.72, -0.20),    # pinky
])


def place_hand(wrist: np.ndarray, direction: np.ndarray, thumb_side: np.ndarray, length: float) -> np.ndarray:
    """The relaxed hand ``[21, 2]`` at ``wrist``: fingers along ``direction``, thumb towards
    ``thumb_side`` (both vectors, normalised here; ``thumb_side`` is made perpendicular)."""
    d = np.asarray(direction, float)
    d = d / max(np.linalg.norm(d), 1e-9)
    t = np.asarray(thumb_side, float)
    t = t - (t @ d) * d
    t = t / max(np.linalg.norm(t), 1e-9)
    return np.asarray(wrist, float) + length * (RELAXED_HAND[:, :1] * d + RELAXED_HAND[:, 1:] * t)


def _unit(angle_from_down: float, outward: float) -> np.ndarray:
    """Direction ``angle_from_down`` radians away from straight down, towards ``outward`` (+1 / -1 in x)."""
    return np.array([outward * np.sin(angle_from_down), np.cos(angle_from_down)])


def base_pose(identity: Identity, size: int = 256) -> PoseSequence:
    """One frame ``[1, 130, 3]`` of the identity standing frontal in half-body framing: hair top
    ~10 % below the top edge, hips near the bottom edge, elbows bent and hands resting in front of
    the lower torso (so that gestures have room and the hands stay visible)."""
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"base_pose: size must be an integer >= 32 pixels, got {size!r}")
    s = float(size)
    b = FACE_UNIT_FRACTION * s                 # body unit: arm lengths and widths
    u = b * identity.head_scale                # face unit: half jaw width of this identity
    cx = s * (0.5 + identity.offset_x)
    eye_y = HEAD_TOP_FRACTION * s - HAIR_TOP * u
    pts = np.zeros((N_POINTS, 3), np.float32)

    face = canonical_face() * u + np.array([cx, eye_y])
    pts[FACE, :2] = face
    pts[FACE, 2] = 1.0

    chin_y = eye_y + CHIN_Y * u
    shoulder_y = chin_y + SHOULDER_BELOW_CHIN * b
    half = SHOULDER_HALF_UNITS * b * identity.shoulder_scale
    hip_y = HIP_FRACTION * s
    hip_half = HIP_HALF_FRACTION * half
    body = {
        "nose": face[30], "neck": (cx, shoulder_y),
        "r_shoulder": (cx - half, shoulder_y), "l_shoulder": (cx + half, shoulder_y),
        "r_hip": (cx - hip_half, hip_y), "l_hip": (cx + hip_half, hip_y),
        "r_eye": face[68], "l_eye": face[69],
        "r_ear": (cx - 1.02 * u, eye_y + 0.25 * u), "l_ear": (cx + 1.02 * u, eye_y + 0.25 * u),
    }
    upper_angle = np.radians(6 + 10 * identity.elbow_out)     # upper arm: slightly out from vertical
    wrist_off = (1.5 - 0.4 * identity.hand_height) * b       # resting wrists: this far from the midline
    fore = FOREARM_UNITS * b
    for side, out in (("r", -1.0), ("l", 1.0)):
        shoulder = np.array(body[f"{side}_shoulder"], float)
        elbow = shoulder + UPPER_ARM_UNITS * b * _unit(upper_angle, out)
        dx = float(np.clip(abs(elbow[0] - cx) - wrist_off, 0.2 * fore, 0.95 * fore))
        wrist = elbow + np.array([-out * dx, np.sqrt(fore ** 2 - dx ** 2)])
        body[f"{side}_elbow"], body[f"{side}_wrist"] = elbow, wrist
        # Hand hangs from the wrist, fingers down and a little inwards, thumb towards the body and up.
        hand = place_hand(wrist, _unit(np.radians(60), -out), np.array([-out, -0.6]), HAND_UNITS * b)
        part = RHAND if side == "r" else LHAND
        pts[part, :2] = hand
        pts[part, 2] = 1.0
    for name, xy in body.items():
        pts[B[name], :2] = xy
        pts[B[name], 2] = 1.0
    return PoseSequence(pts[None], size, size)


def face_frame(face: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float] | None:
    """Head frame of a face ``[70, 2]``: (centre between the eyes, unit x towards the person's left,
    unit y down the face, x scale, y scale) in pixels per face unit; None if too few points.

    Uses the jaw ends (0, 16) for x and the nose bridge (27 -> 30) for y, both unaffected by the mouth.
    """
    if present[0] and present[16]:
        d = face[16] - face[0]
        sx = float(np.linalg.norm(d)) / 2.0
        if sx < 1e-3:
            return None
        ex = d / (2.0 * sx)
        centre = (face[0] + face[16]) / 2.0
    elif present[36] and present[45]:
        d = face[45] - face[36]
        w = float(np.linalg.norm(d))
        if w < 1e-3:
            return None
        ex = d / w
        sx = w / (2 * (EYE_CENTRE_X + EYE_HALF_W))
        centre = (face[36] + face[45]) / 2.0
    else:
        return None
    ey = np.array([-ex[1], ex[0]])
    sy = sx
    if present[27] and present[30]:
        length = float((face[30] - face[27]) @ ey)
        if length > 1e-3:
            sy = float(np.clip(length / (NOSE_TIP_Y - NOSE_TOP_Y), 0.6 * sx, 1.6 * sx))
    return centre, ex, ey, sx, sy
