"""Frame selection, the global mask of the paper (Eq. 1-2).

Each latent frame gets one upper-body pose (``pose.keypoints.UPPER_BODY``, B = 12 points: nose, neck,
shoulders, elbows, wrists, eyes, ears). The per-frame pose is the mean of the covered pixel frames'
visible points (``frame_pose="mean"``, default; a point counts as visible when it is visible in any
of them) or the last covered pixel frame (``"last"``).

The distance of key frame k to query frame q is the mean squared residual, in pixels, after the best
rigid transform of P_k onto P_q over the points visible in both (2-D Kabsch in closed form: rotation +
translation, optionally uniform scale). Each query frame keeps itself plus its top-K closest
candidates: past frames only (``causal=True``, the paper's student) or all other frames.
Ties go to the frame nearer in time. Pairs sharing fewer than ``min_shared_points`` visible points
have no score; when a frame has fewer than K scored candidates, the rest of its K are filled with
the candidates nearest in time (so a frame without a person still sees its immediate past).
"""
from __future__ import annotations

import numpy as np

from ..pose.keypoints import UPPER_BODY, PoseSequence
from ..pose.regions import CONF
from .grid import TokenGrid

FRAME_POSE_MODES = ("mean", "last")


def latent_frame_poses(
    pose_px: PoseSequence,
    grid: TokenGrid,
    mode: str = "mean",
    latent_frames: list[int] | None = None,
    points: tuple[int, ...] = UPPER_BODY,
) -> tuple[np.ndarray, np.ndarray]:
    """Upper-body pose per latent frame: ``xy`` float64 [T, B, 2] and ``visible`` bool [T, B]."""
    if mode not in FRAME_POSE_MODES:
        raise ValueError(f"frame_pose: unknown mode {mode!r}; choose from {FRAME_POSE_MODES}")
    frames = list(range(grid.video_frames)) if latent_frames is None else list(latent_frames)
    pts = pose_px.points[:, list(points)].astype(np.float64)
    vis_all = pts[..., 2] > CONF
    xy = np.zeros((len(frames), len(points), 2))
    vis = np.zeros((len(frames), len(points)), bool)
    for i, f in enumerate(frames):
        ts = list(grid.pixel_frames_of_latent(f))
        if mode == "last":
            ts = ts[-1:]
        v = vis_all[ts]
        n = v.sum(axis=0)
        vis[i] = n > 0
        xy[i] = (pts[ts, :, :2] * v[..., None]).sum(axis=0) / np.maximum(n, 1)[:, None]
    return xy, vis


def rigid_residuals(
    xy: np.ndarray,
    visible: np.ndarray,
    allow_scale: bool = False,
    min_shared_points: int = 3,
    chunk: int = 128,
) -> np.ndarray:
    """``S[q, k]``: mean squared residual of the best rigid map of frame k's points onto frame q's.

    ``xy`` [T, B, 2], ``visible`` bool [T, B]. Uses the points visible in both frames; ``inf`` where
    fewer than ``max(2, min_shared_points)`` are shared. In 2-D the optimal rotation has a closed form:
    with centred X (query) and Y (key), ``a = sum x.y``, ``b = sum x cross y``, the residual is
    ``|X|^2 + |Y|^2 - 2 sqrt(a^2 + b^2)`` (rotation) or ``|X|^2 - (a^2 + b^2) / |Y|^2`` (with scale).
    """
    xy = np.asarray(xy, np.float64)
    visible = np.asarray(visible, bool)
    T = xy.shape[0]
    need = max(2, int(min_shared_points))
    out = np.empty((T, T))
    for q0 in range(0, T, chunk):
        q1 = min(T, q0 + chunk)
        w = (visible[q0:q1, None, :] & visible[None, :, :]).astype(np.float64)       # [q, k, B]
        n = w.sum(axis=-1)
        nz = np.maximum(n, 1.0)
        P = xy[q0:q1, None]                                                          # [q, 1, B, 2]
        Q = xy[None]                                                                 # [1, k, B, 2]
        cq = (P * w[..., None]).sum(axis=2) / nz[..., None]                          # [q, k, 2]
        ck = (Q * w[..., None]).sum(axis=2) / nz[..., None]
        X = (P - cq[:, :, None]) * w[..., None]
        Y = (Q - ck[:, :, None]) * w[..., None]
        xx = (X * X).sum(axis=(2, 3))
        yy = (Y * Y).sum(axis=(2, 3))
        a = (X * Y).sum(axis=(2, 3))
        b = (X[..., 1] * Y[..., 0] - X[..., 0] * Y[..., 1]).sum(axis=2)
        r2 = a * a + b * b
        if allow_scale:
            res = xx - np.where(yy > 1e-12, r2 / np.maximum(yy, 1e-12), 0.0)
        else:
            res = xx + yy - 2.0 * np.sqrt(r2)
        res = np.maximum(res, 0.0) / nz
        out[q0:q1] = np.where(n >= need, res, np.inf)
    return out


def select_frames(scores: np.ndarray, top_k: int, causal: bool = True, times: np.ndarray | None = None) -> np.ndarray:
    """bool ``[T, T]`` frame-selection mask: the diagonal plus each row's top-K candidates.

    Candidates are the past frames (``causal``) or all other frames. ``times`` gives each frame's
    position in the video (default 0..T-1; context windows pass their latent frame indices) for the
    causal rule and the nearest-in-time tie break / fallback.
    """
    scores = np.asarray(scores, np.float64)
    T = scores.shape[0]
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    t = np.arange(T) if times is None else np.asarray(times, np.int64)
    dist = np.abs(t[:, None] - t[None, :])
    cand = (t[None, :] < t[:, None]) if causal else (t[None, :] != t[:, None])
    score_key = np.where(cand, scores, np.inf)
    dist_key = np.where(cand, dist, np.iinfo(np.int64).max)
    # lexsort: last key is primary. Non-candidates sort last (inf score, max distance).
    order = np.lexsort((dist_key, score_key), axis=-1)
    k_row = np.minimum(top_k, cand.sum(axis=1))
    keep = np.arange(T)[None, :] < k_row[:, None]
    sel = np.zeros((T, T), bool)
    rows = np.repeat(np.arange(T)[:, None], T, axis=1)
    sel[rows[keep], order[keep]] = True
    sel[np.arange(T), np.arange(T)] = True
    return sel


def global_frame_mask(
    pose_px: PoseSequence,
    grid: TokenGrid,
    top_k: int = 2,
    causal: bool = True,
    allow_scale: bool = False,
    frame_pose: str = "mean",
    min_shared_points: int = 3,
    latent_frames: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frame selection of ``pose_px`` (on the video's pixel canvas, one frame per pixel frame).

    Returns ``(selected bool [T, T], scores float [T, T])``.
    """
    xy, vis = latent_frame_poses(pose_px, grid, frame_pose, latent_frames)
    scores = rigid_residuals(xy, vis, allow_scale, min_shared_points)
    times = None if latent_frames is None else np.asarray(latent_frames)
    return select_frames(scores, top_k, causal, times), scores
