"""Retargeting: driving bone directions on reference bone lengths."""
from __future__ import annotations

import numpy as np
import pytest

from .pose_factory import H, W, make_reference
from iasa.pose.keypoints import B, BODY_LIMBS, FACE, HAND_EDGES, LHAND, RHAND, PoseSequence
from iasa.pose.retarget import PARENT, RetargetError, retarget, retarget_detailed

T = 12


def _rot(v: np.ndarray, a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return v @ np.array([[c, s], [-s, c]])


def _driving(seed: int = 0, scale: float = 0.6) -> PoseSequence:
    """Another person (other proportions: every bone scaled differently) moving every bone at random
    per frame, walking to the right; face and hands turn with their parents."""
    rng = np.random.default_rng(seed)
    base = make_reference().points[0].astype(np.float64)
    bone_scale = {c: scale * rng.uniform(0.8, 1.25) for c in PARENT}
    frames = []
    for t in range(T):
        p = base.copy()
        pos = {1: base[1, :2] + (4.0 * t, 1.5 * t)}
        turn = {1: 0.0}
        order = (0, 2, 5, 8, 11, 3, 6, 9, 12, 4, 7, 10, 13, 14, 15, 16, 17)
        for c in order:
            par = PARENT[c]
            if base[c, 2] <= 0:
                continue
            turn[c] = turn[par] + rng.uniform(-0.5, 0.5)
            pos[c] = pos[par] + bone_scale[c] * _rot(base[c, :2] - base[par, :2], turn[c])
            p[c, :2] = pos[c]
        # face and hands: rigid with their parent, own size
        p[FACE, :2] = pos[0] + scale * _rot(base[FACE, :2] - base[0, :2], turn[0])
        for hand, wr in ((RHAND, B["r_wrist"]), (LHAND, B["l_wrist"])):
            curl = rng.uniform(-0.3, 0.3)
            rel = _rot(base[hand, :2] - base[hand.start, :2], turn[wr] + curl)
            p[hand, :2] = pos[wr] + 0.9 * scale * rel + (2.0, 1.0)
        frames.append(p)
    return PoseSequence(np.stack(frames), 640, 360)


def _angle_error_deg(p: np.ndarray, q: np.ndarray, a: int, b: int) -> float:
    """Largest angle between bone a->b of poses p and q over frames (float64: no float32 cos rounding)."""
    u = (p[:, b, :2] - p[:, a, :2]).astype(np.float64)
    v = (q[:, b, :2] - q[:, a, :2]).astype(np.float64)
    cross = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    return float(np.degrees(np.abs(np.arctan2(cross, (u * v).sum(-1)))).max())


def _tree_edges(ref):
    return [(PARENT[c], c) for c in PARENT if ref[c, 2] > 0 and ref[PARENT[c], 2] > 0]


def test_lengths_from_reference_directions_from_driving():
    ref, drv = make_reference(), _driving()
    out = retarget(drv, ref)
    assert len(out) == T and (out.width, out.height) == (W, H)
    r = ref.points[0]
    for a, b in _tree_edges(r):
        lengths = np.linalg.norm(out.points[:, b, :2] - out.points[:, a, :2], axis=1)
        np.testing.assert_allclose(lengths, np.linalg.norm(r[b, :2] - r[a, :2]), atol=1e-3)
        assert _angle_error_deg(out.points, drv.points, a, b) < 1e-2
    # the driving bones really had other lengths and moved
    d0 = np.linalg.norm(drv.points[0, B["r_elbow"], :2] - drv.points[0, B["r_shoulder"], :2])
    assert abs(d0 / np.linalg.norm(r[B["r_elbow"], :2] - r[B["r_shoulder"], :2]) - 1) > 0.2


def test_root_follows_scaled_neck_trajectory():
    ref, drv = make_reference(), _driving()
    out = retarget(drv, ref)
    sw = lambda p: np.linalg.norm(p[..., B["r_shoulder"], :2] - p[..., B["l_shoulder"], :2], axis=-1)  # noqa: E731
    s = sw(ref.points[0]) / np.median(sw(drv.points))
    neck = B["neck"]
    expect = ref.points[0, neck, :2] + s * (drv.points[:, neck, :2] - drv.points[0, neck, :2])
    np.testing.assert_allclose(out.points[:, neck, :2], expect, atol=1e-3)


def test_face_is_rigid_and_turns_with_the_head():
    ref, drv = make_reference(), _driving()
    rt = retarget_detailed(drv, ref)
    face = rt.pose.points[:, FACE, :2]
    rf = ref.points[0, FACE, :2]
    d_ref = np.linalg.norm(rf[:, None] - rf[None], axis=-1)
    d_out = np.linalg.norm(face[:, :, None] - face[:, None], axis=-1)
    assert np.abs(d_out - d_ref).max() < 1e-3                        # reference face shape kept
    # its rotation is the driving face's rotation (the driving face is a turned copy)
    for t in range(T):
        a = face[t, 45] - face[t, 36]
        b = drv.points[t, FACE.start + 45, :2] - drv.points[t, FACE.start + 36, :2]
        assert abs(np.arctan2(a[1], a[0]) - np.arctan2(b[1], b[0])) < 1e-4
    np.testing.assert_allclose(rt.face_anchor, rt.pose.points[:, B["nose"], :2], atol=1e-3)


def test_hand_bones_from_reference_directions_from_driving():
    ref, drv = make_reference(), _driving()
    out = retarget(drv, ref)
    for hand in (RHAND, LHAND):
        o, d, r = out.points[:, hand], drv.points[:, hand], ref.points[0, hand]
        for a, b in HAND_EDGES:
            np.testing.assert_allclose(np.linalg.norm(o[:, b, :2] - o[:, a, :2], axis=1),
                                       np.linalg.norm(r[b, :2] - r[a, :2]), atol=1e-3)
            assert _angle_error_deg(o, d, a, b) < 1e-2
    # the hand sits at the new wrist (the driving's small wrist-to-hand offset, scaled)
    wr = B["r_wrist"]
    gap = np.linalg.norm(out.points[:, RHAND.start, :2] - out.points[:, wr, :2], axis=1)
    assert gap.max() < 5.0


def test_reference_without_hands_gets_driving_hands_scaled_by_forearm():
    ref, drv = make_reference(hands=False), _driving()
    out = retarget(drv, ref)
    r, el, wr = ref.points[0], B["r_elbow"], B["r_wrist"]
    ratio = np.linalg.norm(r[wr, :2] - r[el, :2]) / np.median(
        np.linalg.norm(drv.points[:, wr, :2] - drv.points[:, el, :2], axis=1))
    o, d = out.points[:, RHAND, :2], drv.points[:, RHAND, :2]
    np.testing.assert_allclose(o - o[:, :1], ratio * (d - d[:, :1]), atol=1e-3)   # rigid + scaled


def test_missing_points_stay_missing():
    ref = make_reference()
    pts = ref.points.copy()
    for k in ("r_knee", "r_ankle", "l_knee", "l_ankle"):
        assert pts[0, B[k], 2] == 0                    # the reference has no legs
    drv = _driving()
    dp = drv.points.copy()
    dp[:, B["r_knee"]] = (200, 600, 0.9)               # the driving does
    dp[3, B["l_elbow"]] = 0.0                          # and loses an elbow in frame 3
    dp[5, LHAND] = 0.0                                 # and a hand in frame 5
    out = retarget(PoseSequence(dp, drv.width, drv.height), ref)
    assert (out.points[:, B["r_knee"]] == 0).all()
    assert (out.points[3, [B["l_elbow"], B["l_wrist"]]] == 0).all() and (out.points[3, LHAND] == 0).all()
    assert (out.points[[2, 4], B["l_wrist"], 2] > 0).all()
    assert (out.points[5, LHAND] == 0).all() and (out.points[5, RHAND, 2] > 0).all()
    carried = retarget(PoseSequence(dp, drv.width, drv.height), ref, carry_reference_hands=True)
    h = carried.points[5, LHAND]
    assert (h[:, 2] > 0).all()                         # carried rigidly with the forearm
    rh = ref.points[0, LHAND, :2]
    d = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    assert np.abs(d(h[:, :2]) - d(rh)).max() < 1e-3


def test_all_body_bones_checked_are_the_openpose_limbs():
    # the tree covers every OpenPose limb, so every drawn bone keeps the reference length
    assert {tuple(sorted(e)) for e in ((PARENT[c], c) for c in PARENT)} == {tuple(sorted(e)) for e in BODY_LIMBS}


def test_bad_inputs():
    ref, drv = make_reference(), _driving()
    no_upper = ref.points.copy()
    no_upper[0, [B["neck"], B["r_shoulder"], B["l_shoulder"]]] = 0.0
    with pytest.raises(RetargetError, match="reference"):
        retarget(drv, PoseSequence(no_upper, W, H))
    empty = PoseSequence(np.zeros((3, 130, 3)), W, H)
    with pytest.raises(ValueError, match="driving"):
        retarget(empty, ref)
    with pytest.raises(ValueError, match="PoseSequence"):
        retarget(drv.points, ref)
