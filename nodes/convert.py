"""Conversions between ComfyUI tensors and the library's numpy arrays."""
from __future__ import annotations

import numpy as np
import torch


def image_to_uint8(image: torch.Tensor, input_name: str = "image") -> np.ndarray:
    """IMAGE [B,H,W,C] float 0..1 -> uint8 RGB [B,H,W,3]."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{input_name}: expected an IMAGE tensor [frames, height, width, 3], got {shape}")
    arr = image[..., :3].detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(arr)


# Video frames the pack makes (skeleton videos) are float16 IMAGEs: half the memory of float32, so that minutes
# of video fit in RAM (a 5-minute 512x512 skeleton video is 11.8 GB instead of 23.6 GB), and every stock
# consumer takes them (CreateVideo/SaveVideo, Wan*ToVideo's resize and VAE encode, SaveImage, ImageScale).
VIDEO_DTYPE = np.float16


def frames_to_image(frames: np.ndarray) -> torch.Tensor:
    """float 0..1 [T,H,W,3] numpy -> IMAGE tensor (float32 or float16, as given; no copy)."""
    if frames.dtype not in (np.float32, np.float16):
        frames = frames.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(frames))


def masks_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """bool [T,H,W] -> MASK float [T,H,W]."""
    return torch.from_numpy(mask.astype(np.float32))
