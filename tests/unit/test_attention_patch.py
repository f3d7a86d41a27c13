"""The ComfyUI patch's routing logic, without ComfyUI: which attention calls go sparse, which stay dense."""
from __future__ import annotations

import logging
import types

import numpy as np
import pytest
import torch

from iasa.attention.grid import TokenGrid
from iasa.attention.patch import (CALL_KEY, FALLBACK_HELP, SELF_ATTN_KEY, CallInfo, DenseFallbackError,
                                  SelfAttentionCallSite, SparseAttentionPatch, self_attention_sites,
                                  step_index)
from iasa.attention.wan_grid import grid_from_call, grid_from_conditioning
from iasa.attention.pose_layout import SparseAttentionConfig

from iasa.pose.synthetic import empty_pose, talking_pose

GRID = TokenGrid.from_latent_shape((3, 8, 8))       # 3 latent frames of 4x4 tokens -> L = 48
HEADS, HEAD_DIM = 2, 16


def make_patch(pose=None, **kw) -> SparseAttentionPatch:
    pose = talking_pose(n_frames=9, width=64, height=64) if pose is None else pose
    return SparseAttentionPatch(pose, SparseAttentionConfig(top_k=1, block_size=4), kernel="sdpa", **kw)


def qkv(seq_q: int, seq_k: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seq_k = seq_k or seq_q
    q = torch.randn(1, seq_q, HEADS * HEAD_DIM, generator=g)
    k = torch.randn(1, seq_k, HEADS * HEAD_DIM, generator=g)
    v = torch.randn(1, seq_k, HEADS * HEAD_DIM, generator=g)
    return q, k, v


class DenseBackend:
    """Stands in for ComfyUI's backend: plain attention on [B, L, H*D], counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, q, k, v, heads=None, transformer_options=None, **kwargs):
        self.calls += 1
        b, lq, hd = q.shape
        qh, kh, vh = (t.view(b, t.shape[1], heads, hd // heads).transpose(1, 2) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)
        return out.transpose(1, 2).reshape(b, lq, hd)


def options(layer: int | None = 5, **extra) -> dict:
    """transformer_options of a call: self-attention of ``layer`` (what SelfAttentionCallSite adds), or
    any other call (cross-attention) with ``layer=None``."""
    marker = {} if layer is None else {SELF_ATTN_KEY: layer}
    return {CALL_KEY: CallInfo(GRID, step=3), **marker, **extra}


def test_video_self_attention_is_sparse_and_exact():
    patch, dense = make_patch(), DenseBackend()
    q, k, v = qkv(GRID.seq_len)
    out = patch.attention(dense, q, k, v, heads=HEADS, transformer_options=options())
    assert dense.calls == 0 and patch.stats["sparse"] == 1
    mask = patch.layout_for(CallInfo(GRID, 3)).layout.token_mask()[0]
    qh, kh, vh = (t.view(1, GRID.seq_len, HEADS, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    torch.testing.assert_close(out, ref.transpose(1, 2).reshape(1, GRID.seq_len, -1), atol=1e-5, rtol=1e-5)
    assert not mask.all(), "the pattern must actually be sparse"


def test_cross_attention_and_unknown_calls_stay_dense():
    patch, dense = make_patch(), DenseBackend()
    q, k, v = qkv(GRID.seq_len, 7)
    patch.attention(dense, q, k, v, heads=HEADS, transformer_options=options(None))  # cross-attention
    q2, k2, v2 = qkv(GRID.seq_len)
    patch.attention(dense, q2, k2, v2, heads=HEADS, transformer_options={SELF_ATTN_KEY: 0})  # no grid
    patch.attention(dense, q2, k2, v2, heads=HEADS, mask=torch.ones(1), transformer_options=options())
    assert dense.calls == 3 and patch.stats["sparse"] == 0
    assert patch.stats["dense_cross_attention"] == 1 and patch.stats["dense_no_grid"] == 1
    assert patch.stats["dense_masked"] == 1


# One case per fallback: (patch options, transformer_options, sequence length, extra attention kwargs).
FALLBACK_CASES = {
    "no_grid": ({}, {SELF_ATTN_KEY: 0}, GRID.seq_len, {}),
    "no_call_site": ({}, options(None), GRID.seq_len, {}),
    "masked": ({}, options(), GRID.seq_len, {"mask": torch.ones(1, GRID.seq_len, GRID.seq_len, dtype=torch.bool)}),
    "unexpected_length": ({}, options(), GRID.seq_len + 16, {}),
    "grid_mismatch": ({}, options(grid_sizes=(3, 4, 5)), GRID.seq_len, {}),
    "no_layout": ({"pose": empty_pose(9, 64, 64)}, options(), GRID.seq_len, {}),
}


def test_every_fallback_has_a_case():
    assert set(FALLBACK_CASES) == set(FALLBACK_HELP)


@pytest.mark.parametrize("reason", sorted(FALLBACK_CASES))
def test_fallback_is_dense_and_logged_once_per_run_with_its_reason(reason, caplog):
    patch_kw, to, seq, extra = FALLBACK_CASES[reason]
    patch, dense = make_patch(**patch_kw), DenseBackend()
    q, k, v = qkv(seq)
    with caplog.at_level(logging.WARNING, logger="iasa.attention"):
        patch.start_run()
        for _ in range(3):
            out = patch.attention(dense, q, k, v, heads=HEADS, transformer_options=to, **extra)
        first = [r for r in caplog.records if "falls back to dense" in r.getMessage()]
        patch.end_run()
        patch.start_run()                                       # a new sampling run logs it again
        patch.attention(dense, q, k, v, heads=HEADS, transformer_options=to, **extra)
    assert out.shape == q.shape and dense.calls == 4 and patch.stats["sparse"] == 0
    assert patch.stats[f"dense_{reason}"] == 4
    assert len(first) == 1 and FALLBACK_HELP[reason] in first[0].getMessage()
    fallbacks = [r for r in caplog.records if "falls back to dense" in r.getMessage()]
    assert len(fallbacks) == 2
    summary = [r for r in caplog.records if "fully dense" in r.getMessage()]
    assert len(summary) == 1 and summary[0].levelno == logging.WARNING and f"dense_{reason}: 3" in summary[0].getMessage()


@pytest.mark.parametrize("reason", sorted(FALLBACK_CASES))
def test_strict_raises_instead_of_falling_back(reason):
    patch_kw, to, seq, extra = FALLBACK_CASES[reason]
    patch, dense = make_patch(strict=True, **patch_kw), DenseBackend()
    q, k, v = qkv(seq)
    with pytest.raises(DenseFallbackError, match="strict") as exc:
        patch.attention(dense, q, k, v, heads=HEADS, transformer_options=to, **extra)
    assert FALLBACK_HELP[reason] in str(exc.value) and "Turn strict off" in str(exc.value)
    assert dense.calls == 0


def test_by_design_dense_calls_are_not_fallbacks(caplog):
    """Cross-attention and the dense_blocks / dense_steps options never warn, never raise under strict."""
    patch, dense = make_patch(dense_blocks=1, dense_steps=1, strict=True), DenseBackend()
    q, k, v = qkv(GRID.seq_len)
    with caplog.at_level(logging.INFO, logger="iasa.attention"):
        patch.start_run()
        patch.attention(dense, *qkv(GRID.seq_len, 7), heads=HEADS, transformer_options=options(None))
        patch.attention(dense, q, k, v, heads=HEADS, transformer_options=options(0))
        patch.attention(dense, q, k, v, heads=HEADS, transformer_options={CALL_KEY: CallInfo(GRID, step=0),
                                                                          SELF_ATTN_KEY: 3})
        patch.attention(dense, q, k, v, heads=HEADS, transformer_options=options(1))
        patch.end_run()
    assert dense.calls == 3 and patch.stats["sparse"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "dense_block: 1, dense_cross_attention: 1, dense_step: 1, sparse: 1" in caplog.text


def test_dense_blocks_steps_and_native_keys():
    patch, dense = make_patch(dense_blocks=2, dense_steps=4), DenseBackend()
    q, k, v = qkv(GRID.seq_len)
    patch.attention(dense, q, k, v, heads=HEADS, transformer_options=options(1))
    patch.attention(dense, q, k, v, heads=HEADS, transformer_options=options(block_index=5))   # step 3 < 4
    assert dense.calls == 2
    late = {CALL_KEY: CallInfo(GRID, step=4), SELF_ATTN_KEY: 0, "block_index": 2}   # native index wins
    patch.attention(dense, q, k, v, heads=HEADS, transformer_options=late)
    assert patch.stats["sparse"] == 1
    patch.attention(dense, q, k, v, heads=HEADS, transformer_options={**late, "grid_sizes": (3, 4, 5)})
    assert patch.stats["dense_grid_mismatch"] == 1
    patch.attention(dense, q, k, v, heads=HEADS, transformer_options={**late, "grid_sizes": GRID.patch_grid})
    assert patch.stats["sparse"] == 2


def test_previous_override_receives_the_dense_calls():
    seen = []

    def previous(func, *args, **kwargs):
        seen.append(args[0].shape)
        return func(*args, **kwargs)

    patch, dense = make_patch(), DenseBackend()
    patch.previous_override = previous
    q, k, v = qkv(GRID.seq_len, 5)
    patch.attention(dense, q, k, v, heads=HEADS, transformer_options=options(None))
    assert seen == [q.shape] and dense.calls == 1


def test_layout_is_built_once_per_grid():
    patch, dense = make_patch(), DenseBackend()
    q, k, v = qkv(GRID.seq_len)
    for _ in range(4):
        patch.attention(dense, q, k, v, heads=HEADS, transformer_options=options())
    assert patch.stats["layouts_built"] == 1 and patch.stats["sparse"] == 4


def test_step_index():
    schedule = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.0])
    assert step_index({"sigmas": torch.tensor([0.7]), "sample_sigmas": schedule}) == 2
    assert step_index({}) is None


def test_call_site_marks_self_attention_with_its_layer():
    seen = []

    def forward(x, freqs, transformer_options={}):
        seen.append(transformer_options)
        return x

    to = {"a": 1}
    assert SelfAttentionCallSite(forward, 7)("x", "freqs", transformer_options=to) == "x"
    assert seen == [{"a": 1, SELF_ATTN_KEY: 7}] and to == {"a": 1}       # the caller's dict is not changed


def test_self_attention_sites_cover_vace_blocks_at_their_layer():
    blocks = [object()] * 4
    dm = types.SimpleNamespace(blocks=blocks, vace_blocks=[object()] * 2, vace_layers_mapping={0: 0, 2: 1})
    assert self_attention_sites(dm) == [("blocks.0.self_attn.forward", 0), ("blocks.1.self_attn.forward", 1),
                                        ("blocks.2.self_attn.forward", 2), ("blocks.3.self_attn.forward", 3),
                                        ("vace_blocks.0.self_attn.forward", 0), ("vace_blocks.1.self_attn.forward", 2)]


def test_cross_attention_as_long_as_the_video_stays_dense():
    """A video of as many tokens as the text (e.g. 256x256, 5 frames and 512 text tokens): cross-attention
    has q and k of equal length, yet it is not self-attention and must not get the sparse mask."""
    patch, dense = make_patch(), DenseBackend()
    q, k, v = qkv(GRID.seq_len)
    patch.start_run()
    patch.attention(dense, q, k, v, heads=HEADS, transformer_options=options(0))      # block 0 self-attention
    qc, kc, vc = qkv(GRID.seq_len, seed=1)                                              # text of L tokens
    out = patch.attention(dense, qc, kc, vc, heads=HEADS, transformer_options=options(None))
    assert patch.stats["sparse"] == 1 and patch.stats["dense_cross_attention"] == 1 and dense.calls == 1
    torch.testing.assert_close(out, DenseBackend()(qc, kc, vc, heads=HEADS))


def test_grid_from_call_offsets():
    dm = types.SimpleNamespace(patch_size=(1, 2, 2), ref_conv=None)
    model = types.SimpleNamespace(diffusion_model=dm, latent_format=types.SimpleNamespace(latent_channels=16))
    x = torch.zeros(2, 16, 5, 9, 13)        # odd sizes: Wan pads up to the patch
    grid = grid_from_call(model, x, {"time_dim_concat": torch.zeros(1, 16, 2, 9, 13)})
    assert (grid.video_frames, grid.hp, grid.wp, grid.extra_frames_after) == (5, 5, 7, 2)
    dm.ref_conv = object()
    grid = grid_from_call(model, x, {"reference_latent": torch.zeros(1, 16, 9, 13)})
    assert grid.ref_tokens_before == 5 * 7 and grid.token_px == 16
    model.latent_format.latent_channels = 48       # Wan 2.2-TI2V-5B: 32 px tokens
    assert grid_from_call(model, x, {}).token_px == 32
    Animate = type("AnimateWanModel", (), {"patch_size": (1, 2, 2), "ref_conv": None})
    grid = grid_from_call(types.SimpleNamespace(diffusion_model=Animate(), latent_format=None), x, {})
    assert grid.leading_ref_frames == 1 and grid.video_frames == 4
    assert np.prod(grid.patch_grid) + grid.ref_tokens_before == grid.seq_len


def test_vace_reference_frame_from_its_zero_mask():
    """WanVaceToVideo with a reference image: latent frame 0 is the reference, its VACE mask all zero."""
    dm = types.SimpleNamespace(patch_size=(1, 2, 2), ref_conv=None)
    model = types.SimpleNamespace(diffusion_model=dm, latent_format=None)
    x = torch.zeros(1, 16, 1 + 4, 8, 8)
    vace = torch.randn(1, 1, 96, 5, 8, 8)
    vace[:, :, 32:, 0] = 0.0                                     # reference frame: mask zero
    grid = grid_from_call(model, x, {"vace_context": vace})
    assert (grid.leading_ref_frames, grid.video_frames, grid.continued_frames) == (1, 4, 0)
    cond = [[torch.zeros(1, 8, 4096), {"vace_frames": [torch.zeros(1, 32, 5, 8, 8)],
                                       "vace_mask": [torch.cat([torch.zeros(1, 64, 1, 8, 8),
                                                                torch.ones(1, 64, 4, 8, 8)], dim=2)]}]]
    assert grid_from_conditioning(cond, model) == grid            # the node sees what sampling will see
    vace[:, :, 32:, 0] = 1.0                                     # no reference image
    assert grid_from_call(model, x, {"vace_context": vace}).leading_ref_frames == 0


def test_animate_reference_and_continue_motion_frames():
    """WanAnimateToVideo: frame 0 is the reference; continue_motion frames have a zero concat_mask, which the
    model sees as ones in the first 4 channels of c_concat (1 - mask)."""
    Animate = type("AnimateWanModel", (), {"patch_size": (1, 2, 2), "ref_conv": None})
    model = types.SimpleNamespace(diffusion_model=Animate(), latent_format=None)
    x = torch.zeros(1, 16, 1 + 6, 8, 8)
    concat_mask = torch.ones(1, 4, 7, 8, 8)
    concat_mask[:, :, :3] = 0.0                                  # reference + 2 continue-motion frames
    c_concat = torch.cat([1.0 - concat_mask, torch.randn(1, 16, 7, 8, 8)], dim=1)
    grid = grid_from_call(model, x, {}, c_concat)
    assert (grid.leading_ref_frames, grid.continued_frames, grid.video_frames) == (3, 2, 4)
    assert list(grid.pixel_frames_of_latent(0)) == [5, 6, 7, 8]       # latent frame 2 of the generated video
    cond = [[torch.zeros(1, 8, 4096), {"concat_latent_image": torch.zeros(1, 16, 7, 8, 8), "concat_mask": concat_mask}]]
    assert grid_from_conditioning(cond, model) == grid
    assert grid_from_call(model, x, {}, None).leading_ref_frames == 1     # no mask channels: reference only
