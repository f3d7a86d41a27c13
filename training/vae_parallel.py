"""Whole-window encode/decode for ComfyUI's Wan 2.1 ``WanVAE``, equal to its chunked ``encode``/``decode``.

Stock ``WanVAE.encode`` runs the encoder over 1 + 4 + 4 ... frames and ``decode`` over one latent frame at a
time, carrying each causal conv's last frames in a cache: 13 serial passes per 49-frame window, each of
small kernels. For training that is slow (run 2: 1.3 s per 8 x 49 x 96^2 step on an H200). Every causal
conv with that cache equals one causal conv over the whole window; only the temporal resamplers behave
differently at the first frame, and these functions reproduce that:

* ``downsample3d``: the first frame passes through untouched, the rest is the stride-2, unpadded
  ``time_conv`` over the whole window (chunk ``i`` sees the previous chunk's last frame, i.e. windows
  ``(0,1,2), (2,3,4), ...``).
* ``upsample3d``: the first frame is not doubled; the others go through ``time_conv`` with causal zero
  padding that starts at frame 1 (the cache starts as ``'Rep'``, then zeros), each giving two frames.

``tests/unit/test_vae_parallel.py`` checks both against the stock methods in float64. The stock methods
stay what ComfyUI runs at inference and what held-out PSNR is measured with.
"""
from __future__ import annotations

import torch


def _is_resample(layer, mode: str) -> bool:
    return type(layer).__name__ == "Resample" and getattr(layer, "mode", None) == mode


def _downsample3d(layer, x: torch.Tensor) -> torch.Tensor:
    x = layer(x)  # without a cache Resample applies only its spatial part
    if x.shape[2] == 1:
        return x
    return torch.cat([x[:, :, :1], layer.time_conv(x)], dim=2)


def _upsample3d(layer, x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    if t > 1:
        rest = layer.time_conv(x[:, :, 1:])  # causal zero padding of 2 frames, as after the 'Rep' mark
        rest = rest.reshape(b, 2, c, t - 1, h, w)
        rest = torch.stack((rest[:, 0], rest[:, 1]), 3).reshape(b, c, 2 * (t - 1), h, w)
        x = torch.cat([x[:, :, :1], rest], dim=2)
    return layer(x)  # spatial part


def _run(layers, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        if _is_resample(layer, "downsample3d"):
            x = _downsample3d(layer, x)
        elif _is_resample(layer, "upsample3d"):
            x = _upsample3d(layer, x)
        else:
            x = layer(x)
    return x


def encoder_features_parallel(vae, x: torch.Tensor) -> torch.Tensor:
    """``vae.encoder(x)`` (the input of ``vae.conv1``, which gives mean and log-variance) in one pass."""
    if (x.shape[2] - 1) % 4:
        raise ValueError(f"encode_parallel: a window of 1 + 4k frames is needed, got {x.shape[2]}")
    enc = vae.encoder
    h = enc.conv1(x)
    h = _run(enc.downsamples, h)
    h = _run(enc.middle, h)
    return _run(enc.head, h)


def encode_parallel(vae, x: torch.Tensor) -> torch.Tensor:
    """``vae.encode(x)`` (the latent mean) in one pass over the window; runs ``vae.conv1`` like the stock
    method, so hooks on it see the same tensor."""
    mu, _log_var = vae.conv1(encoder_features_parallel(vae, x)).chunk(2, dim=1)
    return mu


def decode_parallel(vae, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z)`` in one pass over all latent frames."""
    dec = vae.decoder
    h = dec.conv1(vae.conv2(z))
    h = _run(dec.middle, h)
    h = _run(dec.upsamples, h)
    return _run(dec.head, h)
