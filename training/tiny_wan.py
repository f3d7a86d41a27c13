"""IASA-mini model shapes: a tiny Wan 2.1 VAE and a tiny Wan Fun-Control-style DiT, built from ComfyUI's
own classes (``comfy.ldm.wan.vae.WanVAE``, ``comfy.ldm.wan.model.WanModel``) and saved in the key layout
that stock ``VAELoader`` / ``UNETLoader`` read.

What the stock loaders detect (ComfyUI 0.3.75):
* VAE (``comfy/sd.py``): Wan 2.1 when ``decoder.middle.0.residual.0.gamma`` is present and
  ``decoder.upsamples.0.upsamples.0.residual.2.weight`` is not; width ``dim`` from
  ``decoder.head.0.gamma``; everything else fixed (z_dim 16, dim_mult 1-2-4-4, 2 res blocks, temporal
  4x / spatial 8x). So ``dim`` is our only size knob.
* DiT (``comfy/model_detection.py``): Wan when ``head.modulation`` exists; ``dim`` from its last axis,
  ``num_heads = dim // 128``, ``ffn_dim``, ``num_layers``, ``in_dim`` (48 = Fun-Control: noise 16 +
  control-video latent 16 + start-image latent 16, which v2 leaves empty), ``out_dim``; t2v without ``img_emb``; text_dim 4096,
  qk_norm and cross_attn_norm on, patch (1, 2, 2); ``ref_conv.weight`` present -> ``in_dim_ref_conv`` (its
  input channels): the reference latent becomes Hp*Wp tokens in front of the video tokens.

Both are built with ``comfy.ops.disable_weight_init`` layers (ComfyUI's inference layers, which skip
PyTorch's init), so every parameter is initialised here explicitly; ``build_*`` fills parameters with
NaN first and checks that none is left, so a layer missed by the init cannot slip through.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .comfy_env import ensure_comfy_on_path

CARD_KEY = "iasa_model_card"
LATENT_CHANNELS = 16
# Fixed by comfy/sd.py for a Wan 2.1 VAE: only ``dim`` is read from the weights.
WAN21_VAE_LAYOUT: dict[str, Any] = {"dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                                    "temperal_downsample": [False, True, True], "dropout": 0.0}
WAN_HEAD_DIM = 128


class ModelFileError(ValueError):
    """A weights file that is not the expected IASA-mini / Wan layout."""


@dataclass
class VAEConfig:
    dim: int = 32
    z_dim: int = LATENT_CHANNELS

    def __post_init__(self):
        if self.dim < 4 or self.dim % 4:
            raise ValueError(f"VAE dim must be a positive multiple of 4, got {self.dim}")
        if self.z_dim != LATENT_CHANNELS:
            raise ValueError(f"VAE z_dim must be {LATENT_CHANNELS} (stock VAELoader fixes it), got {self.z_dim}")


@dataclass
class TeacherConfig:
    dim: int = 256
    num_layers: int = 6
    ffn_dim: int = 1024
    in_dim: int = 3 * LATENT_CHANNELS
    out_dim: int = LATENT_CHANNELS
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = field(default=(1, 2, 2))
    ref_conv: bool = True   # reference picture as ref_conv tokens before the video (Wan 2.1 Fun 1.1 / 2.2 Fun)

    def __post_init__(self):
        if self.dim % WAN_HEAD_DIM:
            raise ValueError(f"teacher dim must be a multiple of {WAN_HEAD_DIM} (stock detection sets "
                             f"num_heads = dim // 128), got {self.dim}")
        if self.in_dim not in (LATENT_CHANNELS, 3 * LATENT_CHANNELS):
            raise ValueError(f"teacher in_dim must be 16 (t2v) or 48 (Fun-Control layout), got {self.in_dim}")
        self.patch_size = tuple(self.patch_size)

    @property
    def num_heads(self) -> int:
        return self.dim // WAN_HEAD_DIM


# --------------------------------------------------------------------------------------------- init
def _fill_nan(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))


def _check_initialised(module: torch.nn.Module, what: str) -> None:
    bad = [n for n, p in module.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RuntimeError(f"{what}: parameters left uninitialised: {bad[:8]}{' ...' if len(bad) > 8 else ''}")


def _is_norm(m: torch.nn.Module) -> bool:
    return isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm))


@torch.no_grad()
def init_vae_weights(vae: torch.nn.Module, zero_init_residual: bool = True) -> None:
    """PyTorch's default conv init, unit RMS-norm gains; residual branches (last conv) and attention
    output projections start at zero, so every block starts as its shortcut (stable deep AE training)."""
    import comfy.ldm.wan.vae as wv

    for m in vae.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            torch.nn.modules.conv._ConvNd.reset_parameters(m)
        elif isinstance(m, wv.RMS_norm):
            m.gamma.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
    if zero_init_residual:
        for m in vae.modules():
            if isinstance(m, wv.ResidualBlock):
                m.residual[-1].weight.zero_()
                m.residual[-1].bias.zero_()
            elif isinstance(m, wv.AttentionBlock):
                m.proj.weight.zero_()
                m.proj.bias.zero_()


@torch.no_grad()
def init_teacher_weights(model: torch.nn.Module) -> None:
    """Wan's own ``init_weights``: xavier linears and patch convs (``ref_conv`` too), N(0, .02) text/time
    embeddings, zero output head, ``randn / sqrt(dim)`` modulations, unit norms."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                m.bias.zero_()
        elif _is_norm(m):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    for conv in (model.patch_embedding, getattr(model, "ref_conv", None)):
        if conv is not None:
            torch.nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            conv.bias.zero_()
    for seq in (model.text_embedding, model.time_embedding):
        for m in seq.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.02)
    model.head.head.weight.zero_()
    model.head.head.bias.zero_()
    for block in model.blocks:
        block.modulation.copy_(torch.randn_like(block.modulation) / math.sqrt(model.dim))
    model.head.modulation.copy_(torch.randn_like(model.head.modulation) / math.sqrt(model.dim))


