"""FlexAttention kernel for a ``BlockLayout`` (slot order, ``BlockMask.from_kv_blocks``).

Selected key blocks without padding are passed as *full* blocks (no ``mask_mod`` runs there); blocks
that contain padding slots are *partial* blocks whose ``mask_mod`` keeps real key slots only. A packed
layout (``layout.slot_mask``, several groups per block) also makes partial every pair its rule does not
allow whole (``RegionSlotMask.full_block_pairs``), and its ``mask_mod`` is that rule.

Eager (uncompiled) FlexAttention ignores the block lists and evaluates ``mask_mod`` on the dense score
matrix, so the eager path gets a ``mask_mod`` that encodes the whole pattern (block table lookup and
key validity). It computes dense attention: a CPU/test path only.

The same ``BlockMask`` runs on two compiled backends of FlexAttention: Triton (kernel ``flex``) and
``BACKEND="FLASH"`` (kernel ``flash``), where Inductor lowers ``mask_mod`` into FlashAttention-4's CuTe-DSL
block-sparse forward (PyPI ``flash-attn-4``, Hopper and Blackwell). The FLASH ``mask_mod`` reads int32
tables only (``SlotRuleTables``): no boolean loads, clamps or 2-D indexing to lower.
"""
from __future__ import annotations

import functools
import importlib.util
import threading
from typing import Callable

import torch

from .gather import ensure_recompile_limit
from .layout import BlockLayout
from .slots import cached, from_slots, slot_tables, to_slots

BACKENDS = ("TRITON", "FLASH")
FLASH_BLOCK_SIZE = 128   # FA4's Hopper forward fits its 128 x 128 tile to the sparse block

_compiled_lock = threading.Lock()
_compiled_flex: Callable | None = None


def compiled_flex_attention() -> Callable:
    """``torch.compile(flex_attention, dynamic=False)``, created once per process.

    It compiles once per new shape (a few seconds on GPU, ~50 s on a 2-core CPU); the recompile limit
    is raised so that many shapes never make dynamo fall back to eager (= dense) flex.
    """
    global _compiled_flex
    with _compiled_lock:
        if _compiled_flex is None:
            from torch.nn.attention.flex_attention import flex_attention

            ensure_recompile_limit()
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex


