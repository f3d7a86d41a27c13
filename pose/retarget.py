"""Retarget a driving pose sequence onto a reference skeleton (pure numpy).

Per frame, the OpenPose-18 tree rooted at the neck is rebuilt with the bone *directions* of the
driving pose and the bone *lengths* of the reference, so the reference person's proportions perform
the driving motion:

* root: the driving neck (else the midpoint of its shoulders) trajectory relative to its first valid
  frame, scaled by the shoulder-width ratio reference/driving, added to the reference neck;
* bones: ``child = parent + length_ref * unit(driving_child - driving_parent)`` in tree order;
* face: the reference face moved rigidly with the head (reference face shape kept): rotated by the
  driving head rotation (Kabsch on the face points, else the eye line, else the neck-nose bone) and
  anchored at the new nose;
* hands: finger bones re-built like the body (driving directions, reference finger lengths) from the
  new wrist; when the reference has no hand, the driving hand is moved rigidly to the new wrist and
  scaled by the forearm ratio reference/driving.

A point is output only where both the reference and the driving frame have it (missing points stay
missing), except with ``carry_reference_hands`` (used by audio-to-pose): a reference hand with no
driving hand in that frame is carried rigidly by the new forearm.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import public_name
from .keypoints import B, FACE, HAND_EDGES, LHAND, RHAND, PoseSequence
from .motion_geometry import angle_of, kabsch_angle, rotate, wrap_angle

log = logging.getLogger(__name__)

NECK = B["neck"]
# OpenPose-18 tree rooted at the neck: child -> parent, and an order where parents come first.
PARENT = {0: 1, 2: 1, 3: 2, 4: 3, 5: 1, 6: 5, 7: 6, 8: 1, 9: 8, 10: 9, 11: 1, 12: 11, 13: 12,
          14: 0, 15: 0, 16: 14, 17: 15}
ORDER = (0, 2, 5, 8, 11, 3, 6, 9, 12, 4, 7, 10, 13, 14, 15, 16, 17)
HANDS = {"right": (B["r_elbow"], B["r_wrist"], RHAND), "left": (B["l_elbow"], B["l_wrist"], LHAND)}
MIN_FACE_POINTS = 6


@public_name
class RetargetError(ValueError):
    """A reference or driving pose that cannot be retargeted."""


@dataclass
class Retargeted:
    """Result of :func:`retarget_detailed`: the pose plus the rigid face transform per frame, so that
    callers can place a per-frame face (e.g. lips from audio) with the same head motion:
    ``face = face_anchor[t] + R(face_angle[t]) (ref_face - face_anchor_ref)``; NaN where no head."""

    pose: PoseSequence
    face_angle: np.ndarray       # [T] radians
    face_anchor: np.ndarray      # [T, 2]
    face_anchor_ref: np.ndarray  # [2]
    root: np.ndarray             # [T, 2] new neck position (NaN where the driving frame has no root)
    ref_root: np.ndarray         # [2]


def _root(xy: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neck, else the midpoint of both shoulders; (xy [..., 2], valid [...])."""
    rs, ls = B["r_shoulder"], B["l_shoulder"]
    mid = (xy[..., rs, :] + xy[..., ls, :]) / 2
    both = present[..., rs] & present[..., ls]
    root = np.where(present[..., NECK, None], xy[..., NECK, :], mid)
    return root, present[..., NECK] | both


def _median_length(xy: np.ndarray, present: np.ndarray, a: int, b: int) -> float:
    ok = present[:, a] & present[:, b]
    if not ok.any():
        return 0.0
    return float(np.median(np.linalg.norm(xy[ok, a] - xy[ok, b], axis=-1)))


def _scale(rxy, rp, dxy, dp) -> float:
    """Size ratio reference/driving: shoulder width, else neck-nose, else neck-hip lengths."""
    for a, b in ((B["r_shoulder"], B["l_shoulder"]), (NECK, B["nose"]), (NECK, B["r_hip"]), (NECK, B["l_hip"])):
        ref_len = _median_length(rxy[None], rp[None], a, b)
        drv_len = _median_length(dxy, dp, a, b)
        if ref_len > 1e-6 and drv_len > 1e-6:
            return ref_len / drv_len
    log.warning("retarget: no shoulder, neck-nose or neck-hip length in both poses; root motion is not rescaled")
    return 1.0


