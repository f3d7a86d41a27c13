"""Synthetic studio speakers: identities, templates, drawing, speech corpus, motion, codecs, shards."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from iasa.pose.keypoints import B, FACE, LHAND, RHAND, PoseSequence
from iasa.pose.regions import MASK_NAMES, sequence_masks
from iasa.training.synth import codec
from iasa.training.synth.character import background, draw_frame, draw_sequence
from iasa.training.synth.identity import Identity
from iasa.training.synth.motion import SPLIT_IDENTITY_BASE, IDENTITY_RANGE, build_motion, clip_motion, identity_seed, iter_motion
from iasa.training.synth.render import render_bundle, render_clip
from iasa.training.synth.shards import iter_clips, iter_shard, read_shard, shard_index, write_shard
from iasa.training.synth.speech import espeak_available, make_corpus, sentence, sentence_split
from iasa.training.synth.templates import base_pose, canonical_face

ROOT = Path(__file__).resolve().parents[2]
DEMO_WAV = ROOT / "assets" / "demo" / "speech.wav"
needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")
INNER_MOUTH = np.array([70, 22, 30])


@pytest.fixture(scope="module")
def demo_motion():
    """The bundled demo speech driving identity 3 (mouth, head and gestures on)."""
    import soundfile as sf

    y, sr = sf.read(str(DEMO_WAV), dtype="float32", always_2d=True)
    ident = Identity.sample(3)
    kp, feats = clip_motion(y.mean(axis=1), sr, ident, seed=0)
    return ident, kp, feats, draw_sequence(kp, ident)


# --------------------------------------------------------------------------------------------------
# identities and templates
# --------------------------------------------------------------------------------------------------
def test_identity_is_deterministic_and_serialisable():
    a, b, c = Identity.sample(7), Identity.sample(7), Identity.sample(8)
    assert a == b and a != c
    assert Identity.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    styles = {Identity.sample(s).hair_style for s in range(60)}
    assert len(styles) >= 6, styles
    with pytest.raises(ValueError, match="seed"):
        Identity.sample(-1)


def test_canonical_face_follows_dlib_openpose_order():
    f = canonical_face()
    assert f.shape == (70, 2)
    assert f[0, 0] < f[8, 0] < f[16, 0] and f[8, 1] == f[:17, 1].max()        # jaw image-left -> right, chin lowest
    assert f[36:42, 0].max() < 0 < f[42:48, 0].min()                            # right eye on the image left
    assert f[68, 0] < 0 < f[69, 0]                                              # pupils: right, left
    assert f[48, 0] < f[54, 0] and f[60, 0] < f[64, 0]                          # lip corners
    assert f[17:22, 1].max() < f[36:48, 1].min()                                # brows above the eyes
    np.testing.assert_allclose(f[list(range(9, 17))][:, 0], -f[list(range(7, -1, -1))][:, 0], atol=1e-9)


def test_base_pose_framing_and_sides():
    for seed in range(10):
        ident = Identity.sample(seed)
        seq = base_pose(ident, 256)
        p = seq.points[0]
        assert seq.width == seq.height == 256 and p.shape == (130, 3)
        vis = p[:, 2] > 0
        assert np.all((p[vis, :2] >= 0) & (p[vis, :2] <= 255)), "every visible point inside the frame"
        assert p[B["r_shoulder"], 0] < p[B["neck"], 0] < p[B["l_shoulder"], 0]
        assert p[RHAND, 0].mean() < p[LHAND, 0].mean()                    # person's right hand on the image left
        assert p[B["r_eye"], 0] < p[B["l_eye"], 0]
        assert p[B["r_hip"], 1] > 0.9 * 256                               # hips near the bottom edge
        assert p[LHAND, 1].max() < 255 and p[RHAND, 1].max() < 255        # hands visible
        face = p[FACE, :2]
        unit = np.linalg.norm(face[16] - face[0]) / 2
        eye_y = face[36:48, 1].mean()
        hair_top = eye_y - 1.7 * unit
        assert 0.06 * 256 < hair_top < 0.14 * 256
        # thumbs on the side towards the body midline and up (relative to the little finger)
        assert (p[RHAND.start + 4, :2] - p[RHAND.start + 20, :2]) @ np.array([1.0, -1.0]) > 0
        assert (p[LHAND.start + 4, :2] - p[LHAND.start + 20, :2]) @ np.array([-1.0, -1.0]) > 0


# --------------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------------
def test_draw_frame_shape_dtype_and_determinism():
    ident = Identity.sample(11)
    p = base_pose(ident, 256).points[0]
    a, b = draw_frame(p, ident, 256), draw_frame(p.copy(), ident, 256)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    small = draw_frame(base_pose(ident, 128).points[0], ident, 128)
    assert small.shape == (128, 128, 3)
    assert not np.array_equal(a, draw_frame(p, Identity.sample(12), 256))
    # the figure covers a good part of the frame and differs from the backdrop there
    changed = np.abs(a.astype(int) - background(ident, 256).astype(int)).sum(axis=2) > 20
    assert 0.2 < changed.mean() < 0.8
    with pytest.raises(ValueError, match="points"):
        draw_frame(np.zeros((18, 3)), ident)


def test_draw_frame_handles_missing_points():
    ident = Identity.sample(21)
    p = base_pose(ident, 256).points[0]
    bg = background(ident, 256)
    cases = {}
    q = p.copy(); q[LHAND] = 0; q[RHAND] = 0; cases["no hands"] = q
    q = p.copy(); q[FACE] = 0; cases["no face"] = q
    q = p.copy(); q[[B["r_hip"], B["l_hip"]]] = 0; cases["no hips"] = q
    q = p.copy(); q[:18] = 0; q[88:] = 0; cases["face only"] = q
    q = p.copy(); q[FACE] = 0; q[[0, 14, 15, 16, 17]] = 0; cases["no head"] = q
    for name, q in cases.items():
        img = draw_frame(q, ident)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8, name
        assert not np.array_equal(img, bg), name
    np.testing.assert_array_equal(draw_frame(np.zeros_like(p), ident), bg)
    # a mitten stands in for a hand without points: skin where the hand should be
    img = draw_frame(cases["no hands"], ident)
    w = p[B["r_wrist"], :2] + 0.3 * (p[B["r_wrist"], :2] - p[B["r_elbow"], :2])
    x, y = np.round(w).astype(int)
    assert np.abs(img[y, x].astype(int) - np.array(ident.skin)).sum() < 40


def test_blink_closes_the_eye():
    ident = Identity.sample(5)
    p = base_pose(ident, 256).points[0]
    closed = p.copy()
    for up, lo in ((37, 41), (38, 40)):
        meet = p[18 + up, :2] + 0.75 * (p[18 + lo, :2] - p[18 + up, :2])
        closed[18 + up, :2] = closed[18 + lo, :2] = meet
    closed[18 + 68, :2] = closed[18 + 37:18 + 42, :2].mean(axis=0)
    eye = p[18 + 36:18 + 42, :2]
    (x0, y0), (x1, y1) = np.floor(eye.min(0)).astype(int), np.ceil(eye.max(0)).astype(int)
    def eyeball(img):  # pixels of the eye white or the iris
        crop = img[y0:y1 + 1, x0:x1 + 1].astype(int)
        white = np.abs(crop - np.array([245, 245, 240])).sum(axis=2) < 45
        iris = np.abs(crop - np.array(ident.eye_color)).sum(axis=2) < 45
        return int((white | iris).sum())
    assert eyeball(draw_frame(p, ident)) >= 12
    assert eyeball(draw_frame(closed, ident)) <= 1


# --------------------------------------------------------------------------------------------------
# lips and audio
# --------------------------------------------------------------------------------------------------
def _mouth_box(kp_t: np.ndarray) -> tuple[slice, slice]:
    lips = kp_t[18 + 48:18 + 68, :2]
    (x0, y0), (x1, y1) = np.floor(lips.min(0)).astype(int) - 2, np.ceil(lips.max(0)).astype(int) + 3
    return slice(y0, y1), slice(x0, x1)


def _stabilised_mouth(frames: np.ndarray, kp: np.ndarray, t: int, size: int = 32) -> np.ndarray:
    """A crop that follows the head (anchored below the nose tip, which the mouth never moves)."""
    import cv2

    u = np.linalg.norm(kp[t, 18 + 16, :2] - kp[t, 18, :2]) / 2
    c = kp[t, 18 + 30, :2] + np.array([0.0, 0.6 * u])
    m = np.float32([[1, 0, size / 2 - c[0]], [0, 1, size / 2 - c[1]]])
    return cv2.warpAffine(frames[t].astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR)


def test_lips_follow_the_audio(demo_motion):
    ident, kp, feats, frames = demo_motion
    assert frames.shape == (feats.n_frames, 256, 256, 3)
    # (1) how far the mouth looks from the closed mouth tracks the speech energy
    rest = draw_sequence(base_pose(ident, 256).points, ident)
    ref = _stabilised_mouth(rest, base_pose(ident, 256).points, 0)
    crops = np.stack([_stabilised_mouth(frames, kp, t) for t in range(len(kp))])
    deviation = np.abs(crops - ref).mean(axis=(1, 2, 3))
    r_open = np.corrcoef(deviation, feats.energy)[0, 1]
    assert r_open > 0.7, r_open
    # (2) the mouth moves between consecutive frames while speech sounds. Frame-to-frame change
    # measures how fast the opening changes, not how wide it is, so it is compared with the louder
    # of the two frames (r ~0.55 here; ~0.44 against the later frame's energy alone).
    change = np.abs(np.diff(crops, axis=0)).mean(axis=(1, 2, 3))
    loud = np.maximum(feats.energy[1:], feats.energy[:-1])
    r_change = np.corrcoef(change, loud)[0, 1]
    assert r_change > 0.45, r_change


def test_mouth_is_closed_in_silence(demo_motion):
    ident, kp, feats, frames = demo_motion
    e = feats.energy
    settled = np.array([t >= 3 and e[t - 3:t + 1].max() == 0 for t in range(len(e))])
    loud = e > 0.9
    assert settled.sum() >= 5 and loud.sum() >= 5

    def inner_mouth_pixels(t):
        ys, xs = _mouth_box(kp[t])
        crop = frames[t, ys, xs].astype(int)
        return int((np.abs(crop - INNER_MOUTH).sum(axis=2) < 6).sum())

    assert all(inner_mouth_pixels(t) == 0 for t in np.flatnonzero(settled))
    assert np.mean([inner_mouth_pixels(t) > 3 for t in np.flatnonzero(loud)]) > 0.8
    gap = np.linalg.norm(kp[:, 18 + 66, :2] - kp[:, 18 + 62, :2], axis=1)
    assert gap[settled].max() < 0.05


# --------------------------------------------------------------------------------------------------
# codecs
# --------------------------------------------------------------------------------------------------
def test_keypoint_and_audio_codecs_round_trip():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-20, 280, (40, 130, 2)), rng.uniform(0.31, 1.0, (40, 130, 1))], axis=2)
    pts[:, 100:] = 0.0
    back = codec.decode_keypoints(codec.encode_keypoints(pts), 40)
    assert np.abs(back[..., :2] - pts[..., :2]).max() <= 1 / 32 + 1e-6
    assert np.abs(back[..., 2] - pts[..., 2]).max() <= 1 / 255
    assert np.all(back[:, 100:] == 0)
    pcm = (np.sin(np.arange(16000) * 0.05) * 20000 + rng.normal(0, 500, 16000)).astype(np.int16)
    pcm[:5] = [32767, -32768, 32767, -32768, 0]   # wrap-around of the predictor
    np.testing.assert_array_equal(codec.decode_audio(codec.encode_audio(pcm, "pcm16"), "pcm16", pcm.size), pcm)
    mu = codec.decode_audio(codec.encode_audio(pcm, "mulaw"), "mulaw", pcm.size)
    snr = 10 * np.log10((pcm.astype(float) ** 2).sum() / ((pcm.astype(float) - mu) ** 2).sum())
    assert snr > 30
    assert codec.encode_audio(pcm, "none").size == 0
    with pytest.raises(ValueError, match="codec"):
        codec.encode_audio(pcm, "mp3")


# --------------------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------------------
def _small_clip(cid: str, seed: int, n: int = 6, size: int = 64) -> dict:
    ident = Identity.sample(seed)
    base = base_pose(ident, size).points
    kp = np.repeat(base, n, axis=0)
    kp[:, :, 0] += np.arange(n)[:, None] * 0.5 * (kp[:, :, 2] > 0)
    seq = PoseSequence(kp, size, size)
    rng = np.random.default_rng(seed)
    return dict(id=cid, split="train", text=f"clip {cid}", identity=ident.to_dict(), frames=draw_sequence(kp, ident, size),
                audio=rng.integers(-3000, 3000, 16000 * n // 25).astype(np.int16), keypoints=kp,
                masks=sequence_masks(seq), mask_names=list(MASK_NAMES), energy=rng.uniform(0, 1, n).astype(np.float32),
                fps=25.0, sample_rate=16000, info={"voice": "en+m1"})


def test_shard_round_trip_and_streaming(tmp_path):
    clips = [_small_clip("a", 1), _small_clip("b", 2, n=4)]
    path = write_shard(tmp_path / "s0.safetensors", clips)
    back = read_shard(path)
    assert [c["id"] for c in back] == ["a", "b"]
    for c, d in zip(clips, back):
        for key in ("frames", "audio", "keypoints", "energy"):
            np.testing.assert_array_equal(d[key], c[key])
            assert d[key].dtype == np.asarray(c[key]).dtype
        assert list(d["masks"]) == list(MASK_NAMES)
        for name in MASK_NAMES:
            np.testing.assert_array_equal(d["masks"][name], c["masks"][name])
        assert d["identity"] == c["identity"] and d["text"] == c["text"] and d["info"] == c["info"]
        assert Identity.from_dict(d["identity"]) == Identity.sample(1 if c["id"] == "a" else 2)
    assert [m["n_frames"] for m in shard_index(path)] == [6, 4]
    light = next(iter_shard(path, keys=("keypoints",)))
    assert "frames" not in light and light["keypoints"].shape == (6, 130, 3)
    write_shard(tmp_path / "s1.safetensors", [_small_clip("c", 3)])
    assert [c["id"] for c in iter_clips(tmp_path, keys=("energy",))] == ["a", "b", "c"]
    shuffled = [c["id"] for c in iter_clips(tmp_path, keys=("energy",), shuffle=True, seed=4)]
    assert sorted(shuffled) == ["a", "b", "c"]
    ranks = [[c["id"] for c in iter_clips(tmp_path, keys=(), rank=r, world_size=2)] for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == ["a", "b", "c"] and not set(ranks[0]) & set(ranks[1])
    with pytest.raises(ValueError, match="frames"):
        write_shard(tmp_path / "bad.safetensors", [dict(clips[0], frames=clips[0]["frames"].astype(np.float32))])


def test_eval_clips_prefer_clips_as_long_as_the_window(tmp_path, caplog):
    from iasa.training.clips import eval_clips, load_clips

    held = [dict(_small_clip(cid, i + 1, n=n), split="heldout") for i, (cid, n) in enumerate(
        [("short", 4), ("long1", 9), ("mid", 6), ("long2", 9)])]
    write_shard(tmp_path / "h.safetensors", held + [_small_clip("t", 9)])
    assert [c["id"] for c in eval_clips(tmp_path, [], 2, 9)] == ["long1", "long2"]
    with caplog.at_level("WARNING"):   # too few long ones: the longest, and the shortening is logged
        assert [c["id"] for c in eval_clips(tmp_path, [], 3, 9)] == ["long1", "long2", "mid"]
    assert "only 2 of 4 held-out clips have 9 frames" in caplog.text
    only_train = tmp_path / "train_only"
    write_shard(only_train / "t.safetensors", [_small_clip("t", 9)])
    train = load_clips(only_train, "train")
    assert [c["id"] for c in eval_clips(only_train, train, 1, 5)] == ["t"]


def test_eval_window_is_one_plus_four_k_frames_within_the_shortest_clip(caplog):
    from iasa.training.clips import eval_window

    clips = [{"frames": np.zeros((n, 2, 2, 3), np.uint8)} for n in (115, 300)]
    assert eval_window(clips, 97) == 97
    with caplog.at_level("WARNING"):   # a 115-frame clip under a 169-frame request: 113 (1 + 4k), logged
        assert eval_window(clips, 169) == 113
    assert "cut from 169 to 113 frames" in caplog.text
    assert eval_window(clips, 100) == 97


# --------------------------------------------------------------------------------------------------
# splits, speech corpus and the two-stage build
# --------------------------------------------------------------------------------------------------
def test_heldout_identities_and_sentences_are_disjoint():
    train = {identity_seed("train", i, s, 1000) for s in range(3) for i in range(2000)}
    held = {identity_seed("heldout", i, s, 1000) for s in range(3) for i in range(2000)}
    assert not train & held
    assert all(SPLIT_IDENTITY_BASE["train"] <= x < SPLIT_IDENTITY_BASE["train"] + IDENTITY_RANGE for x in train)
    rng = np.random.default_rng(0)
    texts = {sentence(rng, int(rng.integers(1, 3))) for _ in range(3000)}
    splits = {t: sentence_split(t) for t in texts}
    n_held = sum(s == "heldout" for s in splits.values())
    assert 0.05 < n_held / len(texts) < 0.25          # held-out bucket is 1 of 8
    assert len(texts) > 2500                          # the grammar rarely repeats itself


@needs_espeak
def test_two_stage_build_is_deterministic_and_split_disjoint(tmp_path):
    corpora = {}
    for split, n in (("train", 2), ("heldout", 1)):
        clips = make_corpus(tmp_path / "speech" / split, n, seed=5, split=split)
        again = make_corpus(tmp_path / "again" / split, n, seed=5, split=split)
        assert [c.text for c in clips] == [c.text for c in again]
        for c in clips:
            assert 2.0 <= c.duration <= 6.0 and sentence_split(c.text) == split
            a = (tmp_path / "speech" / split / c.file).read_bytes()
            assert a == (tmp_path / "again" / split / c.file).read_bytes()
        corpora[split] = clips
    assert not {c.text for c in corpora["train"]} & {c.text for c in corpora["heldout"]}

    for run in ("m1", "m2"):
        for split in ("train", "heldout"):
            build_motion(tmp_path / "speech" / split, tmp_path / run, split, seed=5, audio_codec="pcm16")
    for split in ("train", "heldout"):
        a, b = list(iter_motion(tmp_path / "m1", split)), list(iter_motion(tmp_path / "m2", split))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.keypoints, y.keypoints)
            np.testing.assert_array_equal(x.audio, y.audio)
            assert x.identity == y.identity
    from iasa.training.synth.motion import subset_motion

    sub = subset_motion(tmp_path / "m1", tmp_path / "sub", "train", 1)   # a smaller bundle to carry
    assert (sub["clips"], sub["of"]) == (1, 2)
    (first,) = iter_motion(tmp_path / "sub", "train")
    want = next(iter_motion(tmp_path / "m1", "train"))
    assert first.id == want.id and first.identity == want.identity
    np.testing.assert_array_equal(first.keypoints, want.keypoints)
    np.testing.assert_array_equal(first.audio, want.audio)
    with pytest.raises(ValueError, match="is the source bundle"):
        subset_motion(tmp_path / "m1", tmp_path / "m1", "train", 1)
    train_ids = {c.identity for c in iter_motion(tmp_path / "m1", "train")}
    held_ids = {c.identity for c in iter_motion(tmp_path / "m1", "heldout")}
    assert not train_ids & held_ids

    clip = next(iter_motion(tmp_path / "m1", "heldout"))
    import soundfile as sf
    wav, _ = sf.read(str(tmp_path / "speech" / "heldout" / corpora["heldout"][0].file), dtype="int16")
    np.testing.assert_array_equal(clip.audio, wav)          # pcm16 bundle audio is lossless
    summary = render_bundle(tmp_path / "m1", tmp_path / "shards", "heldout", clips_per_shard=1, workers=1)
    assert summary["heldout"]["clips"] == 1
    (shard,) = sorted((tmp_path / "shards").glob("heldout-*.safetensors"))
    (got,) = read_shard(shard)
    want = render_clip(clip)
    np.testing.assert_array_equal(got["frames"], want["frames"])
    np.testing.assert_array_equal(got["keypoints"], clip.keypoints)
    np.testing.assert_array_equal(got["audio"], clip.audio)
    assert got["frames"].shape == (clip.n_frames, 256, 256, 3) and got["text"] == corpora["heldout"][0].text
