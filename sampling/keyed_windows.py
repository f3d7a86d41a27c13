"""Keyed windows: a long video generated as windows that are each a clip of their own (IASA Keyed Windows).

IASA Long Video fuses overlapping windows inside one latent of the whole video. With a Wan 2.1 VAE every window
after the first then starts mid-clip: its pose latents are a slice of one long encode, where past ~150 frames
the clip's key latent (frame 0, coded like an image) is out of the codec's reach and the latents carry 4 frames
each on their own. The bundled teacher, trained on windows encoded on their own, generates 0.6-2.8 dB better
when the same frames come as such a window (docs/training/session_2026_12_07b).

Here the video's pixel frames are covered by windows of the trained length that overlap by a few frames; each
window's pose video is encoded on its own (its first frame is its key latent); the sampler runs on one latent
that holds the windows one after another (``latent_total = windows x window latents``, nothing shared); the
decode decodes each window on its own and cross-fades the overlapping pixel frames.

Library code, no ComfyUI import: the node (``nodes/long_video_nodes.py``) and the decode node pass ComfyUI's
``vae.encode`` / ``vae.decode`` in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .long_video import TEMPORAL_STRIDE, latent_frames, window_weights

PLAN_KEY = "iasa_keyed_windows"   # the latent dict entry that carries the plan from the node to the decode


@dataclass(frozen=True)
class KeyedWindowPlan:
    """Windows of ``window_frames`` pixel frames (``1 + 4k``) over a video of ``total_frames`` pixel frames,
    neighbours sharing at least ``overlap_frames``; the last window ends with the video."""

    total_frames: int
    window_frames: int
    overlap_frames: int

    def __post_init__(self):
        latent_frames(self.window_frames, "window_frames")
        if self.total_frames < 1:
            raise ValueError(f"total_frames: need at least 1 video frame, got {self.total_frames}")
        if not 0 <= self.overlap_frames < self.window_frames:
            raise ValueError(f"overlap_frames: {self.overlap_frames} must be >= 0 and smaller than window_frames "
                             f"({self.window_frames})")

    @property
    def window_latents(self) -> int:
        """Latent frames of one window (of the whole video when it is shorter than a window)."""
        return latent_frames(self.frames_per_window, "window_frames")

    @property
    def frames_per_window(self) -> int:
        return min(self.window_frames, self.total_frames)

    @property
    def starts(self) -> tuple[int, ...]:
        """First pixel frame of each window: the fewest windows whose neighbours share ``overlap_frames`` or more,
        spread evenly from frame 0 to the end of the video."""
        n, w = self.total_frames, self.frames_per_window
        if n <= w:
            return (0,)
        count = -(-(n - w) // (w - self.overlap_frames)) + 1
        return tuple(round(k * (n - w) / (count - 1)) for k in range(count))

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def latent_total(self) -> int:
        return len(self) * self.window_latents

    def pixel_windows(self) -> list[range]:
        return [range(s, s + self.frames_per_window) for s in self.starts]

    def latent_windows(self) -> list[range]:
        """Each window's latent frames in the sampled latent (one block after another)."""
        w = self.window_latents
        return [range(k * w, (k + 1) * w) for k in range(len(self))]

    def pixel_weights(self) -> list[torch.Tensor]:
        """float64 weight per pixel frame of each window: linear cross-fades over the overlaps, summing to 1."""
        return window_weights(self.pixel_windows(), self.total_frames, "ramp")

    def describe(self) -> str:
        spans = ", ".join(f"{w.start}-{w.stop - 1}" for w in self.pixel_windows())
        return (f"{len(self)} keyed windows of {self.frames_per_window} frames over {self.total_frames} video frames "
                f"({spans})")

    def to_dict(self) -> dict:
        return {"total_frames": self.total_frames, "window_frames": self.window_frames,
                "overlap_frames": self.overlap_frames}

    @classmethod
    def from_dict(cls, d: dict) -> "KeyedWindowPlan":
        return cls(int(d["total_frames"]), int(d["window_frames"]), int(d["overlap_frames"]))

    @classmethod
    def from_latent_length(cls, latent_length: int, window_frames: int, overlap_frames: int) -> "KeyedWindowPlan":
        """The plan of a video whose one-piece latent (what the stock node makes) has ``latent_length`` frames."""
        return cls(1 + TEMPORAL_STRIDE * (int(latent_length) - 1), window_frames, overlap_frames)


Encode = Callable[[torch.Tensor], torch.Tensor]   # frames [T, H, W, C] -> latent [B, C, N, h, w]
Decode = Callable[[torch.Tensor], torch.Tensor]   # latent [B, C, N, h, w] -> frames [B, T, H, W, C] or [T, H, W, C]


def encode_windows(video: torch.Tensor, plan: KeyedWindowPlan, encode: Encode) -> torch.Tensor:
    """Each window of ``video`` ``[T >= total_frames, H, W, C]`` encoded on its own, concatenated in time."""
    if video.shape[0] < plan.total_frames:
        raise ValueError(f"video: {video.shape[0]} frames for a plan of {plan.total_frames}")
    out = [encode(video[w.start:w.stop]) for w in plan.pixel_windows()]
    for z in out:
        if z.shape[2] != plan.window_latents:
            raise ValueError(f"encode: a window of {plan.frames_per_window} frames gave {z.shape[2]} latent frames, "
                             f"expected {plan.window_latents} (a Wan 2.1-layout VAE codes 1 + 4k frames)")
    return torch.cat(out, dim=2)


def _frames(decoded: torch.Tensor) -> torch.Tensor:
    """A decode's frames as ``[T, H, W, C]`` (ComfyUI's video VAEs return ``[B, T, H, W, C]``)."""
    return decoded.reshape(-1, *decoded.shape[-3:]) if decoded.ndim == 5 else decoded


def decode_windows(latent: torch.Tensor, plan: KeyedWindowPlan, decode: Decode) -> torch.Tensor:
    """``[B=1, C, latent_total, h, w]`` -> ``[total_frames, H, W, C]``: each window decoded on its own, the
    overlapping pixel frames cross-faded."""
    if latent.ndim != 5 or latent.shape[2] != plan.latent_total:
        raise ValueError(f"samples: a latent of {tuple(latent.shape)} does not hold {len(plan)} keyed windows of "
                         f"{plan.window_latents} latent frames; decode the latent IASA Keyed Windows made")
    if latent.shape[0] != 1:
        raise ValueError(f"samples: batch {latent.shape[0]}; keyed windows decode one video at a time")
    out = None
    for lw, pw, weight in zip(plan.latent_windows(), plan.pixel_windows(), plan.pixel_weights()):
        frames = _frames(decode(latent[:, :, lw.start:lw.stop]))[: len(pw)]
        if frames.shape[0] != len(pw):
            raise ValueError(f"decode: {frames.shape[0]} frames for a window of {len(pw)}")
        if out is None:
            out = torch.zeros((plan.total_frames, *frames.shape[1:]), dtype=torch.float32, device=frames.device)
        out[pw.start:pw.stop] += frames.float() * weight.to(torch.float32).to(frames.device).view(-1, 1, 1, 1)
    return out
