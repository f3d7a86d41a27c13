"""Training shards of synthetic clips: safetensors tensors + JSON metadata (no pickle).

One shard holds a few clips. Per clip ``i`` the tensors are

* ``{i}.frames``    uint8 ``[T, H, W, 3]`` RGB frames;
* ``{i}.audio``     int16 ``[N]`` mono PCM at ``sample_rate``;
* ``{i}.keypoints`` float32 ``[T, 130, 3]`` (PoseSequence layout, pixels);
* ``{i}.masks``     uint8 ``[T, R, H, ceil(W/8)]``: region masks bit-packed along W (np.packbits),
  regions in ``mask_names`` order (pose/regions.py ``MASK_NAMES``);
* ``{i}.energy``    float32 ``[T]`` per-frame speech energy 0..1;

and the header metadata key ``iasa_synth`` holds JSON: format version and a list with, per clip, id,
split, text, identity parameters, fps, sample rate, frame size, mask names and the speech settings.

:func:`read_shard` loads a whole shard; :func:`iter_shard` / :func:`iter_clips` read one clip at a
time (safetensors reads only the tensors asked for), so data sets of thousands of clips stream.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

FORMAT = "iasa-synth-shard"
VERSION = 1
META_KEY = "iasa_synth"
TENSORS = ("frames", "audio", "keypoints", "masks", "energy")
SHARD_GLOB = "*.safetensors"
PACKED_MASKS = "packed_masks"   # an iter_shard key: the masks as stored, bit-packed


class ShardFormatError(ValueError):
    """A file that is not a synthetic-clip shard of this version."""


def pack_masks(masks: dict[str, np.ndarray], names: Iterable[str]) -> np.ndarray:
    """``{name: bool [T, H, W]}`` -> uint8 ``[T, R, H, ceil(W/8)]`` in ``names`` order."""
    stack = np.stack([np.asarray(masks[n], bool) for n in names], axis=1)
    return np.packbits(stack, axis=-1)


def unpack_masks(packed: np.ndarray, names: Iterable[str], width: int) -> dict[str, np.ndarray]:
    bits = np.unpackbits(packed, axis=-1, count=width).astype(bool)
    return {n: bits[:, r] for r, n in enumerate(names)}


def _check_clip(i: int, clip: dict) -> None:
    for key in ("id", "frames", "audio", "keypoints", "masks"):
        if key not in clip:
            raise ValueError(f"write_shard: clip {i} has no {key!r}; every clip needs id, frames, audio, keypoints, masks")
    f, kp = np.asarray(clip["frames"]), np.asarray(clip["keypoints"])
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"write_shard: clip {clip['id']!r} frames must be uint8 [T, H, W, 3], got {f.dtype} {f.shape}")
    if kp.shape != (f.shape[0], 130, 3):
        raise ValueError(f"write_shard: clip {clip['id']!r} keypoints must be [{f.shape[0]}, 130, 3], got {kp.shape}")
    if np.asarray(clip["audio"]).dtype != np.int16:
        raise ValueError(f"write_shard: clip {clip['id']!r} audio must be int16 PCM, got {np.asarray(clip['audio']).dtype}")


def write_shard(path: str | Path, clips: list[dict]) -> Path:
    """Write ``clips`` (dicts: id, frames, audio, keypoints, masks {name: bool [T,H,W]}, optional
    energy, identity (dict), text, split, fps, sample_rate, info) to ``path`` atomically."""
    from safetensors.numpy import save_file

    if not clips:
        raise ValueError("write_shard: no clips to write")
    tensors: dict[str, np.ndarray] = {}
    meta = []
    for i, clip in enumerate(clips):
        _check_clip(i, clip)
        frames = np.ascontiguousarray(clip["frames"], np.uint8)
        T, H, W, _ = frames.shape
        names = list(clip.get("mask_names") or clip["masks"].keys())
        tensors[f"{i}.frames"] = frames
        tensors[f"{i}.audio"] = np.ascontiguousarray(clip["audio"], np.int16)
        tensors[f"{i}.keypoints"] = np.ascontiguousarray(clip["keypoints"], np.float32)
        tensors[f"{i}.masks"] = np.ascontiguousarray(pack_masks(clip["masks"], names))
        energy = clip.get("energy")
        tensors[f"{i}.energy"] = np.ascontiguousarray(np.zeros(T) if energy is None else energy, np.float32)
        meta.append(dict(
            id=str(clip["id"]), split=clip.get("split", ""), text=clip.get("text", ""),
            identity=clip.get("identity"), fps=float(clip.get("fps", 25.0)),
            sample_rate=int(clip.get("sample_rate", 16000)), n_frames=T, height=H, width=W,
            mask_names=names, info=clip.get("info", {}),
        ))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps({"format": FORMAT, "version": VERSION, "clips": meta})})
    os.replace(tmp, path)
    return path


def shard_index(path: str | Path) -> list[dict]:
    """The per-clip metadata of a shard (reads the header only)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return _meta(f, path)


