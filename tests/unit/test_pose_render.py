"""Skeleton rendering: DWPose/OpenPose colours at the right places, nothing for missing points, sizes scale."""
from __future__ import annotations

import matplotlib.colors
import numpy as np
import pytest

from iasa.pose.keypoints import B, BODY_LIMBS, FACE, HAND_EDGES, LHAND, N_POINTS, RHAND, PoseSequence
from iasa.pose.render import (
    BODY_COLORS, FACE_POINT_COLOR, HAND_EDGE_COLORS, HAND_POINT_COLOR, LIMB_COLORS, render_frame_uint8, render_pose,
)

# A frontal person in canvas fractions, joints well apart so limb midpoints do not overlap.
BODY_FRAC = {
    "nose": (0.50, 0.20), "neck": (0.50, 0.38), "r_shoulder": (0.32, 0.38), "r_elbow": (0.22, 0.55),
    "r_wrist": (0.16, 0.72), "l_shoulder": (0.68, 0.38), "l_elbow": (0.78, 0.55), "l_wrist": (0.84, 0.72),
    "r_hip": (0.40, 0.70), "r_knee": (0.38, 0.84), "r_ankle": (0.37, 0.97), "l_hip": (0.60, 0.70),
    "l_knee": (0.62, 0.84), "l_ankle": (0.63, 0.97), "r_eye": (0.45, 0.15), "l_eye": (0.55, 0.15),
    "r_ear": (0.40, 0.10), "l_ear": (0.60, 0.10),
}


def hand_frac(wrist: tuple[float, float], direction: float) -> np.ndarray:
    """21 hand points fanned out from ``wrist``: five fingers 28 degrees apart, 4 joints each."""
    pts = np.zeros((21, 2))
    pts[0] = wrist
    for f in range(5):
        ang = np.deg2rad(direction + (f - 2) * 28)
        for j in range(4):
            r = 0.06 + 0.04 * j
            pts[1 + 4 * f + j] = (wrist[0] + r * np.cos(ang), wrist[1] + r * np.sin(ang))
    return pts


def person(width: int = 512, height: int = 512, *, hands: bool = True, face: bool = True) -> np.ndarray:
    """One frame [130, 3] in pixels of a width x height canvas."""
    frame = np.zeros((N_POINTS, 3), np.float32)
    scale = np.array([width, height])
    for name, xy in BODY_FRAC.items():
        frame[B[name]] = (*(np.array(xy) * scale), 0.9)
    if hands:
        frame[LHAND, :2] = hand_frac((0.80, 0.45), -60) * scale
        frame[RHAND, :2] = hand_frac((0.20, 0.45), -120) * scale
        frame[LHAND, 2] = frame[RHAND, 2] = 1.0
    if face:
        ang = np.linspace(0, 2 * np.pi, 70, endpoint=False)
        frame[FACE, 0] = (0.50 + 0.05 * np.cos(ang)) * width
        frame[FACE, 1] = (0.17 + 0.05 * np.sin(ang)) * height
        frame[FACE, 2] = 1.0
    return frame


def px(img: np.ndarray, xy) -> tuple[int, ...]:
    x, y = int(round(float(xy[0]))), int(round(float(xy[1])))
    return tuple(int(v) for v in img[y, x])


def test_body_limbs_and_joints_in_dwpose_colours():
    frame = person(hands=False, face=False)
    img = render_frame_uint8(frame, 512, 512, face=False, hands=False)
    for (i, j), color in zip(BODY_LIMBS, LIMB_COLORS):
        mid = (frame[i, :2] + frame[j, :2]) / 2
        assert px(img, mid) == color, (i, j)
    for k in range(18):
        assert px(img, frame[k, :2]) == BODY_COLORS[k], k
    # controlnet_aux: neck -> right shoulder is red at 60 %, the neck joint orange, the nose red.
    assert LIMB_COLORS[0] == (153, 0, 0) and BODY_COLORS[B["neck"]] == (255, 85, 0)
    assert px(img, (5, 5)) == (0, 0, 0) and px(img, (500, 300)) == (0, 0, 0)


def test_hands_rainbow_edges_blue_points_and_white_face():
    frame = person()
    img = render_frame_uint8(frame, 512, 512, body=False)
    for part in (LHAND, RHAND):
        hand = frame[part]
        for (i, j), color in zip(HAND_EDGES, HAND_EDGE_COLORS):
            assert px(img, (hand[i, :2] + hand[j, :2]) / 2) == color, (i, j)
        for k in range(21):
            assert px(img, hand[k, :2]) == HAND_POINT_COLOR
    for k in range(70):
        assert px(img, frame[FACE][k, :2]) == FACE_POINT_COLOR
    # The edge colours are controlnet_aux's matplotlib HSV rainbow.
    ref = matplotlib.colors.hsv_to_rgb([[i / 20, 1.0, 1.0] for i in range(20)]) * 255
    np.testing.assert_allclose(np.array(HAND_EDGE_COLORS), ref, atol=0.51)
    assert HAND_POINT_COLOR == (0, 0, 255) and FACE_POINT_COLOR == (255, 255, 255)


