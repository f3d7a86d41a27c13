"""The sparse teacher trains under exactly the mask IASA Sparse Attention applies at inference.

- ``pattern_token_mask`` (batched, torch) == the brute-force Eq. 1-3 token mask, with and without the
  ref_conv tokens in front;
- a tiny IASA-mini teacher forward with the training override (``MaskedSelfAttention``) == the same forward
  through the ComfyUI patch's block-sparse ``sdpa`` kernel built from the same pose; dense differs;
- the training step draws sparse and dense steps and the sparse ones go through the mask.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from iasa.attention.grid import TokenGrid
from iasa.attention.patch import CALL_KEY, CallInfo, SelfAttentionCallSite, SparseAttentionPatch
from iasa.attention.pattern_mask import pattern_token_mask
from iasa.attention.pose_layout import SparseAttentionConfig, build_pose_layout, pose_pattern
from iasa.training.masked_attention import MaskedSelfAttention, transformer_options
from iasa.training.teacher_data import LatentSet, token_grid
from iasa.training.tiny_wan import TeacherConfig, build_teacher
from iasa.pose.synthetic import talking_pose
from .attention_reference import reference_token_mask
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)


@pytest.mark.parametrize("global_before", [0, 12])
def test_pattern_token_mask_equals_the_brute_force_mask(global_before):
    rng = np.random.default_rng(global_before)
    f, hp, wp = 4, 3, 4
    grid = TokenGrid(video_frames=f, hp=hp, wp=wp, ref_tokens_before=global_before)
    labels = rng.integers(0, 6, (3, f, hp, wp)).astype(np.uint8)
    select = rng.random((3, f, f)) < 0.4
    select[:, np.arange(f), np.arange(f)] = True
    batched = pattern_token_mask(torch.from_numpy(labels), torch.from_numpy(select), global_before)
    assert batched.shape == (3, grid.seq_len, grid.seq_len)
    for b in range(3):
        assert torch.equal(batched[b], reference_token_mask(labels[b], select[b], grid))
    assert 0.05 < float(batched.float().mean()) < 0.95       # neither dense nor empty
    with pytest.raises(ValueError, match="frame_select"):
        pattern_token_mask(torch.from_numpy(labels), torch.from_numpy(select[:, :2]))


def _tiny_teacher() -> torch.nn.Module:
    model = build_teacher(TeacherConfig(dim=128, num_layers=2, ffn_dim=256), seed=0)
    with torch.no_grad():   # a zero output head would hide every difference
        model.head.head.weight.normal_(0, 0.05)
    return model.eval()


def test_training_mask_forward_equals_the_inference_patch():
    """Same pose -> the training override and the ComfyUI patch (block layout, sdpa kernel) agree."""
    frames, size = 9, 64                                # 3 latent frames of 4 x 4 tokens
    lat_thw = ((frames - 1) // 4 + 1, size // 8, size // 8)
    pose = talking_pose(frames, size, size, seed=3)
    config = SparseAttentionConfig(top_k=1, causal=True, block_size=4)
    grid = token_grid(lat_thw)
    labels, select, _ = pose_pattern(pose, grid, config)
    assert labels.any() and not select.all()
    mask = pattern_token_mask(torch.from_numpy(labels)[None], torch.from_numpy(select)[None], grid.ref_tokens_before)
    plan = build_pose_layout(pose, grid, config)
    assert plan.layout is not None and np.array_equal(plan.labels, labels)

    model = _tiny_teacher()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 48, *lat_thw, generator=g)
    ref = torch.randn(1, 16, *lat_thw[1:], generator=g)
    t, ctx = torch.tensor([700.0]), torch.zeros(1, 1, 4096)
    patch = SparseAttentionPatch(pose, config, kernel="sdpa")
    override = MaskedSelfAttention(mask)
    with torch.no_grad():
        train = model(x, t, ctx, reference_latent=ref, transformer_options={"optimized_attention_override": override})
        dense = model(x, t, ctx, reference_latent=ref)
        for i, block in enumerate(model.blocks):   # the call sites apply_sparse_attention patches in
            block.self_attn.forward = SelfAttentionCallSite(block.self_attn.forward, i)
        infer = model(x, t, ctx, reference_latent=ref, transformer_options={
            "optimized_attention_override": patch.attention, CALL_KEY: CallInfo(grid, None)})
    assert override.calls == 2 and patch.stats["sparse"] == 2   # one self-attention per block, cross passed on
    assert torch.allclose(train, infer, atol=1e-5, rtol=1e-4)
    assert float((train - dense).abs().max()) > 1e-3


def test_teacher_step_trains_sparse_and_dense_steps(monkeypatch):
    from iasa.training import teacher_train
    from iasa.training import distributed as D

    masks: list = []
    real = teacher_train.transformer_options

    def spy(mask):
        masks.append(None if mask is None else tuple(mask.shape))
        return real(mask)

    monkeypatch.setattr(teacher_train, "transformer_options", spy)
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, 2, 2, 2, dtype=torch.uint8)
    labels[:, :, 0, 0] = 1
    lat = LatentSet(x0=torch.randn(2, 16, 2, 4, 4, generator=g), control=torch.randn(2, 16, 2, 4, 4, generator=g),
                    ref_random=torch.randn(2, 16, 1, 4, 4, generator=g), labels=labels,
                    frame_select=torch.eye(2, dtype=torch.bool).expand(2, 2, 2).clone(), ids=["a", "b"])
    args = types.SimpleNamespace(batch=3, p_uncond=0.5, ref_random_prob=0.5, shift=3.0, context_tokens=1, amp="none",
                                 sparse_prob=0.5)
    model = build_teacher(TeacherConfig(dim=128, num_layers=1, ffn_dim=256), seed=0)
    step = teacher_train.TeacherStep(model, lat, args, D.DistInfo(), torch.Generator().manual_seed(1))
    for i in range(12):
        loss, _ = step(i)
        assert torch.isfinite(loss)
    seq = 4 + 2 * 4                                         # 4 ref_conv tokens + 2 frames of 2 x 2 tokens
    assert set(masks) == {None, (3, seq, seq)}             # both kinds of step happen


def test_masked_attention_refuses_a_wrong_mask_and_passes_other_calls_on():
    with pytest.raises(ValueError, match="bool mask"):
        MaskedSelfAttention(torch.ones(2, 3, 4, dtype=torch.bool))
    assert transformer_options(None) == {}
    seen = []
    m = MaskedSelfAttention(torch.ones(1, 6, 6, dtype=torch.bool))
    q = torch.randn(1, 6, 256)
    k = torch.randn(1, 1, 256)                              # cross-attention to a 1-token context
    m(lambda *a, **kw: seen.append(a[1].shape) or a[0], q, k, k, heads=2)
    assert seen == [k.shape] and m.calls == 0
    out = m(None, q, q, q, heads=2)
    ref = torch.nn.functional.scaled_dot_product_attention(*(t.view(1, 6, 2, 128).transpose(1, 2) for t in (q, q, q)))
    assert torch.allclose(out, ref.transpose(1, 2).reshape(1, 6, 256), atol=1e-6) and m.calls == 1
