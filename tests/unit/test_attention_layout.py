"""Block layout of the input-aware sparse attention: exactness against the token-level reference,
offsets, invariants, density, benchmark layouts, fallback, context windows and the preview."""
from __future__ import annotations

import logging
import pathlib

import numpy as np
import pytest
import torch

from iasa.pose.synthetic import empty_pose, talking_pose
from iasa.attention.global_mask import select_frames
from iasa.attention.grid import TokenGrid
from iasa.attention.layout import (
    GROUP_ORDER, build_region_layout, random_layout, struct_layout,
)
from iasa.attention.pose_layout import BlockSizeError, SparseAttentionConfig, build_pose_layout
from iasa.attention.preview import REGION_COLORS, render_layout_preview
from .attention_reference import reference_token_mask, token_frame_and_label
from iasa.pose.regions import LABELS


def _random_case(rng, grid: TokenGrid, causal: bool, k: int):
    labels = rng.integers(0, 6, (grid.video_frames, grid.hp, grid.wp)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.5] = 0                # plenty of background
    if grid.video_frames > 2:
        labels[1] = 0                                         # a frame with no region at all
    scores = rng.uniform(0, 1, (grid.video_frames,) * 2)
    return labels, select_frames(scores, k, causal)


def _check_invariants(layout, groups, grid: TokenGrid):
    perm, bs = layout.perm, layout.block_size
    real = perm[perm >= 0]
    assert torch.equal(torch.sort(real).values, torch.arange(grid.seq_len))      # each token once
    frame, label = token_frame_and_label(np.zeros((grid.video_frames, grid.hp, grid.wp), np.uint8), grid)
    blocks = perm.view(layout.num_blocks, bs)
    for b in range(layout.num_blocks):
        toks = blocks[b][blocks[b] >= 0]
        assert toks.numel() > 0                                                   # no all-padding block
        assert int(groups.block_tokens[b]) == toks.numel()
        assert set(frame[toks].tolist()) == {int(groups.block_frame[b])}           # one frame per block
        assert (blocks[b][toks.numel():] == -1).all()                             # padding only at the tail
    counts, idx = layout.kv_num_blocks, layout.kv_indices
    assert counts.dtype == torch.int32 and idx.dtype == torch.int32 and perm.dtype == torch.int64
    for i in range(layout.num_blocks):
        row = idx[0, i, : counts[0, i]]
        assert (row[1:] > row[:-1]).all()                                          # ascending, unique
        assert i in row.tolist()                                                   # diagonal kept
        assert (idx[0, i, counts[0, i]:] == 0).all()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "grid, block",
    [
        (TokenGrid(video_frames=5, hp=6, wp=7), 8),
        (TokenGrid(video_frames=4, hp=5, wp=3), 16),                                   # odd grid, big blocks
        (TokenGrid(video_frames=3, hp=4, wp=4, ref_tokens_before=16), 8),               # Wan2.2-Fun ref_conv
        (TokenGrid(video_frames=4, hp=3, wp=5, leading_ref_frames=1), 4),               # Wan-Animate reference
        (TokenGrid(video_frames=3, hp=4, wp=3, extra_frames_after=2, ref_tokens_before=5), 8),  # Phantom
        (TokenGrid(video_frames=6, hp=3, wp=3), 1),                                     # token-level blocks
    ],
)
def test_layout_equals_token_reference_on_random_labels(grid, block, causal):
    rng = np.random.default_rng(grid.seq_len + block)
    for k in (1, 2):
        labels, sel = _random_case(rng, grid, causal, k)
        layout, groups = build_region_layout(labels, sel, grid, block)
        _check_invariants(layout, groups, grid)
        ref = reference_token_mask(labels, sel, grid)
        assert torch.equal(layout.token_mask()[0], ref)
        rep = layout.density()
        assert rep.token_density == pytest.approx(ref.double().mean().item(), rel=1e-12)


def test_reference_mask_semantics_spot_checks():
    grid = TokenGrid(video_frames=3, hp=1, wp=3, ref_tokens_before=2)
    labels = np.array([[[1, 0, 2]], [[1, 2, 0]], [[0, 1, 2]]], np.uint8)
    sel = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1]], bool)
    m = reference_token_mask(labels, sel, grid)
    tok = lambda f, w: 2 + f * 3 + w                                          # noqa: E731
    assert m[0].all() and m[:, 1].all()                                      # global tokens dense both ways
    assert m[tok(1, 1), tok(1, 2)]                                           # same frame, background included
    assert m[tok(1, 0), tok(0, 0)]                                           # face -> face of a selected frame
    assert not m[tok(0, 0), tok(1, 0)]                                       # frame 1 not selected by frame 0
    assert not m[tok(1, 1), tok(0, 0)]                                       # hand -> face: other region
    assert m[tok(1, 1), tok(0, 2)]                                           # left hand -> left hand
    assert not m[tok(2, 0), tok(1, 2)]                                       # background: no cross-frame
    assert not m[tok(2, 1), tok(0, 0)]                                       # face, frame 0 not selected by 2


