"""Slot bookkeeping shared by the block-sparse kernels (see ``layout.BlockLayout``).

A layout permutes the ``L`` real tokens into ``S = num_blocks * block_size`` slots; padding slots hold
``-1``. Kernels gather Q/K/V into slot order, attend block-sparsely, and gather the output back.
Everything here is derived once per (layout, device) and cached on the side (``LayoutCache``), so the
hot path only runs device-side gathers.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import torch

from ..errors import public_name
from .gather import fast_take
from .layout import BlockLayout


@public_name
class LayoutError(ValueError):
    """A ``BlockLayout`` that breaks its contract, or one that does not fit the attention inputs."""


@dataclass(frozen=True)
class SlotTables:
    """Per-device index tensors of one layout."""

    gather_index: torch.Tensor   # int64 [S]: token held by each slot, padding slots point at token 0
    pad_slots: torch.Tensor      # int64 [P]: the padding slots
    slot_valid: torch.Tensor     # bool [S]
    token_to_slot: torch.Tensor  # int64 [L]: inverse of perm
    num_pad: int                 # P


def check_layout_fits(layout: BlockLayout, num_heads: int, seq_len: int) -> None:
    """Cheap per-call check that a (validated) layout fits q/k/v of ``num_heads`` x ``seq_len``."""
    if layout.kv_num_blocks.shape[0] not in (1, num_heads):
        raise LayoutError(
            f"layout has {layout.kv_num_blocks.shape[0]} head patterns but the attention has {num_heads} "
            "heads; build the layout with 1 (shared) or one pattern per head"
        )
    if int(layout.seq_len) != seq_len:
        raise LayoutError(
            f"layout.seq_len={layout.seq_len} but q/k/v have {seq_len} tokens; rebuild the layout for this sequence"
        )


def validate_layout(layout: BlockLayout) -> None:
    """Check the layout contract (shapes, perm is a padded permutation, ascending indices); raise ``LayoutError``.

    Runs host-side checks (syncs on CUDA): call it once per layout, not per attention call.
    """
    bs = int(layout.block_size)
    if bs <= 0:
        raise LayoutError(f"layout.block_size must be positive, got {bs}")
    perm = layout.perm
    if perm.ndim != 1 or perm.numel() % bs:
        raise LayoutError(
            f"layout.perm must be 1-D with a length that is a multiple of block_size={bs}, "
            f"got shape {tuple(perm.shape)}"
        )
    nb = perm.numel() // bs
    cnt, idx = layout.kv_num_blocks, layout.kv_indices
    if cnt.ndim != 2 or cnt.shape[1] != nb:
        raise LayoutError(f"layout.kv_num_blocks must be [Hl, {nb}], got {tuple(cnt.shape)}")
    if idx.ndim != 3 or idx.shape[:2] != cnt.shape:
        raise LayoutError(
            f"layout.kv_indices must be [Hl, {nb}, kmax] matching kv_num_blocks {tuple(cnt.shape)}, "
            f"got {tuple(idx.shape)}"
        )
    L = int(layout.seq_len)
    real = perm[perm >= 0]
    if real.numel() != L or (perm < -1).any() or (real.numel() and int(real.max()) >= L):
        raise LayoutError(f"layout.perm must hold each token 0..{L - 1} exactly once plus -1 padding")
    if torch.bincount(real.cpu(), minlength=L).ne(1).any():
        raise LayoutError("layout.perm holds some token more than once")
    if idx.shape[2] == 0 or (cnt < 1).any() or (cnt > idx.shape[2]).any():
        raise LayoutError("layout.kv_num_blocks must be in 1..kmax for every query block")
    valid = torch.arange(idx.shape[2], device=idx.device) < cnt[..., None].to(idx.device)
    sel = idx[valid]
    if sel.numel() and (int(sel.min()) < 0 or int(sel.max()) >= nb):
        raise LayoutError(f"layout.kv_indices must be block ids in 0..{nb - 1}")
    steps = idx[..., 1:] - idx[..., :-1]
    if (steps[valid[..., 1:]] <= 0).any():
        raise LayoutError("layout.kv_indices must be strictly ascending within kv_num_blocks")
    real_per_block = (perm >= 0).view(nb, bs).sum(1).to(idx.device)
    keys_seen = (real_per_block[idx.long()] * valid).sum(-1)  # [Hl, nb]
    empty_rows = (keys_seen == 0) & (real_per_block > 0)
    if empty_rows.any():
        h, i = (int(x) for x in empty_rows.nonzero()[0])
        raise LayoutError(
            f"query block {i} (head pattern {h}) holds real tokens but selects no key block with a real "
            "token; every query block must see at least one real key (e.g. its own block)"
        )


def build_slot_tables(layout: BlockLayout, device: torch.device) -> SlotTables:
    perm = layout.perm.to(device=device, dtype=torch.int64)
    valid = perm >= 0
    token_to_slot = torch.empty(int(layout.seq_len), dtype=torch.int64, device=device)
    slots = torch.arange(perm.numel(), device=device)
    token_to_slot[perm[valid]] = slots[valid]
    pad_slots = slots[~valid]
    return SlotTables(
        gather_index=perm.clamp_min(0),
        pad_slots=pad_slots,
        slot_valid=valid,
        token_to_slot=token_to_slot,
        num_pad=int(pad_slots.numel()),
    )


def to_slots(x: torch.Tensor, tables: SlotTables) -> torch.Tensor:
    """``[..., L, D]`` -> ``[..., S, D]`` in slot order; padding slots hold a copy of token 0."""
    return fast_take(x, tables.gather_index)


def from_slots(x: torch.Tensor, tables: SlotTables) -> torch.Tensor:
    """``[..., S, D]`` -> ``[..., L, D]`` in the original token order (padding slots dropped)."""
    return fast_take(x, tables.token_to_slot)


class LayoutCache:
    """Values derived from a layout (plans, index tables), kept as long as the layout object lives.

    Keyed by object identity: build a new ``BlockLayout`` for a new pattern instead of editing the
    tensors of one in place.
    """

    def __init__(self) -> None:
        self._entries: dict[int, dict[Hashable, Any]] = {}
        self._lock = threading.Lock()

    def get(self, layout: BlockLayout, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            entry = self._entries.get(id(layout))
            if entry is not None and key in entry:
                return entry[key]
        value = build()
        with self._lock:
            entry = self._entries.get(id(layout))
            if entry is None:
                entry = self._entries[id(layout)] = {}
                weakref.finalize(layout, self._entries.pop, id(layout), None)
            entry[key] = value
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


LAYOUT_CACHE = LayoutCache()


def cached(layout: BlockLayout, key: Hashable, build: Callable[[], Any]) -> Any:
    return LAYOUT_CACHE.get(layout, key, build)


def slot_tables(layout: BlockLayout, device: torch.device) -> SlotTables:
    return cached(layout, ("slots", str(device)), lambda: build_slot_tables(layout, device))
