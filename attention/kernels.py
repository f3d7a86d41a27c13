"""Block-sparse self-attention behind one signature: ``block_sparse_attention(q, k, v, layout, kernel)``.

q/k/v/out are ``[B, H, L, D]`` in the original token order; every kernel computes the same thing (within
bf16 rounding): query token t attends to key token u iff the layout selects the block holding u for the
block holding t (padding slots never act as keys).

Kernels:
- ``xformers``: zero-gather paged attention (``xformers_paged``), Triton split-k op, CUDA only; padding
  keys inside a block are zeroed and removed with the LSE, and rows where that correction would lose
  precision are recomputed exactly (see ``xformers_paged``). Called through the custom op of
  ``paged_op``, so compiled graphs keep it as one opaque node.
- ``flex``: compiled FlexAttention with a ``BlockMask`` (``flex_kernel``); compiles once per shape.
- ``flash``: the same ``BlockMask`` through FlexAttention's FLASH backend: Inductor lowers it into
  FlashAttention-4's CuTe-DSL block-sparse forward (PyPI ``flash-attn-4``; CUDA sm90+, block 128). The
  fastest measured on Hopper: the compiled Wan-1.3B student's attention 435 against flex's 613 ms over 4
  steps on one H100, same machine (docs/training/session_2026_12_07c). Asked for by name, it raises where it
  cannot run (``flex_kernel.flash_unsupported_reasons``).
- ``flex_eager``: uncompiled FlexAttention; computes *dense* scores with a whole-pattern mask_mod
  (CPU/test path, O(L^2) memory).
- ``sdpa``: ``F.scaled_dot_product_attention`` with the token-level boolean mask (the reference; dense work;
  the ``[Hl, L, L]`` mask is cached per layout, so keep L small).
- ``grouped``: the CPU kernel (``grouped``): query blocks with the same key blocks attend together over
  gathered keys, one SDPA per distinct key-block list; the layout's work, not dense.
- ``auto``: on CUDA flash where it can run, else xformers when it works, else flex; grouped off CUDA; the
  choice and why the faster kernels were passed over are logged once.
  A packed layout (``layout.slot_mask``: several region groups per block, masked inside) goes to flex
  on CUDA: xformers' paged mask cannot mask inside a block, so xformers runs the layout's group-padded
  twin ``layout.padded`` (more work; logged once, also when xformers is asked for by name).

Two steps: :func:`prepare_kernel` does all host work of a layout for one kind of q (validation, kernel
choice, index tables, biases, block masks; cached with the layout object) and returns a
:class:`SparseKernel`, whose call is device work only: it traces under ``torch.compile(fullgraph=True)``.
The ComfyUI patch prepares outside the compiled model (in its APPLY_MODEL wrapper);
:func:`block_sparse_attention` does both steps per call (eager use, tests, benchmarks).
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .flex_kernel import (flash_unsupported_reasons, flex_attend, flex_attend_slots, flex_block_sparse_attention,
                          prepare_flex)
from .grouped import KeyGroup, grouped_attention, key_groups
from .layout import BlockLayout
from .paged_op import paged_block_sparse_attention, register_paged_plan
from .slots import cached, check_layout_fits, validate_layout

logger = logging.getLogger(__name__)

KERNELS = ("auto", "xformers", "flex", "flash", "flex_eager", "sdpa", "grouped")
XFORMERS_HEAD_DIMS = (16, 32, 64, 128, 256, 512)

_state_lock = threading.Lock()
_logged: set[str] = set()
_xformers_runtime_error: str | None = None


def _log_once(message: str) -> None:
    with _state_lock:
        if message in _logged:
            return
        _logged.add(message)
    logger.warning(message)


@dataclass(frozen=True)
class QuerySpec:
    """What a prepared kernel is prepared for: q/k/v ``[B, H, L, D]`` of this device, dtype, H, L, D."""

    device: torch.device
    dtype: torch.dtype
    num_heads: int
    seq_len: int
    head_dim: int

    @classmethod
    def of(cls, q: torch.Tensor) -> "QuerySpec":
        return cls(q.device, q.dtype, int(q.shape[1]), int(q.shape[2]), int(q.shape[3]))

    def describe(self) -> str:
        return f"{self.num_heads} heads x {self.seq_len} tokens x {self.head_dim}, {self.dtype} on {self.device}"


def _spec(q: "torch.Tensor | QuerySpec") -> QuerySpec:
    return q if isinstance(q, QuerySpec) else QuerySpec.of(q)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is not one of {KERNELS}")
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must all be [B, H, L, D] with the same shape (self-attention), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.dtype != k.dtype or q.dtype != v.dtype or q.device != k.device or q.device != v.device:
        raise ValueError(
            f"q, k, v must share dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} on {q.device}/{k.device}/{v.device}"
        )


def xformers_layout(layout: BlockLayout) -> BlockLayout:
    """The layout the xformers kernel runs: ``layout`` itself, or for a packed layout its group-padded
    twin (``PagedBlockDiagonalPaddedKeysMask`` reads whole pages per query block, no in-block mask)."""
    if layout.slot_mask is None:
        return layout
    if layout.padded is None:
        raise ValueError("layout has a slot_mask but no padded twin; xformers cannot run it (use flex or sdpa)")

    def note() -> BlockLayout:
        _log_once(
            "block-sparse attention: xformers cannot mask inside a block, so it runs the group-padded layout "
            f"({100 * layout.padded.density().block_density:.1f} % of dense work instead of the packed layout's "
            f"{100 * layout.density().block_density:.1f} %); the flex kernel runs the packed one")
        return layout.padded

    return cached(layout, "xformers_layout", note)


def xformers_unsupported_reasons(q: "torch.Tensor | QuerySpec", layout: BlockLayout) -> list[str]:
    """Why the xformers paged kernel cannot take these inputs (empty list: it can)."""
    from .xformers_compat import xformers_status
    from .xformers_paged import MAX_SEQUENCES_PER_CALL

    spec = _spec(q)
    reasons = []
    status = xformers_status()
    if not status.available:
        reasons.append(f"xformers unavailable: {status.reason}")
    if _xformers_runtime_error is not None:
        reasons.append(f"xformers failed earlier in this process: {_xformers_runtime_error}")
    if spec.device.type != "cuda":
        reasons.append(f"inputs are on {spec.device}, the xformers kernel needs CUDA")
    if spec.dtype not in (torch.float16, torch.bfloat16):
        reasons.append(f"dtype {spec.dtype} (triton_splitk takes float16/bfloat16)")
    if spec.head_dim not in XFORMERS_HEAD_DIMS:
        reasons.append(f"head_dim {spec.head_dim} (triton_splitk takes {XFORMERS_HEAD_DIMS})")
    if layout.block_size % 16:
        reasons.append(f"block_size {layout.block_size} is not a multiple of 16")
    if layout.num_blocks > MAX_SEQUENCES_PER_CALL:
        reasons.append(f"{layout.num_blocks} blocks per head exceed {MAX_SEQUENCES_PER_CALL}")
    return reasons


def resolve_kernel(kernel: str, q: "torch.Tensor | QuerySpec", layout: BlockLayout) -> str:
    """The concrete kernel ``auto`` stands for with these inputs (logs the reason of a fallback once)."""
    if kernel != "auto":
        return kernel
    spec = _spec(q)
    if spec.device.type != "cuda":
        _log_once(f"block-sparse attention: using grouped (the CPU kernel), inputs are on {spec.device.type}, not CUDA")
        return "grouped"
    flash_reasons = flash_unsupported_reasons(layout, spec.device)
    if not flash_reasons:
        _log_once("block-sparse attention: using flash (FlashAttention-4's block-sparse forward through "
                  "FlexAttention), the fastest measured on Hopper; kernel=flex runs the Triton kernel instead")
        return "flash"
    _log_once("block-sparse attention: not using flash (the fastest on Hopper): " + "; ".join(flash_reasons))
    if layout.slot_mask is not None:
        _log_once("block-sparse attention: using flex, not xformers: the layout packs several region groups per "
                  "block and xformers could only run its group-padded twin (more work)")
        return "flex"
    reasons = xformers_unsupported_reasons(spec, layout)
    if reasons:
        _log_once("block-sparse attention: using flex instead of xformers: " + "; ".join(reasons))
        return "flex"
    return "xformers"


class SparseKernel:
    """A layout prepared for one :class:`QuerySpec`; ``kernel(q, k, v, scale)`` runs device work only.

    ``slot_layout``: the layout whose slot order (``perm``) the kernel attends in; ``kernel.slots(q, k, v)``
    takes and returns ``[B, H, S, D]`` already in that order (no gathers; padding keys masked, padding rows
    of the output finite), for a model that keeps its tokens grouped (``token_order``)."""

    name = ""

    def __init__(self, layout: BlockLayout, spec: QuerySpec):
        self.layout = layout
        self.spec = spec

    @property
    def slot_layout(self) -> BlockLayout:
        return self.layout

    def fits(self, q: torch.Tensor, slot_order: bool = False) -> bool:
        """Whether ``q`` is of the kind this kernel was prepared for (checked on metadata: traceable)."""
        seq = self.slot_layout.num_blocks * self.slot_layout.block_size if slot_order else self.spec.seq_len
        return (q.device == self.spec.device and q.dtype == self.spec.dtype and tuple(q.shape[1:]) ==
                (self.spec.num_heads, seq, self.spec.head_dim))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        return self.run(q, k, v, _scale(q, scale))

    def slots(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        return self.run_slots(q, k, v, _scale(q, scale))

    def prepare_slots(self) -> None:
        """Host work of :meth:`slots` not done at preparation (call it outside a compiled region)."""

    def run(self, q, k, v, scale: float) -> torch.Tensor:
        raise NotImplementedError

    def run_slots(self, q, k, v, scale: float) -> torch.Tensor:
        raise NotImplementedError


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def slot_order_mask(layout: BlockLayout, device: torch.device) -> torch.Tensor:
    """bool ``[Hl, S, S]`` over slots: the selected block pairs, real keys only, and the in-block rule of a
    packed layout (the token mask in slot order; padding query rows see their blocks' real keys)."""
    bs = layout.block_size
    mask = layout.to_dense(device).repeat_interleave(bs, 1).repeat_interleave(bs, 2)
    mask &= (layout.perm.to(device) >= 0)[None, None, :]
    if layout.slot_mask is not None:
        mask &= layout.slot_mask.materialize(device)[None]
    return mask


class SdpaKernel(SparseKernel):
    name = "sdpa"

    def __init__(self, layout, spec):
        super().__init__(layout, spec)
        self.mask = cached(layout, ("token_mask", str(spec.device)), lambda: layout.token_mask(spec.device))[None]
        self._slot_mask = None

    def run(self, q, k, v, scale):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=scale)

    def prepare_slots(self) -> None:
        if self._slot_mask is None:
            dev = self.spec.device
            self._slot_mask = cached(self.layout, ("slot_mask", str(dev)), lambda: slot_order_mask(self.layout, dev))[None]

    def run_slots(self, q, k, v, scale):
        self.prepare_slots()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self._slot_mask, scale=scale)


