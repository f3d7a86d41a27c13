"""The distillation data: the teacher's latent windows plus the ground truth the region loss compares with.

* latents, control latents, reference latents and the input-aware attention pattern of every window:
  ``training.teacher_data.LatentSet``, built by the teacher's own code (``build_latent_set``; the command
  line reuses the teacher run's latent cache through ``teacher_train.get_latents``), so the student sees
  the teacher's exact input layout;
* :class:`GroundTruth`: per window and latent frame ``f``, the pixel frame that ends it (frame 0, then
  ``4f``) as uint8, and its region masks as bits (``region_loss.pack_mask_bits``) from the shards'
  ``masks`` (or, for data without masks such as ``procedural:``, from the keypoints, ``pose.regions``).
  The region loss compares decoded frames only there, so only those frames are kept.

:class:`DistillData` draws training batches (a global batch from the shared generator, this rank's rows).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ...pose.keypoints import PoseSequence
from ...pose.regions import sequence_masks
from ..clips import PROCEDURAL, load_clips
from ..teacher_data import LatentSet, plan_windows
from ..teacher_train import window_mask
from .dmd import Batch
from .region_loss import pack_mask_bits

log = logging.getLogger(__name__)
GT_FORMAT = "iasa-distill-ground-truth"
GT_VERSION = 1


class DataMismatchError(ValueError):
    """Latents and ground truth (or a teacher and the data) that do not belong together."""


def key_pixel_frames(latent_frames: int) -> list[int]:
    """The last pixel frame of every latent frame: 0, 4, 8, ... (Wan: latent f >= 1 covers 4f-3 .. 4f)."""
    return [0] + [4 * f for f in range(1, latent_frames)]


@dataclass
class GroundTruth:
    frames: torch.Tensor   # uint8 [N, F, H, W, 3]
    masks: torch.Tensor    # uint8 [N, F, H, W] region bits
    ids: list[str]

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def take(self, idx: torch.Tensor, frames: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """float ``[b, 3, K, H, W]`` in -1..1 and mask bits ``[b, K, H, W]`` of windows ``idx``, latent frames
        ``frames``."""
        i, f = idx.cpu(), frames.cpu()
        px = self.frames[i][:, f].to(device, non_blocking=True)
        bits = self.masks[i][:, f].to(device, non_blocking=True)
        return px.permute(0, 4, 1, 2, 3).float().mul_(2.0 / 255.0).sub_(1.0), bits


def iter_train_clips(source: str, max_clips: int = 0) -> Iterator[dict]:
    """Training clips one at a time, in ``clips.load_clips``'s order (shards stream: memory stays at one clip)."""
    if str(source).startswith(PROCEDURAL):
        yield from load_clips(source, "train", max_clips or None)
        return
    from ..synth.shards import iter_shard, shard_index, shard_paths

    n = 0
    for path in shard_paths(source):
        if not any(m.get("split") == "train" for m in shard_index(path)):
            continue
        for clip in iter_shard(path, keys=("frames", "keypoints", "masks")):
            if clip.get("split") == "train":
                yield clip
                n += 1
                if max_clips and n >= max_clips:
                    return


def build_ground_truth(clips: Iterable[dict], frames: int, stride: int, max_per_clip: int = 0) -> GroundTruth:
    """Key frames and region masks of every window, in ``build_latent_set``'s window order (``clips`` may be
    an iterator: only the key frames of each clip are kept)."""
    keys = np.array(key_pixel_frames((frames - 1) // 4 + 1))
    px, bits, ids = [], [], []
    windows = ((c, clip, s) for c, clip in enumerate(clips)
               for _, s in plan_windows([len(clip["frames"])], frames, stride, max_per_clip))
    for c, clip, s in windows:
        idx = s + keys
        h, w = clip["frames"].shape[1:3]
        if isinstance(clip.get("masks"), dict):
            masks = {k: v[idx] for k, v in clip["masks"].items()}
        else:
            masks = sequence_masks(PoseSequence(np.asarray(clip["keypoints"][idx], np.float32), w, h))
        px.append(torch.from_numpy(np.ascontiguousarray(clip["frames"][idx])))
        bits.append(pack_mask_bits({k: torch.from_numpy(np.asarray(v)) for k, v in masks.items()}))
        ids.append(f"{clip.get('id', c)}@{s}")
    if not ids:
        raise ValueError(f"no clip has {frames} frames; use a shorter window")
    return GroundTruth(torch.stack(px), torch.stack(bits), ids)


def check_matches(lat: LatentSet, gt: GroundTruth) -> None:
    if lat.ids != gt.ids:
        diff = next((i for i, (a, b) in enumerate(zip(lat.ids, gt.ids)) if a != b), min(len(lat.ids), len(gt.ids)))
        raise DataMismatchError(f"latents and ground truth list different windows (first difference at {diff}: "
                                f"{lat.ids[diff:diff + 1]} vs {gt.ids[diff:diff + 1]}, {len(lat)} vs {len(gt)}); "
                                "delete the latent cache to rebuild it")
    if tuple(gt.frames.shape[1:2]) != (lat.x0.shape[2],):
        raise DataMismatchError(f"ground truth has {gt.frames.shape[1]} key frames per window, latents "
                                f"{lat.x0.shape[2]} frames")


def save_ground_truth(gt: GroundTruth, path: str | Path, info: dict) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    meta = {"format": GT_FORMAT, "version": GT_VERSION, "ids": gt.ids, **info}
    save_file({"frames": gt.frames.contiguous(), "masks": gt.masks.contiguous()}, str(tmp),
              metadata={"iasa": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def load_ground_truth(path: str | Path) -> tuple[GroundTruth, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("iasa", "{}"))
        if meta.get("format") != GT_FORMAT or meta.get("version") != GT_VERSION:
            raise ValueError(f"{path} is not a distillation ground-truth cache v{GT_VERSION}; delete it to rebuild")
        return GroundTruth(f.get_tensor("frames"), f.get_tensor("masks"), meta["ids"]), meta


class DistillData:
    """Batches of windows: conditions for the student / scores, ground truth rows for the region loss."""

    def __init__(self, lat: LatentSet, batch: int, rows: slice, ref_random_prob: float = 0.5, sparse: bool = True,
                 student_reference_itself: bool = False):
        if not 0 <= ref_random_prob <= 1:
            raise ValueError(f"ref_random_prob must be in [0, 1], got {ref_random_prob}")
        self.lat, self.batch, self.rows = lat, int(batch), rows
        self.ref_random_prob, self.sparse = ref_random_prob, sparse
        self.student_reference_itself = student_reference_itself   # the student's mask only (cond["student_mask"])
        self.device = lat.x0.device
        self.latent_shape = tuple(lat.x0.shape[1:])

    def draw(self, gen: torch.Generator) -> Batch:
        lat, B, dev = self.lat, self.batch, self.device
        idx = torch.randint(0, len(lat), (B,), generator=gen, device=dev)
        use_random = torch.rand(B, generator=gen, device=dev) < self.ref_random_prob
        mine = idx[self.rows]
        x0 = lat.x0[mine]
        ref = torch.where(use_random[self.rows][:, None, None, None, None], lat.ref_random[mine], x0[:, :, :1])
        mask = window_mask(lat, mine) if self.sparse else None
        student_mask = window_mask(lat, mine, True) if self.sparse and self.student_reference_itself else mask
        cond = {"control": lat.control[mine], "ref": ref, "mask": mask, "student_mask": student_mask}
        return Batch(cond=cond, latent_shape=self.latent_shape, rows=self.rows, global_batch=B, gt={"idx": mine})
