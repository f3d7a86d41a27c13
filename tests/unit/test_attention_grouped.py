"""The CPU kernel ``grouped`` (attention/grouped.py): the same attention as the masked-SDPA reference on a packed
pose layout, with the layout's work (each query slot once, each group's keys its own key blocks); the random-layout
check is test_attention_kernels.py's test_eager_kernels_match_sdpa."""
from __future__ import annotations

import pytest
import torch

from iasa.attention.grouped import key_groups
from iasa.attention.kernels import block_sparse_attention, prepare_kernel, slot_order_mask
from iasa.bench.cpu_attention import demo_layout

from .test_attention_kernels import qkv, random_layout


def pose_layout():
    """A packed pose layout (several region groups per block, masked inside) with reference tokens: 13 frames
    (4 latent frames) of 8x8 tokens, 64 reference tokens, block 8."""
    return demo_layout(13, size=128, block_size=8, top_k=1)


def test_grouped_matches_sdpa_on_a_packed_pose_layout_in_both_orders():
    layout = pose_layout()
    assert layout.slot_mask is not None
    q, k, v = qkv(1, 2, layout.seq_len, 32)
    ref = block_sparse_attention(q, k, v, layout, kernel="sdpa")
    torch.testing.assert_close(block_sparse_attention(q, k, v, layout, kernel="grouped"), ref, atol=2e-6, rtol=1e-5)
    slots = layout.perm.clamp_min(0)
    qs, ks, vs = (x.index_select(2, slots) for x in (q, k, v))
    real = layout.perm >= 0
    out = prepare_kernel(layout, "grouped", q).slots(qs, ks, vs)
    ref_slots = prepare_kernel(layout, "sdpa", q).slots(qs, ks, vs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, real], ref_slots[:, :, real], atol=2e-6, rtol=1e-5)


def test_grouped_in_bf16_stays_within_rounding_of_fp32():
    layout = pose_layout()
    q, k, v = qkv(1, 2, layout.seq_len, 32)
    ref = block_sparse_attention(q, k, v, layout, kernel="sdpa")
    out = block_sparse_attention(*(x.bfloat16() for x in (q, k, v)), layout, kernel="grouped")
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max().item() < 0.03


@pytest.mark.parametrize("make", [lambda: pose_layout(), lambda: random_layout(200, 16, 2, 0.3, seed=4)])
def test_groups_do_the_layouts_work_not_dense(make):
    """Each query slot is in one group per head pattern; a group reads exactly its blocks' key blocks, so the
    token pairs computed equal the layout's selected block pairs (no padding to a common length)."""
    layout = make()
    bs, nb = layout.block_size, layout.num_blocks
    masks = slot_order_mask(layout, "cpu")
    for h in range(masks.shape[0]):
        groups = key_groups(layout, h, masks[h])
        seen = torch.cat([g.query_slots for g in groups])
        assert torch.equal(torch.sort(seen).values, torch.arange(nb * bs))
        pairs = sum(g.query_slots.numel() * g.key_slots.numel() for g in groups)
        assert pairs == int(layout.kv_num_blocks[h].sum()) * bs * bs
        for g in groups:
            allowed = masks[h][g.query_slots[:, None], g.key_slots[None, :]]
            assert torch.equal(allowed, torch.ones_like(allowed) if g.mask is None else g.mask)
    assert len(key_groups(layout, 0, masks[0])) <= nb


def test_pose_layout_groups_share_key_gathers():
    """The pose layout repeats key-block lists within a frame's region groups: fewer groups than query blocks."""
    layout = pose_layout()
    groups = key_groups(layout, 0, slot_order_mask(layout, "cpu")[0])
    assert len(groups) < layout.num_blocks / 2
