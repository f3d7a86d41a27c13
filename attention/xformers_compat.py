"""Lazy xformers import, the ``_built_with_cuda`` work-around, and the paged split-k op.

On the torch 2.11+cu130 GPU image the xformers 0.0.35 wheel (built for torch 2.10/cu128) cannot load
its C++ extension (``libcudart.so.12``), marks itself "not built with CUDA" and refuses every fmha op.
The ops used here (``triton_splitk``) are Triton kernels that never touch ``_C.so``; when CUDA is
available and only the C++ library failed, ``xformers.ops.fmha.common._built_with_cuda`` is set to True
(measured: every patched result matched the fp32 reference; see reference/gpu-attention.md).

On CPU xformers cannot run attention, but its ``attn_bias`` classes (pure Python/torch) still work, so
plans can be built and checked there.
"""
from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_status: "XformersStatus | None" = None


@dataclass(frozen=True)
class XformersStatus:
    importable: bool        # xformers.ops imports (bias classes usable, also on CPU)
    available: bool         # attention can run here (CUDA + Triton + op accepted)
    reason: str             # why not available, or what was done to make it available
    version: str | None
    patched_built_with_cuda: bool


def import_fmha() -> ModuleType:
    """``xformers.ops.fmha``, imported on first use. Raises ImportError with the cause."""
    try:
        import xformers.ops.fmha as fmha  # noqa: PLC0415 (lazy on purpose: slow, noisy import)
    except Exception as exc:  # a broken wheel raises OSError/RuntimeError as well as ImportError
        raise ImportError(f"xformers.ops.fmha could not be imported: {type(exc).__name__}: {exc}") from exc
    return fmha


def patch_built_with_cuda(fmha_common: ModuleType, cpp_library_loaded: bool, cuda_available: bool) -> bool:
    """Set ``fmha_common._built_with_cuda = True`` when CUDA works but the C++ library did not load.

    Returns whether the flag was changed.
    """
    if not cuda_available or cpp_library_loaded or getattr(fmha_common, "_built_with_cuda", True):
        return False
    fmha_common._built_with_cuda = True
    logger.warning(
        "xformers C++ extension did not load (wheel built for another torch/CUDA); set "
        "xformers.ops.fmha.common._built_with_cuda = True so its Triton/PyTorch-backed ops can run"
    )
    return True


def _probe() -> XformersStatus:
    try:
        fmha = import_fmha()
    except ImportError as exc:
        return XformersStatus(False, False, str(exc), None, False)
    import xformers

    version = getattr(xformers, "__version__", None)
    cuda = torch.cuda.is_available()
    patched = patch_built_with_cuda(fmha.common, bool(getattr(xformers, "_has_cpp_library", False)), cuda)
    if not cuda:
        return XformersStatus(True, False, "no CUDA device: xformers attention needs CUDA", version, patched)
    if fmha.triton_splitk.FwOp.OPERATOR is None:
        return XformersStatus(True, False, "xformers reports Triton unavailable (triton_splitk op missing)", version, patched)
    if torch.cuda.get_device_capability() < (8, 0):
        return XformersStatus(True, False, "triton_splitk needs an sm80+ GPU", version, patched)
    reason = "patched _built_with_cuda (C++ extension missing)" if patched else "ok"
    return XformersStatus(True, True, reason, version, patched)


def xformers_status(refresh: bool = False) -> XformersStatus:
    """Whether xformers block-sparse attention can run here, and why (probed once, then cached)."""
    global _status
    with _lock:
        if _status is None or refresh:
            _status = _probe()
            logger.info("xformers status: %s", _status)
        return _status


@functools.lru_cache(maxsize=None)
def paged_splitk_op(block_size: int, num_stages: int = 2) -> type:
    """``triton_splitk.FwOp`` subclass tuned for paged block-sparse attention.

    NUM_STAGES=2 measured 8 % faster than the default on H200; SPLIT_K=1 (queries are whole blocks and
    the problem has many sequences); BLOCK_N must divide the page size (= block size).
    """
    fmha = import_fmha()
    block_n = next((n for n in (64, 32, 16) if block_size % n == 0), None)
    if block_n is None:
        raise ValueError(
            f"block_size={block_size} is not a multiple of 16; the xformers paged kernel needs pages "
            "that split into 16/32/64-key tiles (use the flex or sdpa kernel, or a block size of 64/128)"
        )
    return type(
        f"PagedSplitKBlock{block_size}",
        (fmha.triton_splitk.FwOp,),
        {"NUM_STAGES": num_stages, "SPLIT_K": 1, "BLOCK_N": block_n},
    )