def test_missing_and_low_confidence_points_draw_nothing():
    frame = person()
    frame[B["r_elbow"]] = 0.0  # missing
    frame[B["l_knee"], 2] = 0.2  # below the 0.3 threshold
    frame[LHAND.start + 8] = 0.0  # index finger tip of the left hand
    img = render_frame_uint8(frame, 512, 512)
    full = render_frame_uint8(person(), 512, 512)
    r_sh, r_wr, r_el = person()[[B["r_shoulder"], B["r_wrist"], B["r_elbow"]], :2]
    for p in ((r_sh + r_el) / 2, (r_el + r_wr) / 2, r_el):
        assert px(img, p) == (0, 0, 0) and px(full, p) != (0, 0, 0)
    l_hip, l_knee, l_ankle = person()[[B["l_hip"], B["l_knee"], B["l_ankle"]], :2]
    for p in ((l_hip + l_knee) / 2, (l_knee + l_ankle) / 2):
        assert px(img, p) == (0, 0, 0)
    tip, before = person()[LHAND][[8, 7], :2]
    assert px(img, (tip + before) / 2) == (0, 0, 0) and px(img, tip) == (0, 0, 0)
    # Everything else is still drawn.
    assert px(img, person()[B["l_elbow"], :2]) == BODY_COLORS[B["l_elbow"]]
    # No person: a black frame.
    assert not render_pose(PoseSequence(np.zeros((1, N_POINTS, 3)), 64, 48)).any()


def test_part_switches():
    frame = person()
    body_only = render_frame_uint8(frame, 512, 512, body=True, face=False, hands=False)
    np.testing.assert_array_equal(body_only, render_frame_uint8(person(hands=False, face=False), 512, 512))
    hands_only = render_frame_uint8(frame, 512, 512, body=False, face=False, hands=True)
    lit = hands_only.reshape(-1, 3)[hands_only.reshape(-1, 3).any(1)]
    allowed = np.array(HAND_EDGE_COLORS + (HAND_POINT_COLOR,))
    assert len(lit) and (lit[:, None, :] == allowed[None]).all(-1).any(-1).all()
    only_face = render_frame_uint8(frame, 512, 512, body=False, face=True, hands=False)
    lit = only_face.reshape(-1, 3).any(1)
    assert lit.any() and (only_face.reshape(-1, 3)[lit] == 255).all()


def test_sequence_output_format_and_resize():
    f0, f1 = person(256, 192), person(256, 192)
    f1[:, 0] += 20  # frame 1: the person moved right by 20 px
    seq = PoseSequence(np.stack([f0, f1]), 256, 192)
    out = render_pose(seq)
    assert out.shape == (2, 192, 256, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() == 1.0
    assert not np.array_equal(out[0], out[1])
    np.testing.assert_allclose(out[1][:, 30:], out[0][:, 10:-20], atol=0.02)  # same picture, shifted
    # Another render size scales the poses (per axis): the neck joint lands at the scaled place.
    big = render_pose(seq, 512, 384)
    assert big.shape == (2, 384, 512, 3)
    neck = f0[B["neck"], :2] * 2
    np.testing.assert_allclose(big[0, int(neck[1]), int(neck[0])], np.array(BODY_COLORS[B["neck"]]) / 255, atol=1e-6)
    with pytest.raises(ValueError, match="width"):
        render_pose(seq, -5, 10)


def test_float16_frames_hold_the_drawn_colours_exactly():
    """The nodes emit float16 IMAGEs (half the memory): stock SaveVideo's ``(frame * 255).byte()`` in float16
    and a float32 ``round(frame * 255)`` both give back the uint8 picture; float32 output is unchanged."""
    import torch

    seq = PoseSequence(np.stack([person(320, 240), person(320, 240, hands=False)]), 320, 240)
    drawn = np.stack([render_frame_uint8(f, 320, 240) for f in seq.points])
    half = render_pose(seq, dtype=np.float16)
    assert half.dtype == np.float16 and half.shape == (2, 240, 320, 3)
    assert np.array_equal((torch.from_numpy(half) * 255).clamp(0, 255).byte().numpy(), drawn)
    assert np.array_equal(np.round(half.astype(np.float32) * 255).astype(np.uint8), drawn)
    assert np.array_equal(render_pose(seq), drawn.astype(np.float32) * np.float32(1 / 255))


def _lit_fraction(img: np.ndarray) -> float:
    return float((img.max(axis=-1) > 0.1).mean())


def _thickness_across(img: np.ndarray, x: int, y0: int, y1: int) -> int:
    """Lit pixels down one column between y0 and y1 (a horizontal limb crossed vertically)."""
    return int((img[y0:y1, x].max(axis=-1) > 0.3).sum())


@pytest.mark.parametrize("size", [(128, 128), (832, 480), (1280, 1280)])
def test_sizes_scale_with_the_canvas(size):
    W, H = size
    ref = render_pose(PoseSequence(person()[None], 512, 512))[0]
    img = render_pose(PoseSequence(person(W, H)[None], W, H))[0]
    ratio = _lit_fraction(img) / _lit_fraction(ref)
    assert 0.6 < ratio < 1.6, ratio
    # The neck -> right shoulder limb is horizontal: its thickness grows with the short side.
    def thick(im, w, h):
        x = int(0.41 * w)
        y = int(0.38 * h)
        return _thickness_across(im, x, max(0, y - h // 10), y + h // 10)
    t_ref, t = thick(ref, 512, 512), thick(img, W, H)
    expect = t_ref * min(W, H) / 512
    assert max(1, 0.6 * expect) <= t <= 1.5 * expect + 1, (t, expect)
    # Even on a tiny canvas the limb keeps its colour (red dominant) where it is drawn.
    mid = img[int(0.38 * H), int(0.41 * W)]
    assert mid[0] > 0.3 and mid[0] > 2 * max(mid[1], mid[2]), mid


def test_progress_is_reported_once_per_frame():
    seq = PoseSequence(np.stack([person(64, 48)] * 3), 64, 48)
    calls = []
    render_pose(seq, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
