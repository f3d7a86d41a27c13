"""IASA Audio To Pose: a talking, gesturing pose sequence from one reference pose and audio features.

The paper drives its video model with EMAGE (a learned audio-to-gesture model) whose weights cannot be
used here, so this is a procedural replacement (pure numpy, deterministic per seed):

* mouth: inner/outer lips and jaw open with the speech energy (attack faster than release), lips
  spread or round with the spectral centroid; exactly the closed reference shape in silence (an open
  reference mouth is closed first);
* blinks: seeded intervals of 2-6 s, about 0.16-0.24 s each (4-6 frames at 25 fps), lids meet;
* head: nods on stressed syllables and with the speech envelope, tilt with the pitch contour, slow
  seeded drift. Roll turns the head (nose, eyes, ears, face) rigidly about the neck; pitch and yaw are
  small pseudo-3D rotations (points carry a generic depth), so a nod shows its parallax and the
  neck-nose / nose-eye bones foreshorten slightly like in real footage;
* beat gestures: on stressed syllables (onset peaks with high energy) the arms turn at the shoulder,
  the elbow and the fingers (rotations only: every arm, torso and finger bone keeps its length), with
  smooth attack and decay and bounded joint angles; where a point would leave the canvas the joint
  angles of that frame are scaled down (never the points clamped);
* a reference with wrists but no hands gets a relaxed default hand sized to the forearm (logged);
  arms that are not visible are not invented;
* ``driving``: the body and hand motion of a driving pose sequence retargeted onto the reference
  skeleton (see retarget.py), looped / held / ping-ponged to the audio length or cut; the head follows
  the driving head (audio head motion only when the driving never shows a head), lips and blinks
  still come from the audio; audio gestures are off (the driving provides the body motion).
"""
from __future__ import annotations

import logging

import numpy as np

from ..audio.features import AudioFeatures
from ..errors import public_name
from .keypoints import B, FACE, N_POINTS, PoseSequence
from .motion_body import ARMS, attach_default_hands, gesture_arms
from .motion_face import (BODY_HEAD_DEPTH, apply_blinks, closed_mouth, face_depth, face_width, mouth_frame,
                          open_max_px, pseudo3d_rotate, shape_mouth)
from .motion_geometry import largest_safe_scale, rotate, rotate_about
from .motion_signals import (HeadAngles, blink_closure, detect_beats, gesture_angles, head_angles,
                             mouth_opening, mouth_spread)
from .retarget import retarget_detailed

log = logging.getLogger(__name__)

DRIVING_MODES = ("loop", "hold", "pingpong")
MAX_MOUTH = 1.5            # mouth amount cap: openings up to 1.5x the default maximum
HEAD_BODY = (B["nose"], B["r_eye"], B["l_eye"], B["r_ear"], B["l_ear"])
NECK = B["neck"]


@public_name
class AudioToPoseError(ValueError):
    """A bad input to :func:`audio_to_pose`."""


def driving_indices(n_driving: int, n_frames: int, mode: str = "loop") -> np.ndarray:
    """Which driving frame each of ``n_frames`` output frames uses: the driving is cut when longer;
    when shorter, ``loop`` repeats it, ``hold`` holds its last frame, ``pingpong`` plays it back and
    forth (0 1 2 1 0 1 ...)."""
    if mode not in DRIVING_MODES:
        raise AudioToPoseError(f"driving_mode {mode!r} is not one of {DRIVING_MODES}; pick one of them")
    t = np.arange(n_frames)
    if n_driving >= n_frames:
        return t
    if mode == "loop":
        return t % n_driving
    if mode == "hold" or n_driving == 1:
        return np.minimum(t, n_driving - 1)
    period = 2 * n_driving - 2
    p = t % period
    return np.where(p < n_driving, p, period - p)


VISIBLE = 0.3   # the confidence threshold of pose/render.py and pose/regions.py


