"""Run a ComfyUI VAE in another dtype, e.g. bf16 on a CPU with native bf16 instructions.

ComfyUI keeps a VAE in fp32 on every CPU ("bf16 works on CPU but is extremely slow", comfy/model_management.py):
true of CPUs that emulate it, not of those with AVX512-BF16 or AMX. On the 2-core machine of the demo (AVX512-BF16,
no AMX) the IASA-mini VAE decodes 33 frames at 256x256 in 13.9 s in fp32 and 6.0 s in bf16 (2.3x), the pictures
64.5 dB from the fp32 ones; ``bench.demo_timing`` records both.

The copy can also hold its 3-D convolution weights channels-last (``memory_format``): oneDNN then runs the
convolutions and the channel-wise RMS norms after them without reordering, 49 frames of that VAE decode in 5.1
instead of 10.1 s in bf16 and 14.6 instead of 19.2 s in fp32 on the same machine (equal to fp32 rounding).
"""
from __future__ import annotations

import copy
import logging
import pathlib

import torch

log = logging.getLogger(__name__)

PRECISIONS = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX); False where that cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def resolve_precision(choice: str, device: torch.device, current: torch.dtype,
                      native_bf16: bool | None = None) -> tuple[torch.dtype, str]:
    """The dtype a VAE on ``device`` (now in ``current``) should run in for ``choice``, and why. ``auto``: bf16 on a
    CPU with native bf16, else the dtype ComfyUI chose."""
    if choice not in PRECISIONS:
        raise ValueError(f"precision: {choice!r} is not one of {', '.join(PRECISIONS)}")
    if choice != "auto":
        return PRECISIONS[choice], f"{choice} as asked"
    if torch.device(device).type != "cpu":
        return current, f"auto: kept ComfyUI's {current} on {device}"
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    if native:
        return torch.bfloat16, "auto: bf16, the CPU has native bf16 (AVX512-BF16 or AMX)"
    return current, f"auto: kept {current}, the CPU has no native bf16 (emulated bf16 is slower than fp32)"


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """The compute capability of an NVIDIA CUDA ``device``; None for other devices (ROCm reports its own numbers
    through the same call) or where it cannot be read."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or torch.version.hip is not None:
        return None
    return torch.cuda.get_device_capability(device)


def resolve_memory_format(choice: str, device: torch.device,
                          capability: tuple[int, int] | None = None) -> tuple[bool, str]:
    """Whether the 3-D convolution weights go channels-last for ``choice`` on ``device``, and why. ``auto``: on the
    CPU and on CUDA GPUs of compute capability 9.0 or newer (Hopper: the stock Wan VAE encodes and decodes 12 %
    faster channels-last on an H100, bench/results/realtime_flash_vae_channels_last.json); ``capability`` overrides
    the device's own (tests)."""
    if choice not in MEMORY_FORMATS:
        raise ValueError(f"memory_format: {choice!r} is not one of {', '.join(MEMORY_FORMATS)}")
    if choice != "auto":
        return choice == "channels_last", f"{choice} as asked"
    if torch.device(device).type == "cpu":
        return True, "auto: channels-last 3-D convolutions on the CPU (oneDNN's fast layout)"
    capability = capability or cuda_capability(device)
    if capability is not None and capability >= (9, 0):
        return True, (f"auto: channels-last 3-D convolutions on {device} (compute capability "
                      f"{capability[0]}.{capability[1]}: measured faster there)")
    return False, (f"auto: kept the weights' layout on {device} (channels-last is taken on CPUs and on NVIDIA compute "
                   "capability 9.0 or newer, where it was measured faster)")


def channels_last_convs(model: torch.nn.Module) -> int:
    """Lay every ``Conv3d`` weight of ``model`` out channels-last (in place); returns how many."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    for conv in convs:
        conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return len(convs)


def conv_weight_layout(model: torch.nn.Module) -> str:
    """How ``model``'s 3-D convolution weights are laid out: channels_last_3d, contiguous, mixed or none (weights
    that are both, e.g. 1x1x1 kernels, say nothing)."""
    layouts = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d):
            last, plain = m.weight.is_contiguous(memory_format=torch.channels_last_3d), m.weight.is_contiguous()
            if last != plain:
                layouts.add("channels_last_3d" if last else "contiguous")
    return layouts.pop() if len(layouts) == 1 else "mixed" if layouts else "none"


def with_precision(vae, choice: str = "auto", native_bf16: bool | None = None, memory_format: str = "contiguous"):
    """A copy of a ComfyUI ``VAE`` (``comfy.sd.VAE``) whose model runs in the dtype ``choice`` resolves to (and with
    channels-last 3-D convolutions if ``memory_format`` resolves to that), with its own copy of the weights and its
    own model patcher (ComfyUI loads and offloads it like any VAE); the input VAE is left as it is. The same VAE
    comes back when nothing changes. The choices are logged."""
    model = getattr(vae, "first_stage_model", None)
    current = getattr(vae, "vae_dtype", None)
    if model is None or current is None or not hasattr(vae, "patcher"):
        raise ValueError(f"vae: a VAE loaded by ComfyUI (VAELoader) is needed, got {type(vae).__name__}")
    dtype, why = resolve_precision(choice, vae.device, current, native_bf16)
    log.info("IASA VAE Precision: %s", why)
    channels_last, why = resolve_memory_format(memory_format, vae.device)
    convs = channels_last and any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
    log.info("IASA VAE Precision: %s", why if convs or not channels_last
             else f"{why}; this VAE has no 3-D convolutions, nothing to do")
    if dtype == current and not convs:
        return vae
    import comfy.model_patcher

    model = copy.deepcopy(model).to(dtype)
    if convs:
        channels_last_convs(model)
    out = copy.copy(vae)
    out.first_stage_model = model
    out.vae_dtype = dtype
    out.patcher = comfy.model_patcher.ModelPatcher(model, load_device=vae.device,
                                                   offload_device=vae.patcher.offload_device)
    return out
