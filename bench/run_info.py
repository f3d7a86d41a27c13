"""What a benchmark records about the run itself: library versions, and dynamo's compile counters."""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import platform

import torch

from ..training.model_card import comfyui_version

# the libraries behind IASA Sparse Attention's flash kernel (FlashAttention-4 over the CuTe DSL)
FLASH_DISTRIBUTIONS = ("flash-attn-4", "nvidia-cutlass-dsl-libs-core")


def versions(modules: tuple[str, ...] = ("triton",), distributions: tuple[str, ...] = ()) -> dict:
    """Python, torch, the ComfyUI tree in use, CUDA / cuDNN where there is a GPU, then each of ``modules``
    (its ``__version__``) and ``distributions`` (installed package metadata); what is missing says so."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "comfyui": comfyui_version()}
    if torch.cuda.is_available():
        out.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    for name in modules:
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception as exc:   # a broken optional extension (xformers' C++ part) must not stop a benchmark
            out[name] = f"unavailable ({type(exc).__name__})"
    for dist in distributions:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


class LimitHits(logging.Handler):
    """Collects dynamo's 'hit config.recompile_limit' warnings: the functions that fell back to eager."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.functions: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "hit config." in msg and "function:" in msg:
            self.functions.append(msg.split("function:", 1)[1].strip().splitlines()[0][:200])

    @classmethod
    def install(cls) -> "LimitHits":
        handler = cls()
        logging.getLogger("torch._dynamo.convert_frame").addHandler(handler)
        return handler


def compile_stats() -> dict:
    """Graph breaks (with their top reasons) and dynamo's capture counters so far in this process."""
    from torch._dynamo.utils import counters

    breaks = counters.get("graph_break", {})
    return {"graph_breaks": int(sum(breaks.values())),
            "top_reasons": [[str(k)[:200], int(v)] for k, v in sorted(breaks.items(), key=lambda kv: -kv[1])[:5]],
            "stats": {str(k): int(v) for k, v in counters.get("stats", {}).items()},
            "frames": {str(k): int(v) for k, v in counters.get("frames", {}).items()}}


def comfy_attention() -> str:
    """ComfyUI's own attention function (the dense path: cross-attention, the teacher's self-attention)."""
    import comfy.ldm.modules.attention as attn

    return getattr(attn.optimized_attention, "__name__", str(attn.optimized_attention))


def comfy_fast() -> list[str]:
    """ComfyUI's ``--fast`` features in force (its own ``args`` after parsing)."""
    from comfy.cli_args import args

    return sorted(f.value for f in args.fast)