class GroupedKernel(SparseKernel):
    """Query blocks sharing their key blocks attend together (``grouped``); same mask as :class:`SdpaKernel`."""

    name = "grouped"

    def __init__(self, layout, spec):
        super().__init__(layout, spec)
        masks = slot_order_mask(layout, torch.device("cpu"))
        dev = spec.device
        self.groups = [[KeyGroup(g.query_slots.to(dev), g.key_slots.to(dev), None if g.mask is None else g.mask.to(dev))
                        for g in key_groups(layout, h, masks[h])] for h in range(masks.shape[0])]
        self.to_slots = layout.perm.clamp_min(0).to(dev)
        self.to_tokens = layout.slot_of_token(dev)

    def run(self, q, k, v, scale):
        q, k, v = (x.index_select(2, self.to_slots) for x in (q, k, v))
        return grouped_attention(q, k, v, self.groups, scale).index_select(2, self.to_tokens)

    def run_slots(self, q, k, v, scale):
        return grouped_attention(q, k, v, self.groups, scale)


class FlexKernel(SparseKernel):
    """FlexAttention: compiled (Triton, or FlashAttention-4 with ``backend="FLASH"``) or eager (dense scores)."""

    def __init__(self, layout, spec, compiled: bool, backend: str = "TRITON"):
        super().__init__(layout, spec)
        self.name = "flash" if backend == "FLASH" else "flex" if compiled else "flex_eager"
        self.compiled = compiled
        self.tables, self.block_mask, self.options = prepare_flex(layout, spec.device, compiled, backend)

    def run(self, q, k, v, scale):
        return flex_attend(q, k, v, self.tables, self.block_mask, scale, self.compiled, self.options)

    def run_slots(self, q, k, v, scale):
        return flex_attend_slots(q, k, v, self.block_mask, scale, self.compiled, self.options)


