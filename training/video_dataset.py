"""Training shards from real videos with speech (the IASA Build Dataset node; also usable from Python).

Per video: the speech track (``audio.loading``: PyAV, 16 kHz mono; a video without audio, or a silent one,
is refused by name), frames decoded with PyAV, resampled to ``fps``, centre-cropped to a square; the pose
of every frame from the crop at its own resolution (``pose.extract``: mediapipe Holistic, the IASA
Extract Pose node's code), region masks from the pose (``pose.regions``), per-frame speech energy
(``audio.features``); frames and keypoints are then resized to ``size``. Long videos are cut into clips of
at most ``max_seconds``. Clips go into shards of ``training/synth/shards.py`` (the layout every trainer
reads), every ``heldout_every``-th clip in the held-out split.

A video in which no frame shows a person is refused; frames without a person inside a video that has one
hold the nearest detected pose (logged), unless that is more than half of the video.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np

from ..audio.features import features_from_audio
from ..audio.loading import VIDEO_EXTENSIONS, AudioInputError, load_audio_file
from ..pose.extract import extract_pose
from ..pose.keypoints import frames_without_person, hold_nearest_person
from ..pose.regions import MASK_NAMES, sequence_masks
from .synth.shards import write_shard

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000


class VideoDatasetError(ValueError):
    """A video that cannot become training data (the message names it and says why)."""


def list_videos(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise VideoDatasetError(f"no videos ({', '.join(sorted(VIDEO_EXTENSIONS))}) in folder '{folder.name}'")
    return videos


def read_frames(path: Path, fps: float) -> tuple[np.ndarray, float]:
    """RGB uint8 ``[T, S, S, 3]`` (centre square crop, source resolution) at ``fps`` (0 = the video's own)."""
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoDatasetError(f"{path.name}: no video stream")
            stream = c.streams.video[0]
            src_fps = float(stream.average_rate or stream.guessed_rate or 25)
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    except VideoDatasetError:
        raise
    except Exception as e:  # av.error.*: unreadable containers
        raise VideoDatasetError(f"{path.name}: cannot decode the video ({e})") from None
    if not frames:
        raise VideoDatasetError(f"{path.name}: the video has no frames")
    out_fps = fps or src_fps
    n_out = max(1, int(math.floor(len(frames) * out_fps / src_fps + 1e-6)))
    pick = np.minimum(np.round(np.arange(n_out) * src_fps / out_fps).astype(int), len(frames) - 1)
    h, w = frames[0].shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return np.stack([frames[i][y0:y0 + s, x0:x0 + s] for i in pick]), out_fps


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if frames.shape[1] == size:
        return frames
    interp = cv2.INTER_AREA if frames.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames])


def video_clips(path: Path, size: int = 256, fps: float = 25.0, max_seconds: float = 6.0,
                progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """The clips of one video (dicts in ``write_shard``'s layout, split not set yet)."""
    try:
        audio = load_audio_file(path, sample_rate=SAMPLE_RATE)
        frames, fps = read_frames(path, fps)
        feats = features_from_audio(audio, fps, name=path.name)
    except AudioInputError as e:
        raise VideoDatasetError(f"{path.name}: {e}") from None
    T = min(len(frames), feats.n_frames)
    frames = frames[:T]
    seq = extract_pose(frames, smoothing=0.5, progress=progress)
    missing = frames_without_person(seq)
    if len(missing) == T:
        raise VideoDatasetError(f"{path.name}: no person found in any of its {T} frames; use videos where one "
                                f"person's face and upper body are visible")
    if len(missing) > T // 2:
        raise VideoDatasetError(f"{path.name}: no person in {len(missing)} of {T} frames; trim the video to the part "
                                f"where the speaker is visible")
    if missing:
        log.warning("%s: no person in %d of %d frames; holding the nearest detected pose", path.name, len(missing), T)
        seq = hold_nearest_person(seq)
    seq = seq.scaled_to(size, size)
    frames = _resize(frames, size)
    masks = sequence_masks(seq)
    pcm = np.clip(np.rint(audio["waveform"][0, 0].numpy() * 32767), -32768, 32767).astype(np.int16)
    per = max(1, int(round(max_seconds * fps)))
    clips = []
    for k, start in enumerate(range(0, T, per)):
        stop = min(T, start + per)
        if k > 0 and stop - start < fps:   # a tail shorter than a second after a full clip
            break
        a0, a1 = int(round(start / fps * SAMPLE_RATE)), int(round(stop / fps * SAMPLE_RATE))
        clips.append({"id": f"{path.stem}-{k:03d}", "frames": frames[start:stop],
                      "keypoints": seq.points[start:stop].astype(np.float32), "audio": pcm[a0:a1],
                      "masks": {n: masks[n][start:stop] for n in MASK_NAMES}, "mask_names": list(MASK_NAMES),
                      "energy": feats.energy[start:stop], "fps": fps, "sample_rate": SAMPLE_RATE,
                      "info": {"source": path.name, "first_frame": start}})
    return clips


def build_dataset(videos: list[Path], out_dir: str | Path, size: int = 256, fps: float = 25.0,
                  max_seconds: float = 6.0, heldout_every: int = 8, clips_per_shard: int = 16,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Shards of every video's clips into ``out_dir``; returns ``{"path", "clips", "train", "heldout", "shards"}``.

    ``progress(done, total)`` counts videos. Errors name the video."""
    if size < 16 or size % 16:
        raise ValueError(f"size must be a multiple of 16 (Wan tokens are 16 px), got {size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.safetensors"):
        old.unlink()
    clips: list[dict] = []
    for i, path in enumerate(videos):
        clips += video_clips(Path(path), size, fps, max_seconds)
        if progress is not None:
            progress(i + 1, len(videos))
    for j, c in enumerate(clips):
        c["split"] = "heldout" if heldout_every and len(clips) > 1 and (j + 1) % heldout_every == 0 else "train"
    shards = [write_shard(out / f"shard-{n:04d}.safetensors", clips[s:s + clips_per_shard])
              for n, s in enumerate(range(0, len(clips), clips_per_shard))]
    summary = {"path": str(out), "clips": len(clips), "train": sum(c["split"] == "train" for c in clips),
               "heldout": sum(c["split"] != "train" for c in clips), "shards": [p.name for p in shards],
               "videos": [Path(v).name for v in videos], "size": size, "fps": fps}
    log.info("dataset: %d clips (%d held out) from %d videos -> %s", summary["clips"], summary["heldout"],
             len(videos), out)
    return summary
