"""Sparse attention inside torch.compile (CPU): no graph break, one compile per resolution, same result.

Backends "eager" / "aot_eager" (dynamo + AOT tracing without inductor codegen, which takes minutes on
two cores); ``fullgraph=True`` wherever our code is the whole function, so any graph break fails.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import math
import types

import pytest
import torch

from iasa.attention.grid import TokenGrid
from iasa.attention.kernels import block_sparse_attention, prepare_kernel
from iasa.attention.layout import random_layout
from iasa.attention.paged_op import paged_block_sparse_attention, register_paged_plan, registered_plans
from iasa.attention.patch import CALL_KEY, FALLBACK_HELP, SELF_ATTN_KEY, CallInfo, SparseAttentionPatch
from iasa.attention.pose_layout import SparseAttentionConfig
from iasa.attention.xformers_paged import build_paged_plan
from iasa.pose.synthetic import talking_pose

from .attention_reference import emulated_attend
from .stock_wan import apply_model_once, pytorch_attention, tiny_wan  # noqa: F401  (fixtures)
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)

GRID = TokenGrid.from_latent_shape((3, 8, 8))       # 3 latent frames of 4x4 tokens -> L = 48
HEADS, HEAD_DIM = 2, 16


class CountingBackend:
    """A dynamo backend that runs the captured graph as is and counts how many graphs were compiled."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def dense(q, k, v, heads=None, transformer_options=None, **kwargs):
    b, lq, hd = q.shape
    qh, kh, vh = (t.view(b, t.shape[1], heads, hd // heads).transpose(1, 2) for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, lq, hd)


def prepared_call(patch: SparseAttentionPatch, step: int = 3) -> CallInfo:
    """A CallInfo as the APPLY_MODEL wrapper makes it (layout and kernel prepared for the model's q)."""
    model = types.SimpleNamespace(diffusion_model=types.SimpleNamespace(num_heads=HEADS, dim=HEADS * HEAD_DIM),
                                  manual_cast_dtype=torch.float32)
    call = CallInfo(GRID, step)
    return dataclasses.replace(call, state=patch.prepare_call(call, model, torch.zeros(1)))


def block(patch: SparseAttentionPatch, x: torch.Tensor, ctx: torch.Tensor, to: dict) -> torch.Tensor:
    """One transformer block's attention calls as a Wan block makes them: self-attention (marked by the
    call site) then cross-attention to the text."""
    y = patch.attention(dense, x, x * 0.5, x + 1.0, heads=HEADS, transformer_options={**to, SELF_ATTN_KEY: 0})
    return patch.attention(dense, y, ctx, ctx, heads=HEADS, transformer_options=to)


@pytest.mark.parametrize("kernel", ["sdpa", "flex_eager"])
def test_patched_attention_traces_fullgraph_equals_eager_and_compiles_once(kernel):
    torch._dynamo.reset()
    patch = SparseAttentionPatch(talking_pose(9, 64, 64), SparseAttentionConfig(top_k=1, block_size=4),
                                 kernel=kernel, dense_steps=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, GRID.seq_len, HEADS * HEAD_DIM, generator=g)
    ctx = torch.randn(1, 7, HEADS * HEAD_DIM, generator=g)
    eager = block(patch, x, ctx, {CALL_KEY: prepared_call(patch)})
    backend = CountingBackend()
    compiled = torch.compile(block, backend=backend, fullgraph=True)
    calls = [prepared_call(patch) for _ in range(2)]
    outs = [compiled(patch, x, ctx, {CALL_KEY: c}) for c in calls]
    assert backend.graphs == 1, "a second call at the same resolution must reuse the graph"
    for out in outs:
        torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    # The routes were recorded as side effects of the compiled calls (the wrapper counts them afterwards).
    assert [c.state.notes for c in calls] == [[("sparse", None), ("dense_cross_attention", None)]] * 2
    # Not the dense result: the pattern is really applied inside the graph.
    dense_out = dense(dense(x, x * 0.5, x + 1.0, heads=HEADS), ctx, ctx, heads=HEADS)
    assert (dense_out - outs[0]).abs().max() > 1e-3
    # A dense step (dense_steps=1, step 0) is a second graph, compiled once, then reused as well.
    first = [compiled(patch, x, ctx, {CALL_KEY: prepared_call(patch, step=0)}) for _ in range(2)]
    assert backend.graphs == 2
    torch.testing.assert_close(first[0], dense_out, atol=1e-5, rtol=1e-5)


class Executor:
    """Stands in for ComfyUI's APPLY_MODEL WrapperExecutor over a tiny Wan-like model; ``fn(transformer_options)``
    is the model call."""

    def __init__(self, fn):
        self.fn = fn
        dm = types.SimpleNamespace(patch_size=(1, 2, 2), ref_conv=None, num_heads=HEADS, dim=HEADS * HEAD_DIM)
        self.class_obj = types.SimpleNamespace(diffusion_model=dm, manual_cast_dtype=torch.float32,
                                               latent_format=types.SimpleNamespace(latent_channels=16))

    def __call__(self, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        return self.fn(transformer_options)


def test_a_fallback_inside_a_compiled_model_is_counted_and_logged_by_the_wrapper(caplog):
    """The compiled call only records the fallback; the wrapper (outside the graph) counts and logs it."""
    torch._dynamo.reset()
    patch = SparseAttentionPatch(talking_pose(9, 64, 64), SparseAttentionConfig(top_k=1, block_size=4), kernel="sdpa")
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, GRID.seq_len, HEADS * HEAD_DIM, generator=g)
    mask = torch.ones(1, GRID.seq_len, GRID.seq_len, dtype=torch.bool)

    def masked_self_attention(to):
        return patch.attention(dense, h, h, h, heads=HEADS, mask=mask, transformer_options={**to, SELF_ATTN_KEY: 0})

    ex = Executor(torch.compile(masked_self_attention, backend="eager", fullgraph=True))
    x = torch.zeros(1, 16, 3, 8, 8)                       # the latent of GRID
    with caplog.at_level(logging.WARNING, logger="iasa.attention"):
        patch.start_run()
        for _ in range(2):
            out = patch.apply_model_wrapper(ex, x, torch.ones(1), None, None, None, {})
        patch.end_run()
    torch.testing.assert_close(out, dense(h, h, h, heads=HEADS))
    assert patch.stats["dense_masked"] == 2 and patch.stats["sparse"] == 0
    warnings = [r.getMessage() for r in caplog.records if "falls back to dense" in r.getMessage()]
    assert len(warnings) == 1 and FALLBACK_HELP["masked"] in warnings[0]
    assert any("fully dense" in r.getMessage() for r in caplog.records)


def test_prepared_kernel_is_validated_once_and_traces_with_aot_eager():
    layout = random_layout(64, 16, density=0.5, heads=2, seed=1)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g) for _ in range(3))
    kernel = prepare_kernel(layout, "sdpa", q)
    assert prepare_kernel(layout, "sdpa", q) is kernel
    out = torch.compile(lambda a, b, c: kernel(a, b, c) * 2.0, backend="aot_eager", fullgraph=True)(q, k, v)
    torch.testing.assert_close(out, 2.0 * block_sparse_attention(q, k, v, layout, kernel="sdpa"))
    assert not kernel.fits(q.to(torch.float64)) and not kernel.fits(q[:, :1])


