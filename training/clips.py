"""Training clips in memory: from synthetic shards (``training/synth/shards.py``) or procedural figures,
and a frame bank on the device that draws random windows / crops without host syncs.

``--data`` forms: a shard directory or file (``*.safetensors`` written by ``training.synth.build render``),
or ``procedural:N[:T[:S]]`` (N seeded procedural clips of T frames at S x S pixels, default 33 and 256;
for tests and smoke runs; the held-out split has N // 8 clips, at least 2).
Splits: clips whose metadata says ``split == "train"`` are training clips; everything else is held out.
``regions``: the union of those body-region masks (``pose.regions.MASK_NAMES``; the shards' masks, or drawn from
the keypoints of procedural clips) kept per clip as ``region_bits``, one bit-plane packed along W (np.packbits);
the frame bank crops it with the frames, for losses and metrics inside the regions.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .synth.shards import PACKED_MASKS

log = logging.getLogger(__name__)
PROCEDURAL = "procedural"
HELDOUT_SEED_BASE = 1_000_000


def _procedural(spec: str, split: str, max_clips: int | None) -> list[dict]:
    from .procedural import make_clip

    parts = spec.split(":")
    try:
        n = int(parts[1]) if len(parts) > 1 else 8
        t = int(parts[2]) if len(parts) > 2 else 33
        size = int(parts[3]) if len(parts) > 3 else 256
    except ValueError:
        raise ValueError(f"--data {spec!r}: expected procedural:N[:T[:S]] with integers") from None
    if split != "train":
        n = max(2, n // 8)
    if max_clips:
        n = min(n, max_clips)
    base = 0 if split == "train" else HELDOUT_SEED_BASE
    return [dict(make_clip(base + i, t, size), split=split) for i in range(n)]


def region_bits(clip: dict, regions: tuple[str, ...]) -> np.ndarray:
    """uint8 ``[T, H, ceil(W / 8)]``: the union of ``regions`` per frame, packed along W (np.packbits order), from
    the clip's ``packed_masks`` (a shard's, OR-ed as stored), its unpacked ``masks`` or, without either
    (procedural clips), drawn from its pixel ``keypoints``."""
    from ..pose.regions import MASK_NAMES, frame_masks

    bad = sorted(set(regions) - set(MASK_NAMES))
    if bad or not regions:
        raise ValueError(f"regions: {bad or 'none given'}; choose from {list(MASK_NAMES)}")
    if PACKED_MASKS in clip:
        names = list(clip["mask_names"])
        missing = sorted(set(regions) - set(names))
        if missing:
            raise ValueError(f"regions: clip {clip.get('id')} has no masks {missing} (it has {names})")
        return np.bitwise_or.reduce(clip[PACKED_MASKS][:, [names.index(r) for r in regions]], axis=1)
    if "masks" in clip:
        union = np.any([clip["masks"][r] for r in regions], axis=0)
    else:
        h, w = clip["frames"].shape[1:3]
        per = [frame_masks(k, h, w) for k in clip["keypoints"]]
        union = np.stack([np.any([m[r] for r in regions], axis=0) for m in per])
    return np.packbits(union, axis=-1)


def load_clips(source: str | Path, split: str = "train", max_clips: int | None = None,
               keys: tuple[str, ...] = ("frames", "keypoints"), rank: int = 0, world_size: int = 1,
               regions: tuple[str, ...] = ()) -> list[dict]:
    """Clips of one split as dicts with ``id``, ``split`` and the asked ``keys`` (numpy arrays), plus
    ``region_bits`` when ``regions`` are named (only the packed union of their masks is kept).

    ``rank``/``world_size`` keep every ``world_size``-th clip (for per-rank preprocessing)."""
    source = str(source)
    if source.startswith(PROCEDURAL):
        clips = _procedural(source, split, max_clips)
        if regions:
            for clip in clips:
                clip["region_bits"] = region_bits(clip, regions)
    else:
        from .synth.shards import iter_shard, shard_index, shard_paths

        clips = []
        read = tuple(keys) + ((PACKED_MASKS,) if regions else ())
        for path in shard_paths(source):
            meta = shard_index(path)
            if not any((m.get("split") == "train") == (split == "train") for m in meta):
                continue
            for clip in iter_shard(path, keys=read):
                if (clip.get("split") == "train") == (split == "train"):
                    if regions:
                        clip["region_bits"] = region_bits(clip, regions)
                        del clip[PACKED_MASKS]
                    clips.append(clip)
                if max_clips and len(clips) >= max_clips:
                    break
            if max_clips and len(clips) >= max_clips:
                break
    clips = clips[rank::world_size]
    if not clips:
        raise ValueError(f"--data {source}: no {split!r} clips found")
    return clips


def eval_clips(source: str | Path, train_clips: list[dict], n: int, frames: int,
               regions: tuple[str, ...] = ()) -> list[dict]:
    """``n`` held-out clips for reconstruction PSNR, preferring those with at least ``frames`` frames (the
    evaluation window is cut to the shortest clip chosen, so one short clip would shorten all of them).
    Without held-out clips, the first training clips (logged)."""
    n = max(n, 1)
    try:
        held = load_clips(source, "heldout", regions=regions)
    except ValueError:
        log.warning("no held-out clips in %s: PSNR is measured on training clips instead", source)
        held = train_clips
    long_enough = [c for c in held if len(c["frames"]) >= frames]
    if len(long_enough) < n:
        log.warning("only %d of %d held-out clips have %d frames: the evaluation window is cut to the shortest "
                    "of the %d longest", len(long_enough), len(held), frames, n)
        long_enough = sorted(held, key=lambda c: -len(c["frames"]))
    return long_enough[:n]


def eval_window(held_clips: list[dict], frames: int) -> int:
    """The evaluation window for ``held_clips``: ``frames``, or the shortest clip's length when that is shorter,
    rounded down to ``1 + 4k`` frames (the Wan VAE's window; a 115-frame clip gives 113). Logged when cut."""
    shortest = min(len(c["frames"]) for c in held_clips)
    window = min(frames, shortest)
    window = 1 + 4 * ((window - 1) // 4)
    if window != frames:
        log.warning("evaluation window cut from %d to %d frames (shortest held-out clip: %d frames)",
                    frames, window, shortest)
    return window


class FrameBank:
    """All frames of a clip set as one uint8 tensor ``[N, H, W, 3]`` on ``device``; draws windows of
    ``T`` consecutive frames of one clip (uniform over all windows) with random crops. Clips loaded with
    ``regions`` bring their packed region masks (``region_bits``), cropped and flipped with the frames by
    :meth:`sample_with_regions` and :meth:`region_windows`."""

    def __init__(self, clips: list[dict], window: int, device: torch.device):
        self.lengths = [len(c["frames"]) for c in clips]
        shapes = {tuple(c["frames"].shape[1:]) for c in clips}
        if len(shapes) != 1:
            raise ValueError(f"FrameBank: clips have different frame sizes {sorted(shapes)}; render them at one size")
        self.height, self.width, _ = shapes.pop()
        self.device = device
        self.frames = torch.from_numpy(np.concatenate([c["frames"] for c in clips])).to(device)
        have = ["region_bits" in c for c in clips]
        if any(have) and not all(have):
            raise ValueError("FrameBank: some clips have region masks and some do not; load them all with regions")
        self.region_bits = (torch.from_numpy(np.concatenate([c["region_bits"] for c in clips])).to(device)
                            if all(have) else None)
        self._set_window(window)

    def _set_window(self, window: int) -> None:
        self.window = int(window)
        starts, offset = [], 0
        for n in self.lengths:
            if n >= self.window:
                starts.append(np.arange(offset, offset + n - self.window + 1))
            offset += n
        if not starts:
            raise ValueError(f"FrameBank: no clip has {self.window} frames (longest {max(self.lengths)}); "
                             "use a shorter window")
        self.starts = torch.from_numpy(np.concatenate(starts)).to(self.device)

    def with_window(self, window: int) -> "FrameBank":
        """The same frames (shared, not copied) with another window length."""
        new = object.__new__(FrameBank)
        new.__dict__.update(self.__dict__)
        new._set_window(window)
        return new

    @property
    def n_windows(self) -> int:
        return int(self.starts.numel())

    def _draw(self, batch: int, crop: int | None, gen: torch.Generator, flip: bool):
        """Random frame indices ``[B, T]``, crop rows ``[B, h]`` and columns ``[B, w]`` (columns reversed where a
        sample is flipped)."""
        dev = self.device
        idx = self.starts[torch.randint(0, self.n_windows, (batch,), generator=gen, device=dev)]
        t = idx[:, None] + torch.arange(self.window, device=dev)[None]
        ch, cw = (self.height, self.width) if crop is None else (crop, crop)
        if ch > self.height or cw > self.width:
            raise ValueError(f"crop {crop} is larger than the frames ({self.height}x{self.width})")
        y0 = (torch.rand(batch, generator=gen, device=dev) * (self.height - ch + 1)).long()
        x0 = (torch.rand(batch, generator=gen, device=dev) * (self.width - cw + 1)).long()
        ys = y0[:, None] + torch.arange(ch, device=dev)[None]
        xs = x0[:, None] + torch.arange(cw, device=dev)[None]
        if flip:
            do = torch.rand(batch, generator=gen, device=dev) < 0.5
            xs = torch.where(do[:, None], xs.flip(1), xs)
        return t, ys, xs

    def sample(self, batch: int, crop: int | None, gen: torch.Generator, flip: bool = False) -> torch.Tensor:
        """float ``[B, 3, T, crop, crop]`` in -1..1 (``crop=None``: full frames)."""
        t, ys, xs = self._draw(batch, crop, gen, flip)
        return to_model_range(self.frames[t[:, :, None, None], ys[:, None, :, None], xs[:, None, None, :]])

    def sample_with_regions(self, batch: int, crop: int | None, gen: torch.Generator,
                            flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sample` (the same draw for the same generator state) and its region mask, float 0/1
        ``[B, 1, T, crop, crop]``."""
        t, ys, xs = self._draw(batch, crop, gen, flip)
        px = self.frames[t[:, :, None, None], ys[:, None, :, None], xs[:, None, None, :]]
        return to_model_range(px), self._regions_at(t, ys, xs)

    def _regions_at(self, t: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        if self.region_bits is None:
            raise ValueError("FrameBank: no region masks; load the clips with regions (e.g. --region-weight > 0)")
        packed = self.region_bits[t[:, :, None, None], ys[:, None, :, None], (xs // 8)[:, None, None, :]]
        bits = (packed >> (7 - xs % 8)[:, None, None, :].to(torch.uint8)) & 1   # np.packbits: first pixel = top bit
        return bits.unsqueeze(1).float()

    def _fixed(self, count: int) -> torch.Tensor:
        pick = torch.linspace(0, self.n_windows - 1, min(count, self.n_windows), device=self.device).long()
        return self.starts[pick][:, None] + torch.arange(self.window, device=self.device)[None]

    def windows(self, count: int) -> torch.Tensor:
        """``count`` fixed full-frame windows spread over the bank (for evaluation / calibration)."""
        return to_model_range(self.frames[self._fixed(count)])

    def region_windows(self, count: int) -> torch.Tensor:
        """The region masks of :meth:`windows`' windows, float 0/1 ``[B, 1, T, H, W]``."""
        t = self._fixed(count)
        b = t.shape[0]
        ys = torch.arange(self.height, device=self.device)[None].expand(b, -1)
        xs = torch.arange(self.width, device=self.device)[None].expand(b, -1)
        return self._regions_at(t, ys, xs)


def to_model_range(px: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> float ``[B, 3, T, H, W]`` in -1..1 (ComfyUI's VAE ``process_input``)."""
    return px.permute(0, 4, 1, 2, 3).float().mul_(2.0 / 255.0).sub_(1.0)