def audio_to_pose(reference: PoseSequence, features: AudioFeatures, *, seed: int = 0, mouth: float = 1.0,
                  head: float = 1.0, gestures: float = 1.0, blinks: bool = True,
                  driving: PoseSequence | None = None, driving_mode: str = "loop") -> PoseSequence:
    """``features.n_frames`` poses on the reference canvas: the reference person talking to the audio.

    ``mouth``, ``head``, ``gestures`` scale the lip opening, head motion and beat gestures (0 = off,
    1 = default; angles stay bounded whatever the scale). ``seed`` picks blinks, drift and which beats
    gesture. ``driving`` (optional) replaces the audio gestures by retargeted driving motion.
    """
    ref_frame = _check_reference(reference)
    n, fps = _check_features(features)
    for name, value in (("mouth", mouth), ("head", head), ("gestures", gestures)):
        if not (np.isfinite(value) and value >= 0):
            raise AudioToPoseError(f"{name}={value!r} must be a finite number >= 0 (0 = off, 1 = default)")
    if driving_mode not in DRIVING_MODES:
        raise AudioToPoseError(f"driving_mode {driving_mode!r} is not one of {DRIVING_MODES}; pick one of them")
    if driving is not None and (not isinstance(driving, PoseSequence) or len(driving) == 0):
        raise AudioToPoseError("driving must be a non-empty PoseSequence (or None for audio-only gestures)")

    rng_blink, rng_head, rng_gesture = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    energy = np.nan_to_num(np.asarray(features.energy, dtype=np.float64))
    onset = np.nan_to_num(np.asarray(features.onset, dtype=np.float64))
    pitch = np.nan_to_num(np.asarray(features.pitch, dtype=np.float64))
    opening = mouth_opening(energy, fps)
    spread = mouth_spread(features.mel, opening, fps)
    beats, strength = detect_beats(energy, onset, fps)
    closure = blink_closure(rng_blink, n, fps) if blinks else np.zeros(n)
    head_ang = head_angles(energy, pitch, beats, strength, fps, rng_head, float(head))
    arm_ang = gesture_angles(beats, strength, n, fps, rng_gesture, float(gestures))

    if driving is not None:
        missing_hands = [s for s, (_, _, _, hand) in ARMS.items() if not (driving.points[:, hand, 2] > 0).any()]
        ref_frame = _attach_hands(ref_frame, missing_hands)
    else:
        ref_frame = _attach_hands(ref_frame, list(ARMS))
    present = ref_frame[:, 2] > 0
    faces = _animate_face(ref_frame, present, np.minimum(opening * mouth, MAX_MOUTH), spread * min(mouth, 1.0), closure)

    if driving is None:
        xy = np.repeat(ref_frame[None, :, :2], n, axis=0)
        xy[:, FACE] = faces
        xy = _move_head(xy, present, head_ang, reference.width, reference.height)
        xy, _ = gesture_arms(xy, present, arm_ang, reference.width, reference.height)
        conf = np.repeat(ref_frame[None, :, 2], n, axis=0)
    else:
        xy, conf = _drive(ref_frame, faces, head_ang, driving, driving_mode, n, reference.width, reference.height)
    points = np.concatenate([xy, conf[..., None]], axis=-1)
    points[conf <= 0] = 0.0
    return PoseSequence(points.astype(np.float32), reference.width, reference.height)


# --------------------------------------------------------------------------------------------------
def _check_reference(reference: PoseSequence) -> np.ndarray:
    if not isinstance(reference, PoseSequence) or len(reference) == 0:
        raise AudioToPoseError("reference must be a PoseSequence with one frame (from IASA Extract Pose); "
                               f"got {type(reference).__name__}")
    if len(reference) > 1:
        log.warning("reference has %d frames; using its first frame as the reference pose", len(reference))
    if not reference.has_person()[0]:
        raise AudioToPoseError("reference: the first frame has no person (no confident body or face point); "
                               "use a reference image where a person is detected")
    frame = reference.points[0].astype(np.float64).copy()
    # Points the renderer and the region masks would not show (confidence <= VISIBLE) are not animated:
    # moving or attaching hands to them would draw limbs that are not in the picture.
    frame[frame[:, 2] <= VISIBLE] = 0.0
    return frame


