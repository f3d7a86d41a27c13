"""The input-aware token mask for a batch of (labels, frame selection) patterns, on any device.

Training needs the exact mask of paper Eq. 1-3 for every sample of a batch (each has its own pose), in
the original token order and on the GPU. A :class:`PosePattern` is the compact form (region label per
video token, frame selection per latent frame pair, number of global tokens in front); the block layout
that inference builds from the same pattern (``layout.build_region_layout``) allows exactly these pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PosePattern:
    """labels uint8 ``[F, hp, wp]`` (0 = background), frame_select bool ``[F, F]`` (rows: query frames),
    ``global_before`` tokens in front of the video (ref_conv) that attend and are attended densely."""

    labels: np.ndarray
    frame_select: np.ndarray
    global_before: int = 0

    @property
    def seq_len(self) -> int:
        return self.global_before + int(np.prod(self.labels.shape))


def pattern_token_mask(labels: torch.Tensor, frame_select: torch.Tensor, global_before: int = 0,
                       reference_itself: bool = False) -> torch.Tensor:
    """bool ``[B, L, L]`` (rows: queries) for labels ``[B, F, hp, wp]`` and frame_select ``[B, F, F]``.

    allowed(q, k) = q or k global | same latent frame | (same non-background region and frame pair selected);
    with ``reference_itself`` a global query attends to global keys only.
    """
    if labels.ndim != 4 or frame_select.ndim != 3 or frame_select.shape[0] != labels.shape[0] \
            or frame_select.shape[1] != labels.shape[1] or frame_select.shape[2] != labels.shape[1]:
        raise ValueError(f"pattern_token_mask: labels [B, F, hp, wp] and frame_select [B, F, F] expected, got "
                         f"{tuple(labels.shape)} and {tuple(frame_select.shape)}")
    b, f, hp, wp = labels.shape
    per = hp * wp
    lab = labels.reshape(b, f * per).long()
    frame = torch.arange(f, device=labels.device).repeat_interleave(per)
    same_frame = frame[:, None] == frame[None, :]
    sel = frame_select.bool()[:, frame][:, :, frame]                                   # [B, Lv, Lv]
    video = same_frame[None] | (sel & (lab[:, :, None] == lab[:, None, :]) & (lab[:, :, None] > 0))
    if global_before == 0:
        return video
    n = global_before + f * per
    out = torch.ones(b, n, n, dtype=torch.bool, device=labels.device)
    out[:, global_before:, global_before:] = video
    if reference_itself:
        out[:, :global_before, global_before:] = False
    return out
