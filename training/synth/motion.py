"""Clip motion: speech -> audio features -> the pack's Audio To Pose applied to a synthetic identity.

Stage one of the two-stage data build (runs where librosa is installed). For every speech clip it
draws an identity (train and held-out identities come from disjoint seed ranges), computes the
per-video-frame features, animates the identity's base pose and stores, per split, a *motion bundle*:

* ``<split>.npz`` (no pickle): per clip ``<id>__kp`` (keypoints, see codec.py), ``<id>__energy``
  (float16 per-frame speech energy) and ``<id>__audio`` (encoded int16 PCM);
* ``<split>.json``: per clip id, text, voice settings, identity parameters, motion seed and amounts,
  frame / sample counts, fps, canvas size and the audio codec.

Stage two (render.py / build.py render) only decodes these and draws, so it needs numpy + cv2.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .codec import AUDIO_CODECS, decode_audio, decode_keypoints, encode_audio, encode_keypoints, to_int16
from .identity import Identity

log = logging.getLogger(__name__)

FPS = 25.0
SIZE = 256
SPLIT_IDENTITY_BASE = {"train": 0, "heldout": 1_000_000}
IDENTITY_RANGE = 1_000_000
BUNDLE_VERSION = 1


@dataclass
class MotionClip:
    """One clip of the motion bundle, decoded."""

    id: str
    split: str
    text: str
    identity: Identity
    keypoints: np.ndarray          # float32 [T, 130, 3], pixels of a size x size canvas
    energy: np.ndarray             # float32 [T]
    audio: np.ndarray              # int16 [N] at sample_rate (zeros if the bundle has no audio)
    fps: float
    sample_rate: int
    size: int
    info: dict = field(default_factory=dict)   # voice, rate, pitch, motion seed and amounts, codec

    @property
    def n_frames(self) -> int:
        return int(self.keypoints.shape[0])


def identity_seed(split: str, index: int, seed: int, n_identities: int) -> int:
    """Identity seed of clip ``index``: inside the split's own range, so train and held-out never
    share an identity; ``n_identities`` distinct identities are cycled through."""
    if split not in SPLIT_IDENTITY_BASE:
        raise ValueError(f"identity_seed: split {split!r} is not one of {tuple(SPLIT_IDENTITY_BASE)}")
    k = index % max(1, n_identities)
    return SPLIT_IDENTITY_BASE[split] + (int(seed) * 7919 + k) % IDENTITY_RANGE


def clip_motion(signal: np.ndarray, sample_rate: int, identity: Identity, seed: int, size: int = SIZE,
                fps: float = FPS, mouth: float = 1.0, head: float = 1.0, gestures: float = 1.0):
    """(keypoints float32 [T, 130, 3], AudioFeatures) of ``identity`` speaking ``signal``."""
    from ...audio.features import compute_features
    from ...pose.audio_to_pose import audio_to_pose
    from .templates import base_pose

    feats = compute_features(np.asarray(signal, np.float32), int(sample_rate), float(fps))
    seq = audio_to_pose(base_pose(identity, size), feats, seed=int(seed), mouth=mouth, head=head, gestures=gestures)
    return seq.points.astype(np.float32), feats


def build_motion(speech_dir: str | Path, out_dir: str | Path, split: str, seed: int = 0, size: int = SIZE,
                 fps: float = FPS, audio_codec: str = "mulaw", n_identities: int | None = None) -> dict:
    """Motion bundle for every clip of the speech corpus in ``speech_dir`` (see speech.py).
    Returns a summary (clip count, frames, bytes)."""
    import soundfile as sf

    from .speech import read_manifest

    if audio_codec not in AUDIO_CODECS:
        raise ValueError(f"build_motion: audio_codec {audio_codec!r} is not one of {AUDIO_CODECS}")
    clips = [c for c in read_manifest(speech_dir) if c.split == split]
    if not clips:
        raise ValueError(f"build_motion: the corpus in {speech_dir} has no {split!r} clips")
    n_ids = n_identities or len(clips)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, clip in enumerate(clips):
        pcm, sr = sf.read(str(Path(speech_dir) / clip.file), dtype="int16", always_2d=True)
        pcm = pcm[:, 0] if pcm.shape[1] == 1 else to_int16(pcm.mean(axis=1) / 32768.0)
        y = pcm.astype(np.float32) / 32768.0
        rng = np.random.default_rng([int(seed), i, 0x40710])
        ident = Identity.sample(identity_seed(split, i, seed, n_ids))
        motion_seed = int(rng.integers(2**31))
        amounts = dict(mouth=round(float(rng.uniform(0.85, 1.15)), 3), head=round(float(rng.uniform(0.7, 1.3)), 3),
                       gestures=round(float(rng.uniform(0.5, 1.5)), 3))
        kp, feats = clip_motion(y, sr, ident, motion_seed, size, fps, **amounts)
        arrays[f"{clip.id}__kp"] = encode_keypoints(kp)
        arrays[f"{clip.id}__energy"] = feats.energy.astype(np.float16)
        arrays[f"{clip.id}__audio"] = encode_audio(pcm, audio_codec)
        meta.append(dict(id=clip.id, split=split, text=clip.text, identity=ident.to_dict(),
                         n_frames=int(kp.shape[0]), n_samples=int(pcm.size), fps=float(fps), sample_rate=int(sr),
                         size=int(size), audio_codec=audio_codec, motion_seed=motion_seed, amounts=amounts,
                         voice=clip.voice, rate=clip.rate, pitch=clip.pitch, word_gap=clip.word_gap))
        if (i + 1) % 50 == 0:
            log.info("%s: motion for %d / %d clips", split, i + 1, len(clips))
    npz, js = out / f"{split}.npz", out / f"{split}.json"
    np.savez(npz, **arrays)
    js.write_text(json.dumps({"version": BUNDLE_VERSION, "split": split, "seed": int(seed), "clips": meta}, indent=1))
    return dict(split=split, clips=len(meta), frames=int(sum(m["n_frames"] for m in meta)),
                bytes=npz.stat().st_size + js.stat().st_size)


def subset_motion(bundle_dir: str | Path, out_dir: str | Path, split: str, n: int) -> dict:
    """Copy the first ``n`` clips of one split of a motion bundle into a new bundle (same encoding, no
    re-synthesis): a smaller file to carry to a machine that renders the shards itself."""
    src, out = Path(bundle_dir), Path(out_dir)
    if out.resolve() == src.resolve():
        raise ValueError(f"subset_motion: --out {out} is the source bundle; give another folder")
    data = json.loads((src / f"{split}.json").read_text())
    read_motion_index(src, split)  # checks the version
    keep = data["clips"][:n]
    out.mkdir(parents=True, exist_ok=True)
    with np.load(src / f"{split}.npz", allow_pickle=False) as z:
        arrays = {f"{m['id']}__{part}": z[f"{m['id']}__{part}"] for m in keep for part in ("kp", "energy", "audio")}
    npz, js = out / f"{split}.npz", out / f"{split}.json"
    np.savez(npz, **arrays)
    js.write_text(json.dumps({**data, "clips": keep, "subset_of": str(src)}, indent=1))
    return dict(split=split, clips=len(keep), of=len(data["clips"]), bytes=npz.stat().st_size + js.stat().st_size)


def read_motion_index(bundle_dir: str | Path, split: str) -> list[dict]:
    """The clip metadata list of one split's motion bundle."""
    js = Path(bundle_dir) / f"{split}.json"
    if not js.exists():
        raise FileNotFoundError(f"no motion bundle {js}: run `build.py motion` first")
    data = json.loads(js.read_text())
    if data.get("version") != BUNDLE_VERSION:
        raise ValueError(f"{js}: bundle version {data.get('version')!r}, expected {BUNDLE_VERSION}; rebuild it")
    return data["clips"]


def iter_motion(bundle_dir: str | Path, split: str, ids: list[str] | None = None) -> Iterator[MotionClip]:
    """Decode clips of a motion bundle one at a time (all of them, or ``ids`` in that order)."""
    index = {m["id"]: m for m in read_motion_index(bundle_dir, split)}
    order = list(index) if ids is None else ids
    with np.load(Path(bundle_dir) / f"{split}.npz", allow_pickle=False) as z:
        for cid in order:
            if cid not in index:
                raise KeyError(f"clip {cid!r} is not in the {split} motion bundle of {bundle_dir}")
            m = index[cid]
            kp = decode_keypoints(z[f"{cid}__kp"], m["n_frames"])
            audio = decode_audio(z[f"{cid}__audio"], m["audio_codec"], m["n_samples"])
            info = {k: m[k] for k in ("voice", "rate", "pitch", "word_gap", "motion_seed", "amounts", "audio_codec")}
            yield MotionClip(id=cid, split=m["split"], text=m["text"], identity=Identity.from_dict(m["identity"]),
                             keypoints=kp, energy=z[f"{cid}__energy"].astype(np.float32), audio=audio,
                             fps=m["fps"], sample_rate=m["sample_rate"], size=m["size"], info=info)

