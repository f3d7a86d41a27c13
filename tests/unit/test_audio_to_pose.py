"""IASA Audio To Pose on the bundled speech (espeak-ng, 6.8 s) padded with 1 s of silence each side."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import soundfile as sf

from .pose_factory import H, W, make_reference
from iasa.audio.features import compute_features
from iasa.pose.audio_to_pose import AudioToPoseError, audio_to_pose, driving_indices
from iasa.pose.keypoints import B, BODY_LIMBS, FACE, HAND_EDGES, LHAND, RHAND, PoseSequence

SPEECH = pathlib.Path(__file__).resolve().parents[2] / "assets" / "demo" / "speech.wav"
FPS = 25.0
PAD_S = 1.0
HEAD_BONES = {(1, 0), (0, 14), (14, 16), (0, 15), (15, 17)}
RIGID_BONES = [b for b in BODY_LIMBS if b not in HEAD_BONES]   # arms, shoulders, torso, legs
ARM_CHAINS = ((B["r_shoulder"], B["r_elbow"], B["r_wrist"]), (B["l_shoulder"], B["l_elbow"], B["l_wrist"]))
F = FACE.start


@pytest.fixture(scope="module")
def features():
    signal, sr = sf.read(str(SPEECH), dtype="float32")
    pad = np.zeros(int(PAD_S * sr), np.float32)
    return compute_features(np.concatenate([pad, signal, pad]), sr, FPS)


@pytest.fixture(scope="module")
def reference():
    return make_reference()


@pytest.fixture(scope="module")
def talking(reference, features):
    return audio_to_pose(reference, features, seed=0)


def _gap(seq: PoseSequence) -> np.ndarray:
    """Inner-lip vertical opening (points 62-66) per frame."""
    return np.linalg.norm(seq.points[:, F + 62, :2] - seq.points[:, F + 66, :2], axis=1)


def _eyelid_gap(seq: PoseSequence) -> np.ndarray:
    pairs = ((37, 41), (38, 40), (43, 47), (44, 46))
    return np.stack([np.linalg.norm(seq.points[:, F + a, :2] - seq.points[:, F + b, :2], axis=1) for a, b in pairs], 1)


def _bone_error(seq: PoseSequence, ref: PoseSequence, edges, offset: int = 0) -> float:
    p, r = seq.points, ref.points[0]
    errs = [np.abs(np.linalg.norm(p[:, offset + a, :2] - p[:, offset + b, :2], axis=1)
                   - np.linalg.norm(r[offset + a, :2] - r[offset + b, :2])).max()
            for a, b in edges if r[offset + a, 2] > 0 and r[offset + b, 2] > 0]
    return float(max(errs))


def _speech_frames(features) -> tuple[np.ndarray, np.ndarray]:
    """(leading silence frames, trailing silence frames well after the release)."""
    lead = np.arange(int(PAD_S * FPS) - 1)
    trail = np.arange(features.n_frames - int(PAD_S * FPS) + 8, features.n_frames)
    return lead, trail


def test_frame_count_matches_features(talking, features, reference):
    assert len(talking) == features.n_frames
    assert (talking.width, talking.height) == (W, H)
    short = compute_features(np.random.default_rng(0).normal(0, 0.1, 7000).astype(np.float32), 16000, 30.0)
    assert len(audio_to_pose(reference, short)) == short.n_frames


def test_mouth_opening_follows_energy(talking, features):
    gap = _gap(talking)
    r = np.corrcoef(gap, features.energy)[0, 1]
    assert r > 0.8, f"mouth opening vs energy Pearson r = {r:.3f}"
    assert gap.max() > 5.0          # the synthetic mouth is 24 px wide: it really opens


def test_mouth_closed_in_silence(talking, features):
    lead, trail = _speech_frames(features)
    assert features.energy[lead].max() < 0.01 and features.energy[trail].max() < 0.01
    gap = _gap(talking)
    assert gap[lead].max() < 1e-3 and gap[trail].max() < 1e-3
    # lips exactly in the reference closed shape there (up to the head's rigid motion and nod)
    ref_inner = make_reference().points[0, F + 60:F + 68, :2]
    ref_d = np.linalg.norm(ref_inner[:, None] - ref_inner[None], axis=-1)
    for t in np.concatenate([lead, trail])[::7]:
        inner = talking.points[t, F + 60:F + 68, :2]
        d = np.linalg.norm(inner[:, None] - inner[None], axis=-1)
        assert np.abs(d - ref_d).max() < 0.5


def test_open_reference_mouth_is_closed_in_silence(features):
    ref = make_reference(open_mouth=7.0)
    out = audio_to_pose(ref, features, seed=0)
    lead, trail = _speech_frames(features)
    gap = _gap(out)
    assert _gap(ref)[0] > 6.0
    assert gap[lead].max() < 1e-3 and gap[trail].max() < 1e-3
    assert np.corrcoef(gap, features.energy)[0, 1] > 0.8


def test_mouth_zero_keeps_lips_closed(reference, features):
    out = audio_to_pose(reference, features, mouth=0.0, head=0.0, gestures=0.0, blinks=False)
    assert _gap(out).max() < 1e-3
    np.testing.assert_allclose(out.points[:, FACE], np.repeat(reference.points[:, FACE], len(out), 0), atol=1e-3)


def test_blinks_close_and_reopen(talking, reference, features):
    lids = _eyelid_gap(talking)
    ref_lids = _eyelid_gap(reference)[0]
    shut = (lids < 1e-3).all(axis=1)
    assert shut.any(), "no frame with both eyes shut"
    # each blink is short and the eyes come back to the reference opening afterwards
    starts = np.flatnonzero(np.diff(np.concatenate([[0], (lids[:, 0] < ref_lids[0] - 0.1).astype(int)])) == 1)
    assert 1 <= len(starts) <= 6
    for s in starts:
        closing = lids[s:, 0] < ref_lids[0] - 0.1
        length = int(np.argmin(closing)) if not closing.all() else len(closing)
        assert 3 <= length <= 8, f"blink at frame {s} lasts {length} frames"
        assert s + length < len(lids), "eyes did not reopen"
        np.testing.assert_allclose(lids[s + length], ref_lids, rtol=0.05)   # reopened (the nod foreshortens slightly)
    no_blinks = audio_to_pose(reference, features, blinks=False)
    assert (_eyelid_gap(no_blinks) > 0.9 * ref_lids).all()


def test_bone_lengths_preserved(talking, reference):
    assert _bone_error(talking, reference, RIGID_BONES) < 1e-3
    assert _bone_error(talking, reference, HAND_EDGES, LHAND.start) < 1e-3
    assert _bone_error(talking, reference, HAND_EDGES, RHAND.start) < 1e-3
    # head bones: rigid roll plus a small pseudo-3D nod/turn -> at most mild foreshortening
    r = reference.points[0]
    for a, b in HEAD_BONES:
        ref_len = np.linalg.norm(r[a, :2] - r[b, :2])
        lens = np.linalg.norm(talking.points[:, a, :2] - talking.points[:, b, :2], axis=1)
        assert np.abs(lens / ref_len - 1).max() < 0.15


def test_head_zero_keeps_head_bones_exact(reference, features):
    out = audio_to_pose(reference, features, head=0.0)
    assert _bone_error(out, reference, BODY_LIMBS) < 1e-3


def test_head_moves_and_is_bounded(talking, reference):
    r = reference.points[0]
    nose = talking.points[:, B["nose"], :2] - r[B["nose"], :2]
    assert np.abs(nose).max() > 2.0                              # the head does move
    neck_nose = talking.points[:, 0, :2] - talking.points[:, 1, :2]
    tilt = np.degrees(np.arctan2(neck_nose[:, 0], -neck_nose[:, 1]))
    assert np.abs(tilt).max() < 12.0                             # small tilt (6 deg roll + turn parallax)


def test_points_stay_on_canvas(talking):
    p = talking.points[talking.points[..., 2] > 0]
    assert p[:, 0].min() >= 0 and p[:, 0].max() <= W - 1
    assert p[:, 1].min() >= 0 and p[:, 1].max() <= H - 1


def test_canvas_clamps_angles_near_the_border(features):
    ref = make_reference()
    pts = ref.points.copy()
    pts[..., 0][pts[..., 2] > 0] += 160.0     # person pushed right: left elbow 9 px from the border
    pts[..., 1][pts[..., 2] > 0] += 30.0      # and down: fingertips 8 px above the bottom
    near = PoseSequence(pts, W, H)
    assert W - 12 < near.points[0, :, 0].max() < W - 1 and H - 12 < near.points[0, :, 1].max() < H - 1
    out = audio_to_pose(near, features, seed=3, gestures=3.0, head=3.0)
    # the same motion away from the border goes further than the border allows: clamping is needed
    free = audio_to_pose(ref, features, seed=3, gestures=3.0, head=3.0)
    room = (W - 1) - near.points[0, :, 0].max()
    assert (free.points[..., 0] - ref.points[..., 0]).max() > room + 5.0
    p = out.points[out.points[..., 2] > 0]
    assert p[:, 0].max() <= W - 1 and p[:, 1].max() <= H - 1 and p.min() >= 0
    assert _bone_error(out, near, RIGID_BONES) < 1e-3
    assert _bone_error(out, near, HAND_EDGES, LHAND.start) < 1e-3


def _forearm_turn(seq, ref, chain):
    sh, el, wr = chain
    def ang(p):
        up, fo = p[..., el, :2] - p[..., sh, :2], p[..., wr, :2] - p[..., el, :2]
        return np.arctan2(up[..., 1], up[..., 0]), np.arctan2(fo[..., 1], fo[..., 0])
    (u, f), (u0, f0) = ang(seq.points), ang(ref.points[0])
    wrap = lambda a: (a + np.pi) % (2 * np.pi) - np.pi   # noqa: E731
    return np.degrees(wrap(u - u0)), np.degrees(wrap((f - u) - (f0 - u0)))


def test_gestures_happen_and_are_bounded(talking, reference):
    r = reference.points[0]
    moved = []
    for sh, el, wr in ARM_CHAINS:
        forearm = np.linalg.norm(r[wr, :2] - r[el, :2])
        moved.append(np.linalg.norm(talking.points[:, wr, :2] - r[wr, :2], axis=1).max() / forearm)
        upper, elbow = _forearm_turn(talking, reference, (sh, el, wr))
        assert np.abs(upper).max() < 32.0          # shoulder (3 deg) + upper arm (28 deg) limits
        assert np.abs(elbow).max() < 71.0          # elbow flexion limit
    assert max(moved) > 0.4, f"largest wrist displacement {max(moved):.2f} forearm lengths"
    # hands ride on their wrists: the hand root keeps its offset to the body wrist
    for hand, wr in ((RHAND, B["r_wrist"]), (LHAND, B["l_wrist"])):
        d = np.linalg.norm(talking.points[:, hand.start, :2] - talking.points[:, wr, :2], axis=1)
        np.testing.assert_allclose(d, np.linalg.norm(r[hand.start, :2] - r[wr, :2]), atol=1e-3)


def test_no_gestures_keeps_arms_still(reference, features):
    out = audio_to_pose(reference, features, gestures=0.0)
    arms = [k for chain in ARM_CHAINS for k in chain] + list(range(LHAND.start, RHAND.stop))
    np.testing.assert_allclose(out.points[:, arms], np.repeat(reference.points[:, arms], len(out), 0), atol=1e-3)


def test_default_hands_attached_and_rigid(features):
    ref = make_reference(hands=False)
    out = audio_to_pose(ref, features, seed=0)
    for hand, (el, wr) in ((RHAND, (B["r_elbow"], B["r_wrist"])), (LHAND, (B["l_elbow"], B["l_wrist"]))):
        h = out.points[:, hand]
        assert (h[..., 2] > 0).all()
        forearm = np.linalg.norm(ref.points[0, wr, :2] - ref.points[0, el, :2])
        size = np.linalg.norm(h[0, 12, :2] - h[0, 0, :2])          # wrist -> middle fingertip
        assert 0.5 * forearm < size < 1.0 * forearm
        lengths = np.stack([np.linalg.norm(h[:, a, :2] - h[:, b, :2], axis=1) for a, b in HAND_EDGES], 1)
        assert np.abs(lengths - lengths[0]).max() < 1e-3
        assert np.linalg.norm(h[:, 0, :2] - out.points[:, wr, :2], axis=1).max() < 1e-3


def test_invisible_arm_is_not_invented(features):
    ref = make_reference(hands=False)
    pts = ref.points.copy()
    pts[0, [B["l_elbow"], B["l_wrist"]]] = 0.0
    out = audio_to_pose(PoseSequence(pts, W, H), features, seed=0, gestures=2.0)
    assert (out.points[:, [B["l_elbow"], B["l_wrist"]]] == 0).all()
    assert (out.points[:, LHAND] == 0).all()                         # no hand without a wrist
    assert (out.points[:, RHAND, 2] > 0).all()
    r = pts[0]
    assert np.linalg.norm(out.points[:, B["r_wrist"], :2] - r[B["r_wrist"], :2], axis=1).max() > 10.0


def test_deterministic_per_seed(reference, features, talking):
    again = audio_to_pose(reference, features, seed=0)
    np.testing.assert_array_equal(again.points, talking.points)
    other = audio_to_pose(reference, features, seed=1)
    assert np.abs(other.points - talking.points).max() > 5.0
    np.testing.assert_allclose(_gap(other), _gap(talking), atol=0.5)    # lips follow the audio, not the seed


def _driving(n: int, head_roll_deg: float = 0.0, head: bool = True) -> PoseSequence:
    """A smaller person whose arms swing at per-frame angles, whose head rolls and whose neck drifts."""
    base = make_reference().points[0].copy()
    neck = base[B["neck"], :2].copy()
    present = base[:, 2] > 0
    base[present, :2] = neck + 0.7 * (base[present, :2] - neck)
    frames = []
    for t in range(n):
        p = base.copy()
        for (sh, el, wr), hand, sign in zip(ARM_CHAINS, (RHAND, LHAND), (1.0, -1.0)):
            a = sign * np.radians(40.0 * np.sin(0.7 * t))
            moved = [el, wr] + list(range(hand.start, hand.stop))
            c, s = np.cos(a), np.sin(a)
            d = p[moved, :2] - p[sh, :2]
            p[moved, :2] = p[sh, :2] + d @ np.array([[c, s], [-s, c]])
        a = np.radians(head_roll_deg * np.sin(0.5 * t))
        head_pts = [0, 14, 15, 16, 17] + list(range(FACE.start, FACE.stop))
        d = p[head_pts, :2] - p[B["neck"], :2]
        p[head_pts, :2] = p[B["neck"], :2] + d @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        if not head:
            p[head_pts] = 0.0
        p[present, :2] += (3.0 * t, 0.0)
        frames.append(p)
    return PoseSequence(np.stack(frames), 400, 400)


@pytest.mark.parametrize("mode", ["loop", "hold", "pingpong"])
def test_driving_short_is_extended(reference, features, mode):
    drv = _driving(20)
    out = audio_to_pose(reference, features, driving=drv, driving_mode=mode, seed=0)
    n = features.n_frames
    assert len(out) == n
    idx = driving_indices(20, n, mode)
    body = [k for k in range(18) if k not in (0, 14, 15, 16, 17)]
    same = np.abs(out.points[:, None, body] - out.points[None, :, body]).max(axis=(2, 3)) < 1e-3
    for t in range(n):                     # frames using the same driving frame have the same body
        assert same[t, idx == idx[t]].all()
    if mode == "loop":
        assert same[5, 25] and not same[5, 15]
    elif mode == "hold":
        assert same[19:, 19].all() and not same[5, 19]
    else:
        np.testing.assert_array_equal(idx[:42], list(range(20)) + list(range(18, 0, -1)) + [0, 1, 2, 3])
    assert _bone_error(out, reference, RIGID_BONES) < 1e-3
    assert np.corrcoef(_gap(out), features.energy)[0, 1] > 0.8        # lips still from the audio


def test_driving_longer_is_cut(reference, features):
    drv = _driving(features.n_frames + 30)
    out = audio_to_pose(reference, features, driving=drv)
    assert len(out) == features.n_frames


def test_driving_motion_follows_the_driving_directions(reference, features):
    drv = _driving(20)
    out = audio_to_pose(reference, features, driving=drv, driving_mode="loop")
    for sh, el, wr in ARM_CHAINS:
        for a, b in ((sh, el), (el, wr)):
            vo = (out.points[:20, b, :2] - out.points[:20, a, :2]).astype(np.float64)
            vd = (drv.points[:, b, :2] - drv.points[:, a, :2]).astype(np.float64)
            err = np.arctan2(vo[:, 0] * vd[:, 1] - vo[:, 1] * vd[:, 0], (vo * vd).sum(1))
            assert np.degrees(np.abs(err)).max() < 1e-2


def _eye_line_deg(points: np.ndarray) -> np.ndarray:
    v = points[:, F + 45, :2] - points[:, F + 36, :2]
    return np.degrees(np.arctan2(v[:, 1], v[:, 0]))


def test_driving_head_motion_is_followed(reference, features):
    drv = _driving(20, head_roll_deg=15.0)
    out = audio_to_pose(reference, features, driving=drv)
    np.testing.assert_allclose(_eye_line_deg(out.points[:20]), _eye_line_deg(drv.points), atol=0.05)
    assert np.ptp(_eye_line_deg(out.points)) > 20.0
    assert np.corrcoef(_gap(out), features.energy)[0, 1] > 0.8


def test_driving_without_head_keeps_reference_head_on_the_neck(reference, features):
    drv = _driving(20, head=False)
    out = audio_to_pose(reference, features, driving=drv)
    head = [0, 14, 15, 16, 17] + list(range(FACE.start, FACE.stop))
    assert (out.points[:, head, 2] > 0).all()
    offset = out.points[:, B["nose"], :2] - out.points[:, B["neck"], :2]
    ref_offset = reference.points[0, B["nose"], :2] - reference.points[0, B["neck"], :2]
    assert np.abs(offset - ref_offset).max() < 15.0                     # rides on the neck, small audio motion
    assert np.abs(offset - ref_offset).max() > 1.0
    assert np.corrcoef(_gap(out), features.energy)[0, 1] > 0.8


def test_driving_without_hands_carries_reference_hands(features):
    ref = make_reference(hands=False)
    drv = _driving(20)
    pts = drv.points.copy()
    pts[:, LHAND.start:RHAND.stop] = 0.0
    out = audio_to_pose(ref, features, driving=PoseSequence(pts, drv.width, drv.height))
    for hand, wr in ((RHAND, B["r_wrist"]), (LHAND, B["l_wrist"])):
        assert (out.points[:, hand, 2] > 0).all()                     # default hands, carried by the forearm
        assert np.linalg.norm(out.points[:, hand.start, :2] - out.points[:, wr, :2], axis=1).max() < 1e-3
    assert _bone_error(out, ref, RIGID_BONES) < 1e-3


def test_driving_indices():
    np.testing.assert_array_equal(driving_indices(3, 7, "loop"), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(driving_indices(3, 7, "hold"), [0, 1, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(driving_indices(3, 7, "pingpong"), [0, 1, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(driving_indices(1, 3, "pingpong"), [0, 0, 0])
    np.testing.assert_array_equal(driving_indices(9, 4, "hold"), [0, 1, 2, 3])


def test_bad_inputs_raise(reference, features):
    with pytest.raises(AudioToPoseError, match="driving_mode"):
        audio_to_pose(reference, features, driving_mode="bounce")
    with pytest.raises(ValueError, match="mouth"):
        audio_to_pose(reference, features, mouth=-1.0)
    with pytest.raises(ValueError, match="no person"):
        audio_to_pose(PoseSequence(np.zeros((1, 130, 3)), W, H), features)
    with pytest.raises(ValueError, match="features"):
        audio_to_pose(reference, {"energy": []})


def test_unsure_wrists_get_no_invented_hand(features):
    """Points the renderer would not draw are not animated, and no hand is attached to an unsure wrist
    (a photo whose arms leave the frame, as mediapipe reports them)."""
    ref = make_reference(hands=False)
    pts = ref.points.copy()
    pts[0, B["l_wrist"], 2] = 0.12    # below the drawing threshold: dropped
    pts[0, B["r_wrist"], 2] = 0.35    # drawn, but too unsure to invent a hand at
    seq = audio_to_pose(PoseSequence(pts, ref.width, ref.height), features, seed=3)
    assert (seq.points[:, LHAND, 2] == 0).all() and (seq.points[:, RHAND, 2] == 0).all()
    assert (seq.points[:, B["l_wrist"], 2] == 0).all()
    assert (seq.points[:, B["r_wrist"], 2] > 0.3).all()