def _check_features(features: AudioFeatures) -> tuple[int, float]:
    if not isinstance(features, AudioFeatures):
        raise AudioToPoseError(f"features must be AudioFeatures (IASA Audio Features), got {type(features).__name__}")
    n, fps = features.n_frames, float(features.fps)
    if n < 1 or not (np.isfinite(fps) and fps > 0):
        raise AudioToPoseError(f"features: n_frames={n}, fps={fps}; need at least one frame and fps > 0")
    for name in ("energy", "onset", "pitch"):
        if np.shape(getattr(features, name)) != (n,):
            raise AudioToPoseError(f"features.{name} has shape {np.shape(getattr(features, name))}, expected ({n},)")
    return n, fps


def _attach_hands(frame: np.ndarray, sides: list[str]) -> np.ndarray:
    if not sides:
        return frame
    with_hands, attached = attach_default_hands(frame)
    out = frame.copy()
    for side in attached:
        if side in sides:
            hand = ARMS[side][3]
            out[hand] = with_hands[hand]
    return out


def _animate_face(frame: np.ndarray, present: np.ndarray, opening: np.ndarray, spread: np.ndarray,
                  closure: np.ndarray) -> np.ndarray:
    """Face points [T, 70, 2] in reference coordinates: lips from the opening, then blinks."""
    face = frame[FACE, :2]
    fp = present[FACE]
    closed = closed_mouth(face, fp)
    mf = mouth_frame(closed, fp)
    opening_px = opening * (open_max_px(mf) if mf is not None else 0.0)
    faces = shape_mouth(closed, fp, opening_px, spread)
    return apply_blinks(faces, fp, closure)


def _head_scale(frame: np.ndarray, present: np.ndarray) -> float:
    """Face width for the head's depth model (from the face, else the ears, else the eyes)."""
    w = face_width(frame[FACE, :2], present[FACE])
    if w > 0:
        return w
    for a, b, f in ((B["r_ear"], B["l_ear"], 1.0), (B["r_eye"], B["l_eye"], 2.2)):
        if present[a] and present[b]:
            return f * float(np.linalg.norm(frame[a, :2] - frame[b, :2]))
    return 0.0


def _head_pivot(xy: np.ndarray, present: np.ndarray, head_idx: np.ndarray) -> np.ndarray:
    """[T, 2]: the neck, else the shoulder midpoint, else the head's own centre."""
    rs, ls = B["r_shoulder"], B["l_shoulder"]
    if present[NECK]:
        return xy[:, NECK]
    if present[rs] and present[ls]:
        return (xy[:, rs] + xy[:, ls]) / 2
    return xy[:, head_idx].mean(axis=1)


def _move_head(xy: np.ndarray, present: np.ndarray, ang: HeadAngles, width: int, height: int,
               pivot: np.ndarray | None = None) -> np.ndarray:
    """Pseudo-3D nod/turn, then rigid roll about the neck, of the head points; angles scaled down per
    frame where the head would leave the canvas."""
    fidx = np.arange(FACE.start, FACE.stop)
    head_idx = np.array([k for k in HEAD_BODY if present[k]] + list(fidx[present[FACE]]), dtype=int)
    if head_idx.size == 0:
        return xy
    w = _head_scale(xy[0], present)
    depth_all = np.zeros(N_POINTS)
    depth_all[FACE] = face_depth(w)
    for k, d in BODY_HEAD_DEPTH.items():
        depth_all[k] = d * w
    depth = depth_all[head_idx]
    if pivot is None:
        pivot = _head_pivot(xy, present, head_idx)
    base = xy[:, head_idx]

    def candidate(s: np.ndarray) -> np.ndarray:
        a = ang.scaled(s)
        pts = pseudo3d_rotate(base, depth, pivot, a.pitch, a.yaw)
        return rotate_about(pts, pivot, a.roll)

    _, moved = largest_safe_scale(candidate, np.ones(head_idx.size, bool), width, height, xy.shape[0])
    out = xy.copy()
    out[:, head_idx] = moved
    return out


