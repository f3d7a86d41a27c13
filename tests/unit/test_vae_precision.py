"""IASA VAE Precision: a copy of a ComfyUI VAE in bf16 where the CPU computes bf16 natively (sampling/vae_precision.py)."""
from __future__ import annotations

import logging

import pytest
import torch

from iasa.sampling.vae_precision import (channels_last_convs, conv_weight_layout, cpu_has_native_bf16,
                                        resolve_memory_format, resolve_precision, with_precision)
from iasa.training.tiny_wan import VAEConfig, build_vae
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)

CPUINFO_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
CPUINFO_AMX = "flags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n"
CPUINFO_PLAIN = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n"


@pytest.fixture(scope="module")
def comfy():
    from iasa.training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path()
    import comfy.sd

    return comfy


@pytest.fixture(scope="module")
def wan_vae(comfy):
    torch.manual_seed(0)
    return comfy.sd.VAE(sd=build_vae(VAEConfig(dim=8)).state_dict())


def test_native_bf16_is_read_from_the_cpu_flags_only():
    assert cpu_has_native_bf16(CPUINFO_BF16) and cpu_has_native_bf16(CPUINFO_AMX)
    assert not cpu_has_native_bf16(CPUINFO_PLAIN) and not cpu_has_native_bf16("")


@pytest.mark.parametrize("choice, device, native, want", [
    ("auto", "cpu", True, torch.bfloat16),
    ("auto", "cpu", False, torch.float32),
    ("auto", "cuda", True, torch.float16),      # on a GPU ComfyUI's own choice stays
    ("bf16", "cpu", False, torch.bfloat16),
    ("fp32", "cpu", True, torch.float32),
])
def test_auto_picks_bf16_only_on_a_cpu_with_native_bf16(choice, device, native, want):
    current = torch.float16 if device == "cuda" else torch.float32
    dtype, why = resolve_precision(choice, torch.device(device), current, native_bf16=native)
    assert dtype == want and why


def test_an_unknown_precision_is_refused_naming_the_input():
    with pytest.raises(ValueError, match="precision: 'int8' is not one of auto, bf16, fp16, fp32"):
        resolve_precision("int8", torch.device("cpu"), torch.float32)


def test_bf16_copy_decodes_close_to_fp32_and_leaves_the_input_vae_alone(comfy, wan_vae, caplog):
    from iasa.nodes.vae_nodes import IASAVAEPrecision

    z = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in wan_vae.first_stage_model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="iasa.sampling.vae_precision"):
        fast = IASAVAEPrecision.execute(vae=wan_vae, precision="bf16", memory_format="contiguous").args[0]
    assert "bf16 as asked" in caplog.text
    assert fast is not wan_vae and fast.vae_dtype == torch.bfloat16 and fast.patcher is not wan_vae.patcher
    assert fast.patcher.model is fast.first_stage_model
    assert all(p.dtype == torch.bfloat16 for p in fast.first_stage_model.parameters())
    assert wan_vae.vae_dtype == torch.float32
    assert all(torch.equal(v, before[k]) for k, v in wan_vae.first_stage_model.state_dict().items())
    ref, got = wan_vae.decode(z), fast.decode(z)
    assert got.dtype == ref.dtype == torch.float32 and got.shape == ref.shape
    mse = (ref - got).pow(2).mean().item()
    assert 0 < mse and 10 * torch.log10(torch.tensor(1.0 / mse)).item() > 35   # rounded, not another picture
    assert with_precision(wan_vae, "fp32") is wan_vae                         # nothing to change: the same VAE


def test_auto_on_a_cpu_without_native_bf16_returns_the_same_vae_and_says_why(wan_vae, caplog):
    with caplog.at_level(logging.INFO, logger="iasa.sampling.vae_precision"):
        assert with_precision(wan_vae, "auto", native_bf16=False) is wan_vae
    assert "no native bf16" in caplog.text


def test_not_a_comfyui_vae_is_refused():
    with pytest.raises(ValueError, match="vae: a VAE loaded by ComfyUI"):
        with_precision(torch.nn.Linear(2, 2), "bf16")


@pytest.mark.parametrize("choice, device, capability, want", [
    ("auto", "cpu", None, True), ("auto", "cuda", (8, 6), False), ("auto", "cuda", (9, 0), True),
    ("auto", "cuda", (10, 0), True), ("channels_last", "cuda", (8, 0), True), ("contiguous", "cpu", None, False),
    ("contiguous", "cuda", (9, 0), False)])
def test_auto_lays_convolutions_channels_last_on_the_cpu_and_on_hopper(choice, device, capability, want):
    channels_last, why = resolve_memory_format(choice, torch.device(device), capability)
    assert channels_last is want
    assert ("as asked" in why) is (choice != "auto")
    if choice == "auto" and capability is not None:
        assert f"{capability[0]}.{capability[1]}" in why if want else "kept" in why


def test_auto_keeps_the_layout_on_a_gpu_whose_capability_cannot_be_read():
    """No CUDA here: the capability is unknown, so auto changes nothing rather than guessing."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the unknown-capability path is not reachable")
    channels_last, why = resolve_memory_format("auto", torch.device("cuda"))
    assert channels_last is False and "kept" in why


def test_an_unknown_memory_format_is_refused_naming_the_input():
    with pytest.raises(ValueError, match="memory_format: 'nhwc' is not one of auto, channels_last, contiguous"):
        resolve_memory_format("nhwc", torch.device("cpu"))


def test_channels_last_copy_decodes_the_same_and_leaves_the_input_vae_alone(comfy, wan_vae, caplog):
    from iasa.nodes.vae_nodes import IASAVAEPrecision

    z = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.INFO, logger="iasa.sampling.vae_precision"):
        fast = IASAVAEPrecision.execute(vae=wan_vae, precision="fp32", memory_format="auto").args[0]
    assert "channels-last 3-D convolutions on the CPU" in caplog.text
    assert fast is not wan_vae and fast.vae_dtype == torch.float32 and fast.patcher.model is fast.first_stage_model
    convs = [m for m in fast.first_stage_model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last_3d) for c in convs)
    assert all(m.weight.is_contiguous() for m in wan_vae.first_stage_model.modules() if isinstance(m, torch.nn.Conv3d))
    torch.testing.assert_close(fast.decode(z), wan_vae.decode(z), atol=1e-5, rtol=1e-5)


def test_channels_last_convs_counts_what_it_changed():
    model = torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3), torch.nn.Conv2d(4, 4, 1), torch.nn.Conv3d(8, 8, 1))
    assert channels_last_convs(model) == 2
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last_3d) and model[1].weight.is_contiguous()


def test_conv_weight_layout_names_the_layout_and_ignores_weights_that_are_both():
    model = torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3), torch.nn.Conv3d(8, 8, 1))
    assert conv_weight_layout(model) == "contiguous"
    channels_last_convs(model)
    assert conv_weight_layout(model) == "channels_last_3d"     # the 1x1x1 kernel is both layouts at once
    model[0].weight.data = model[0].weight.data.contiguous()
    model.append(torch.nn.Conv3d(8, 8, 3))
    channels_last_convs(model[2:])
    assert conv_weight_layout(model) == "mixed" and conv_weight_layout(torch.nn.Linear(2, 2)) == "none"