def _compact(selected: torch.Tensor, idx: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``idx`` entries where ``selected`` (order kept), left-aligned, zero-filled to ``width``."""
    kmax = idx.shape[-1]
    pos = torch.arange(kmax, device=idx.device).expand_as(idx)
    order = torch.where(selected, pos, pos + kmax).argsort(dim=-1, stable=True)
    packed = torch.where(selected, idx, 0).gather(-1, order)
    count = selected.sum(-1)
    packed = torch.where(pos < count[..., None], packed, 0)
    out = torch.zeros(*idx.shape[:-1], width, dtype=torch.int32, device=idx.device)
    out[..., :kmax] = packed.to(torch.int32)
    return count.to(torch.int32), out


def split_full_partial(layout: BlockLayout, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(partial_cnt, partial_idx, full_cnt, full_idx), shapes ``[1, Hl, nb]`` / ``[1, Hl, nb, nb]``.

    A selected block is *partial* when it holds a padding slot, or (packed layouts) when the slot rule
    forbids some of its pairs. Index rows are padded to ``nb`` columns (older FlexAttention releases size
    the dense mask from that width).
    """
    nb, bs = layout.num_blocks, layout.block_size
    tables = slot_tables(layout, device)
    has_pad = (~tables.slot_valid).view(nb, bs).any(1)
    cnt = layout.kv_num_blocks.to(device=device, dtype=torch.int64)
    idx = layout.kv_indices.to(device=device, dtype=torch.int64)
    valid = torch.arange(idx.shape[-1], device=device) < cnt[..., None]
    if layout.slot_mask is None:
        pad_sel = has_pad[idx] & valid
    else:
        full = torch.from_numpy(layout.slot_mask.full_block_pairs(bs)).to(device)
        pad_sel = ~full[torch.arange(nb, device=device)[None, :, None], idx] & valid
    p_cnt, p_idx = _compact(pad_sel, idx, nb)
    f_cnt, f_idx = _compact(valid & ~pad_sel, idx, nb)
    return p_cnt[None], p_idx[None], f_cnt[None], f_idx[None]


def _partial_block_mask_mod(layout: BlockLayout, device: torch.device) -> Callable:
    """What partial blocks apply: real keys only, and the slot rule of a packed layout."""
    if layout.slot_mask is not None:
        rule = layout.slot_mask.to(device)

        def slot_rule(b, h, q_idx, kv_idx):
            return rule.allowed(q_idx, kv_idx)

        return slot_rule
    slot_valid = slot_tables(layout, device).slot_valid

    def key_is_real(b, h, q_idx, kv_idx):
        return slot_valid[kv_idx]

    return key_is_real


def _flash_mask_mod(layout: BlockLayout, device: torch.device) -> Callable:
    """The partial-block rule for the FLASH backend: int32 table lookups only (``SlotRuleTables``)."""
    if layout.slot_mask is not None:
        rule = layout.slot_mask.tables().to(device)

        def slot_rule(b, h, q_idx, kv_idx):
            return rule.allowed(q_idx, kv_idx)

        return slot_rule
    slot_real = slot_tables(layout, device).slot_valid.to(torch.int32)

    def key_is_real(b, h, q_idx, kv_idx):
        return slot_real[kv_idx] == 1

    return key_is_real


def flash_unsupported_reasons(layout: BlockLayout, device: torch.device) -> list[str]:
    """Why the FLASH backend cannot run this layout here (empty: it can)."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"inputs are on {device.type}; FlashAttention-4 needs CUDA")
    elif not torch.cuda.is_available():
        reasons.append("CUDA is not available")
    elif torch.cuda.get_device_capability(device)[0] < 9:
        reasons.append("FlashAttention-4's block-sparse forward needs a Hopper or newer GPU (sm90+)")
    if layout.block_size != FLASH_BLOCK_SIZE:
        reasons.append(f"block_size {layout.block_size}; the FLASH backend takes {FLASH_BLOCK_SIZE}")
    if not flash_attn_cute_installed():
        reasons.append("flash_attn.cute is not installed (pip install flash-attn-4)")
    return reasons


@functools.cache
def flash_attn_cute_installed() -> bool:
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except ImportError:   # a flash_attn package without the cute subpackage
        return False


def _whole_pattern_mask_mod(layout: BlockLayout, device: torch.device) -> Callable:
    in_block = _partial_block_mask_mod(layout, device)
    dense = layout.to_dense(device)
    bs = layout.block_size
    if dense.shape[0] == 1:
        dense0 = dense[0]

        def shared_pattern(b, h, q_idx, kv_idx):
            return dense0[q_idx // bs, kv_idx // bs] & in_block(b, h, q_idx, kv_idx)

        return shared_pattern

    def per_head_pattern(b, h, q_idx, kv_idx):
        return dense[h, q_idx // bs, kv_idx // bs] & in_block(b, h, q_idx, kv_idx)

    return per_head_pattern


def build_block_mask(layout: BlockLayout, device: torch.device, whole_pattern_mask_mod: bool = False,
                     backend: str = "TRITON"):
    """The ``BlockMask`` of a layout over the slot sequence (cached per layout, device and mask form)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")

    def build():
        from torch.nn.attention.flex_attention import BlockMask

        p_cnt, p_idx, f_cnt, f_idx = split_full_partial(layout, device)
        if whole_pattern_mask_mod:
            mask_mod = _whole_pattern_mask_mod(layout, device)
        elif backend == "FLASH":
            mask_mod = _flash_mask_mod(layout, device)
        else:
            mask_mod = _partial_block_mask_mod(layout, device)
        slots = layout.num_blocks * layout.block_size
        return BlockMask.from_kv_blocks(
            p_cnt,
            p_idx,
            f_cnt,
            f_idx,
            BLOCK_SIZE=layout.block_size,
            mask_mod=mask_mod,
            seq_lengths=(slots, slots),
        )

    return cached(layout, ("flex_block_mask", str(device), whole_pattern_mask_mod, backend), build)


def flex_kernel_options(block_size: int, device: torch.device, backend: str = "TRITON") -> dict | None:
    """``{"BACKEND": "FLASH"}`` for the FLASH backend; for Triton, tile sizes for CUDA when the block is not
    a multiple of 128 (torch 2.11 requires the sparse block to be a multiple of the kernel tiles and does not
    shrink them itself). None: defaults."""
    if backend == "FLASH":
        return {"BACKEND": "FLASH"}
    if device.type != "cuda" or block_size % 128 == 0:
        return None
    pow2 = block_size & -block_size  # largest power of two dividing block_size
    if pow2 < 16:
        raise ValueError(
            f"block_size={block_size} has no power-of-two factor >= 16; compiled FlexAttention on CUDA needs "
            "block sizes that split into 16+ token tiles (use a multiple of 16, e.g. 64 or 128)"
        )
    return {"BLOCK_M": min(pow2, 128), "BLOCK_N": min(pow2, 64)}


def prepare_flex(layout: BlockLayout, device: torch.device, compiled: bool, backend: str = "TRITON"):
    """(slot tables, BlockMask, kernel options) of a layout on ``device``: the host work, cached with the layout.
    ``backend="FLASH"`` needs ``compiled`` (FlashAttention-4 is reached through Inductor only) and raises
    ``RuntimeError`` with the reasons where it cannot run."""
    if backend == "FLASH":
        reasons = ["eager FlexAttention has no FLASH backend"] if not compiled else []
        reasons += flash_unsupported_reasons(layout, device)
        if reasons:
            raise RuntimeError("flash block-sparse kernel cannot run: " + "; ".join(reasons))
    tables = slot_tables(layout, device)
    block_mask = build_block_mask(layout, device, whole_pattern_mask_mod=not compiled, backend=backend)
    options = flex_kernel_options(layout.block_size, device, backend) if compiled else None
    return tables, block_mask, options


def flex_attend_slots(qs, ks, vs, block_mask, scale: float, compiled: bool, options: dict | None) -> torch.Tensor:
    """FlexAttention over slot-ordered ``[B, H, S, D]``, device work only (traceable). Inside a compiled region
    the enclosing compile compiles ``flex_attention`` itself; outside, ``compiled`` picks the process-wide
    compiled function or eager flex (dense scores)."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention(qs, ks, vs, block_mask=block_mask, scale=scale, kernel_options=options)
    if compiled:
        return compiled_flex_attention()(qs, ks, vs, block_mask=block_mask, scale=scale, kernel_options=options)
    return flex_attention(qs, ks, vs, block_mask=block_mask, scale=scale)


def flex_attend(q, k, v, tables, block_mask, scale: float, compiled: bool, options: dict | None) -> torch.Tensor:
    """:func:`flex_attend_slots` on ``[B, H, L, D]`` tokens: gathered into slot order and back."""
    qs, ks, vs = to_slots(q, tables), to_slots(k, tables), to_slots(v, tables)
    return from_slots(flex_attend_slots(qs, ks, vs, block_mask, scale, compiled, options), tables)


def flex_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    scale: float,
    compiled: bool = True,
    slot_order: bool = False,
    backend: str = "TRITON",
) -> torch.Tensor:
    """``[B, H, L, D]`` in, ``[B, H, L, D]`` out (original token order; ``slot_order``: ``[B, H, S, D]``)."""
    tables, block_mask, options = prepare_flex(layout, q.device, compiled, backend)
    if slot_order:
        return flex_attend_slots(q, k, v, block_mask, scale, compiled, options)
    return flex_attend(q, k, v, tables, block_mask, scale, compiled, options)
