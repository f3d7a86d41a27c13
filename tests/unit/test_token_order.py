"""Tokens grouped once per forward (attention/token_order.py) on a tiny stock-structured Wan: the same output as
the per-layer gather path, no per-layer gathers, dense layers/steps exact, logged fallbacks."""
from __future__ import annotations

import logging
import types

import pytest
import torch

from iasa.attention import flex_kernel
from iasa.attention.grid import TokenGrid
from iasa.attention.layout import build_region_layout
from iasa.attention.patch import CallInfo, SparseAttentionPatch, apply_sparse_attention
from iasa.attention.pose_layout import SparseAttentionConfig
from iasa.attention.token_order import SlotOrder
from iasa.pose.synthetic import talking_pose

from .stock_wan import apply_model_once, pytorch_attention, tiny_wan  # noqa: F401  (fixtures)
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)

SCHEDULE = torch.tensor([1.0, 0.8, 0.5, 0.0])


@pytest.fixture(autouse=True)
def _sdpa_backend(pytorch_attention):  # noqa: F811  (dense calls through ComfyUI's SDPA backend)
    yield


def sample(m, sigma: float, ref: bool, seed: int = 5) -> torch.Tensor:
    """One apply_model call of ModelPatcher ``m`` as a sampler makes it (9 latent frames of 8x8 tokens)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 9, 16, 16, generator=g)
    concat = torch.randn(1, 32, 9, 16, 16, generator=g)
    reference = torch.randn(1, 16, 16, 16, generator=g) if ref else None
    return apply_model_once(m, x, torch.tensor([sigma]), concat, reference, SCHEDULE)


def make(tiny_wan, group: bool, kernel="sdpa", block_size=24, **kw):  # noqa: F811
    patch = SparseAttentionPatch(talking_pose(33, 128, 128, seed=3),
                                 SparseAttentionConfig(top_k=1, block_size=block_size, **kw.pop("config", {})),
                                 kernel=kernel, group_tokens=group, **kw)
    return patch, apply_sparse_attention(tiny_wan, patch)


@pytest.mark.parametrize("ref", [True, False], ids=["ref_conv", "no_ref"])
@pytest.mark.parametrize("dense", [{}, {"dense_blocks": 1}, {"dense_steps": 1}], ids=["sparse", "dense_block", "dense_step"])
def test_grouped_forward_equals_the_per_layer_gather_path(tiny_wan, ref, dense):  # noqa: F811
    grouped, gm = make(tiny_wan, True, **dense)
    per_layer, pm = make(tiny_wan, False, **dense)
    for sigma in (1.0, 0.8):                      # step 0 and step 1 (dense_steps=1: step 0 dense)
        a, b = sample(gm, sigma, ref), sample(pm, sigma, ref)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    sparse_forwards = 1 if dense.get("dense_steps") else 2
    assert grouped.stats["grouped_forwards"] == sparse_forwards and per_layer.stats["grouped_forwards"] == 0
    assert grouped.stats["sparse"] == per_layer.stats["sparse"] > 0
    assert grouped.stats["dense_block"] == per_layer.stats["dense_block"]
    assert grouped.stats["dense_step"] == per_layer.stats["dense_step"]
    plan = next(iter(grouped._layouts.values()))
    assert plan.layout.perm.numel() > plan.layout.seq_len, "the case must have padding slots"
    assert (a - sample(tiny_wan, 0.8, ref)).abs().max() > 1e-4                 # sparse is not dense


def test_dense_layers_in_slot_order_equal_dense_attention(tiny_wan):  # noqa: F811
    """dense_blocks covering every layer: grouped padded slots must not act as keys (= the unpatched model)."""
    grouped, gm = make(tiny_wan, True, block_size=8, dense_blocks=2, config={"packing": "group"})
    torch.testing.assert_close(sample(gm, 0.8, True), sample(tiny_wan, 0.8, True), atol=2e-5, rtol=1e-4)
    assert grouped.stats["grouped_forwards"] == 1 and grouped.stats["dense_block"] == 2


def test_grouped_path_gathers_nothing_per_layer(tiny_wan, monkeypatch):  # noqa: F811
    calls = []

    def counting(fn):
        def wrapped(*args):
            calls.append(fn.__name__)
            return fn(*args)
        return wrapped

    monkeypatch.setattr(flex_kernel, "to_slots", counting(flex_kernel.to_slots))
    monkeypatch.setattr(flex_kernel, "from_slots", counting(flex_kernel.from_slots))
    grouped, gm = make(tiny_wan, True, kernel="flex_eager")
    per_layer, pm = make(tiny_wan, False, kernel="flex_eager")
    a = sample(gm, 0.8, True)
    assert calls == [] and grouped.stats["sparse"] == 2 and grouped.stats["grouped_forwards"] == 1
    b = sample(pm, 0.8, True)
    assert len(calls) == 4 * per_layer.stats["sparse"]          # q, k, v in and the output back, per layer
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_unsupported_variant_falls_back_to_per_layer_gathers_with_a_logged_reason(caplog):
    from iasa.training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path()
    import comfy.ops
    from comfy.ldm.wan.model import VaceWanModel

    vace = VaceWanModel(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=16, out_dim=16, vace_layers=1,
                        vace_in_dim=96, operations=comfy.ops.disable_weight_init, dtype=torch.float32)
    model = types.SimpleNamespace(diffusion_model=vace, manual_cast_dtype=torch.float32)
    patch = SparseAttentionPatch(talking_pose(9, 64, 64), SparseAttentionConfig(top_k=1, block_size=4), kernel="sdpa")
    grid = TokenGrid.from_latent_shape((3, 8, 8))
    patch.start_run()
    with caplog.at_level(logging.INFO, logger="iasa.attention"):
        for _ in range(2):
            state = patch.prepare_call(CallInfo(grid, 3), model, torch.zeros(1))
            assert state.kernel is not None and state.slot_order is None
    logged = [r.getMessage() for r in caplog.records if "not grouped" in r.getMessage()]
    assert len(logged) == 1 and "VaceWanModel" in logged[0]


def test_grouping_off_by_flag_and_forward_patch_missing_is_logged(tiny_wan, caplog):  # noqa: F811
    off, om = make(tiny_wan, False)
    sample(om, 0.8, True)
    assert off.stats["grouped_forwards"] == 0 and "grouped" not in str(om.object_patches)
    on, m = make(tiny_wan, True)
    del m.object_patches["diffusion_model.forward_orig"]          # another node replaced forward_orig
    with caplog.at_level(logging.INFO, logger="iasa.attention"):
        on.start_run()
        sample(m, 0.8, True)
    assert on.stats["sparse"] == 2 and on.stats["grouped_forwards"] == 0
    assert any("not grouped" in r.getMessage() and "forward_orig" in r.getMessage() for r in caplog.records)


def test_slot_order_round_trip_and_dense_on_real_slots():
    grid = TokenGrid.from_latent_shape((3, 8, 8))
    labels = torch.randint(0, 3, (3, 4, 4)).numpy().astype("uint8")
    layout, _ = build_region_layout(labels, torch.eye(3, dtype=torch.bool).numpy(), grid, 5, packing="group")
    order = SlotOrder.of(layout, torch.device("cpu"))
    assert order.num_pad > 0
    x = torch.randn(2, grid.seq_len, 6)
    s = order.to_slots(x)
    assert s.shape[1] == layout.perm.numel() and (s[:, ~order.slot_valid] == 0).all()
    assert torch.equal(order.to_tokens(s), x)
    s[:, ~order.slot_valid] = 1e4                              # padding must not act as a key
    from .test_attention_compile import dense
    out = order.dense(dense, (s, s, s), {"heads": 2})
    torch.testing.assert_close(order.to_tokens(out), dense(x, x, x, heads=2))
    assert (out[:, ~order.slot_valid] == 0).all()


@pytest.mark.parametrize("kernel", ["sdpa", "flex_eager", "xformers_emulated"])
@pytest.mark.parametrize("packing", ["frame", "group"])
def test_kernels_on_slot_ordered_inputs_equal_their_token_order_result(kernel, packing):
    import math

    from iasa.attention.kernels import prepare_kernel, xformers_layout
    from iasa.attention.xformers_paged import build_paged_plan, paged_attention

    from .attention_reference import emulated_attend

    grid = TokenGrid.from_latent_shape((3, 8, 8))
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (3, 4, 4), generator=g).numpy().astype("uint8")
    select = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool).numpy()
    layout, _ = build_region_layout(labels, select, grid, 4, packing=packing)
    q, k, v = (torch.randn(1, 2, grid.seq_len, 8, generator=g) for _ in range(3))
    if kernel == "xformers_emulated":
        slot_layout = xformers_layout(layout)
        plan = build_paged_plan(slot_layout, 2, torch.device("cpu"))

        def run(*t, slot_order=False):
            return paged_attention(*t, slot_layout, plan, 1 / math.sqrt(8), emulated_attend, slot_order=slot_order)

        tokens, slots_fn = run(q, k, v), (lambda *t: run(*t, slot_order=True))
    else:
        prepared = prepare_kernel(layout, kernel, q)
        prepared.prepare_slots()
        slot_layout, tokens, slots_fn = prepared.slot_layout, prepared(q, k, v), prepared.slots
    order = SlotOrder.of(slot_layout, torch.device("cpu"))
    qs, ks, vs = (order.to_slots(t, dim=2) for t in (q, k, v))
    ks[:, :, ~order.slot_valid] = 1e3                       # padding keys must stay masked whatever they hold
    out = slots_fn(qs, ks, vs)
    assert out.shape[2] == order.num_slots and torch.isfinite(out).all()
    torch.testing.assert_close(order.to_tokens(out, dim=2), tokens, atol=1e-5, rtol=1e-5)


def test_a_chained_attention_override_keeps_token_order_logged(tiny_wan, caplog):  # noqa: F811
    """Another override chained under IASA's gets the dense calls; in slot order it would see permuted tokens
    (wrong for a position-dependent one): that run is not grouped, and says why."""
    seen = []

    def previous(func, *args, **kwargs):
        seen.append(args[0].shape[1])
        return func(*args, **kwargs)

    chained, cm = make(tiny_wan, True, dense_blocks=1)
    chained.previous_override = previous
    plain, pm = make(tiny_wan, True, dense_blocks=1)
    with caplog.at_level(logging.INFO, logger="iasa.attention"):
        chained.start_run()
        a = sample(cm, 0.8, True)
    assert chained.stats["grouped_forwards"] == 0 and chained.stats["dense_block"] == 1 and seen
    assert any("not grouped" in r.getMessage() and "chained" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(a, sample(pm, 0.8, True), atol=2e-5, rtol=1e-4)
    assert plain.stats["grouped_forwards"] == 1
