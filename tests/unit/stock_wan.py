"""Fixtures of a tiny IASA-mini-format Wan loaded by stock ComfyUI code, shared by the attention and
long-video tests (import them into a test module to use them)."""
from __future__ import annotations

import gc

import pytest
import torch


@pytest.fixture
def tiny_wan():
    """A tiny IASA-mini-format Wan (Fun-Control concat, ref_conv) loaded by stock ComfyUI code."""
    from iasa.training.comfy_env import ensure_comfy_on_path
    from iasa.training.tiny_wan import TeacherConfig, build_teacher

    ensure_comfy_on_path()
    import comfy.sd

    model = build_teacher(TeacherConfig(dim=128, num_layers=2, ffn_dim=256), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    yield comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    gc.collect()  # free the patchers (and their clones) while ComfyUI's modules are still alive


@pytest.fixture
def pytorch_attention(monkeypatch):
    """The Wan model's attention is ComfyUI's SDPA backend (its CUDA default), still behind ComfyUI's override
    hook. On CPU ComfyUI picks sub-quadratic attention, which queries free memory with psutil: a graph break
    that is ComfyUI's, not the patch's."""
    from iasa.training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path()
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.wan.model as wan

    monkeypatch.setattr(wan, "optimized_attention", attention.attention_pytorch)


def apply_model_once(m, x, sigma, concat, ref=None, schedule=None):
    """One apply_model call of ModelPatcher ``m`` as ComfyUI's samplers make it: wrappers merged into
    transformer_options, object patches applied (IASA's self-attention call sites), zero text."""
    import comfy.patcher_extension

    to = dict(m.model_options.get("transformer_options", {}))
    to["wrappers"] = comfy.patcher_extension.copy_nested_dicts(m.wrappers)
    to["sigmas"] = sigma
    to["sample_sigmas"] = torch.tensor([1.0, float(sigma[0]), 0.0]) if schedule is None else schedule
    extra = {} if ref is None else {"reference_latent": ref}
    m.patch_model()
    try:
        with torch.no_grad():
            return m.model.apply_model(x, sigma, c_concat=concat, c_crossattn=torch.zeros(1, 8, 4096),
                                       transformer_options=to, **extra)
    finally:
        m.unpatch_model()
