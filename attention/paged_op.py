"""The xformers paged kernel as a PyTorch custom op, so that compiled graphs call it opaquely.

Dynamo cannot trace ``paged_attention``: it holds xformers bias objects (Python objects with host-side
sequence tables), syncs once for the rows to repair, and calls Triton kernels through xformers' dispatch.
``torch.ops.iasa.paged_block_sparse_attention(q, k, v, plan_id, scale)`` wraps it: its fake (meta)
implementation returns a contiguous ``[B, H, L, D]`` tensor of q's dtype, so a compiled graph keeps one
opaque node per self-attention and no graph break.

Custom ops take tensors and plain scalars only, so the prepared plan (layout, xformers biases, the
attention function) lives in a registry and the op receives its integer id; the entry is removed when
its layout is garbage collected. Ids are constants to dynamo: a new layout compiles a new graph (a new
layout of a new pose or window also has a new slot count, so it would recompile anyway).
"""
from __future__ import annotations

import itertools
import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from .layout import BlockLayout
from .xformers_paged import AttendFn, PagedPlan, paged_attention

OP_NAME = "iasa::paged_block_sparse_attention"


@dataclass
class PagedEntry:
    layout: "weakref.ref[BlockLayout]"
    plan: PagedPlan
    attend: AttendFn
    # Called instead of the paged kernel when it fails (kernel="auto": flex); None: the failure propagates.
    on_failure: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, BlockLayout, float, Exception, bool],
                          torch.Tensor] | None


_lock = threading.Lock()
_entries: dict[int, PagedEntry] = {}
_ids = itertools.count(1)


def register_paged_plan(layout: BlockLayout, plan: PagedPlan, attend: AttendFn, on_failure=None) -> int:
    """Keep ``plan`` for the op until ``layout`` dies; returns the id to pass to the op."""
    with _lock:
        plan_id = next(_ids)
        _entries[plan_id] = PagedEntry(weakref.ref(layout), plan, attend, on_failure)
    weakref.finalize(layout, _unregister, plan_id)
    return plan_id


def _unregister(plan_id: int) -> None:
    with _lock:
        _entries.pop(plan_id, None)


def registered_plans() -> int:
    with _lock:
        return len(_entries)


def _entry(plan_id: int) -> tuple[PagedEntry, BlockLayout]:
    with _lock:
        entry = _entries.get(plan_id)
    layout = entry.layout() if entry is not None else None
    if entry is None or layout is None:
        raise RuntimeError(f"{OP_NAME}: no live plan with id {plan_id} (its layout was freed); prepare the layout "
                           "again (attention.kernels.prepare_kernel)")
    return entry, layout


@torch.library.custom_op(OP_NAME, mutates_args=())
def paged_block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan_id: int,
                                 scale: float, slot_order: bool = False) -> torch.Tensor:
    """``[B, H, L, D]`` block-sparse self-attention with the registered paged plan ``plan_id``
    (``slot_order``: ``[B, H, S, D]`` in the layout's slot order, in and out)."""
    entry, layout = _entry(plan_id)
    try:
        out = paged_attention(q, k, v, layout, entry.plan, scale, entry.attend, slot_order=slot_order)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # Triton compile/launch errors, xformers refusing the inputs
        if entry.on_failure is None:
            raise
        out = entry.on_failure(q, k, v, layout, scale, exc, slot_order)
    return out.contiguous()


@paged_block_sparse_attention.register_fake
def _(q, k, v, plan_id, scale, slot_order=False):
    return q.new_empty(q.shape)