def _unit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.linalg.norm(v, axis=-1)
    ok = n > 1e-9
    return v / np.where(ok, n, 1.0)[..., None], ok


def _check(driving: PoseSequence, reference: PoseSequence) -> None:
    for name, seq in (("driving", driving), ("reference", reference)):
        if not isinstance(seq, PoseSequence):
            raise RetargetError(f"retarget: {name} must be a PoseSequence, got {type(seq).__name__}; "
                                "convert POSE_KEYPOINT with from_pose_keypoint()")
        if len(seq) == 0:
            raise RetargetError(f"retarget: {name} has no frames; pass at least one pose frame")
    if len(reference) > 1:
        log.warning("retarget: reference has %d frames; using its first frame", len(reference))


def _face_angles(rxy, rp, dxy, dp, root_ref, droot) -> np.ndarray:
    """Head rotation reference -> driving per frame: Kabsch on shared face points, else eye line,
    else neck-nose bone. NaN where none is available."""
    T = dxy.shape[0]
    out = np.full(T, np.nan)
    face = np.arange(FACE.start, FACE.stop)
    re, le, nose = B["r_eye"], B["l_eye"], B["nose"]
    for t in range(T):
        shared = face[rp[face] & dp[t, face]]
        if shared.size >= MIN_FACE_POINTS:
            out[t] = kabsch_angle(rxy[shared], dxy[t, shared])
        elif rp[re] and rp[le] and dp[t, re] and dp[t, le]:
            out[t] = wrap_angle(angle_of(dxy[t, le] - dxy[t, re]) - angle_of(rxy[le] - rxy[re]))
        elif rp[nose] and dp[t, nose] and np.isfinite(droot[t]).all():
            out[t] = wrap_angle(angle_of(dxy[t, nose] - droot[t]) - angle_of(rxy[nose] - root_ref))
    return out


def retarget_detailed(driving: PoseSequence, reference: PoseSequence, *,
                      carry_reference_hands: bool = False) -> Retargeted:
    """See the module docstring; returns the pose and the per-frame face transform."""
    _check(driving, reference)
    ref = reference.points[0].astype(np.float64)
    rxy, rp = ref[:, :2], ref[:, 2] > 0
    dxy = driving.points[..., :2].astype(np.float64)
    dconf = driving.points[..., 2].astype(np.float64)
    dp = dconf > 0
    T = dxy.shape[0]

    ref_root, ref_root_ok = _root(rxy, rp)
    if not ref_root_ok:
        raise RetargetError("retarget: reference has no neck and not both shoulders; retargeting needs the "
                            "upper body of the reference person (use a reference image showing the shoulders)")
    droot, droot_ok = _root(dxy, dp)
    if not droot_ok.any():
        raise RetargetError("retarget: no driving frame has a neck or both shoulders; use a driving video "
                            "where the upper body is visible")
    scale = _scale(rxy, rp, dxy, dp)
    t0 = int(np.argmax(droot_ok))
    root = np.where(droot_ok[:, None], ref_root + scale * (droot - droot[t0]), np.nan)

    out = np.zeros((T, 130, 3))
    pos = np.full((T, 130, 2), np.nan)        # placed points (the neck slot holds the root)
    pos[:, NECK] = root
    if rp[NECK]:
        out[droot_ok, NECK, :2] = root[droot_ok]
        out[droot_ok, NECK, 2] = np.where(dp[droot_ok, NECK], dconf[droot_ok, NECK], 1.0)
    dpos = np.where(dp[..., None], dxy, np.nan)
    dpos[:, NECK] = np.where(droot_ok[:, None], droot, np.nan)
    for c in ORDER:
        p = PARENT[c]
        if not (rp[c] and (rp[p] or p == NECK)):
            continue
        length = np.linalg.norm(rxy[c] - (rxy[p] if p != NECK else ref_root))
        direction, ok = _unit(dpos[:, c] - dpos[:, p])
        ok &= np.isfinite(pos[:, p]).all(axis=1) & np.isfinite(direction).all(axis=1)
        pos[ok, c] = pos[ok, p] + length * direction[ok]
        out[ok, c, :2] = pos[ok, c]
        out[ok, c, 2] = dconf[ok, c]

    # face: rigid with the head
    angle = _face_angles(rxy, rp, dxy, dp, ref_root, np.where(droot_ok[:, None], droot, np.nan))
    nose = B["nose"]
    anchor_ref = rxy[nose] if rp[nose] else ref_root
    anchor = pos[:, nose] if rp[nose] else root
    face_ok = np.isfinite(angle) & np.isfinite(anchor).all(axis=1)
    angle = np.where(face_ok, angle, np.nan)
    anchor = np.where(face_ok[:, None], anchor, np.nan)
    fidx = np.arange(FACE.start, FACE.stop)[rp[FACE]]
    if fidx.size and face_ok.any():
        placed = anchor[face_ok, None] + rotate(np.broadcast_to(rxy[fidx] - anchor_ref, (face_ok.sum(), fidx.size, 2)),
                                                angle[face_ok])
        out[np.ix_(face_ok, fidx, [0, 1])] = placed
        out[np.ix_(face_ok, fidx, [2])] = ref[fidx, 2][None, :, None]

    for side in HANDS:
        _retarget_hand(out, pos, rxy, rp, ref, dxy, dp, dconf, side, scale, carry_reference_hands)
    return Retargeted(PoseSequence(out.astype(np.float32), reference.width, reference.height),
                      angle, anchor, anchor_ref, root, ref_root)