def _meta(f, path) -> list[dict]:
    raw = (f.metadata() or {}).get(META_KEY)
    if raw is None:
        raise ShardFormatError(f"{path} is not a synthetic-clip shard (no {META_KEY!r} metadata); make shards with build.py render")
    data = json.loads(raw)
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ShardFormatError(f"{path}: shard format {data.get('format')!r} v{data.get('version')!r}, expected {FORMAT} v{VERSION}; rebuild it")
    return data["clips"]


def _load_clip(f, i: int, m: dict, keys: Iterable[str]) -> dict:
    clip = dict(m)
    for key in keys:
        t = f.get_tensor(f"{i}.{'masks' if key == PACKED_MASKS else key}")
        clip[key] = unpack_masks(t, m["mask_names"], m["width"]) if key == "masks" else t
    return clip


def iter_shard(path: str | Path, keys: Iterable[str] = TENSORS) -> Iterator[dict]:
    """Clips of one shard, one at a time; ``keys`` picks the tensors to load (e.g. no frames). ``packed_masks``:
    the masks as stored (uint8 ``[T, R, H, ceil(W/8)]``, ``mask_names`` order), not unpacked."""
    from safetensors import safe_open

    keys = tuple(keys)
    bad = set(keys) - set(TENSORS) - {PACKED_MASKS}
    if bad:
        raise ValueError(f"iter_shard: unknown keys {sorted(bad)}; choose from {TENSORS + (PACKED_MASKS,)}")
    with safe_open(str(path), framework="np") as f:
        for i, m in enumerate(_meta(f, path)):
            yield _load_clip(f, i, m, keys)


def read_shard(path: str | Path) -> list[dict]:
    """Every clip of a shard, all tensors (masks unpacked to bool ``[T, H, W]``)."""
    return list(iter_shard(path))


def shard_paths(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """A directory (its ``*.safetensors``, sorted), one file, or a list of files."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            paths = sorted(p.glob(SHARD_GLOB))
            if not paths:
                raise FileNotFoundError(f"no {SHARD_GLOB} shards in {p}: run build.py render first")
            return paths
        if not p.exists():
            raise FileNotFoundError(f"shard {p} does not exist")
        return [p]
    return [Path(s) for s in source]


def iter_clips(source, keys: Iterable[str] = TENSORS, shuffle: bool = False, seed: int = 0,
               rank: int = 0, world_size: int = 1) -> Iterator[dict]:
    """Stream clips from shards without loading everything. ``shuffle`` permutes shards and the
    clips inside each shard (deterministic by ``seed``); ``rank`` / ``world_size`` give each
    distributed worker a disjoint subset of shards."""
    paths = shard_paths(source)
    if not (0 <= rank < world_size):
        raise ValueError(f"iter_clips: rank {rank} must be in [0, world_size={world_size})")
    rng = np.random.default_rng(seed)
    if shuffle:
        paths = [paths[i] for i in rng.permutation(len(paths))]
    paths = paths[rank::world_size]
    from safetensors import safe_open

    for path in paths:
        with safe_open(str(path), framework="np") as f:
            meta = _meta(f, path)
            order = rng.permutation(len(meta)) if shuffle else range(len(meta))
            for i in order:
                yield _load_clip(f, int(i), meta[int(i)], tuple(keys))
