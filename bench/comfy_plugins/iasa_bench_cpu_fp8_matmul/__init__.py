"""bench.quality's CPU stand-in for a GPU's fp8 matrix multiply. Never loaded by the pack: bench.quality links this
folder into its own benchmark server's custom_nodes when run with ``--fp8-matmul-on-cpu``.

UNETLoader's ``fp8_e4m3fn_fast`` on a GPU with fp8 compute multiplies fp8 activations (ComfyUI clamps them to
+-448 and casts them, unscaled) by the fp8 weights in ``torch._scaled_mm``, accumulating in float32. ComfyUI's
``--supports-fp8-compute`` takes that same path on the CPU, where torch's own ``_scaled_mm`` is about 1000x slower
than a float32 matmul. This plugin swaps the kernel for CPU tensors only: the same product of the same fp8
operands and scales, in float32. Every clamp and cast before it is ComfyUI's own code.
"""
from __future__ import annotations

import logging

import torch

NODE_CLASS_MAPPINGS: dict = {}
FIRST_CALL = "iasa_bench_cpu_fp8_matmul: first fp8 matmul on the CPU"   # bench.quality looks for it in the log
_TORCH_SCALED_MM = torch._scaled_mm
_logged_first_call = False


def scaled_mm_on_cpu(a, b, scale_a=None, scale_b=None, bias=None, scale_result=None, out_dtype=None,
                     use_fast_accum=False):
    """``torch._scaled_mm`` for CPU operands as a float32 matmul of the dequantised operands; anything else goes
    to torch's own kernel."""
    if a.device.type != "cpu":
        return _TORCH_SCALED_MM(a, b, scale_a, scale_b, bias=bias, scale_result=scale_result, out_dtype=out_dtype,
                                use_fast_accum=use_fast_accum)
    if scale_result is not None:
        raise NotImplementedError("scale_result (an fp8 output) is not emulated: ComfyUI's fp8 linear does not use it")
    global _logged_first_call
    if not _logged_first_call:
        _logged_first_call = True
        logging.warning("%s: %s x %s (%s x %s)", FIRST_CALL, tuple(a.shape), tuple(b.shape), a.dtype, b.dtype)
    out = (a.float() * scale_a.float()) @ (b.float() * scale_b.float())
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype or a.dtype)


torch._scaled_mm = scaled_mm_on_cpu
logging.info("iasa_bench_cpu_fp8_matmul: torch._scaled_mm on CPU tensors is a float32 matmul of the fp8 operands "
             "(bench.quality --fp8-matmul-on-cpu)")