# --------------------------------------------------------------------------- the paged custom op
def _registered(layout, heads):
    plan = build_paged_plan(layout, heads, torch.device("cpu"))
    return register_paged_plan(layout, plan, emulated_attend)


def test_paged_custom_op_is_registered_with_a_fake_impl_and_matches_sdpa():
    layout = random_layout(80, 16, density=0.4, heads=2, seed=3)
    layout.perm[70:] = -1                       # padding keys inside the last block: the LSE correction runs
    layout.seq_len = 70
    layout.perm[:70] = torch.randperm(70, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 70, 16, generator=g) for _ in range(3))
    plan_id = _registered(layout, 2)
    op = torch.ops.iasa.paged_block_sparse_attention
    scale = 1.0 / math.sqrt(16)
    ref = block_sparse_attention(q, k, v, layout, kernel="sdpa")
    torch.testing.assert_close(op(q, k, v, plan_id, scale), ref, atol=1e-5, rtol=1e-5)
    # The fake impl: the right shape and dtype without running the kernel.
    from torch._subclasses.fake_tensor import FakeTensorMode

    strided = q.transpose(1, 2).contiguous().transpose(1, 2)        # [B, H, L, D] view of [B, L, H, D], as the patch has
    with FakeTensorMode() as mode:
        fq = mode.from_tensor(strided)
        fake = op(fq, fq, fq, plan_id, scale)
    assert fake.shape == q.shape and fake.dtype == q.dtype and fake.is_contiguous()
    torch.library.opcheck(op, (q, k, v, plan_id, scale), test_utils=("test_schema", "test_faketensor",
                                                                     "test_aot_dispatch_static"))
    # Compiled: the op is one opaque node of a full graph, and the result is the same.
    graphs = []

    def backend(gm, example_inputs):
        graphs.append([n.target for n in gm.graph.nodes if n.op == "call_function"])
        return gm.forward

    fn = torch.compile(lambda a, b, c: paged_block_sparse_attention(a * 1.0, b, c, plan_id, scale) + 1.0,
                       backend=backend, fullgraph=True)
    torch.testing.assert_close(fn(q, k, v), ref + 1.0, atol=1e-5, rtol=1e-5)
    assert any("paged_block_sparse_attention" in str(t) for t in graphs[0])