def _drive(ref_frame, faces, head_ang, driving, mode, n, width, height):
    """Driving mode: retargeted body and hands, head from the driving (held through gaps), face from
    the audio placed with the head, then fitted into the canvas by translation."""
    idx = driving_indices(len(driving), n, mode)
    drv = PoseSequence(driving.points[idx], driving.width, driving.height)
    ref_seq = PoseSequence(ref_frame[None].astype(np.float32), width, height)
    rt = retarget_detailed(drv, ref_seq, carry_reference_hands=True)
    xy = rt.pose.points[..., :2].astype(np.float64)
    conf = rt.pose.points[..., 2].astype(np.float64)
    present = ref_frame[:, 2] > 0
    fidx = np.arange(FACE.start, FACE.stop)[present[FACE]]
    head_body = [k for k in HEAD_BODY if present[k]]
    root_ok = np.isfinite(rt.root).all(axis=1)
    head_ok = np.isfinite(rt.face_angle) & root_ok

    if head_ok.any():
        # frames without a driving head hold the nearest head pose relative to the neck
        near = _nearest_valid(head_ok)
        fill = root_ok & ~head_ok
        angle = rt.face_angle[near]
        anchor = rt.face_anchor[near] - rt.root[near] + rt.root
        if head_body:
            hb = np.array(head_body)
            xy[np.ix_(fill, hb)] = xy[np.ix_(near[fill], hb)] - rt.root[near[fill], None] + rt.root[fill, None]
            conf[np.ix_(fill, hb)] = conf[np.ix_(near[fill], hb)]
        ok = root_ok
        if fidx.size:
            rel = faces[ok][:, fidx - FACE.start] - rt.face_anchor_ref
            xy[np.ix_(ok, fidx)] = anchor[ok, None] + rotate(rel, angle[ok])
            conf[np.ix_(ok, fidx)] = ref_frame[fidx, 2]
    else:
        # the driving never shows a head: the reference head rides on the new neck with audio motion
        hidx = np.array(head_body + list(fidx), dtype=int)
        if hidx.size:
            shift = np.where(root_ok[:, None], rt.root - rt.ref_root, 0.0)
            head = np.repeat(ref_frame[None, :, :2], n, axis=0)
            head[:, FACE] = faces
            head = head + shift[:, None]
            head = _move_head(head, present, head_ang, width, height, pivot=np.where(root_ok[:, None], rt.root, 0.0))
            xy[np.ix_(root_ok, hidx)] = head[np.ix_(root_ok, hidx)]
            conf[np.ix_(root_ok, hidx)] = ref_frame[hidx, 2]

    empty = ~(conf > 0).any(axis=1)
    if empty.any() and not empty.all():
        log.warning("driving pose: %d of %d frames have no person after retargeting; holding the nearest "
                    "frame with a person there", int(empty.sum()), n)
        near = _nearest_valid(~empty)
        xy[empty], conf[empty] = xy[near[empty]], conf[near[empty]]
    return _fit_canvas(xy, conf > 0, width, height), conf


def _nearest_valid(valid: np.ndarray) -> np.ndarray:
    """For every frame, the index of the nearest frame where ``valid`` holds (ties: the earlier one)."""
    good = np.flatnonzero(valid)
    t = np.arange(len(valid))
    pos = np.clip(np.searchsorted(good, t), 0, len(good) - 1)
    prev = good[np.maximum(pos - 1, 0)]
    nxt = good[pos]
    return np.where(np.abs(t - prev) <= np.abs(nxt - t), prev, nxt)


def _fit_canvas(xy: np.ndarray, present: np.ndarray, width: int, height: int) -> np.ndarray:
    """Translate each frame (rigidly) so its points lie inside the canvas where they fit."""
    out = xy.copy()
    for t in range(xy.shape[0]):
        p = xy[t, present[t]]
        if p.size == 0:
            continue
        shift = np.zeros(2)
        for axis, size in ((0, width), (1, height)):
            lo, hi = p[:, axis].min(), p[:, axis].max()
            if hi - lo > size - 1:
                shift[axis] = (size - 1) / 2 - (lo + hi) / 2
            elif lo < 0:
                shift[axis] = -lo
            elif hi > size - 1:
                shift[axis] = size - 1 - hi
        out[t] += shift
    return out
