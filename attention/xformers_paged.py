"""Paged block-sparse attention with xformers' Triton split-k kernel (no per-block K/V gather).

K/V are permuted once into slot order (a page pool); the kernel reads the selected pages in place
through block tables. Layout of one call (one batch element, a range of heads):
- K/V page pool ``[1, H*S + bs, 1, D]``: head-major slot-ordered K (V), one page = one block of one head
  (page id ``h*nb + j``), plus one all-zero *filler* page (id ``H*nb``) that block-table entries past
  a row's count point at (the kernel never reads them; it keeps ``materialize`` exact).
- queries ``[1, (h1-h0)*S, 1, D]``: one varlen sequence per (head, query block), ``bs`` queries each.
- ``PagedBlockDiagonalPaddedKeysMask``: sequence (h, i) reads pages ``kv_indices[h, i] + h*nb``,
  ``kv_seqlen`` = its selected blocks' slots, trailing padding of the last block trimmed. Page ids are
  absolute, so every head chunk (<= 65535 sequences per call) reads the same whole pool.

Padding slots *inside* the key sequence cannot be cut by ``kv_seqlen``. They hold K = V = 0, so each
contributes exp(0) = 1 to the softmax denominator and nothing to the numerator. With
``lse = log(sum_real exp(s) + p)`` the exact output is ``out / (1 - p * exp(-lse))``, p = padding keys
the sequence reads (fixed per query block). LSE convention checked in xformers 0.0.35: the split-k
kernel accumulates in base 2 with ``qk_scale = sm_scale * log2(e)`` and writes
``(log2(l_i) + m_i) / log2(e)``, i.e. the natural log of sum(exp(scale * q.k)); on an H200 the
corrected output matched FlexAttention and an fp32 reference at full size (bench/results/attention.json).

Precision: the correction factor ``c = 1 - p * exp(-lse)`` is the share of the row's softmax mass on real
keys. Its absolute error is at most the LSE's (float32, ~1e-6), so its relative error is that divided by
``c``: harmless for ordinary rows, but when the real keys carry little mass next to the padding keys (real
scaled logits near -20 with padding at 0: c ~ 1e-8) the correction is garbage (89 % error measured in
numpy). Rows with ``c < REPAIR_BELOW`` are therefore recomputed exactly: their query block attends to
the real slots of its selected key blocks with an explicit mask (:func:`exact_block_rows`), so every
output row is within ``LSE error / REPAIR_BELOW`` (~2e-5 relative) of exact whatever the logits.
Checked on CPU against fp64 with adversarial logits (tests/unit/test_attention_kernels.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .gather import correct_padding_keys, fast_take, fast_take_corrected, fast_take_into_pool, fast_take_slots
from .layout import BlockLayout
from .slots import slot_tables

MAX_SEQUENCES_PER_CALL = 65535  # CUDA grid y-limit: triton_splitk launches one program column per sequence
REPAIR_BELOW = 1.0 / 16.0       # padding-key correction factor below which a row is recomputed exactly
REPAIR_CHUNK_SCORES = 1 << 26   # score entries per chunk of the exact recomputation (256 MB in float32)

# attend(q [1,Mq,1,D], k_pool [1,Mk,1,D], v_pool, bias, scale, need_lse)
#   -> (out [1,Mq,1,D] any float dtype, lse with Mq entries or None when not needed)
AttendFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, Any, float, bool], tuple[torch.Tensor, torch.Tensor | None]
]


@dataclass
class PagedChunk:
    head_start: int
    head_stop: int
    bias: Any                          # xformers PagedBlockDiagonalPaddedKeysMask
    pad_keys: torch.Tensor | None      # float32 [n_seq, 1, 1]: padding keys read per query block


@dataclass
class PagedPlan:
    num_heads: int
    block_size: int
    num_blocks: int
    filler_page: int
    chunks: list[PagedChunk]

    @property
    def pool_len(self) -> int:
        return (self.filler_page + 1) * self.block_size


def sequence_tables(layout: BlockLayout, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Host-side (CPU) per-sequence tables for all heads, sequence n = h*nb + i.

    Returns ``block_tables`` int32 ``[H*nb, kmax]`` (page ids; filler page past the count),
    ``kv_seqlen`` int64 ``[H*nb]`` and ``pad_keys`` int64 ``[H*nb]`` (padding keys inside kv_seqlen).
    """
    nb, bs = layout.num_blocks, layout.block_size
    valid_slot = (layout.perm.cpu() >= 0).view(nb, bs)
    real = valid_slot.sum(1)
    pos = torch.arange(1, bs + 1)
    end = torch.where(valid_slot, pos, 0).amax(1)  # one past the last real slot of each block
    cnt = layout.kv_num_blocks.cpu().long()
    idx = layout.kv_indices.cpu().long()
    hl = cnt.shape[0]
    if hl == 1:
        cnt, idx = cnt.expand(num_heads, nb), idx.expand(num_heads, *idx.shape[1:])
    sel = torch.arange(idx.shape[-1]) < cnt[..., None]
    last = idx.gather(-1, (cnt - 1)[..., None])[..., 0]
    kv_seqlen = (cnt - 1) * bs + end[last]
    pad_keys = ((bs - real[idx]) * sel).sum(-1) - (bs - end[last])
    filler = num_heads * nb
    pages = idx + torch.arange(num_heads)[:, None, None] * nb
    block_tables = torch.where(sel, pages, filler).to(torch.int32).reshape(num_heads * nb, -1)
    return block_tables, kv_seqlen.reshape(-1), pad_keys.reshape(-1)