# -------------------------------------------------------------------------------------------- build
def _seeded_init(module: torch.nn.Module, init_fn, seed: int | None, what: str) -> None:
    """NaN-fill, run ``init_fn`` under ``seed`` without touching the global RNG, check nothing was missed."""
    _fill_nan(module)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        init_fn(module)
    _check_initialised(module, what)


def build_vae(cfg: VAEConfig, seed: int | None = 0, device: torch.device | str = "cpu", init: bool = True):
    """A ``WanVAE`` exactly as stock ``VAELoader`` builds it for a width-``cfg.dim`` Wan 2.1 VAE."""
    ensure_comfy_on_path()
    import comfy.ldm.wan.vae as wv

    vae = wv.WanVAE(dim=cfg.dim, z_dim=cfg.z_dim, **WAN21_VAE_LAYOUT)
    if init:
        _seeded_init(vae, init_vae_weights, seed, "build_vae")
    return vae.to(device)


def build_teacher(cfg: TeacherConfig, seed: int | None = 0, device: torch.device | str = "cpu", init: bool = True):
    """A t2v ``WanModel`` with the config stock detection derives from its weights."""
    ensure_comfy_on_path()
    import comfy.ldm.wan.model as wm
    import comfy.ops

    model = wm.WanModel(
        model_type="t2v", patch_size=cfg.patch_size, text_len=cfg.text_len, in_dim=cfg.in_dim, dim=cfg.dim,
        ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, out_dim=cfg.out_dim,
        num_heads=cfg.num_heads, num_layers=cfg.num_layers, window_size=(-1, -1), qk_norm=True,
        cross_attn_norm=True, eps=cfg.eps, operations=comfy.ops.disable_weight_init, dtype=torch.float32,
        in_dim_ref_conv=LATENT_CHANNELS if cfg.ref_conv else None,
    )
    if init:
        _seeded_init(model, init_teacher_weights, seed, "build_teacher")
    return model.to(device)


def teacher_config_from_state_dict(sd: dict[str, torch.Tensor]) -> TeacherConfig:
    """Read the shape the way ``comfy/model_detection.py`` does."""
    if "head.modulation" not in sd:
        raise ModelFileError("not a Wan DiT state dict (no 'head.modulation'); expected IASA-mini teacher weights")
    n_layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    return TeacherConfig(dim=sd["head.modulation"].shape[-1], num_layers=n_layers,
                         ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0], in_dim=sd["patch_embedding.weight"].shape[1],
                         out_dim=sd["head.head.weight"].shape[0] // 4, text_dim=sd["text_embedding.0.weight"].shape[1],
                         ref_conv="ref_conv.weight" in sd)


