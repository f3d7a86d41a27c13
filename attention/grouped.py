"""The CPU block-sparse kernel: query blocks that share their key blocks attend together over gathered keys.

A pose layout repeats itself: every block of one frame's region group reads the same key blocks (the
reference tokens, its own frame's groups, the top-K past frames' groups). The demo's 49-frame window has 224
query blocks but only 64 distinct key-block lists. Per distinct list this kernel gathers the queries that read
it and the keys they read, and runs one ``F.scaled_dot_product_attention`` on them (with the token mask of
that group when the layout masks inside blocks or a key block ends in padding). The work is the layout's
(plus nothing: no padding to a common length), and the key gathers are shared by the whole group.

On the 2-core CPU, for the demo's layout (L=3584, 2 heads x 128, 20.9 % of dense work) this ran in 22.1 ms
against 85.6 ms for masked SDPA over the whole ``[L, L]`` mask (fp32), and 67.5 against 302.5 ms for a 97-frame
window (11.5 %): ``python iasa_cli.py bench.cpu_attention`` -> bench/results/cpu_attention.json.
On CUDA the xformers and flex kernels are the fast ones: this one loops over groups in Python.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layout import BlockLayout


@dataclass(frozen=True)
class KeyGroup:
    """Query slots that attend to the same key slots, and the token mask between them (None: all pairs)."""

    query_slots: torch.Tensor   # int64 [nq]
    key_slots: torch.Tensor     # int64 [nk]
    mask: torch.Tensor | None   # bool [nq, nk]


def key_groups(layout: BlockLayout, head: int, slot_mask: torch.Tensor) -> list[KeyGroup]:
    """The groups of query blocks of head pattern ``head`` with identical key-block lists.

    ``slot_mask``: bool ``[S, S]``, the layout's token mask in slot order for that head (what
    ``kernels.slot_order_mask`` gives: selected block pairs, real keys only, the in-block rule)."""
    bs = layout.block_size
    counts = layout.kv_num_blocks[head].tolist()
    indices = layout.kv_indices[head].tolist()
    rows: dict[tuple[int, ...], list[int]] = {}
    for block, (count, keys) in enumerate(zip(counts, indices)):
        rows.setdefault(tuple(keys[:count]), []).append(block)
    offsets = torch.arange(bs)
    groups = []
    for keys, queries in rows.items():
        q_slots = (torch.tensor(queries)[:, None] * bs + offsets).reshape(-1)
        k_slots = (torch.tensor(keys)[:, None] * bs + offsets).reshape(-1)
        mask = slot_mask[q_slots[:, None], k_slots[None, :]]
        groups.append(KeyGroup(q_slots, k_slots, None if bool(mask.all()) else mask))
    return groups


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: list[list[KeyGroup]],
                      scale: float) -> torch.Tensor:
    """Slot-ordered ``[B, H, S, D]`` q/k/v -> output in slot order. ``groups[h]``: the groups of head pattern
    ``h`` (one pattern for all heads, or one per head)."""
    out = torch.empty_like(q)
    shared = len(groups) == 1
    for h, head_groups in enumerate(groups):
        heads = slice(None) if shared else slice(h, h + 1)
        qh, kh, vh, oh = q[:, heads], k[:, heads], v[:, heads], out[:, heads]
        for g in head_groups:
            o = F.scaled_dot_product_attention(qh.index_select(2, g.query_slots), kh.index_select(2, g.key_slots),
                                               vh.index_select(2, g.key_slots), attn_mask=g.mask, scale=scale)
            oh.index_copy_(2, g.query_slots, o)
    return out
