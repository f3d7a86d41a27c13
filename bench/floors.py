"""Arithmetic floors for the benchmarks: FLOP counts and the measured peaks they are divided by.

* :func:`linear_flops`: exact multiply-add FLOPs (2 per MAC) of every ``nn.Linear`` / ``nn.Conv*`` a forward
  runs, counted by forward hooks on the real call (backend-independent: attention kernels are not counted);
* :func:`attention_flops`: ``4 * Lq * Lk * dim`` per layer (``QK^T`` and ``PV``), times a density;
* :func:`all_flops`: ``torch.utils.flop_counter`` over a call (convs, matmuls, SDPA: the VAEs);
* :func:`matmul_peak`: the best bf16 (fp32 on CPU) GEMM rate of this device at the given shapes;
* :func:`copy_bandwidth`: pageable host<->device copy rates (what ComfyUI's CPU-side IMAGE / LATENT move at).

Nothing here imports ComfyUI.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable, Iterable

import torch

LINEAR_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


class _LinearCounter:
    def __init__(self):
        self.flops = 0
        self.calls = 0

    def __call__(self, module, _inputs, output):
        if isinstance(module, torch.nn.Linear):
            self.flops += 2 * output.numel() * module.in_features
        else:
            k = 1
            for s in module.kernel_size:
                k *= int(s)
            self.flops += 2 * output.numel() * (module.in_channels // module.groups) * k
        self.calls += 1


@contextlib.contextmanager
def linear_flops(module: torch.nn.Module):
    """``with linear_flops(model) as c: model(...)`` -> ``c.flops``: FLOPs of its linear and conv layers."""
    counter = _LinearCounter()
    handles = [m.register_forward_hook(counter) for m in module.modules() if isinstance(m, LINEAR_TYPES)]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


def attention_flops(seq_q: int, seq_k: int, dim: int, layers: int = 1, density: float = 1.0) -> float:
    """FLOPs of ``layers`` attention calls over ``dim = heads * head_dim`` channels at ``density``."""
    return 4.0 * seq_q * seq_k * dim * layers * density


def all_flops(fn: Callable[[], object]) -> int:
    """Every FLOP ``torch.utils.flop_counter`` attributes to ``fn()`` (runs it once)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall milliseconds of ``fn`` (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def matmul_peak(device: torch.device, shapes: Iterable[tuple[int, int, int]], dtype: torch.dtype | None = None,
                repeats: int = 10) -> dict:
    """``{"tflops": best, "by_shape": [[m, k, n, tflops], ...], "dtype"}`` for ``[m, k] @ [k, n]``."""
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    rows = []
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        ms = time_ms(lambda: a @ b, device, repeats=repeats, warmup=2)
        rows.append([m, k, n, float(f"{2.0 * m * k * n / (ms * 1e-3) / 1e12:.4g}")])   # 4 digits: a tiny CPU peak is not 0
        del a, b
    return {"tflops": max(r[3] for r in rows), "by_shape": rows, "dtype": str(dtype).removeprefix("torch.")}


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 3) -> dict:
    """Pageable host->device and device->host GB/s for a float32 tensor of ``nbytes`` (0 on CPU: no copy)."""
    if device.type != "cuda":
        return {"h2d_gbps": None, "d2h_gbps": None, "bytes": nbytes}
    host = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
    dev = host.to(device)
    h2d = time_ms(lambda: host.to(device), device, repeats)
    d2h = time_ms(lambda: dev.cpu(), device, repeats)
    return {"h2d_gbps": round(nbytes / (h2d * 1e-3) / 1e9, 2), "d2h_gbps": round(nbytes / (d2h * 1e-3) / 1e9, 2),
            "bytes": nbytes}


def floor_ms(flops: float, peak_tflops: float) -> float:
    return 1000.0 * flops / (peak_tflops * 1e12)


def copy_ms(nbytes: int, gbps: float | None) -> float:
    return 0.0 if not gbps else 1000.0 * nbytes / (gbps * 1e9)