def test_paged_plan_is_unregistered_with_its_layout():
    layout = random_layout(32, 16, density=1.0, seed=4)
    before = registered_plans()
    plan_id = _registered(layout, 1)
    assert registered_plans() == before + 1
    del layout
    gc.collect()
    assert registered_plans() == before
    q = torch.zeros(1, 1, 32, 16)
    with pytest.raises(RuntimeError, match="no live plan"):
        paged_block_sparse_attention(q, q, q, plan_id, 0.25)


# --------------------------------------------------------------------------- stock ComfyUI compile
@pytest.mark.parametrize("group_tokens", [True, False], ids=["grouped", "per_layer"])
def test_stock_torch_compile_model_compiles_once_per_resolution_and_equals_eager(tiny_wan, group_tokens,
                                                                                pytorch_attention):
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.utils import counters

    from iasa.attention.patch import apply_sparse_attention

    torch._dynamo.reset()
    counters.clear()
    patch = SparseAttentionPatch(talking_pose(33, 128, 128, seed=3), SparseAttentionConfig(top_k=1, block_size=16),
                                 kernel="sdpa", group_tokens=group_tokens)
    eager_m = apply_sparse_attention(tiny_wan, patch)
    compiled_m = eager_m.clone()
    backend = CountingBackend()
    set_torch_compile_wrapper(compiled_m, backend=backend)     # what TorchCompileModel does (whole DiT)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 9, 16, 16, generator=g)              # 9 latent frames of 8x8 tokens
    concat = torch.randn(1, 32, 9, 16, 16, generator=g)
    ref = torch.randn(1, 16, 16, 16, generator=g)
    schedule = torch.tensor([1.0, 0.8, 0.5, 0.0])

    def sample(m, sigma):
        return apply_model_once(m, x, sigma, concat, ref, schedule)

    eager = [sample(eager_m, torch.tensor([s])) for s in (0.8, 0.5)]
    sparse_eager = patch.stats["sparse"]
    assert sparse_eager == 4                                     # 2 blocks x 2 calls
    compiled = [sample(compiled_m, torch.tensor([s])) for s in (0.8, 0.5)]
    assert backend.graphs == 1, f"{backend.graphs} graphs for two calls at one resolution"
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert patch.stats["sparse"] == 2 * sparse_eager and patch.stats["layouts_built"] == 1
    assert patch.stats["grouped_forwards"] == (4 if group_tokens else 0), "grouped once per forward, compiled too"
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (eager[0] - sample(tiny_wan, torch.tensor([0.8]))).abs().max() > 1e-4   # sparse is not dense


def test_recompile_limit_grows_with_the_blocks_of_the_patched_model_and_never_shrinks():
    """Compiled block by block, each block instance is an entry of the one block forward: a 30-block model at two
    shapes in two precisions needs 120, past the fixed 64 that ran blocks eagerly on the GPU (2026-12-07 (d))."""
    import torch._dynamo.config as config

    from iasa.attention.gather import MIN_RECOMPILE_LIMIT, RECOMPILES_PER_BLOCK, ensure_recompile_limit, \
        recompile_limit_for

    saved = config.recompile_limit, config.accumulated_recompile_limit   # torch's config module: no monkeypatch
    try:
        config.recompile_limit, config.accumulated_recompile_limit = 8, 256
        model = types.SimpleNamespace(diffusion_model=types.SimpleNamespace(blocks=[object()] * 40))
        assert recompile_limit_for(model) == 40 * RECOMPILES_PER_BLOCK == 320
        assert recompile_limit_for(types.SimpleNamespace()) == MIN_RECOMPILE_LIMIT
        ensure_recompile_limit(recompile_limit_for(model))
        assert (config.recompile_limit, config.accumulated_recompile_limit) == (320, 320)
        ensure_recompile_limit(16)                               # a smaller model later: nothing is lowered
        assert (config.recompile_limit, config.accumulated_recompile_limit) == (320, 320)
    finally:
        config.recompile_limit, config.accumulated_recompile_limit = saved
