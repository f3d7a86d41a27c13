"""Region masks from keypoints (pose/regions.py): containment, hands, priorities, token-grid pooling."""
from __future__ import annotations


import numpy as np
import pytest

from iasa.pose.keypoints import B, FACE, FACE_OUTER_LIP, LHAND, N_POINTS, RHAND, PoseSequence
from iasa.pose.regions import LABELS, MASK_NAMES, body_scale, frame_masks, label_map, sequence_masks
from .photos import guitar_player

# A frontal speaker on a 512 x 512 canvas: hands raised in front of the chest.
BODY_PX = {
    "nose": (256, 120), "neck": (256, 215), "r_shoulder": (176, 215), "r_elbow": (150, 320), "r_wrist": (200, 380),
    "l_shoulder": (336, 215), "l_elbow": (362, 320), "l_wrist": (312, 380), "r_hip": (206, 450),
    "l_hip": (306, 450), "r_eye": (240, 105), "l_eye": (272, 105), "r_ear": (222, 112), "l_ear": (290, 112),
}


def speaker() -> np.ndarray:
    f = np.zeros((N_POINTS, 3), np.float32)
    for name, xy in BODY_PX.items():
        f[B[name]] = (*xy, 0.95)
    ang = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    f[FACE.start : FACE.start + 68, 0] = 256 + 38 * np.cos(ang)
    f[FACE.start : FACE.start + 68, 1] = 120 + 48 * np.sin(ang)
    lips = [FACE.start + i for i in FACE_OUTER_LIP]
    la = np.linspace(0, 2 * np.pi, len(lips), endpoint=False)
    f[lips, 0], f[lips, 1] = 256 + 14 * np.cos(la), 148 + 6 * np.sin(la)
    f[FACE.start + 68] = (240, 105, 0)  # pupils
    f[FACE.start + 69] = (272, 105, 0)
    f[FACE, 2] = 1.0
    rng = np.random.default_rng(0)
    for part, wrist in ((LHAND, "l_wrist"), (RHAND, "r_wrist")):
        w = np.array(BODY_PX[wrist], float)
        f[part, :2] = w + np.concatenate([[[0, 0]], rng.uniform([-25, 5], [25, 55], (20, 2))])
        f[part, 2] = 1.0
    return f


def _contains(mask: np.ndarray, pts: np.ndarray) -> bool:
    xs = np.clip(np.round(pts[:, 0]).astype(int), 0, mask.shape[1] - 1)
    ys = np.clip(np.round(pts[:, 1]).astype(int), 0, mask.shape[0] - 1)
    return bool(mask[ys, xs].all())


def _inside_canvas(pts: np.ndarray, w: int, h: int) -> np.ndarray:
    return (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)


def _check_containment(f: np.ndarray, H: int, W: int) -> dict[str, np.ndarray]:
    m = frame_masks(f, H, W)
    assert set(m) == set(MASK_NAMES) and all(v.shape == (H, W) and v.dtype == bool for v in m.values())
    vis = f[:, 2] > 0.3

    def visible(sl_or_idx):
        pts = f[sl_or_idx]
        pts = pts[(pts[:, 2] > 0.3)]
        return pts[_inside_canvas(pts, W, H)]

    assert _contains(m["face"], visible(FACE))
    assert _contains(m["lips"], visible([FACE.start + i for i in FACE_OUTER_LIP]))
    assert not (m["lips"] & ~m["face"]).any(), "lips must lie inside the face"
    assert _contains(m["left_hand"], visible(LHAND))
    assert _contains(m["right_hand"], visible(RHAND))
    arm_joints = [B[n] for n in ("r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist") if vis[B[n]]]
    assert _contains(m["arms"], visible(arm_joints))
    torso_c = f[[B["r_shoulder"], B["l_shoulder"], B["r_hip"], B["l_hip"]], :2].mean(0, keepdims=True)
    assert _contains(m["torso"], torso_c)
    # Each hand mask covers its own hand, not the other one.
    for own, other, name in ((LHAND, RHAND, "left_hand"), (RHAND, LHAND, "right_hand")):
        centre = visible(own)[:, :2].mean(0)
        ys, xs = np.nonzero(m[name])
        assert np.linalg.norm(np.array([xs.mean(), ys.mean()]) - centre) < 0.3 * body_scale(f)
        other_c = visible(other)[:, :2].mean(0, keepdims=True)
        assert not _contains(m[name], other_c)
    return m


def test_synthetic_speaker_masks_contain_their_keypoints():
    f = speaker()
    m = _check_containment(f, 512, 512)
    # Sizes scale with the person: the face region is about the face, not the whole head and torso.
    assert 0.01 < m["face"].mean() < 0.08
    assert m["lips"].sum() < 0.25 * m["face"].sum()