class XformersKernel(SparseKernel):
    """The paged split-k kernel through ``torch.ops.iasa.paged_block_sparse_attention``."""

    name = "xformers"

    def __init__(self, layout, spec, fall_back_to_flex: bool):
        from .xformers_compat import paged_splitk_op
        from .xformers_paged import build_paged_plan, xformers_attend

        super().__init__(layout, spec)
        self.paged_layout = layout = xformers_layout(layout)  # a packed layout runs as its group-padded twin
        reasons = xformers_unsupported_reasons(spec, layout)
        if reasons:
            raise RuntimeError("xformers block-sparse kernel cannot run: " + "; ".join(reasons))
        plan = build_paged_plan(layout, spec.num_heads, spec.device)
        self.plan_id = register_paged_plan(layout, plan, xformers_attend(paged_splitk_op(layout.block_size)),
                                           on_failure=_xformers_failed_use_flex if fall_back_to_flex else None)

    @property
    def slot_layout(self) -> BlockLayout:
        return self.paged_layout

    def run(self, q, k, v, scale):
        return paged_block_sparse_attention(q, k, v, self.plan_id, scale)

    def run_slots(self, q, k, v, scale):
        return paged_block_sparse_attention(q, k, v, self.plan_id, scale, True)


def _xformers_failed_use_flex(q, k, v, layout, scale, exc: Exception, slot_order: bool = False) -> torch.Tensor:
    """kernel="auto": a runtime failure of xformers switches to flex for the rest of the process (logged);
    flex runs the same (paged) layout, so a slot-ordered call stays in its slot order."""
    global _xformers_runtime_error
    with _state_lock:
        _xformers_runtime_error = f"{type(exc).__name__}: {exc}"
    _log_once(f"block-sparse attention: xformers failed, using flex from now on: {_xformers_runtime_error}")
    return flex_block_sparse_attention(q, k, v, layout, scale, compiled=True, slot_order=slot_order)


