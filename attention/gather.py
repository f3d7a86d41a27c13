"""Token <-> slot gathers of the block-sparse kernels, compiled on CUDA.

Eager ``index_select`` along the token axis of ``[H, L, 128]`` bf16 runs at about a third of copy
bandwidth on an H200 (1.19 ms for 774 MB); the same gather through ``torch.compile`` runs at copy speed
(0.37 ms). Each kernel call gathers Q, K, V and scatters O, so on CUDA these helpers are compiled,
with static shapes (``dynamic=True`` measured slower than eager: symbolic sizes cost the vectorised
row copies), so once per new shape; on CPU, or if compiling fails (logged once), they run eagerly.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MIN_RECOMPILE_LIMIT = 64
# Compiled per block (TorchCompileModel's block keys), every block instance is its own entry of the one block
# forward: entries = blocks x shapes x models in the process. 8 a block covers e.g. two resolutions of two models
# (a bf16 and an fp8 copy measured 2026-12-07 (d): 30 blocks x 2 shapes x 2 models passed 64 and ran eagerly).
RECOMPILES_PER_BLOCK = 8


def ensure_recompile_limit(minimum: int = MIN_RECOMPILE_LIMIT) -> None:
    """Raise dynamo's per-function recompile limit (default 8) to at least ``minimum`` (and its accumulated limit
    with it); never lowers them.

    Past the limit dynamo silently runs the function eagerly; for FlexAttention that means dense
    attention with O(L^2) memory. A process that meets many shapes (resolutions, head counts) needs
    more than 8 compiles.
    """
    config = torch._dynamo.config
    minimum = max(int(minimum), MIN_RECOMPILE_LIMIT)
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            if getattr(config, name) < minimum:
                logger.info("raising torch._dynamo.config.%s to %d", name, minimum)
                setattr(config, name, minimum)
            break
    if getattr(config, "accumulated_recompile_limit", minimum) < minimum:
        logger.info("raising torch._dynamo.config.accumulated_recompile_limit to %d", minimum)
        config.accumulated_recompile_limit = minimum


def recompile_limit_for(model) -> int:
    """The recompile limit a ComfyUI model (``BaseModel``) compiled block by block needs (see RECOMPILES_PER_BLOCK)."""
    blocks = getattr(getattr(model, "diffusion_model", None), "blocks", None)
    return RECOMPILES_PER_BLOCK * len(blocks) if blocks is not None else MIN_RECOMPILE_LIMIT


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[..., index, :]`` (gather along the token/slot axis)."""
    return x.index_select(-2, index)


def take_slots(x: torch.Tensor, index: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor:
    """Slot-ordered ``[H, S, D]`` out of a kernel -> ``x[..., index, :]`` (tokens), or with ``index`` None
    (the caller works in slot order) ``x`` itself with its padding rows zeroed."""
    return torch.where(valid[:, None], x, 0) if index is None else x.index_select(-2, index)


def take_into_pool(x: torch.Tensor, index: torch.Tensor | None, valid: torch.Tensor, extra_rows: int) -> torch.Tensor:
    """``[H, L, D]`` -> page pool ``[H*S + extra_rows, D]``: slot order, padding slots and extra rows zero
    (``index`` None: ``x`` is ``[H, S, D]`` in slot order already)."""
    slots = torch.where(valid[:, None], x if index is None else x.index_select(-2, index), 0)
    return F.pad(slots.reshape(-1, x.shape[-1]), (0, 0, 0, extra_rows))


def correct_padding_keys(out: torch.Tensor, lse: torch.Tensor, pad_keys: torch.Tensor | None) -> torch.Tensor:
    """Remove the softmax mass of zero padding keys: ``out / (1 - p * exp(-lse))`` (float32 result).

    ``out`` ``[n_seq, bs, D]``, ``lse`` with ``n_seq * bs`` entries (natural log of the summed
    exponentials of the scaled logits, padding keys' exp(0) = 1 included), ``pad_keys`` ``[n_seq, 1, 1]``
    (padding keys each sequence reads) or None (no padding keys: ``out`` as float32).
    The denominator is clamped above 0, so rows whose real keys carry almost no mass next to the
    padding keys lose precision rather than turning inf/NaN; ``xformers_paged`` recomputes those rows
    exactly (``rows_to_repair`` / ``exact_block_rows``).
    """
    out = out.float()
    if pad_keys is None:
        return out
    lse = lse.reshape(out.shape[0], out.shape[1], 1).float()
    denom = (1.0 - pad_keys * torch.exp(-lse)).clamp_min(torch.finfo(torch.float32).tiny)
    return out / denom


def take_corrected(
    out: torch.Tensor, lse: torch.Tensor, pad_keys: torch.Tensor, index: torch.Tensor | None, valid: torch.Tensor,
    heads: int, dtype: torch.dtype
) -> torch.Tensor:
    """``correct_padding_keys`` on ``out`` ``[n_seq, bs, D]`` (any float dtype), rounded once to
    ``dtype``, then :func:`take_slots`: ``[heads, L, D]`` tokens (or ``[heads, S, D]`` slots)."""
    fixed = correct_padding_keys(out, lse, pad_keys).to(dtype)
    return take_slots(fixed.reshape(heads, -1, out.shape[-1]), index, valid)


class _MaybeCompiled:
    """Eager on CPU; ``torch.compile(fn, dynamic=False)`` on CUDA, eager for good after a failure; plain ``fn``
    while dynamo traces an enclosing function."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled: Callable | None = None
        self.failed = False
        self.lock = threading.Lock()

    def __call__(self, *args):
        # Inside a compiled region (torch.compile of the model) the enclosing compile fuses the gather.
        if self.failed or not args[0].is_cuda or torch.compiler.is_compiling():
            return self.fn(*args)
        with self.lock:
            if self.compiled is None:
                ensure_recompile_limit()
                self.compiled = torch.compile(self.fn, dynamic=False)
        try:
            return self.compiled(*args)
        except Exception as exc:  # inductor/Triton unavailable or broken: stay correct, only slower
            self.failed = True
            logger.warning("compiling %s failed, using eager gathers (slower): %s: %s",
                           self.fn.__name__, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return self.fn(*args)


fast_take = _MaybeCompiled(take)
fast_take_into_pool = _MaybeCompiled(take_into_pool)
fast_take_slots = _MaybeCompiled(take_slots)
fast_take_corrected = _MaybeCompiled(take_corrected)