def vae_config_from_state_dict(sd: dict[str, torch.Tensor]) -> VAEConfig:
    if "decoder.middle.0.residual.0.gamma" not in sd or "decoder.upsamples.0.upsamples.0.residual.2.weight" in sd:
        raise ModelFileError("not a Wan 2.1 VAE state dict (stock VAELoader's detection keys missing)")
    return VAEConfig(dim=sd["decoder.head.0.gamma"].shape[0])


# ------------------------------------------------------------------------------------ calibration
@torch.no_grad()
def fold_latent_affine(vae, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``encode`` return ``scale * mu + shift`` (per channel) and ``decode`` undo it first.

    The encoder's output 1x1 conv (``conv1``, mu half) absorbs the affine; the decoder's input 1x1 conv
    (``conv2``) absorbs its inverse, so ``decode(encode(x))`` is unchanged. Computed in float64.
    """
    z = vae.z_dim
    scale = scale.detach().double().flatten().cpu()
    shift = shift.detach().double().flatten().cpu()
    if scale.numel() != z or shift.numel() != z or not (scale.abs() > 0).all():
        raise ValueError(f"fold_latent_affine: need {z} non-zero scales and {z} shifts, got {scale.numel()}/{shift.numel()}")
    w1, b1 = vae.conv1.weight, vae.conv1.bias
    w1_64, b1_64 = w1.double().cpu(), b1.double().cpu()
    w1_64[:z] *= scale.view(-1, 1, 1, 1, 1)
    b1_64[:z] = b1_64[:z] * scale + shift
    w2, b2 = vae.conv2.weight, vae.conv2.bias
    w2_64, b2_64 = w2.double().cpu(), b2.double().cpu()
    b2_64 -= w2_64[:, :, 0, 0, 0] @ (shift / scale)
    w2_64 /= scale.view(1, -1, 1, 1, 1)
    for p, v in ((w1, w1_64), (b1, b1_64), (w2, w2_64), (b2, b2_64)):
        p.copy_(v.to(p.dtype))


# ------------------------------------------------------------------------------------------ save/load
def _atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def export_state_dict(module: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def save_model(module: torch.nn.Module, path: str | Path, card: dict, dtype: torch.dtype | None = torch.bfloat16) -> Path:
    """Weights (stock key layout, no prefix) + the model card in the safetensors header and beside the
    file as ``<name>.json``."""
    path = Path(path)
    card_json = json.dumps(card, indent=1, sort_keys=True, default=str)
    _atomic_save_safetensors(export_state_dict(module, dtype), path, {CARD_KEY: card_json})
    side = path.with_suffix(".json")
    tmp = side.with_name(f".{side.name}.tmp{os.getpid()}")
    tmp.write_text(card_json + "\n")
    os.replace(tmp, side)
    return path


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    sd = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            sd[k] = f.get_tensor(k)
    card = json.loads(meta[CARD_KEY]) if CARD_KEY in meta else {}
    return sd, card


def load_vae(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Our loader (training / evaluation): a float ``WanVAE`` and its card."""
    sd, card = read_weights(path)
    vae = build_vae(vae_config_from_state_dict(sd), init=False)
    vae.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
    return vae.to(device=device, dtype=dtype), card


def load_teacher(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    sd, card = read_weights(path)
    model = build_teacher(teacher_config_from_state_dict(sd), init=False)
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
    return model.to(device=device, dtype=dtype), card


def init_from_weights(module: torch.nn.Module, path: str | Path, what: str) -> dict:
    """Load exported weights (``save_model``) into a freshly built ``module`` to fine-tune them; the shapes
    must match the module's config. Returns the provenance that goes into the new model card."""
    sd, card = read_weights(path)
    own = module.state_dict()
    bad = sorted(k for k in own if k not in sd or sd[k].shape != own[k].shape)
    extra = sorted(k for k in sd if k not in own)
    if bad or extra:
        raise ModelFileError(f"--init {path}: these weights do not fit the {what} being trained (check its width/"
                             f"layers): mismatched or missing {bad[:4]}, unexpected {extra[:4]}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    steps = card.get("trained_steps", (card.get("training") or {}).get("steps"))
    return {"file": Path(path).name, "sha256": file_sha256(path), "trained_steps": steps,
            **{k: card[k] for k in ("command", "train_seconds", "hardware", "date", "init") if k in card}}


def file_sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def config_dict(cfg) -> dict:
    d = asdict(cfg)
    if isinstance(cfg, TeacherConfig):
        d["num_heads"] = cfg.num_heads
    return d