def test_blocks_follow_group_order_within_a_frame():
    grid = TokenGrid(video_frames=2, hp=4, wp=4)
    labels = np.random.default_rng(0).integers(0, 6, (2, 4, 4)).astype(np.uint8)
    layout, groups = build_region_layout(labels, np.ones((2, 2), bool), grid, 4)
    rank = {LABELS[n]: i for i, n in enumerate(GROUP_ORDER)}
    for f in range(2):
        regions = groups.block_region[groups.block_frame == f]
        ranks = [rank[int(r)] for r in regions]
        assert ranks == sorted(ranks)
    assert (np.diff(groups.block_frame) >= 0).all()


def test_talking_sequence_end_to_end_exact_and_causal():
    pose = talking_pose(33, 256, 256, seed=4)
    grid = TokenGrid.from_latent_shape((9, 32, 32))                # 16x16 tokens, 9 latent frames
    for k in (2, 4):
        plan = build_pose_layout(pose, grid, SparseAttentionConfig(top_k=k, block_size=16))
        assert not plan.dense_fallback
        assert not np.triu(plan.frame_select, 1).any()
        assert (plan.frame_select.sum(1) == np.minimum(np.arange(9), k) + 1).all()
        ref = reference_token_mask(plan.labels, plan.frame_select, grid)
        assert torch.equal(plan.layout.token_mask()[0], ref)
        d = plan.density
        assert d.token_density == pytest.approx(ref.double().mean().item(), rel=1e-12)
        assert d.token_density <= d.block_density
        assert d.block_density == pytest.approx(d.kept_block_pairs * 16 ** 2 / grid.seq_len ** 2)
        assert sum(d.region_tokens.values()) == grid.seq_len
        assert all(d.region_tokens[r] > 0 for r in ("face", "left_hand", "right_hand", "arms", "torso"))
        # cross-frame attention exists, but is far below dense
        per_frame_only = 1.0 / grid.video_frames
        assert per_frame_only < d.token_density < 0.5


def test_extra_tokens_are_global_in_a_pose_layout():
    pose = talking_pose(9, 128, 128)
    grid = TokenGrid.from_latent_shape((4, 16, 16), leading_ref_frames=1, ref_tokens_before=64, extra_frames_after=1)
    plan = build_pose_layout(pose, grid, SparseAttentionConfig(block_size=4))   # 8x8-token frames: small blocks
    assert grid.video_frames == 3 and plan.labels.shape == (3, 8, 8)
    m = plan.layout.token_mask()[0]
    glob = torch.from_numpy(grid.token_frames() < 0)
    assert int(glob.sum()) == 64 + 64 + 64
    assert m[glob].all() and m[:, glob].all()
    assert torch.equal(m, reference_token_mask(plan.labels, plan.frame_select, grid))
    assert plan.density.region_tokens["global"] == 192


def test_reference_attends_itself_drops_only_the_reference_rows_to_the_video():
    """reference_attends="itself": the ref_conv tokens attend to each other only; every video token still attends
    to them and the video pattern is unchanged; the training mask is the same rule; fewer blocks are kept."""
    from iasa.attention.pattern_mask import pattern_token_mask

    pose = talking_pose(17, 128, 128, seed=2)
    grid = TokenGrid.from_latent_shape((5, 16, 16), ref_tokens_before=64)
    full = build_pose_layout(pose, grid, SparseAttentionConfig(block_size=8))
    own = build_pose_layout(pose, grid, SparseAttentionConfig(block_size=8, reference_attends="itself"))
    m, m_full = own.layout.token_mask()[0], full.layout.token_mask()[0]
    assert torch.equal(m, reference_token_mask(own.labels, own.frame_select, grid, reference_itself=True))
    glob = torch.from_numpy(grid.token_frames() < 0)
    assert m[glob][:, glob].all() and not m[glob][:, ~glob].any() and m[:, glob].all()
    assert torch.equal(m[~glob], m_full[~glob]) and m_full[glob].all()
    assert own.density.token_density == pytest.approx(m.double().mean().item(), rel=1e-12)
    assert own.density.kept_block_pairs < full.density.kept_block_pairs
    got = pattern_token_mask(torch.from_numpy(own.labels)[None], torch.from_numpy(own.frame_select)[None],
                             global_before=64, reference_itself=True)
    assert torch.equal(got[0], m)
    with pytest.raises(ValueError, match="reference_attends: unknown 'video'; choose from"):
        SparseAttentionConfig(reference_attends="video")