def prepare_kernel(layout: BlockLayout, kernel: str, q: "torch.Tensor | QuerySpec") -> SparseKernel:
    """Validate ``layout`` (once per layout object), check it fits ``q``, choose the kernel and do its host
    work; cached with the layout. Raises ``LayoutError`` / ``ValueError`` / ``RuntimeError`` (xformers
    asked for where it cannot run)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is not one of {KERNELS}")
    spec = _spec(q)
    cached(layout, "validated", lambda: validate_layout(layout) or True)
    check_layout_fits(layout, spec.num_heads, spec.seq_len)
    chosen = resolve_kernel(kernel, spec, layout)
    # auto only picks xformers while it has not failed: keyed by the choice, a failure re-prepares as flex
    return cached(layout, ("kernel", kernel, chosen, spec), lambda: _build(layout, chosen, spec, kernel == "auto"))


def _build(layout: BlockLayout, chosen: str, spec: QuerySpec, auto: bool) -> SparseKernel:
    if chosen == "sdpa":
        return SdpaKernel(layout, spec)
    if chosen == "grouped":
        return GroupedKernel(layout, spec)
    if chosen in ("flex", "flex_eager"):
        return FlexKernel(layout, spec, compiled=chosen == "flex")
    if chosen == "flash":
        return FlexKernel(layout, spec, compiled=True, backend="FLASH")
    return XformersKernel(layout, spec, fall_back_to_flex=auto)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    kernel: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Self-attention of ``[B, H, L, D]`` q/k/v restricted to ``layout``; returns ``[B, H, L, D]``.

    ``kernel``: one of ``KERNELS``. ``scale`` defaults to ``1/sqrt(D)``. Host work runs on the first call
    per (layout, kind of q); inside a compiled region use :func:`prepare_kernel` outside it instead.
    """
    _check_inputs(q, k, v, kernel)
    return prepare_kernel(layout, kernel, q)(q, k, v, scale)