def retarget(driving: PoseSequence, reference: PoseSequence, *, carry_reference_hands: bool = False) -> PoseSequence:
    """Driving motion on the reference skeleton; ``len(driving)`` frames on the reference canvas."""
    return retarget_detailed(driving, reference, carry_reference_hands=carry_reference_hands).pose


def _retarget_hand(out, pos, rxy, rp, ref, dxy, dp, dconf, side, scale, carry) -> None:
    el, wr, hand = HANDS[side]
    h = np.arange(hand.start, hand.stop)
    wrist = pos[:, wr]
    wrist_ok = np.isfinite(wrist).all(axis=1)
    ref_hand = rp[h].any()
    drv_forearm = _median_length(dxy, dp, el, wr)
    ref_forearm = np.linalg.norm(rxy[wr] - rxy[el]) if rp[wr] and rp[el] else 0.0
    s_arm = ref_forearm / drv_forearm if ref_forearm > 1e-6 and drv_forearm > 1e-6 else scale
    drv_hand = dp[:, h].any(axis=1) & dp[:, h[0]]
    use = wrist_ok & drv_hand
    # hand root: the driving wrist-to-hand-root offset, scaled
    offset = np.where(dp[:, wr, None], dxy[:, h[0]] - dxy[:, wr], 0.0)
    hpos = np.full((out.shape[0], 21, 2), np.nan)
    hpos[use, 0] = wrist[use] + s_arm * offset[use]
    if ref_hand and rp[h[0]]:
        for a, b in HAND_EDGES:
            if not (rp[h[a]] and rp[h[b]]):
                continue
            length = np.linalg.norm(rxy[h[b]] - rxy[h[a]])
            direction, ok = _unit(dxy[:, h[b]] - dxy[:, h[a]])
            ok &= use & dp[:, h[a]] & dp[:, h[b]] & np.isfinite(hpos[:, a]).all(axis=1)
            hpos[ok, b] = hpos[ok, a] + length * direction[ok]
    elif not ref_hand:
        rel = dxy[:, h] - dxy[:, h[:1]]
        hpos[use] = hpos[use, :1] + s_arm * rel[use]
        hpos[~(dp[:, h])] = np.nan
    placed = np.isfinite(hpos).all(axis=-1)
    if ref_hand:
        placed &= rp[h][None]
    out[:, h, :2] = np.where(placed[..., None], hpos, 0.0)
    out[:, h, 2] = np.where(placed, dconf[:, h], 0.0)

    if carry and ref_hand and rp[wr]:
        # no driving hand in this frame: carry the reference hand rigidly with the new forearm
        need = wrist_ok & ~drv_hand
        forearm_ok = need & np.isfinite(pos[:, el]).all(axis=1) & rp[el]
        turn = np.zeros(out.shape[0])
        if rp[el]:
            turn[forearm_ok] = wrap_angle(angle_of(pos[forearm_ok, wr] - pos[forearm_ok, el]) - angle_of(rxy[wr] - rxy[el]))
        hp = h[rp[h]]
        if need.any() and hp.size:
            rel = np.broadcast_to(rxy[hp] - rxy[wr], (need.sum(), hp.size, 2))
            out[np.ix_(need, hp, [0, 1])] = wrist[need, None] + rotate(rel, turn[need])
            out[np.ix_(need, hp, [2])] = ref[hp, 2][None, :, None]