def test_real_photo_masks_find_face_lips_and_both_hands():
    from iasa.pose.extract import extract_pose

    img = guitar_player()
    seq = extract_pose(img)
    f = seq.points[0]
    assert (f[LHAND, 2] > 0.3).all() and (f[RHAND, 2] > 0.3).all()
    m = _check_containment(f, seq.height, seq.width)
    assert not (m["left_hand"] & m["right_hand"]).any()


def test_hand_falls_back_to_the_wrist_beyond_the_forearm():
    f = speaker()
    f[LHAND] = 0.0
    m = frame_masks(f, 512, 512)
    wrist, elbow = f[B["l_wrist"], :2], f[B["l_elbow"], :2]
    ahead = wrist + 0.33 * (wrist - elbow)
    assert _contains(m["left_hand"], np.stack([wrist, ahead]))
    assert not _contains(m["left_hand"], elbow[None])
    # Wrist missing too: no left hand at all.
    f[B["l_wrist"], 2] = 0.0
    assert not frame_masks(f, 512, 512)["left_hand"].any()


def test_label_priorities():
    f = speaker()
    # Move the left hand onto the mouth so that face, hand, arm and torso overlap somewhere.
    f[LHAND, :2] += np.array([256, 150]) - f[LHAND, :2].mean(0)
    m = frame_masks(f, 512, 512)
    lab = label_map(m)
    order = ("face", "left_hand", "right_hand", "arms", "torso")  # highest first
    expected = np.zeros_like(lab)
    for name in reversed(order):
        expected[m[name]] = LABELS[name]
    np.testing.assert_array_equal(lab, expected)
    both = m["face"] & m["left_hand"]
    assert both.any() and (lab[both] == LABELS["face"]).all()
    hand_on_torso = m["right_hand"] & m["torso"] & ~m["face"] & ~m["left_hand"]
    assert hand_on_torso.any() and (lab[hand_on_torso] == LABELS["right_hand"]).all()
    arm_on_torso = m["arms"] & m["torso"] & ~m["face"] & ~m["left_hand"] & ~m["right_hand"]
    assert arm_on_torso.any() and (lab[arm_on_torso] == LABELS["arms"]).all()
    nothing = ~np.logical_or.reduce([m[n] for n in order])
    assert nothing.any() and (lab[nothing] == LABELS["background"]).all()


@pytest.mark.parametrize("H, W", [(512, 512), (480, 832)])
def test_token_grid_pooling_equals_any_pooling(H, W):
    f = speaker()
    f[:, 0] *= W / 512
    f[:, 1] *= H / 512
    full = frame_masks(f, H, W)
    grid = frame_masks(f, H // 16, W // 16, scale=1 / 16)
    for name in MASK_NAMES:
        pooled = full[name].reshape(H // 16, 16, W // 16, 16).any(axis=(1, 3))
        np.testing.assert_array_equal(grid[name], pooled, err_msg=name)
    assert grid["face"].any() and grid["left_hand"].any()
    with pytest.raises(ValueError, match="scale"):
        frame_masks(f, 10, 10, scale=0.3)


def test_no_person_gives_empty_masks():
    f = np.zeros((N_POINTS, 3), np.float32)
    assert body_scale(f) == 0.0
    m = frame_masks(f, 64, 48)
    assert all(not v.any() for v in m.values())
    assert not label_map(m).any()


def test_body_scale_falls_back_to_the_face():
    f = speaker()
    assert body_scale(f) == pytest.approx(160.0)
    f[B["r_shoulder"], 2] = 0.0
    face_span = np.ptp(f[FACE][:, 0])
    assert body_scale(f) == pytest.approx(2.2 * face_span, rel=1e-5)


def test_sequence_masks_per_frame_and_resized():
    f0, f1 = speaker(), speaker()
    f1[:, 0] += 40
    seq = PoseSequence(np.stack([f0, f1]), 512, 512)
    m = sequence_masks(seq)
    assert m["face"].shape == (2, 512, 512)
    np.testing.assert_array_equal(m["face"][0], frame_masks(f0, 512, 512)["face"])
    np.testing.assert_array_equal(m["face"][1], frame_masks(f1, 512, 512)["face"])
    small = sequence_masks(seq, 256, 128)
    assert small["torso"].shape == (2, 256, 128)
    np.testing.assert_array_equal(small["torso"][1], frame_masks(seq.scaled_to(128, 256).points[1], 256, 128)["torso"])