def test_config_checks_and_orders_its_regions():
    assert SparseAttentionConfig(regions=("torso", "face")).regions == ("face", "torso")
    with pytest.raises(ValueError, match="unknown region"):
        SparseAttentionConfig(regions=("face", "tail"))


def test_bidirectional_option_reaches_future_frames():
    pose = talking_pose(17, 128, 128, seed=5)
    grid = TokenGrid.from_latent_shape((5, 16, 16))
    plan = build_pose_layout(pose, grid, SparseAttentionConfig(top_k=2, causal=False, block_size=8))
    assert np.triu(plan.frame_select, 1).any()
    assert (plan.frame_select.sum(1) == 3).all()
    assert torch.equal(plan.layout.token_mask()[0], reference_token_mask(plan.labels, plan.frame_select, grid))


def test_no_person_gives_no_layout_and_says_why(caplog):
    """The caller takes the dense fallback and warns (test_attention_patch); the builder says why."""
    grid = TokenGrid.from_latent_shape((3, 16, 16))
    with caplog.at_level(logging.INFO, logger="iasa.attention.pose_layout"):
        plan = build_pose_layout(empty_pose(9, 128, 128), grid)
    assert plan.dense_fallback and plan.layout is None and "no person" in plan.fallback_reason
    assert plan.fallback_reason in caplog.text
    off = talking_pose(9, 128, 128)
    off.points[..., 0] += 10_000                                     # everybody far off the canvas
    plan = build_pose_layout(off, grid)
    assert plan.dense_fallback and "region" in plan.fallback_reason
    img = render_layout_preview(plan)
    assert img.ndim == 3 and img.shape[2] == 3


