"""Token grid, region labels per token and frame selection (global mask) of the sparse attention."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from iasa.pose.synthetic import empty_pose, talking_pose
from iasa.attention.global_mask import latent_frame_poses, rigid_residuals, select_frames
from iasa.attention.grid import TokenGrid
from iasa.attention.alignment import align_pose
from iasa.attention.token_regions import region_token_counts, token_labels
from iasa.pose.keypoints import UPPER_BODY, PoseSequence
from iasa.pose.regions import LABELS, frame_masks


def pose_for_grid(pose: PoseSequence, grid: TokenGrid) -> PoseSequence:
    """The pose on the grid's video canvas, one frame per pixel frame (the stock nodes' rules)."""
    return align_pose(pose, grid.pixel_width, grid.pixel_height, grid.pixel_frames).pose


# ---- grid ----------------------------------------------------------------------------------------

def test_grid_from_latent_shape_wan21_and_odd_sizes():
    g = TokenGrid.from_latent_shape((21, 60, 104))
    assert (g.video_frames, g.hp, g.wp, g.token_px) == (21, 30, 52, 16)
    assert (g.pixel_width, g.pixel_height, g.pixel_frames, g.seq_len) == (832, 480, 81, 21 * 30 * 52)
    odd = TokenGrid.from_latent_shape((5, 33, 47))          # padded up by Wan's pad_to_patch_size
    assert (odd.hp, odd.wp, odd.pixel_height, odd.pixel_width) == (17, 24, 264, 376)
    g5b = TokenGrid.from_latent_shape((3, 30, 52), vae_stride=16)
    assert g5b.token_px == 32 and g5b.pixel_width == 832


def test_grid_pixel_frame_mapping_is_consistent():
    g = TokenGrid(video_frames=6, hp=2, wp=3)
    covered = [t for f in range(6) for t in g.pixel_frames_of_latent(f)]
    assert covered == list(range(g.pixel_frames))            # each pixel frame exactly once, in order
    assert list(g.pixel_frames_of_latent(0)) == [0] and list(g.pixel_frames_of_latent(2)) == [5, 6, 7, 8]
    for f in range(6):
        assert set(g.latent_frame_of_pixel(np.array(list(g.pixel_frames_of_latent(f))))) == {f}


def test_grid_offsets_and_token_order():
    hpwp = 2 * 3
    g = TokenGrid(video_frames=4, hp=2, wp=3, ref_tokens_before=hpwp, leading_ref_frames=1, extra_frames_after=2)
    assert g.seq_len == hpwp * (1 + 1 + 4 + 2)
    assert g.video_token_offset == 2 * hpwp and g.global_tokens == 4 * hpwp
    idx = g.video_token_indices()
    assert idx[1, 1, 2] == g.video_token_offset + 1 * hpwp + 1 * 3 + 2   # frame-major f*Hp*Wp + h*Wp + w
    frames = g.token_frames()
    assert (frames[g.global_token_indices()] == -1).all()
    assert np.array_equal(np.sort(np.concatenate([idx.ravel(), g.global_token_indices()])), np.arange(g.seq_len))


def test_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="temporal patch"):
        TokenGrid.from_latent_shape((5, 8, 8), patch_size=(2, 2, 2))
    with pytest.raises(ValueError, match="leading_ref_frames"):
        TokenGrid.from_latent_shape((1, 8, 8), leading_ref_frames=1)
    with pytest.raises(ValueError, match="hp"):
        TokenGrid(video_frames=1, hp=0, wp=4)


# ---- region labels -------------------------------------------------------------------------------

def _brute_labels(pose_px: PoseSequence, grid: TokenGrid, regions) -> np.ndarray:
    """Per pixel frame via regions.frame_masks' own pooling, union per latent frame, explicit priority."""
    priority = [r for r in ("face", "left_hand", "right_hand", "arms", "torso") if r in regions]
    out = np.zeros((grid.video_frames, grid.hp, grid.wp), np.uint8)
    for f in range(grid.video_frames):
        union = {r: np.zeros((grid.hp, grid.wp), bool) for r in regions}
        for t in grid.pixel_frames_of_latent(f):
            m = frame_masks(pose_px.points[t], grid.hp, grid.wp, 1.0 / grid.token_px)
            for r in regions:
                union[r] |= m[r]
        for h in range(grid.hp):
            for w in range(grid.wp):
                for r in priority:
                    if union[r][h, w]:
                        out[f, h, w] = LABELS[r]
                        break
    return out


