"""Pose extraction (mediapipe Holistic -> OpenPose/DWPose layout) and temporal smoothing.

Real photos shipped in installed packages (no downloads). mediapipe costs ~70-130 ms a frame, so the
images are extracted once per module and the video is short.
"""
from __future__ import annotations

import pathlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from iasa.pose.extract import (
    MP_FACE_FOR_DLIB68, SIGMA_PER_SMOOTHING, PoseExtractor, as_uint8_frames, extract_pose, frames_without_person,
    holistic_to_points,
)
from iasa.pose.keypoints import (
    B, BODY, FACE, FACE_JAW, FACE_L_BROW, FACE_L_EYE, FACE_L_PUPIL, FACE_NOSE, FACE_OUTER_LIP, FACE_R_BROW,
    FACE_R_EYE, FACE_R_PUPIL, LHAND, RHAND, PoseSequence,
)
from iasa.pose.smoothing import smooth_points, smooth_sequence
from .photos import guitar_player

# ---------------------------------------------------------------------------------------------- images


def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


def grace_hopper() -> np.ndarray:
    import matplotlib

    path = pathlib.Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return np.array(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def astro_and_black():
    img = astronaut()
    frames = np.stack([img, np.zeros_like(img)])
    return img, extract_pose(frames, video_mode=False)


@pytest.fixture(scope="module")
def hopper_pair():
    img = grace_hopper()
    padded = np.concatenate([img, np.zeros((img.shape[0], 200, 3), np.uint8)], axis=1)
    with PoseExtractor(video_mode=False) as ex:
        return img, ex.extract(img), ex.extract(padded)


@pytest.fixture(scope="module")
def guitar():
    img = guitar_player()
    return img, extract_pose(img)


def _shoulder_width(frame: np.ndarray) -> float:
    return float(np.linalg.norm(frame[B["r_shoulder"], :2] - frame[B["l_shoulder"], :2]))


def _inside_hull(points: np.ndarray, p: np.ndarray) -> bool:
    hull = cv2.convexHull(points.astype(np.float32))
    return cv2.pointPolygonTest(hull, (float(p[0]), float(p[1])), False) >= 0


def _frontal_face_checks(frame: np.ndarray, width: int, height: int) -> None:
    """Sides and vertical order of a frontal face: OpenPose 'right' = person's right = image left."""
    face = frame[FACE]
    assert (face[:, 2] > 0.3).all()
    assert (face[:, 0] >= 0).all() and (face[:, 0] < width).all()
    assert (face[:, 1] >= 0).all() and (face[:, 1] < height).all()
    r_eye, l_eye = face[list(FACE_R_EYE), :2].mean(0), face[list(FACE_L_EYE), :2].mean(0)
    assert r_eye[0] < l_eye[0]
    assert face[FACE_JAW[0], 0] < face[FACE_JAW[-1], 0]
    assert face[list(FACE_R_BROW), 0].mean() < face[list(FACE_L_BROW), 0].mean()
    # Brows above eyes above nose tip above mouth above chin (image y grows downwards).
    brows = face[list(FACE_R_BROW + FACE_L_BROW), 1].mean()
    eyes = (r_eye[1] + l_eye[1]) / 2
    nose_tip = face[FACE_NOSE[3], 1]
    mouth = face[list(FACE_OUTER_LIP), 1].mean()
    chin = face[FACE_JAW[8], 1]
    assert brows < eyes < nose_tip < mouth < chin
    # Pupils inside their own eye's box (slightly enlarged).
    for pupil, eye in ((FACE_R_PUPIL, FACE_R_EYE), (FACE_L_PUPIL, FACE_L_EYE)):
        pts = face[list(eye), :2]
        span = pts.max(0) - pts.min(0)
        lo, hi = pts.min(0) - 0.25 * span, pts.max(0) + 0.25 * span
        assert (face[pupil, :2] >= lo).all() and (face[pupil, :2] <= hi).all(), (pupil, face[pupil], lo, hi)
    # Body eyes agree with the face.
    assert frame[B["r_eye"], 0] < frame[B["l_eye"], 0]
    assert np.linalg.norm(frame[B["r_eye"], :2] - r_eye) < np.linalg.norm(frame[B["r_eye"], :2] - l_eye)


# ---------------------------------------------------------------------------------------------- real photos


def test_astronaut_body_and_face_no_hands(astro_and_black):
    img, seq = astro_and_black
    assert (seq.width, seq.height) == (img.shape[1], img.shape[0])
    f = seq.points[0]
    assert seq.has_person()[0]
    core = [B[n] for n in ("nose", "neck", "r_shoulder", "l_shoulder", "r_eye", "l_eye", "r_ear", "l_ear")]
    assert (f[core, 2] > 0.5).all()
    assert (f[BODY, 2] <= 1.0).all() and (f[BODY, 2] >= 0.0).all()
    assert not f[LHAND].any() and not f[RHAND].any()
    assert _inside_hull(f[FACE][:68, :2], f[B["nose"], :2])
    _frontal_face_checks(f, seq.width, seq.height)
    assert f[B["r_shoulder"], 0] < f[B["l_shoulder"], 0]
    np.testing.assert_allclose(f[B["neck"], :2], (f[B["r_shoulder"], :2] + f[B["l_shoulder"], :2]) / 2, atol=1e-3)
    assert f[B["neck"], 2] == pytest.approx(min(f[B["r_shoulder"], 2], f[B["l_shoulder"], 2]))


def test_black_frame_has_no_person(astro_and_black):
    _, seq = astro_and_black
    assert not seq.points[1].any()
    assert frames_without_person(seq) == [1]
    assert frames_without_person(seq.frame(0)) == []


def test_grace_hopper_non_square_canvas(hopper_pair):
    img, seq, padded = hopper_pair
    H, W = img.shape[:2]
    assert H != W and (seq.width, seq.height) == (W, H)
    assert (padded.width, padded.height) == (W + 200, H)
    f = seq.points[0]
    assert seq.has_person()[0] and not f[LHAND].any() and not f[RHAND].any()
    _frontal_face_checks(f, W, H)
    # Pixel coordinates do not depend on the canvas: black padding on the right leaves the face in place.
    face_width = np.ptp(f[FACE][:68, 0])
    diff = np.abs(padded.points[0, FACE, :2] - f[FACE, :2])
    assert np.median(diff) < 0.03 * face_width, np.median(diff)


def test_guitar_player_both_hands_at_their_wrists(guitar):
    img, seq = guitar
    f = seq.points[0]
    assert (f[LHAND, 2] > 0.3).all() and (f[RHAND, 2] > 0.3).all()
    sw = _shoulder_width(f)
    for hand, own, other in ((LHAND, "l_wrist", "r_wrist"), (RHAND, "r_wrist", "l_wrist")):
        wrist = f[hand][0, :2]
        d_own = np.linalg.norm(wrist - f[B[own], :2])
        d_other = np.linalg.norm(wrist - f[B[other], :2])
        assert d_own < 0.25 * sw, (own, d_own, sw)
        assert d_own < 0.5 * d_other
        # The hand's points spread around its wrist (a hand, not a point).
        assert 0.1 * sw < np.ptp(f[hand][:, :2], axis=0).max() < 1.5 * sw
    assert _inside_hull(f[FACE][:68, :2], f[B["nose"], :2])


# ---------------------------------------------------------------------------------------------- video


STRENGTH = 0.5  # the node's default: sigma 2 frames


@pytest.fixture(scope="module")
def shifted_video():
    img = astronaut()
    T, dx, dy = 10, 3.0, 1.0
    frames = np.stack([
        cv2.warpAffine(img, np.float32([[1, 0, dx * t], [0, 1, dy * t]]), (img.shape[1], img.shape[0]),
                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        for t in range(T)
    ])
    shift = np.stack([dx * np.arange(T), dy * np.arange(T)], axis=1)[:, None, :]
    raw = extract_pose(frames)
    smoothed = extract_pose(frames, smoothing=STRENGTH)
    return shift, raw, smoothed


def _tracked(seq: PoseSequence) -> np.ndarray:
    vis = seq.visible().all(axis=0)
    vis[88:] = False  # no hands in this photo
    return vis


def test_video_is_tracked_and_follows_the_motion(shifted_video):
    shift, raw, _ = shifted_video
    assert frames_without_person(raw) == []
    keep = _tracked(raw)
    assert keep[FACE].all() and keep[B["nose"]] and keep[B["r_shoulder"]] and keep[B["l_shoulder"]]
    t = np.arange(len(raw))
    slopes = np.polyfit(t, raw.xy[:, keep].reshape(len(raw), -1), 1)[0].reshape(-1, 2)
    np.testing.assert_allclose(np.median(slopes, axis=0), shift[1, 0], atol=0.3)


def test_smoothing_reduces_jitter_without_lag(shifted_video):
    shift, raw, smoothed = shifted_video
    keep = _tracked(raw)
    assert np.array_equal(smoothed.conf, raw.conf) or np.allclose(smoothed.conf, raw.conf, atol=1e-3)

    def jitter(seq):  # frame-to-frame roughness of the motion-compensated tracks
        d = seq.xy[:, keep] - shift
        return float(np.sqrt((np.diff(d, n=2, axis=0) ** 2).sum(-1).mean()))

    assert jitter(smoothed) < 0.7 * jitter(raw), (jitter(smoothed), jitter(raw))
    # No bias: per point, the smoothed track stays on the raw one on average and moves at the same speed;
    # the face (mediapipe's steady face mesh) hardly moves at all.
    bias = np.linalg.norm((smoothed.xy[:, keep] - raw.xy[:, keep]).mean(axis=0), axis=-1)
    assert bias.max() < 2.0, bias.max()
    face_gap = np.linalg.norm(smoothed.xy[:, FACE] - raw.xy[:, FACE], axis=-1)
    assert face_gap.mean() < 1.0, face_gap.mean()
    t = np.arange(len(raw))
    s_raw = np.polyfit(t, raw.xy[:, keep].reshape(len(t), -1), 1)[0]
    s_smooth = np.polyfit(t, smoothed.xy[:, keep].reshape(len(t), -1), 1)[0]
    assert np.abs(np.median(s_smooth - s_raw)) < 0.1
    # The API's smoothing is smooth_sequence on the raw result (mediapipe itself is deterministic).
    np.testing.assert_allclose(smoothed.points, smooth_sequence(raw, SIGMA_PER_SMOOTHING * STRENGTH).points, atol=0.5)


# ---------------------------------------------------------------------------------------------- smoothing (synthetic)


def _track(T: int = 40, n: int = 5, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(T, dtype=np.float32)[:, None]
    pts = np.zeros((T, n, 3), np.float32)
    pts[..., 0] = 100 + 2.5 * t + 10 * np.arange(n)
    pts[..., 1] = 300 - 1.5 * t
    pts[..., :2] += rng.normal(0, noise, size=(T, n, 2))
    pts[..., 2] = 0.9
    return pts


def test_smoothing_keeps_linear_motion_exactly_even_at_edges_and_gaps():
    pts = _track()
    pts[10:14, 2] = 0.0  # point 2 missing in the middle
    pts[:3, 0] = 0.0  # point 0 missing at the start
    out = smooth_points(pts, 2.0)
    vis = pts[..., 2] > 0.3
    np.testing.assert_allclose(out[vis], pts[vis], atol=1e-3)
    assert not out[~vis].any()  # missing points stay missing, not smeared


def test_smoothing_keeps_turning_points():
    t = np.arange(30, dtype=np.float32)
    pts = np.zeros((30, 1, 3), np.float32)
    pts[:, 0, 0] = 200 + 0.4 * (t - 15) ** 2  # a nod: down, turn, up
    pts[:, 0, 1] = 100 + 3 * t
    pts[:, 0, 2] = 1.0
    np.testing.assert_allclose(smooth_points(pts, 2.0), pts, atol=1e-2)


def test_smoothing_reduces_noise_and_does_not_pull_towards_missing_points():
    clean = _track()
    noisy = _track(noise=2.0, seed=1)
    noisy[20:25, 1] = 0.0  # point 1 missing for 5 frames
    out = smooth_points(noisy, 2.0)
    vis = noisy[..., 2] > 0.3
    err_in = np.abs(noisy[..., :2] - clean[..., :2])[vis].mean()
    err_out = np.abs(out[..., :2] - clean[..., :2])[vis].mean()
    assert err_out < 0.7 * err_in, (err_out, err_in)
    # Next to the gap the point keeps its place (a (0, 0) neighbour would drag it by ~100 px).
    assert np.abs(out[[19, 25], 1, :2] - clean[[19, 25], 1, :2]).max() < 6.0
    assert not out[20:25, 1].any()


def test_smoothing_off_and_single_samples():
    pts = _track(T=6, noise=1.0)
    np.testing.assert_array_equal(smooth_points(pts, 0.0), pts)
    lone = np.zeros((5, 1, 3), np.float32)
    lone[2] = (50.0, 60.0, 1.0)
    np.testing.assert_array_equal(smooth_points(lone, 1.5), lone)
    with pytest.raises(ValueError, match="sigma"):
        smooth_sequence(PoseSequence(np.zeros((2, 130, 3)), 8, 8), -1.0)


# ---------------------------------------------------------------------------------------------- conversion (no mediapipe)


def _lms(xy: np.ndarray, vis: np.ndarray | None = None) -> SimpleNamespace:
    vis = np.ones(len(xy)) if vis is None else vis
    return SimpleNamespace(landmark=[SimpleNamespace(x=float(x), y=float(y), visibility=float(v))
                                     for (x, y), v in zip(xy, vis)])


def test_conversion_maps_parts_sides_and_pixels():
    rng = np.random.default_rng(3)
    W, H = 200, 100
    pose = rng.uniform(0.1, 0.9, (33, 2))
    pose_vis = rng.uniform(0.0, 1.0, 33)
    mesh = rng.uniform(0.4, 0.6, (478, 2))
    # Put the refined iris centres the other way round: 468 at the left eye, 473 at the right eye.
    r_eye_idx = [MP_FACE_FOR_DLIB68[i] for i in FACE_R_EYE]
    l_eye_idx = [MP_FACE_FOR_DLIB68[i] for i in FACE_L_EYE]
    mesh[r_eye_idx] = mesh[r_eye_idx] * 0.05 + [0.30, 0.40]
    mesh[l_eye_idx] = mesh[l_eye_idx] * 0.05 + [0.70, 0.40]
    mesh[468], mesh[473] = [0.72, 0.41], [0.31, 0.41]
    lhand, rhand = rng.uniform(0, 1, (21, 2)), rng.uniform(0, 1, (21, 2))
    res = SimpleNamespace(pose_landmarks=_lms(pose, pose_vis), face_landmarks=_lms(mesh),
                          left_hand_landmarks=_lms(lhand), right_hand_landmarks=_lms(rhand))
    pts = holistic_to_points(res, W, H)
    scale = np.array([W, H])
    for name, mp_idx in (("nose", 0), ("r_shoulder", 12), ("l_shoulder", 11), ("r_wrist", 16), ("l_wrist", 15),
                         ("r_hip", 24), ("l_ankle", 27), ("r_eye", 5), ("l_ear", 7)):
        np.testing.assert_allclose(pts[B[name], :2], pose[mp_idx] * scale, rtol=1e-5)
        assert pts[B[name], 2] == pytest.approx(pose_vis[mp_idx])
    np.testing.assert_allclose(pts[B["neck"], :2], (pose[11] + pose[12]) / 2 * scale, rtol=1e-5)
    np.testing.assert_allclose(pts[FACE][:68, :2], mesh[list(MP_FACE_FOR_DLIB68)] * scale, rtol=1e-5)
    np.testing.assert_allclose(pts[FACE][FACE_R_PUPIL, :2], mesh[473] * scale, rtol=1e-5)
    np.testing.assert_allclose(pts[FACE][FACE_L_PUPIL, :2], mesh[468] * scale, rtol=1e-5)
    np.testing.assert_allclose(pts[LHAND, :2], lhand * scale, rtol=1e-5)
    np.testing.assert_allclose(pts[RHAND, :2], rhand * scale, rtol=1e-5)
    assert (pts[FACE, 2] == 1).all() and (pts[LHAND, 2] == 1).all()

    # Unrefined mesh (468 points): pupils are the eye centroids. Missing parts stay zero.
    res = SimpleNamespace(pose_landmarks=None, face_landmarks=_lms(mesh[:468]),
                          left_hand_landmarks=None, right_hand_landmarks=None)
    pts = holistic_to_points(res, W, H)
    np.testing.assert_allclose(pts[FACE][FACE_R_PUPIL, :2], (mesh[r_eye_idx] * scale).mean(0), rtol=1e-5)
    assert not pts[BODY].any() and not pts[LHAND].any() and not pts[RHAND].any()


def test_face_map_is_68_distinct_mesh_points():
    assert len(MP_FACE_FOR_DLIB68) == 68 and len(set(MP_FACE_FOR_DLIB68)) == 68
    assert all(0 <= i < 468 for i in MP_FACE_FOR_DLIB68)


def test_input_validation_and_float_frames():
    img = np.full((4, 5, 3), 0.5, np.float32)
    out = as_uint8_frames(img)
    assert out.shape == (1, 4, 5, 3) and out.dtype == np.uint8 and out[0, 0, 0, 0] == 128
    assert as_uint8_frames(np.zeros((2, 4, 5, 4), np.uint8)).shape == (2, 4, 5, 3)
    for bad in (np.zeros((4, 5)), np.zeros((2, 3, 4, 5, 3)), np.zeros((4, 5, 2)), np.zeros((0, 4, 5, 3))):
        with pytest.raises(ValueError, match="frames"):
            as_uint8_frames(bad)
    with pytest.raises(ValueError, match="smoothing"):
        extract_pose(np.zeros((2, 8, 8, 3), np.uint8), smoothing=-1)


def test_extractor_close():
    ex = PoseExtractor()
    ex.close()
    ex.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        ex.process(np.zeros((8, 8, 3), np.uint8))
