"""Block-sparse self-attention behind one signature: ``block_sparse_attention(q, k, v, layout, kernel)``.

q/k/v/out are ``[B, H, L, D]`` in the original token order; every kernel computes the same thing (within
bf16 rounding): query token t attends to key token u iff the layout selects the block holding u for the
block holding t (padding slots never act as keys).

Kernels:
- ``xformers``: zero-gather paged attention (``xformers_paged``), Triton split-k op, CUDA only; padding
  keys inside a block are zeroed and removed with the LSE, and rows where that correction would lose
  precision are recomputed exactly (see ``xformers_paged``).
- ``flex``: compiled FlexAttention with a ``BlockMask`` (``flex_kernel``); compiles once per shape.
- ``flex_eager``: uncompiled FlexAttention; computes *dense* scores with a whole-pattern mask_mod
  (CPU/test path, O(L^2) memory).
- ``sdpa``: ``F.scaled_dot_product_attention`` with the token-level boolean mask (reference and CPU
  path; the ``[Hl, L, L]`` mask is cached per layout, so keep L small).
- ``auto``: xformers on CUDA when it works, else flex on CUDA, else sdpa; the fallback is logged once.
  A packed layout (``layout.slot_mask``: several region groups per block, masked inside) goes to flex
  on CUDA: xformers' paged mask cannot mask inside a block, so xformers runs the layout's group-padded
  twin ``layout.padded`` (more work; logged once, also when xformers is asked for by name).

Per-layout work (validation, index tables, biases, block masks) is cached with the layout object and
reused by every layer and step.
"""
from __future__ import annotations

import logging
import math
import threading

import torch
import torch.nn.functional as F

from .flex_kernel import flex_block_sparse_attention
from .layout import BlockLayout
from .slots import cached, check_layout_fits, validate_layout

logger = logging.getLogger(__name__)

KERNELS = ("auto", "xformers", "flex", "flex_eager", "sdpa")
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


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, kernel: str) -> None:
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
    cached(layout, "validated", lambda: validate_layout(layout) or True)
    check_layout_fits(layout, q.shape[1], q.shape[2])


def sdpa_block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, scale: float
) -> torch.Tensor:
    mask = cached(layout, ("token_mask", str(q.device)), lambda: layout.token_mask(q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None], scale=scale)


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


def xformers_unsupported_reasons(q: torch.Tensor, layout: BlockLayout) -> list[str]:
    """Why the xformers paged kernel cannot take these inputs (empty list: it can)."""
    from .xformers_compat import xformers_status
    from .xformers_paged import MAX_SEQUENCES_PER_CALL

    reasons = []
    status = xformers_status()
    if not status.available:
        reasons.append(f"xformers unavailable: {status.reason}")
    if _xformers_runtime_error is not None:
        reasons.append(f"xformers failed earlier in this process: {_xformers_runtime_error}")
    if q.device.type != "cuda":
        reasons.append(f"inputs are on {q.device}, the xformers kernel needs CUDA")
    if q.dtype not in (torch.float16, torch.bfloat16):
        reasons.append(f"dtype {q.dtype} (triton_splitk takes float16/bfloat16)")
    if q.shape[-1] not in XFORMERS_HEAD_DIMS:
        reasons.append(f"head_dim {q.shape[-1]} (triton_splitk takes {XFORMERS_HEAD_DIMS})")
    if layout.block_size % 16:
        reasons.append(f"block_size {layout.block_size} is not a multiple of 16")
    if layout.num_blocks > MAX_SEQUENCES_PER_CALL:
        reasons.append(f"{layout.num_blocks} blocks per head exceed {MAX_SEQUENCES_PER_CALL}")
    return reasons


def xformers_block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, scale: float
) -> torch.Tensor:
    from .xformers_compat import paged_splitk_op
    from .xformers_paged import build_paged_plan, paged_attention, xformers_attend

    layout = xformers_layout(layout)
    reasons = xformers_unsupported_reasons(q, layout)
    if reasons:
        raise RuntimeError("xformers block-sparse kernel cannot run: " + "; ".join(reasons))
    num_heads = q.shape[1]
    plan = cached(layout, ("xformers_plan", str(q.device), num_heads), lambda: build_paged_plan(layout, num_heads, q.device))
    attend = xformers_attend(paged_splitk_op(layout.block_size))
    return paged_attention(q, k, v, layout, plan, scale, attend)


def resolve_kernel(kernel: str, q: torch.Tensor, layout: BlockLayout) -> str:
    """The concrete kernel ``auto`` stands for with these inputs (logs the reason of a fallback once)."""
    if kernel != "auto":
        return kernel
    if q.device.type != "cuda":
        _log_once(f"block-sparse attention: using sdpa (masked reference), inputs are on {q.device.type}, not CUDA")
        return "sdpa"
    if layout.slot_mask is not None:
        _log_once("block-sparse attention: using flex, not xformers: the layout packs several region groups per "
                  "block and xformers could only run its group-padded twin (more work)")
        return "flex"
    reasons = xformers_unsupported_reasons(q, layout)
    if reasons:
        _log_once("block-sparse attention: using flex instead of xformers: " + "; ".join(reasons))
        return "flex"
    return "xformers"


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    kernel: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Self-attention of ``[B, H, L, D]`` q/k/v restricted to ``layout``; returns ``[B, H, L, D]``.

    ``kernel``: one of ``KERNELS``. ``scale`` defaults to ``1/sqrt(D)``.
    """
    global _xformers_runtime_error
    _check_inputs(q, k, v, layout, kernel)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    chosen = resolve_kernel(kernel, q, layout)
    if chosen == "sdpa":
        return sdpa_block_sparse_attention(q, k, v, layout, scale)
    if chosen in ("flex", "flex_eager"):
        return flex_block_sparse_attention(q, k, v, layout, scale, compiled=chosen == "flex")
    if kernel == "xformers":
        return xformers_block_sparse_attention(q, k, v, layout, scale)
    try:  # auto chose xformers: a runtime failure falls back to flex for the rest of the process
        return xformers_block_sparse_attention(q, k, v, layout, scale)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # Triton compile/launch errors, xformers refusing the inputs
        with _state_lock:
            _xformers_runtime_error = f"{type(exc).__name__}: {exc}"
        _log_once(f"block-sparse attention: xformers failed, using flex from now on: {_xformers_runtime_error}")
        return flex_block_sparse_attention(q, k, v, layout, scale, compiled=True)
