"""IASA-mini tiny autoencoder: the TAEHV network in the ``taew2_1`` layout (Wan 2.1, 16 latent channels),
in plain PyTorch (no ComfyUI import), so it trains here and stock ComfyUI 0.3.75 reads the files it writes.

The layout is fixed by what ComfyUI builds (``comfy/taesd/taehv.py: TAEHV(latent_channels=16)``): an encoder
of width 64 (three stride-2 convs, temporal pools 2, 2, 1, nine memory blocks) and a decoder of widths
256 / 128 / 64 / 64 (three 2x upsamples, temporal grows 1, 2, 2, nine memory blocks), ~11.3 M parameters.
A memory block sees its input and the same block's input one frame earlier, so both halves are causal in
time. Keys are ``encoder.<i>.*`` / ``decoder.<i>.*`` with ComfyUI's ``nn.Sequential`` indices.

What ComfyUI 0.3.75 does with such a file (``comfy/sd.py: VAE.__init__``, ``latent_preview.py``):

* Detection: ``decoder.22.bias`` present -> TAEHV; ``latent_channels = decoder.1.weight.shape[1]`` (16 here);
  8x spatial / 4x temporal; pixels in 0..1 both ways (``process_input``/``process_output`` are identities,
  the decoder output is not clamped). Stock ``VAELoader``, ``VAEEncode`` and ``VAEDecode`` use it like any VAE.
* Latent scaling, the HunyuanVideo-vs-Wan pitfall: a **float16** ``decoder.1.weight`` is taken for
  HunyuanVideo's ``taehv`` (``latent_format`` HunyuanVideo: decode multiplies the latent by 0.476986, encode
  divides by it); any other dtype gives ``latent_format=None`` (no scaling). The files here are bf16, and
  :func:`save_tiny_vae` refuses float16.
* ``VAEEncode`` / ``VAEDecode`` exchange ``LATENT["samples"]``, ComfyUI's *raw* latent space: what
  ``WanVAE.encode`` returns (for IASA-mini calibrated to ``latent_formats.Wan21`` statistics). So the VAE file
  (``models/vae``) encodes to raw latents and decodes raw latents.
* Latent previews: for a Wan 2.1 model ``latent_preview.get_previewer`` loads the first file of the
  ``vae_approx`` folder whose name starts with ``lighttaew2_1`` (:data:`PREVIEW_PREFIX`) and decodes the first
  latent frame of the sampler's ``x0``. That ``x0`` is in the model's space (``Wan21.process_in``: normalised),
  not raw, so the preview file (``models/vae_approx``) has its own decoder trained on normalised latents, and
  its encoder is the VAE file's encoder with the normalisation folded in (:func:`fold_encoder_affine`).
* Frames: ``TAEHV.encode`` pads T to a multiple of 4 with copies of the last frame, so ``1 + 4k`` frames give
  ``k + 1`` latent frames (Wan's rule); decoding ``F`` latent frames gives ``4F - 3`` frames.
* ComfyUI's TAEHV runs frame by frame unless ``first_stage_model.parallel`` is set; this module always runs
  all frames at once (same numbers, tested).

The decoder starts with ComfyUI's fixed ``tanh(x / 3) * 3`` clamp: raw IASA-mini latents (per-channel std
1.1-3.3, as Wan's) are compressed by it beyond ~3; it is part of the layout and the training sees it.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tiny_wan import ModelFileError, _seeded_init, read_weights, save_model

LATENT_CHANNELS = 16
IMAGE_CHANNELS = 3
ENCODER_WIDTH = 64
DECODER_WIDTHS = (256, 128, 64, 64)
TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8
FRAMES_TRIMMED = TEMPORAL_STRIDE - 1     # the decoder's first 3 output frames are dropped
DETECTION_KEY = "decoder.22.bias"       # what comfy/sd.py looks for
CHANNELS_KEY = "decoder.1.weight"       # its shape[1] is latent_channels, its dtype picks the latent scaling
PREVIEW_PREFIX = "lighttaew2_1"         # comfy.latent_formats.Wan21.taesd_decoder_name
VAE_FILE = "iasa_mini_tiny_vae.safetensors"
PREVIEW_FILE = f"{PREVIEW_PREFIX}_iasa_mini.safetensors"   # sorts after a user's own lighttaew2_1.* file


def latent_frames(pixel_frames: int) -> int:
    """Latent frames ComfyUI's TAEHV (and Wan's VAE, for ``1 + 4k``) makes of ``pixel_frames`` frames."""
    if pixel_frames < 1:
        raise ValueError(f"need at least 1 frame, got {pixel_frames}")
    return -(-pixel_frames // TEMPORAL_STRIDE)


def pixel_frames(n_latent: int) -> int:
    """Frames decoded from ``n_latent`` latent frames: ``1 + 4 (n - 1)``."""
    if n_latent < 1:
        raise ValueError(f"need at least 1 latent frame, got {n_latent}")
    return TEMPORAL_STRIDE * n_latent - FRAMES_TRIMMED


# ------------------------------------------------------------------------------------------- layers
def _conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """``relu(conv(cat(x_t, x_{t-1})) + x_t)``: ``past`` is this block's input one frame earlier (zeros at t=0)."""

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(2 * n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        self.skip = nn.Identity()   # ComfyUI's 1x1 skip exists only when widths differ; they never do here
        self.act = nn.ReLU()

    def forward(self, x, past):
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TPool(nn.Module):
    """``stride`` consecutive frames -> one (channels stacked, 1x1 conv)."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n * stride, n, 1, bias=False)

    def forward(self, x):
        _, c, h, w = x.shape
        return self.conv(x.reshape(-1, self.stride * c, h, w))


class TGrow(nn.Module):
    """One frame -> ``stride`` consecutive frames (1x1 conv, channels split)."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)

    def forward(self, x):
        _, c, h, w = x.shape
        return self.conv(x).reshape(-1, c, h, w)


def run_frames(layers: nn.Sequential, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Apply ``layers`` to ``x [batch * T, C, H, W]`` (frames of one clip consecutive), all frames at once;
    a memory block gets its input shifted by one frame within each clip."""
    for layer in layers:
        if isinstance(layer, MemBlock):
            bt, c, h, w = x.shape
            clip = x.view(batch, bt // batch, c, h, w)
            past = F.pad(clip, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1].reshape(bt, c, h, w)
            x = layer(x, past)
        else:
            x = layer(x)
    return x


# -------------------------------------------------------------------------------------------- model
class TinyVAE(nn.Module):
    """The taew2_1 layout. ``encode``: pixels ``[B, 3, T, H, W]`` in 0..1 -> latents ``[B, 16, ceil(T/4), H/8,
    W/8]``; ``decode``: latents ``[B, 16, F, h, w]`` -> pixels ``[B, 3, 4F - 3, 8h, 8w]`` (nominally 0..1,
    unclamped), in whatever latent space the weights were trained for (see the module docstring)."""

    def __init__(self):
        super().__init__()
        e = ENCODER_WIDTH
        self.encoder = nn.Sequential(
            _conv(IMAGE_CHANNELS, e), nn.ReLU(),
            TPool(e, 2), _conv(e, e, stride=2, bias=False), MemBlock(e), MemBlock(e), MemBlock(e),
            TPool(e, 2), _conv(e, e, stride=2, bias=False), MemBlock(e), MemBlock(e), MemBlock(e),
            TPool(e, 1), _conv(e, e, stride=2, bias=False), MemBlock(e), MemBlock(e), MemBlock(e),
            _conv(e, LATENT_CHANNELS),
        )
        d0, d1, d2, d3 = DECODER_WIDTHS
        self.decoder = nn.Sequential(
            Clamp(), _conv(LATENT_CHANNELS, d0), nn.ReLU(),
            MemBlock(d0), MemBlock(d0), MemBlock(d0), nn.Upsample(scale_factor=2), TGrow(d0, 1), _conv(d0, d1, bias=False),
            MemBlock(d1), MemBlock(d1), MemBlock(d1), nn.Upsample(scale_factor=2), TGrow(d1, 2), _conv(d1, d2, bias=False),
            MemBlock(d2), MemBlock(d2), MemBlock(d2), nn.Upsample(scale_factor=2), TGrow(d2, 2), _conv(d2, d3, bias=False),
            nn.ReLU(), _conv(d3, IMAGE_CHANNELS),
        )

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = pixels.shape
        x = pixels.movedim(2, 1)
        pad = -t % TEMPORAL_STRIDE
        if pad:
            x = torch.cat([x, x[:, -1:].expand(b, pad, c, h, w)], 1)
        y = run_frames(self.encoder, x.reshape(b * (t + pad), c, h, w), b)
        return y.view(b, -1, *y.shape[1:]).movedim(1, 2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_with(self.decoder, latents)


def decode_with(decoder: nn.Sequential, latents: torch.Tensor) -> torch.Tensor:
    """A TinyVAE decoder (``TinyVAE().decoder``) applied to ``latents [B, 16, F, h, w]``."""
    b, c, f, h, w = latents.shape
    y = run_frames(decoder, latents.movedim(2, 1).reshape(b * f, c, h, w), b)
    y = y.view(b, -1, *y.shape[1:])[:, FRAMES_TRIMMED:]
    return y.movedim(1, 2)


@torch.no_grad()
def init_tiny_vae_weights(model: TinyVAE) -> None:
    """PyTorch's default conv init; the last conv of every memory block starts at zero, so each block starts
    as ``relu(x)`` (identity on its post-ReLU input) and a deep chain of them trains stably."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    for m in model.modules():
        if isinstance(m, MemBlock):
            m.conv[-1].weight.zero_()
            m.conv[-1].bias.zero_()


def build_tiny_vae(seed: int | None = 0, device: torch.device | str = "cpu", init: bool = True) -> TinyVAE:
    model = TinyVAE()
    if init:
        _seeded_init(model, init_tiny_vae_weights, seed, "build_tiny_vae")
    return model.to(device)


@torch.no_grad()
def fold_encoder_affine(model: TinyVAE, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``encode`` return ``scale * z + shift`` per channel (folded into the encoder's last conv, float64),
    e.g. raw -> ``Wan21.process_in`` space for the preview file."""
    conv = model.encoder[-1]
    scale = scale.detach().double().flatten().cpu()
    shift = shift.detach().double().flatten().cpu()
    if scale.numel() != LATENT_CHANNELS or shift.numel() != LATENT_CHANNELS:
        raise ValueError(f"fold_encoder_affine: need {LATENT_CHANNELS} scales and shifts, "
                         f"got {scale.numel()}/{shift.numel()}")
    w = conv.weight.double().cpu() * scale.view(-1, 1, 1, 1)
    b = conv.bias.double().cpu() * scale + shift
    conv.weight.copy_(w.to(conv.weight.dtype))
    conv.bias.copy_(b.to(conv.bias.dtype))


# ---------------------------------------------------------------------------------------- save/load
def check_state_dict(sd: dict[str, torch.Tensor]) -> None:
    """Raise unless stock ComfyUI 0.3.75 would read ``sd`` as a 16-channel, unscaled (Wan 2.1) TAEHV."""
    if DETECTION_KEY not in sd or CHANNELS_KEY not in sd:
        raise ModelFileError(f"not a TAEHV state dict ({DETECTION_KEY!r} / {CHANNELS_KEY!r} missing); expected "
                             "an IASA-mini tiny autoencoder (taew2_1 layout)")
    channels = sd[CHANNELS_KEY].shape[1]
    if channels != LATENT_CHANNELS:
        raise ModelFileError(f"TAEHV with {channels} latent channels; the Wan 2.1 layout has {LATENT_CHANNELS}")
    if sd[CHANNELS_KEY].dtype == torch.float16:
        raise ModelFileError("float16 TAEHV weights: ComfyUI 0.3.75 takes a float16 file for HunyuanVideo's "
                             "taehv and scales its latents by 0.476986; store bf16 or fp32")


def save_tiny_vae(model: TinyVAE, path: str | Path, card: dict, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Weights in the stock key layout with the model card (``tiny_wan.save_model``); float16 is refused
    (see :func:`check_state_dict`)."""
    if dtype == torch.float16:
        raise ValueError("save_tiny_vae: float16 would make ComfyUI 0.3.75 treat the file as HunyuanVideo's taehv "
                         "(latents scaled by 0.476986); use torch.bfloat16 or torch.float32")
    return save_model(model, path, card, dtype=dtype)


def load_tiny_vae(path: str | Path, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> tuple[TinyVAE, dict]:
    sd, card = read_weights(path)
    check_state_dict(sd)
    model = build_tiny_vae(init=False)
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
    return model.to(device=device, dtype=dtype), card


# ------------------------------------------------------------------------------------ ComfyUI VAE
def with_all_frames_at_once(vae, all_at_once: bool = True):
    """A copy of a ComfyUI ``VAE`` (``comfy.sd.VAE``) around a TAEHV whose ``parallel`` flag is ``all_at_once``:
    ComfyUI runs TAEHV frame by frame by default (least memory); all frames at once is faster and gives the same
    numbers. The copy shares the weights and the model patcher (so ComfyUI still loads and offloads them); the
    input VAE is left as it is. Raises ``ValueError`` for any other VAE."""
    inner = getattr(vae, "first_stage_model", None)
    if inner is None or not hasattr(inner, "parallel") or getattr(inner, "latent_channels", None) is None \
            or not hasattr(inner, "decoder"):
        kind = type(inner).__name__ if inner is not None else type(vae).__name__
        raise ValueError(f"vae: a tiny autoencoder (TAEHV, e.g. {VAE_FILE}) is needed, got {kind}; load one with "
                         "VAELoader, or leave the full VAE without this node")
    inner = copy.copy(inner)          # shares the sub-modules and parameters, not the instance's flags
    inner.parallel = bool(all_at_once)
    out = copy.copy(vae)
    out.first_stage_model = inner
    return out