def build_paged_plan(
    layout: BlockLayout,
    num_heads: int,
    device: torch.device,
    max_sequences_per_call: int = MAX_SEQUENCES_PER_CALL,
) -> PagedPlan:
    """Biases and padding counts for every head chunk (build once per layout; host work happens here)."""
    from .xformers_compat import import_fmha

    attn_bias = import_fmha().attn_bias
    nb, bs = layout.num_blocks, layout.block_size
    if nb > max_sequences_per_call:
        raise ValueError(
            f"layout has {nb} blocks per head, above the {max_sequences_per_call} sequences one xformers "
            "call can launch; use a larger block_size or the flex kernel"
        )
    block_tables, kv_seqlen, pad_keys = sequence_tables(layout, num_heads)
    heads_per_call = max(1, max_sequences_per_call // nb)
    chunks = []
    for h0 in range(0, num_heads, heads_per_call):
        h1 = min(num_heads, h0 + heads_per_call)
        rows = slice(h0 * nb, h1 * nb)
        bias = attn_bias.PagedBlockDiagonalPaddedKeysMask.from_seqlens(
            q_seqlen=[bs] * ((h1 - h0) * nb),
            kv_seqlen=kv_seqlen[rows].tolist(),
            block_tables=block_tables[rows].to(device),
            page_size=bs,
            device=device,
        )
        pad = pad_keys[rows]
        pad_t = pad.to(device=device, dtype=torch.float32).view(-1, 1, 1) if bool(pad.any()) else None
        chunks.append(PagedChunk(h0, h1, bias, pad_t))
    return PagedPlan(num_heads, bs, nb, num_heads * nb, chunks)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    plan: PagedPlan,
    scale: float,
    attend: AttendFn,
    slot_order: bool = False,
) -> torch.Tensor:
    """``[B, H, L, D]`` in and out; ``attend`` is the xformers call (or an emulation in tests).

    ``slot_order``: q/k/v/out are ``[B, H, S, D]`` in the layout's slot order already (the model keeps its
    tokens grouped, ``token_order``): no gathers; padding rows of the output are zero."""
    B, H, L, D = q.shape
    bs, S = plan.block_size, plan.num_blocks * plan.block_size
    tables = slot_tables(layout, q.device)
    gather = None if slot_order else tables.gather_index    # None: already in slot order
    back = None if slot_order else tables.token_to_slot
    outs = []
    for b in range(B):
        k_pool = fast_take_into_pool(k[b], gather, tables.slot_valid, bs)  # + filler page
        v_pool = fast_take_into_pool(v[b], gather, tables.slot_valid, bs)
        q_slots = q[b] if slot_order else fast_take(q[b], gather)
        parts = []
        for chunk in plan.chunks:
            h0, h1 = chunk.head_start, chunk.head_stop
            need_lse = chunk.pad_keys is not None
            o, lse = attend(
                q_slots[h0:h1].reshape(1, -1, 1, D), k_pool.view(1, -1, 1, D), v_pool.view(1, -1, 1, D),
                chunk.bias, scale, need_lse,
            )
            if need_lse:
                o = o.reshape(-1, bs, D)
                bad = rows_to_repair(lse, chunk.pad_keys, tables.slot_valid, h1 - h0)
                if bad is None:
                    part = fast_take_corrected(o, lse, chunk.pad_keys, back, tables.slot_valid, h1 - h0, q.dtype)
                else:
                    fixed = correct_padding_keys(o, lse, chunk.pad_keys)
                    fixed[bad] = exact_block_rows(q_slots, k_pool, v_pool, layout, bad, h0, scale)
                    part = fast_take_slots(fixed.to(q.dtype).reshape(h1 - h0, S, D), back, tables.slot_valid)
            else:
                part = fast_take_slots(o.reshape(h1 - h0, S, D), back, tables.slot_valid)
            parts.append(part.to(q.dtype))  # no-op unless attend returned another dtype
        outs.append(parts[0] if len(parts) == 1 else torch.cat(parts))
    return outs[0].unsqueeze(0) if B == 1 else torch.stack(outs)