@pytest.mark.parametrize("packing, works", [
    ("group", "use block_size 16 (65 %) of dense work"),     # 16 is cheaper than dense here, 32 is not
    ("frame", "use block_size 16 (36 %) or 32 (48 %) or 64 (66 %) of dense work"),
])
def test_a_block_size_costlier_than_dense_is_refused_with_the_sizes_that_work(packing, works):
    """With blocks larger than the groups ("group": each region group padded to whole blocks) or than the
    frames ("frame": each frame padded) the kernel would do more than the work of dense attention
    (942.9 % was reported)."""
    pose = talking_pose(9, 192, 192)
    grid = TokenGrid.from_latent_shape((3, 24, 24))                    # 144 tokens per frame
    with pytest.raises(BlockSizeError, match="block_size: 128 is too large") as exc:
        build_pose_layout(pose, grid, SparseAttentionConfig(block_size=128, packing=packing))
    text = str(exc.value)
    assert "144 tokens" in text and "% of the work of dense attention" in text
    assert text.endswith(works)
    assert build_pose_layout(pose, grid, SparseAttentionConfig(block_size=16, packing=packing)).density.block_density < 1.0
    with pytest.raises(BlockSizeError, match="no block size of 16 or more"):
        side = 64 if packing == "group" else 48                           # 4x4 or 3x3 tokens per frame
        build_pose_layout(talking_pose(9, side, side), TokenGrid.from_latent_shape((3, side // 8, side // 8)),
                          SparseAttentionConfig(block_size=32, packing=packing))


def test_context_window_takes_the_frames_of_the_whole_video():
    pose = talking_pose(33, 128, 128, seed=6)
    full_grid = TokenGrid.from_latent_shape((9, 16, 16))
    full = build_pose_layout(pose, full_grid, SparseAttentionConfig(block_size=8))
    window = [3, 4, 5, 6]
    win_grid = TokenGrid.from_latent_shape((4, 16, 16))
    win = build_pose_layout(pose, win_grid, SparseAttentionConfig(block_size=8), latent_frames=window,
                            total_latent_frames=9)
    assert np.array_equal(win.labels, full.labels[window])
    assert np.allclose(win.frame_scores, full.frame_scores[np.ix_(window, window)])
    assert not np.triu(win.frame_select, 1).any()
    with pytest.raises(ValueError, match="latent_frames"):
        build_pose_layout(pose, win_grid, latent_frames=[0, 1])


def test_random_layout_density_heads_and_seed():
    L, bs, heads = 1000, 32, 4                                      # L not a multiple of the block
    a = random_layout(L, bs, 0.25, heads, seed=1)
    nb = -(-L // bs)
    assert a.num_blocks == nb and a.kv_num_blocks.shape == (heads, nb)
    assert (a.kv_num_blocks == round(0.25 * nb)).all()
    m = a.to_dense()
    assert m[:, torch.arange(nb), torch.arange(nb)].all()
    assert not torch.equal(m[0], m[1])                               # differs per head
    assert torch.equal(m, random_layout(L, bs, 0.25, heads, seed=1).to_dense())
    assert not torch.equal(m, random_layout(L, bs, 0.25, heads, seed=2).to_dense())
    assert (a.perm[L:] == -1).all() and torch.equal(a.perm[:L], torch.arange(L))
    tm = a.token_mask()[2]
    assert torch.equal(tm[:bs, :bs], torch.ones(bs, bs, dtype=torch.bool))
    with pytest.raises(ValueError, match="density"):
        random_layout(L, bs, 0.0)


def test_struct_layout_matches_its_definition():
    frames, F, bs = 5, 37, 16
    lay = struct_layout(frames, F, bs)
    m = lay.to_dense()[0]
    nb = lay.num_blocks
    for i in range(nb):
        s = bs * i
        f, o = s // F, s - (s // F) * F
        want = {j for j in range(nb) if j * bs < (f + 1) * F and (j + 1) * bs > f * F}
        want |= {(g * F + o) // bs for g in range(frames)}
        assert set(torch.nonzero(m[i]).squeeze(1).tolist()) == want


def test_preview_shows_regions_and_blocks():
    pose = talking_pose(17, 128, 128)
    plan = build_pose_layout(pose, TokenGrid.from_latent_shape((5, 16, 16)), SparseAttentionConfig(block_size=8))
    img = render_layout_preview(plan, width=256)
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[1] == 256 and img.shape[2] == 3
    assert 0.0 <= img.min() and img.max() <= 1.0
    colours = {tuple(np.round(c, 3)) for c in img.reshape(-1, 3)}
    for name in ("face", "arms", "torso"):
        assert tuple(np.round(np.float32(REGION_COLORS[name]), 3)) in colours
    assert (1.0, 1.0, 1.0) in colours                                  # kept background blocks


def test_layout_from_audio_driven_pose_is_exact():
    """The demo speech through audio features and audio-to-pose into a layout."""
    from iasa.audio.features import features_from_audio
    from iasa.audio.loading import load_audio_file
    from iasa.pose.audio_to_pose import audio_to_pose

    speech = pathlib.Path(__file__).resolve().parents[2] / "assets" / "demo" / "speech.wav"
    audio = load_audio_file(speech, start=1.0, duration=1.4)           # 35 frames at 25 fps
    pose = audio_to_pose(talking_pose(1, 256, 256), features_from_audio(audio, 25.0), seed=0)
    grid = TokenGrid.from_latent_shape((9, 32, 32))                     # 33 pixel frames: pose resampled
    plan = build_pose_layout(pose, grid, SparseAttentionConfig(top_k=2, block_size=16))
    assert not plan.dense_fallback
    assert len({plan.labels[f].tobytes() for f in range(9)}) > 1      # the regions move with the speech
    for name in ("face", "left_hand", "right_hand", "arms"):
        assert plan.density.region_tokens[name] > 0
    ref = reference_token_mask(plan.labels, plan.frame_select, grid)
    assert torch.equal(plan.layout.token_mask()[0], ref)


def test_training_pattern_mask_equals_the_oracle():
    """attention/pattern_mask.py (the batched token mask the training code uses) against the brute force."""
    from iasa.attention.pattern_mask import pattern_token_mask

    rng = np.random.default_rng(7)
    grid = TokenGrid(video_frames=4, hp=3, wp=5, ref_tokens_before=15)
    cases = [_random_case(rng, grid, causal, 2) for causal in (True, False)]
    labels = torch.from_numpy(np.stack([c[0] for c in cases]))
    select = torch.from_numpy(np.stack([c[1] for c in cases]))
    got = pattern_token_mask(labels, select, global_before=grid.ref_tokens_before)
    for b, (lab, sel) in enumerate(cases):
        assert torch.equal(got[b], reference_token_mask(lab, sel, grid))
