"""Stage two of the data build: motion bundle -> drawn frames + region masks -> shards.

Needs only numpy, cv2 and safetensors (no librosa, no soundfile), so it runs on the GPU training
machine. Work is split by shard over processes (each worker draws and writes whole shards, nothing
big crosses process boundaries). Output is deterministic: the shard layout depends only on the
bundle and ``clips_per_shard``.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from ...pose.keypoints import PoseSequence
from ...pose.regions import MASK_NAMES, sequence_masks
from .character import draw_sequence
from .motion import MotionClip, iter_motion, read_motion_index
from .shards import write_shard

log = logging.getLogger(__name__)


def render_clip(clip: MotionClip) -> dict:
    """A shard clip dict (frames, masks, audio, keypoints, metadata) from a decoded motion clip."""
    frames = draw_sequence(clip.keypoints, clip.identity, clip.size)
    masks = sequence_masks(PoseSequence(clip.keypoints, clip.size, clip.size))
    return dict(id=clip.id, split=clip.split, text=clip.text, identity=clip.identity.to_dict(),
                frames=frames, audio=clip.audio, keypoints=clip.keypoints, masks=masks, mask_names=list(MASK_NAMES),
                energy=clip.energy, fps=clip.fps, sample_rate=clip.sample_rate, info=clip.info)


def _render_shard(task: tuple[str, str, list[str], str]) -> dict:
    bundle_dir, split, ids, path = task
    try:
        import cv2
        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover - cv2 is required by character.py anyway
        pass
    t0 = time.perf_counter()
    clips = [render_clip(c) for c in iter_motion(bundle_dir, split, ids)]
    write_shard(path, clips)
    return dict(path=path, clips=len(clips), frames=int(sum(c["frames"].shape[0] for c in clips)),
                seconds=time.perf_counter() - t0, bytes=os.path.getsize(path))


def render_bundle(bundle_dir: str | Path, out_dir: str | Path, split: str | list[str], clips_per_shard: int = 16,
                  workers: int | None = None, limit: int | None = None) -> dict:
    """Draw every clip of a motion bundle's split (or splits, in one process pool) into shards
    ``<out_dir>/<split>-NNNNN.safetensors``. Returns a summary per split (shards, clips, frames,
    bytes, ms per frame per worker) plus the wall time."""
    if clips_per_shard < 1:
        raise ValueError(f"render_bundle: clips_per_shard must be >= 1, got {clips_per_shard}")
    splits = [split] if isinstance(split, str) else list(split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for sp in splits:
        ids = [m["id"] for m in read_motion_index(bundle_dir, sp)]
        if limit is not None:
            ids = ids[:limit]
        tasks += [(str(bundle_dir), sp, ids[k:k + clips_per_shard], str(out / f"{sp}-{k // clips_per_shard:05d}.safetensors"))
                  for k in range(0, len(ids), clips_per_shard)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    t0 = time.perf_counter()
    if workers == 1:
        results = [_render_shard(t) for t in tasks]
    else:
        with mp.get_context("fork").Pool(workers) as pool:  # fork: children inherit the registered package
            results = []
            for r in pool.imap_unordered(_render_shard, tasks):
                results.append(r)
                log.info("%d / %d shards", len(results), len(tasks))
    summary: dict = {"seconds": round(time.perf_counter() - t0, 2), "workers": workers}
    split_of = {t[3]: t[1] for t in tasks}
    for sp in splits:
        rs = [r for r in results if split_of[r["path"]] == sp]
        frames = sum(r["frames"] for r in rs)
        summary[sp] = dict(shards=len(rs), clips=sum(r["clips"] for r in rs), frames=frames, bytes=sum(r["bytes"] for r in rs),
                           ms_per_frame_per_worker=round(1000 * sum(r["seconds"] for r in rs) / max(frames, 1), 2))
    return summary