@pytest.mark.parametrize("regions", [("face", "left_hand", "right_hand", "arms", "torso"), ("face", "torso")])
def test_labels_match_brute_force_union(regions):
    pose = talking_pose(17, 320, 256, seed=1)
    grid = TokenGrid.from_latent_shape((5, 32, 40))
    pose_px = pose_for_grid(pose, grid)
    got = token_labels(pose_px, grid, regions)
    assert np.array_equal(got, _brute_labels(pose_px, grid, regions))
    present = set(np.unique(got)) - {0}
    assert present == {LABELS[r] for r in regions}           # every chosen region shows up, no other


def test_unchosen_region_is_background_and_priority_runs_over_chosen():
    pose = talking_pose(5, 256, 256)
    grid = TokenGrid.from_latent_shape((2, 32, 32))
    pose_px = pose_for_grid(pose, grid)
    full = token_labels(pose_px, grid)
    no_arms = token_labels(pose_px, grid, ("face", "left_hand", "right_hand", "torso"))
    assert not (no_arms == LABELS["arms"]).any()
    was_arm = full == LABELS["arms"]
    assert set(np.unique(no_arms[was_arm])) <= {0, LABELS["torso"]}
    assert (no_arms[~was_arm] == full[~was_arm]).all()
    assert not token_labels(pose_px, grid, ()).any()
    with pytest.raises(ValueError, match="unknown region"):
        token_labels(pose_px, grid, ("face", "tail"))


def test_pose_canvas_is_scaled_to_the_video():
    grid = TokenGrid.from_latent_shape((3, 24, 40))          # 320x192 px video
    pose = talking_pose(9, 320, 192, seed=2)
    big = pose.scaled_to(640, 384)                            # same poses drawn on a 2x canvas
    a = token_labels(pose_for_grid(pose, grid), grid)
    b = token_labels(pose_for_grid(big, grid), grid)
    assert np.array_equal(a, b) and a.any()


def test_odd_grid_labels_and_counts():
    grid = TokenGrid.from_latent_shape((4, 27, 35))          # 14 x 18 tokens, 216 x 280 px
    pose = talking_pose(13, 280, 216, seed=3)
    labels = token_labels(pose_for_grid(pose, grid), grid)
    assert labels.shape == (4, 14, 18)
    counts = region_token_counts(labels)
    assert sum(counts.values()) == labels.size and counts["face"] > 0 and counts["background"] > 0


# ---- rigid residual (paper Eq. 1) ------------------------------------------------------------------

