"""Audio loading and AUDIO-dict helpers (IASA Load Audio and every node that reads AUDIO).

The result of :func:`load_audio_file` is the standard ComfyUI AUDIO value
``{"waveform": torch.float32 [1, C, N], "sample_rate": int}``, so stock nodes (SaveAudio,
CreateVideo, AudioEncoderEncode) accept it.

Decoding: plain audio files (wav, flac, ogg, mp3, ...) through soundfile (libsndfile 1.2 reads mp3);
video containers (mp4, mov, mkv, webm, avi, ...) and anything libsndfile cannot read (m4a, aac, ...)
through PyAV, which ComfyUI itself requires. No ffmpeg binary and no audioread are used.

Input-folder confinement of paths is the node layer's job, not this module's.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch

from ..errors import public_name

log = logging.getLogger(__name__)

MIN_SECONDS = 0.5
"""Shortest clip (seconds) the pack accepts: shorter audio gives too few frames to animate."""

SILENCE_PEAK = 1e-4
"""A signal whose absolute peak is below this is treated as silent."""

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".flv"})
PYAV_AUDIO_EXTENSIONS = frozenset({".m4a", ".aac", ".opus", ".wma"})   # everything else: soundfile first

_FORMATS_HINT = "WAV, FLAC, OGG or MP3 (or a video file with an audio track: mp4, mov, mkv, webm, avi)"


@public_name
class AudioInputError(ValueError):
    """Bad audio input; the message names the input, the problem and the fix."""


# --------------------------------------------------------------------------------------------------
# checks shared with the feature / audio-to-pose nodes
# --------------------------------------------------------------------------------------------------
def check_min_length(signal: np.ndarray, sample_rate: int, name: str) -> None:
    """Refuse audio shorter than :data:`MIN_SECONDS`."""
    seconds = signal.shape[-1] / float(sample_rate)
    if seconds < MIN_SECONDS:
        raise AudioInputError(
            f"Audio '{name}' is too short: {seconds:.3f} s, the minimum is {MIN_SECONDS} s. "
            f"Use a clip of at least {MIN_SECONDS} s (a few seconds of speech works best); "
            "if you trimmed it with start/duration, widen the range."
        )


def check_not_silent(signal: np.ndarray, name: str) -> None:
    """Refuse an all-silent signal (absolute peak below :data:`SILENCE_PEAK`)."""
    peak = float(np.max(np.abs(signal))) if signal.size else 0.0
    if not peak >= SILENCE_PEAK:  # also catches NaN
        raise AudioInputError(
            f"Audio '{name}' is silent: its peak amplitude is {peak:.2e}, below {SILENCE_PEAK:.0e}. "
            "Connect a clip that contains speech, check that the file is not muted, "
            "and check the start/duration trim."
        )


# --------------------------------------------------------------------------------------------------
# AUDIO dict -> mono numpy
# --------------------------------------------------------------------------------------------------
def audio_to_mono(audio: Any, name: str = "audio", batch_index: int = 0) -> tuple[np.ndarray, int]:
    """Any AUDIO value (ours or stock LoadAudio's; [B, C, N], any B and C) -> (mono float32 [N], rate).

    Channels are averaged. With B > 1 the item ``batch_index`` is used and the others are ignored
    (with a logged warning), because the features describe one speech track.
    """
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise AudioInputError(
            f"Input '{name}' is not an AUDIO value (got {type(audio).__name__}); expected "
            '{"waveform": tensor [B, C, N], "sample_rate": int}. Connect the output of a Load Audio node.'
        )
    sample_rate = _as_sample_rate(audio["sample_rate"], name)
    wave = audio["waveform"]
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to(device="cpu", dtype=torch.float32).numpy()
    elif isinstance(wave, np.ndarray):
        wave = wave.astype(np.float32, copy=False)
    else:
        raise AudioInputError(
            f"Input '{name}': waveform is a {type(wave).__name__}, expected a torch tensor [B, C, N]. "
            "Connect the output of a Load Audio node."
        )
    if wave.ndim == 1:
        wave = wave[None, None]
    elif wave.ndim == 2:
        wave = wave[None]
    if wave.ndim != 3 or 0 in wave.shape:
        raise AudioInputError(
            f"Input '{name}': waveform has shape {tuple(wave.shape)}, expected a non-empty [B, C, N]. "
            "Connect the output of a Load Audio node."
        )
    n_batch = wave.shape[0]
    if not 0 <= batch_index < n_batch:
        raise AudioInputError(
            f"Input '{name}': batch_index {batch_index} is out of range for a batch of {n_batch}. "
            f"Use a batch_index from 0 to {n_batch - 1}."
        )
    if n_batch > 1:
        log.warning("Input '%s' holds %d audio clips; using clip %d only.", name, n_batch, batch_index)
    mono = wave[batch_index].mean(axis=0, dtype=np.float64).astype(np.float32)
    if not np.all(np.isfinite(mono)):
        raise AudioInputError(
            f"Input '{name}' contains NaN or infinite samples. Re-export or re-load the audio."
        )
    return mono, sample_rate


def _as_sample_rate(value: Any, name: str) -> int:
    try:
        rate = int(value)
    except (TypeError, ValueError):
        rate = 0
    if rate <= 0 or rate != value:
        raise AudioInputError(
            f"Input '{name}': sample_rate {value!r} is not a positive integer. "
            "Connect an AUDIO value from a Load Audio node."
        )
    return rate


# --------------------------------------------------------------------------------------------------
# loading files
# --------------------------------------------------------------------------------------------------
def load_audio_file(
    path: str | os.PathLike,
    *,
    sample_rate: int | None = None,
    mono: bool = True,
    start: float = 0.0,
    duration: float | None = None,
    label: str | None = None,
) -> dict:
    """Decode an audio file or the audio track of a video into a ComfyUI AUDIO dict.

    ``sample_rate``: resample to this rate (soxr HQ, as librosa.resample); None keeps the file's rate.
    ``mono``: average the channels (C = 1); False keeps the file's channels.
    ``start`` / ``duration``: trim, in seconds (duration None = to the end).
    ``label``: how error messages name the file (default: its path; the node passes the name the user
    chose, so that messages do not show server paths).
    Raises :class:`AudioInputError` for a missing, empty, corrupt or unsupported file, a video
    without audio, a start beyond the end, or a result shorter than :data:`MIN_SECONDS`.
    """
    path = os.fspath(path)
    shown = label or path
    _check_options(shown, sample_rate, start, duration)
    _check_file(path, shown)
    ext = os.path.splitext(path)[1].lower()

    if ext in VIDEO_EXTENSIONS or ext in PYAV_AUDIO_EXTENSIONS:
        try:
            data, rate = _decode_pyav(path, shown, start, duration)
        except _DecodeFailed as av_error:
            raise _corrupt_error(path, shown, str(av_error)) from None
    else:
        try:
            data, rate = _decode_soundfile(path, shown, start, duration)
        except _DecodeFailed as sf_error:
            try:
                data, rate = _decode_pyav(path, shown, start, duration)
            except _DecodeFailed as av_error:
                raise _corrupt_error(path, shown, f"{sf_error}; {av_error}") from None
            log.warning("soundfile could not read %s (%s); decoded it with PyAV instead.", path, sf_error)

    if mono and data.shape[0] > 1:
        data = data.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    if sample_rate is not None and sample_rate != rate:
        data = resample(data, rate, sample_rate)
        rate = sample_rate

    check_min_length(data, rate, shown)
    if not np.all(np.isfinite(data)):
        raise AudioInputError(
            f"Audio file '{shown}' decoded to NaN or infinite samples. Re-export it as {_FORMATS_HINT}."
        )
    waveform = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).unsqueeze(0)
    return {"waveform": waveform, "sample_rate": int(rate)}


def resample(data: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample float32 [..., N] along the last axis with soxr "HQ", the engine behind librosa's
    default ``librosa.resample`` (called directly: importing librosa's core costs seconds)."""
    import soxr

    if orig_sr == target_sr:
        return data.astype(np.float32, copy=False)
    flat = np.ascontiguousarray(data.reshape(-1, data.shape[-1]).T, dtype=np.float32)   # [N, channels]
    out = soxr.resample(flat, orig_sr, target_sr, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32).reshape(*data.shape[:-1], -1)


class _DecodeFailed(Exception):
    """Internal: one decoder could not read the file (the caller decides what to report)."""


class _NoAudioTrack(Exception):
    """Internal: the container opened but holds no audio stream."""


def _check_options(path: str, sample_rate: int | None, start: float, duration: float | None) -> None:
    if sample_rate is not None and (not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0):
        raise AudioInputError(
            f"Loading '{path}': sample_rate {sample_rate!r} must be a positive integer (e.g. 16000) or None."
        )
    if not (isinstance(start, (int, float)) and math.isfinite(start) and start >= 0):
        raise AudioInputError(f"Loading '{path}': start {start!r} must be a number of seconds >= 0.")
    if duration is not None and not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
        raise AudioInputError(
            f"Loading '{path}': duration {duration!r} must be a positive number of seconds, "
            "or None (0 in the node) to read to the end."
        )


def _check_file(path: str, shown: str) -> None:
    if not os.path.exists(path):
        raise AudioInputError(
            f"Audio file not found: '{shown}'. Check the name, put the file in ComfyUI's input folder "
            "(or upload it in the node) and try again."
        )
    if not os.path.isfile(path):
        raise AudioInputError(f"Audio path '{shown}' is not a file (a folder?). Choose an audio or video file.")
    if os.path.getsize(path) == 0:
        raise AudioInputError(f"Audio file '{shown}' is empty (0 bytes). Re-export or re-upload it as {_FORMATS_HINT}.")


def _looks_like_text(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _corrupt_error(path: str, shown: str, detail: str) -> AudioInputError:
    if _looks_like_text(path):
        what = "looks like a text file, not audio"
    else:
        what = "is damaged or not a supported audio format"
    return AudioInputError(
        f"Cannot decode audio file '{shown}': it {what} ({detail}). Re-export it as {_FORMATS_HINT}."
    )


def _trim_range(path: str, rate: int, total: int, start: float, duration: float | None) -> tuple[int, int]:
    """Sample range [first, last) for start/duration; refuses a start at or beyond the end."""
    first = int(round(start * rate))
    if first >= total:
        length = total / rate
        raise AudioInputError(
            f"start={start} s is beyond the end of '{path}', which is {length:.2f} s long. "
            f"Use a start below {length:.2f} s."
        )
    last = total if duration is None else min(total, first + int(round(duration * rate)))
    return first, last


def _decode_soundfile(path: str, shown: str, start: float, duration: float | None) -> tuple[np.ndarray, int]:
    """-> (float32 [C, N], rate) via libsndfile, seeking to ``start``."""
    import soundfile as sf

    try:
        with sf.SoundFile(path) as fh:
            rate = int(fh.samplerate)
            total = int(fh.frames)
            first, last = _trim_range(shown, rate, total, start, duration)
            if first:
                fh.seek(first)
            data = fh.read(frames=last - first, dtype="float32", always_2d=True)
    except AudioInputError:
        raise
    except Exception as exc:  # libsndfile reports every failure as its own error type
        detail = str(exc).replace(f"Error opening {path!r}: ", "")
        raise _DecodeFailed(f"soundfile: {detail}") from exc
    return np.ascontiguousarray(data.T), rate


def _decode_pyav(path: str, shown: str, start: float, duration: float | None) -> tuple[np.ndarray, int]:
    """-> (float32 [C, N], rate) from the first audio stream of any container PyAV opens."""
    try:
        data, rate = _pyav_read(path, shown, start, duration)
    except _NoAudioTrack:
        raise AudioInputError(
            f"'{shown}' has no audio track. Use a video with sound, or load the speech as a separate "
            "audio file (WAV, FLAC, OGG or MP3)."
        ) from None
    except AudioInputError:
        raise
    except Exception as exc:  # av.error.* for unreadable or truncated containers
        detail = str(exc).replace(f": {path!r}", "")
        raise _DecodeFailed(f"PyAV: {detail}") from exc
    return data, rate


def _pyav_read(path: str, shown: str, start: float, duration: float | None) -> tuple[np.ndarray, int]:
    import av

    with av.open(path) as container:
        if not container.streams.audio:
            raise _NoAudioTrack()
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate)
        first = int(round(start * rate))
        stop = None if duration is None else first + int(round(duration * rate))
        resampler = av.AudioResampler(format="fltp", rate=rate)  # planar float, same layout
        chunks: list[np.ndarray] = []
        n_read = 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunk = out.to_ndarray()
                chunks.append(chunk)
                n_read += chunk.shape[1]
            if stop is not None and n_read >= stop:
                break
        else:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
                n_read += chunks[-1].shape[1]
    if not chunks or n_read == 0:
        raise _DecodeFailed("PyAV: the audio track holds no samples")
    data = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    first, last = _trim_range(shown, rate, data.shape[1], start, duration)
    return np.ascontiguousarray(data[:, first:last]), rate