def rows_to_repair(lse: torch.Tensor, pad_keys: torch.Tensor, slot_valid: torch.Tensor,
                   heads: int) -> torch.Tensor | None:
    """Sequences (query blocks of a head chunk, index ``h*nb + i`` within the chunk) holding a real query row
    whose padding correction factor ``1 - p * exp(-lse)`` is below :data:`REPAIR_BELOW`; None when there
    are none (the common case: one reduction and one host sync)."""
    n_seq = pad_keys.shape[0]
    factor = 1.0 - pad_keys.view(n_seq, 1) * torch.exp(-lse.reshape(n_seq, -1).float())
    weak = (~(factor >= REPAIR_BELOW)) & slot_valid.view(1, -1).expand(heads, -1).reshape(n_seq, -1)
    if not bool(weak.any()):
        return None
    return weak.any(dim=1).nonzero().squeeze(1)


def exact_block_rows(q_slots: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, layout: BlockLayout,
                     seqs: torch.Tensor, head_start: int, scale: float) -> torch.Tensor:
    """float32 ``[len(seqs), bs, D]``: exact attention of query blocks ``seqs`` (``h*nb + i``, heads counted
    from ``head_start``) to the real slots of their selected key blocks, padding masked out explicitly.

    ``q_slots`` ``[H, S, D]`` and the page pools ``[H*S + bs, D]`` are in slot order (as paged_attention
    has them)."""
    nb, bs = layout.num_blocks, layout.block_size
    S, D = nb * bs, q_slots.shape[-1]
    dev = q_slots.device
    h = seqs // nb + head_start
    i = seqs % nb
    hl = layout.kv_num_blocks.shape[0]
    pat = h if hl > 1 else torch.zeros_like(h)
    cnt = layout.kv_num_blocks.to(dev)[pat, i].long()                               # [n]
    idx = layout.kv_indices.to(dev)[pat, i].long()                                  # [n, kmax]
    kmax = idx.shape[1]
    slots = idx[:, :, None] * bs + torch.arange(bs, device=dev)                     # [n, kmax, bs]
    valid = (torch.arange(kmax, device=dev)[None, :, None] < cnt[:, None, None]) & \
        (layout.perm.to(dev)[slots] >= 0)
    rows = (h[:, None] * S + slots.reshape(len(seqs), -1))                           # pool rows
    out = torch.empty(len(seqs), bs, D, dtype=torch.float32, device=dev)
    step = max(1, REPAIR_CHUNK_SCORES // (bs * kmax * bs))
    for a in range(0, len(seqs), step):
        sl = slice(a, a + step)
        qb = q_slots[h[sl, None], i[sl, None] * bs + torch.arange(bs, device=dev)].float()   # [c, bs, D]
        kb, vb = k_pool[rows[sl]].float(), v_pool[rows[sl]].float()                       # [c, kmax*bs, D]
        s = torch.einsum("cqd,ckd->cqk", qb, kb) * scale
        s = s.masked_fill(~valid[sl].reshape(len(qb), 1, -1), float("-inf"))
        out[sl] = torch.softmax(s, dim=-1) @ vb
    return out


def xformers_attend(op: type) -> AttendFn:
    """The real attention call with an explicit op: ``memory_efficient_attention_partial`` (float32 out
    and LSE) where padding keys need the correction, the plain forward (input dtype, no LSE) elsewhere.
    (Asking the partial call for bf16 output measured no faster on H200 and raised the error vs an fp32
    reference by about 25 % in relative L2, 3x in max abs: the float32 output is kept.)"""
    from .xformers_compat import import_fmha

    fmha = import_fmha()

    def attend(q, k_pool, v_pool, bias, scale, need_lse):
        if need_lse:
            return fmha.memory_efficient_attention_partial(q, k_pool, v_pool, attn_bias=bias, scale=scale, op=op)
        return fmha.memory_efficient_attention_forward(q, k_pool, v_pool, attn_bias=bias, scale=scale, op=op), None

    return attend