def _rot(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def _brute_residual(p: np.ndarray, q: np.ndarray) -> float:
    """min over rotation angle (fine grid, then refine) of mean |p - (R q + t)|^2, t optimal."""
    pc, qc = p - p.mean(0), q - q.mean(0)

    def res(th):
        return ((pc - qc @ _rot(th).T) ** 2).sum(1).mean()
    grid = np.linspace(-np.pi, np.pi, 7201)
    best = grid[np.argmin([res(t) for t in grid])]
    fine = np.linspace(best - 1e-3, best + 1e-3, 2001)
    return float(min(res(t) for t in fine))


def test_rigid_residual_matches_brute_force_and_is_rigid_invariant():
    rng = np.random.default_rng(0)
    B = len(UPPER_BODY)
    xy = rng.uniform(0, 500, (4, B, 2))
    vis = np.ones((4, B), bool)
    S = rigid_residuals(xy, vis)
    for q, k in [(0, 1), (2, 3), (1, 0)]:
        assert S[q, k] == pytest.approx(_brute_residual(xy[q], xy[k]), rel=1e-4)
    moved = xy.copy()
    moved[1] = xy[1] @ _rot(0.7).T + [40.0, -25.0]        # rotate + translate the key frame
    S2 = rigid_residuals(moved, vis)
    assert S2[0, 1] == pytest.approx(S[0, 1], rel=1e-9)
    assert S2[1, 0] == pytest.approx(S[1, 0], rel=1e-9)      # and as query
    copy = xy.copy()
    copy[2] = xy[0] @ _rot(-1.2).T + [100.0, 7.0]
    assert rigid_residuals(copy, vis)[0, 2] == pytest.approx(0.0, abs=1e-8)
    assert np.allclose(np.diag(S), 0.0, atol=1e-8)


def test_scale_option_and_shared_point_rule():
    rng = np.random.default_rng(1)
    B = len(UPPER_BODY)
    xy = rng.uniform(0, 300, (2, B, 2))
    xy[1] = 1.5 * (xy[0] @ _rot(0.3).T) + 20.0            # scaled rigid copy
    vis = np.ones((2, B), bool)
    assert rigid_residuals(xy, vis)[0, 1] > 1.0
    assert rigid_residuals(xy, vis, allow_scale=True)[0, 1] == pytest.approx(0.0, abs=1e-7)
    vis[1, 2:] = False                                    # only 2 shared points
    assert np.isinf(rigid_residuals(xy, vis, min_shared_points=3)[0, 1])
    assert np.isfinite(rigid_residuals(xy, vis, min_shared_points=2)[0, 1])
    # Hidden points do not count: a wild invisible point leaves the score as the visible subset gives.
    vis = np.ones((2, B), bool)
    vis[1, 0] = False
    wild = xy.copy()
    wild[1, 0] = [1e5, -1e5]
    assert rigid_residuals(wild, vis)[0, 1] == pytest.approx(rigid_residuals(xy, vis)[0, 1])


# ---- frame selection (paper Eq. 2) -----------------------------------------------------------------

def test_causal_top_k_picks_the_k_closest_past_frames():
    rng = np.random.default_rng(2)
    T, K = 9, 3
    S = rng.uniform(0, 10, (T, T))
    sel = select_frames(S, K, causal=True)
    assert np.array_equal(np.diag(sel), np.ones(T, bool))
    assert not np.triu(sel, 1).any()                       # never a future frame
    for q in range(T):
        past = np.nonzero(sel[q, :q])[0]
        assert len(past) == min(K, q)
        assert set(past) == set(np.argsort(S[q, :q])[: min(K, q)])


def test_bidirectional_top_k_may_pick_future_frames():
    rng = np.random.default_rng(3)
    T, K = 8, 2
    S = rng.uniform(0, 10, (T, T))
    sel = select_frames(S, K, causal=False)
    for q in range(T):
        others = [k for k in range(T) if k != q]
        picked = [k for k in others if sel[q, k]]
        expected = sorted(others, key=lambda k: S[q, k])[:K]
        assert sorted(picked) == sorted(expected)
    assert np.triu(sel, 1).any()


def test_unscored_pairs_fall_back_to_nearest_in_time_and_k_zero():
    T = 6
    S = np.full((T, T), np.inf)
    S[5, 0] = 1.0                                          # only one scored past candidate for frame 5
    sel = select_frames(S, 2, causal=True)
    assert set(np.nonzero(sel[5, :5])[0]) == {0, 4}         # scored one first, then the nearest in time
    assert set(np.nonzero(sel[3, :3])[0]) == {1, 2}
    assert np.array_equal(select_frames(S, 0), np.eye(T, dtype=bool))
    with pytest.raises(ValueError, match="top_k"):
        select_frames(S, -1)


def test_frame_pose_last_and_mean_and_no_person():
    grid = TokenGrid(video_frames=3, hp=4, wp=4, token_px=16)
    pose = talking_pose(grid.pixel_frames, 64, 64)
    last_xy, last_vis = latent_frame_poses(pose, grid, "last")
    ub = list(UPPER_BODY)
    assert np.allclose(last_xy[2][last_vis[2]], pose.points[8, ub, :2][last_vis[2]])
    mean_xy, _ = latent_frame_poses(pose, grid, "mean")
    assert np.allclose(mean_xy[1, 1], pose.points[1:5, ub[1], :2].mean(0))   # neck over pixel frames 1..4
    _, vis = latent_frame_poses(empty_pose(grid.pixel_frames, 64, 64), grid)
    assert not vis.any()
    with pytest.raises(ValueError, match="frame_pose"):
        latent_frame_poses(pose, grid, "median")
