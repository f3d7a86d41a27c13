"""Per-video-frame audio features (IASA Audio Features).

Pipeline (spectral features at :data:`FEATURE_RATE` = 16 kHz after an internal soxr resample):

* ``rms`` is exact per video frame: the RMS of the original samples in [t/fps, (t+1)/fps).
* A 20 ms Hann STFT (``n_fft`` 512) with a hop of 10 ms (smaller at fps > 50, so that every video
  frame holds at least two analysis frames) gives the mel power; ``mel`` is the mean power of the
  analysis frames whose centre lies in the video frame, in absolute dB (silence = -100 dB).
* ``onset`` is the positive spectral flux of compressed mel bands, ``S = log1p(1e4 * P / max P)``,
  across each analysis time (band mean of ``max(0, S[j+h] - S[j-h])``, ``h`` hops = half the window:
  the window just after the time minus the window just before), max-pooled per video frame, then
  normalised to 0..1.
* ``pitch`` / ``voiced``: our own vectorised YIN (cumulative mean normalised difference, 40 ms window,
  60..500 Hz, first dip below 0.15 else the global minimum, parabolic refinement). ``librosa.pyin``
  is far too slow for real-time use, and ``librosa.yin`` does not return the aperiodicity that we need
  for voicing. The voicing probability of an analysis frame is ``periodicity * loudness``:
  periodicity ramps from 1 (aperiodicity <= 0.15) to 0 (>= 0.35); loudness ramps from 0 at 45 dB
  below the clip's speech level to 1 at 35 dB below it. Per video frame ``voiced`` is the mean;
  ``pitch`` is the median f0 of the voiced analysis frames where ``voiced >= 0.5``, else 0.
* ``energy`` = rms / reference level, clipped to 0..1; the reference is the 95th percentile of the
  frame RMS, but at least a quarter of the loudest frame (so a clip that is mostly silence still
  scales by its speech), and silence (peak < SILENCE_PEAK) gives 0 everywhere.

Frame count: ``ceil(duration * fps)`` with ``duration = N / sample_rate``, in exact rational arithmetic
so that float rounding cannot add a frame (6.4 s at 25 fps gives 160).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import scipy.fft

from .loading import SILENCE_PEAK, AudioInputError, audio_to_mono, check_min_length, check_not_silent, resample

FEATURE_RATE = 16000
WIN_LENGTH = 320          # 20 ms analysis window
N_FFT = 512
BASE_HOP = 160            # 10 ms
MAX_FPS = 400.0
MAX_MELS = 128
F0_MIN, F0_MAX = 60.0, 500.0
YIN_WINDOW = 640          # 40 ms integration window: > 2 periods of F0_MIN
YIN_THRESHOLD = 0.15
APERIODIC_VOICED, APERIODIC_UNVOICED = 0.15, 0.35
LOUDNESS_FLOOR_DB, LOUDNESS_FULL_DB = -45.0, -35.0
MEL_AMIN = 1e-10           # power floor -> -100 dB
ONSET_GAIN = 1e4           # onset compression: bands 40 dB below the loudest one weigh little


@dataclass
class AudioFeatures:
    """Audio features aligned to video frames: row t covers [t/fps, (t+1)/fps) seconds.

    n_frames = ceil(duration * fps). All arrays have n_frames rows.
    """

    fps: float
    duration: float          # seconds of audio
    sample_rate: int         # rate the features were computed at
    rms: np.ndarray          # float32 [T], RMS energy, linear amplitude
    energy: np.ndarray       # float32 [T], RMS normalised to 0..1 over the clip (speech level; 0 = silence)
    mel: np.ndarray          # float32 [T, n_mels], log-mel (dB) bands
    onset: np.ndarray        # float32 [T], onset strength normalised to 0..1
    pitch: np.ndarray        # float32 [T], f0 in Hz, 0 where unvoiced
    voiced: np.ndarray       # float32 [T], voicing probability 0..1

    @property
    def n_frames(self) -> int:
        return int(self.rms.shape[0])


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def frame_count(n_samples: int, sample_rate: int, fps: float) -> int:
    """ceil(n_samples / sample_rate * fps) in exact rational arithmetic (fps taken as its shortest
    decimal form, so 29.97 means 2997/100): 6.4 s at 25 fps gives 160, never 161."""
    exact = Fraction(int(n_samples)) * Fraction(repr(float(fps))) / int(sample_rate)
    return max(1, math.ceil(exact))


def features_from_audio(audio: dict, fps: float, n_mels: int = 40, name: str = "audio") -> AudioFeatures:
    """AUDIO dict -> features: mono conversion, length and silence checks, then :func:`compute_features`."""
    signal, sample_rate = audio_to_mono(audio, name)
    check_min_length(signal, sample_rate, name)
    check_not_silent(signal, name)
    return compute_features(signal, sample_rate, fps, n_mels=n_mels)


def compute_features(signal: np.ndarray, sample_rate: int, fps: float, n_mels: int = 40) -> AudioFeatures:
    """Mono float signal -> :class:`AudioFeatures` with exactly ceil(N / sample_rate * fps) rows."""
    signal = _check_args(signal, sample_rate, fps, n_mels)
    n_video = frame_count(signal.shape[0], sample_rate, fps)
    rms = _frame_rms(signal, sample_rate, fps, n_video)
    y16 = resample(signal, sample_rate, FEATURE_RATE)
    hop = _analysis_hop(fps)
    lo, hi = _video_spans(n_analysis=1 + y16.shape[0] // hop, hop=hop, fps=fps, n_video=n_video)

    power = _mel_power(y16, hop, n_mels)                                   # [n_mels, J]
    mel = _power_db(_span_mean(power.T, lo, hi)).astype(np.float32)        # [T, n_mels]
    flux = _spectral_flux(power, half_window_hops=(WIN_LENGTH // 2) // hop)
    onset_raw = _span_reduce(flux, lo, hi, np.max)

    silent = not float(np.max(np.abs(signal))) >= SILENCE_PEAK
    f0, aperiodicity, frame_rms = _yin(y16, hop)
    voiced_j = _voicing(aperiodicity, frame_rms, 0.0 if silent else _reference_level(frame_rms))
    voiced = _span_mean(voiced_j, lo, hi).astype(np.float32)
    pitch = np.zeros(n_video, np.float32)
    for t in np.flatnonzero(voiced >= 0.5):
        f = f0[lo[t]:hi[t]][voiced_j[lo[t]:hi[t]] >= 0.5]
        pitch[t] = np.median(f) if f.size else 0.0

    energy = np.zeros_like(rms) if silent else _unit(rms, _reference_level(rms))
    onset = np.zeros_like(rms) if silent else _unit(onset_raw, _reference_level(onset_raw, q=98.0))
    return AudioFeatures(
        fps=float(fps),
        duration=signal.shape[0] / float(sample_rate),
        sample_rate=FEATURE_RATE,
        rms=rms,
        energy=energy,
        mel=mel,
        onset=onset,
        pitch=pitch,
        voiced=voiced,
    )


# --------------------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------------------
def _check_args(signal: np.ndarray, sample_rate: int, fps: float, n_mels: int) -> np.ndarray:
    signal = np.asarray(signal)
    if signal.ndim != 1 or signal.size == 0:
        raise AudioInputError(
            f"compute_features: signal has shape {signal.shape}, expected a non-empty mono array [N]. "
            "Convert AUDIO with audio_to_mono() first."
        )
    if not np.all(np.isfinite(signal)):
        raise AudioInputError("compute_features: signal contains NaN or infinite samples. Re-load the audio.")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioInputError(f"compute_features: sample_rate {sample_rate!r} must be a positive integer.")
    if not (isinstance(fps, (int, float, np.number)) and math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise AudioInputError(f"compute_features: fps {fps!r} must be in (0, {MAX_FPS:g}] (e.g. 25).")
    if not (isinstance(n_mels, (int, np.integer)) and 1 <= n_mels <= MAX_MELS):
        raise AudioInputError(f"compute_features: n_mels {n_mels!r} must be an integer in 1..{MAX_MELS} (e.g. 40).")
    return signal.astype(np.float32, copy=False)


def _frame_rms(signal: np.ndarray, sample_rate: int, fps: float, n_video: int) -> np.ndarray:
    """Exact RMS of the original samples in each video frame [t/fps, (t+1)/fps)."""
    n = signal.shape[0]
    bounds = np.minimum(np.round(np.arange(n_video + 1) * (sample_rate / fps)).astype(np.int64), n)
    bounds[-1] = n
    csum = np.concatenate([[0.0], np.cumsum(signal.astype(np.float64) ** 2)])
    counts = np.maximum(bounds[1:] - bounds[:-1], 1)
    mean_sq = np.maximum(csum[bounds[1:]] - csum[bounds[:-1]], 0.0) / counts
    return np.sqrt(mean_sq).astype(np.float32)


def _analysis_hop(fps: float) -> int:
    """10 ms, halved until each video frame holds at least two analysis frames (divides WIN_LENGTH/2)."""
    hop = BASE_HOP
    while hop > 20 and hop * 2 * fps > FEATURE_RATE:
        hop //= 2
    return hop


def _video_spans(n_analysis: int, hop: int, fps: float, n_video: int) -> tuple[np.ndarray, np.ndarray]:
    """Analysis frames [lo[t], hi[t]) whose centre j*hop/16k lies in video frame t (never empty)."""
    edges = np.ceil(np.arange(n_video + 1) * (FEATURE_RATE / (fps * hop)) - 1e-9).astype(np.int64)
    edges = np.clip(edges, 0, n_analysis)
    lo, hi = edges[:-1].copy(), edges[1:].copy()
    empty = hi <= lo
    if np.any(empty):  # only a short last frame can miss every centre: take the nearest analysis frame
        mid = (np.flatnonzero(empty) + 0.5) * (FEATURE_RATE / (fps * hop))
        lo[empty] = np.clip(np.round(mid).astype(np.int64), 0, n_analysis - 1)
        hi[empty] = lo[empty] + 1
    return lo, hi


def _span_mean(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    csum = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values, axis=0, dtype=np.float64)])
    return (csum[hi] - csum[lo]) / (hi - lo).reshape((-1,) + (1,) * (values.ndim - 1))


def _span_reduce(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, reduce) -> np.ndarray:
    return np.array([reduce(values[a:b]) for a, b in zip(lo, hi)], dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _mel_basis(n_mels: int) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=FEATURE_RATE, n_fft=N_FFT, n_mels=n_mels, fmin=20.0, fmax=FEATURE_RATE / 2)


@functools.lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    window = np.zeros(N_FFT, np.float32)
    start = (N_FFT - WIN_LENGTH) // 2
    window[start:start + WIN_LENGTH] = np.hanning(WIN_LENGTH + 2)[1:-1]  # Hann without its zero ends
    return window


def _frames(y: np.ndarray, length: int, hop: int, left: int | None = None) -> np.ndarray:
    """Frames [J, length] of zero-padded y, frame j starting at sample j*hop - left (default: centred
    on j*hop); J = 1 + len(y) // hop. A strided view, no copy."""
    left = length // 2 if left is None else left
    padded = np.pad(y, (left, length - left))
    view = np.lib.stride_tricks.sliding_window_view(padded, length)[::hop]
    return view[: 1 + y.shape[0] // hop]


def _mel_power(y16: np.ndarray, hop: int, n_mels: int) -> np.ndarray:
    spec = scipy.fft.rfft(_frames(y16, N_FFT, hop) * _hann(), axis=1, workers=-1)  # [J, 257]
    power = spec.real ** 2 + spec.imag ** 2
    return (_mel_basis(n_mels) @ power.T.astype(np.float32))              # [n_mels, J]


def _power_db(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(power, MEL_AMIN))


def _spectral_flux(power: np.ndarray, half_window_hops: int) -> np.ndarray:
    """Positive band-mean change of compressed mel power from the window just before each analysis
    time to the window just after it.

    Compression ``log1p(ONSET_GAIN * P / max P)``: changes far below the clip's loudest band (digital
    silence, spectral splatter when a sound stops, hiss) barely count, unlike plain dB.
    """
    h = max(1, half_window_hops)
    peak = float(power.max())
    if peak <= 0.0:
        return np.zeros(power.shape[1], np.float32)
    level = np.log1p(power * (ONSET_GAIN / peak))
    padded = np.pad(level, ((0, 0), (h, h)), mode="edge")
    diff = padded[:, 2 * h:] - padded[:, :-2 * h]
    return np.maximum(diff, 0.0).mean(axis=0)


def _yin(y16: np.ndarray, hop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised YIN -> (f0 Hz [J], aperiodicity [J], RMS [J]); integration window centred on j*hop.

    d(k) = sum_{i<w} (x_i - x_{i+k})^2 over a fixed window w, cumulative-mean normalised (YIN eq. 8).
    """
    min_lag = int(math.floor(FEATURE_RATE / F0_MAX))
    max_lag = int(math.ceil(FEATURE_RATE / F0_MIN))
    w = YIN_WINDOW
    frames = _frames(y16, w + max_lag, hop, left=w // 2).astype(np.float32)   # [J, w + max_lag]
    n_fft = 1024  # >= w + max_lag: the lags 0..max_lag of the circular correlation are exact
    spec_full = scipy.fft.rfft(frames, n=n_fft, axis=1, workers=-1)
    spec_head = scipy.fft.rfft(frames[:, :w], n=n_fft, axis=1, workers=-1)
    spec_full *= np.conj(spec_head)
    xcorr = scipy.fft.irfft(spec_full, n=n_fft, axis=1, workers=-1)[:, : max_lag + 1]  # r(k)
    del spec_full, spec_head
    csum = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames.astype(np.float64) ** 2, axis=1)], axis=1)
    lags = np.arange(1, max_lag + 1)
    head_energy = csum[:, w:w + 1]                                              # sum_{i<w} x_i^2
    shifted_energy = csum[:, lags + w] - csum[:, lags]                          # sum_{i<w} x_{i+k}^2
    diff = np.maximum(head_energy + shifted_energy - 2.0 * xcorr[:, 1:], 0.0)   # lag k at index k-1
    cmnd = diff * lags / np.maximum(np.cumsum(diff, axis=1), 1e-12)
    cmnd = cmnd[:, min_lag - 1:]                                                # lags min_lag..max_lag
    n_lags = cmnd.shape[1]

    local_min = np.zeros(cmnd.shape, dtype=bool)
    local_min[:, 1:-1] = (cmnd[:, 1:-1] <= cmnd[:, :-2]) & (cmnd[:, 1:-1] <= cmnd[:, 2:])
    candidate = local_min & (cmnd < YIN_THRESHOLD)
    best = np.where(candidate.any(axis=1), candidate.argmax(axis=1), cmnd.argmin(axis=1))
    rows = np.arange(cmnd.shape[0])
    aperiodicity = cmnd[rows, best]

    # parabolic refinement around the chosen lag
    left = cmnd[rows, np.maximum(best - 1, 0)]
    right = cmnd[rows, np.minimum(best + 1, n_lags - 1)]
    denom = left + right - 2.0 * aperiodicity
    inner = (best > 0) & (best < n_lags - 1) & (np.abs(denom) > 1e-12)
    shift = np.where(inner, 0.5 * (left - right) / np.where(inner, denom, 1.0), 0.0)
    lag = best + min_lag + np.clip(shift, -1.0, 1.0)
    f0 = (FEATURE_RATE / lag).astype(np.float32)
    rms = np.sqrt(head_energy[:, 0] / w).astype(np.float32)
    return f0, aperiodicity.astype(np.float32), rms


def _voicing(aperiodicity: np.ndarray, frame_rms: np.ndarray, level: float) -> np.ndarray:
    periodic = np.clip((APERIODIC_UNVOICED - aperiodicity) / (APERIODIC_UNVOICED - APERIODIC_VOICED), 0.0, 1.0)
    if level <= 0.0:
        return np.zeros_like(periodic, dtype=np.float32)
    rel_db = 20.0 * np.log10(np.maximum(frame_rms, 1e-12) / level)
    loud = np.clip((rel_db - LOUDNESS_FLOOR_DB) / (LOUDNESS_FULL_DB - LOUDNESS_FLOOR_DB), 0.0, 1.0)
    loud[frame_rms < SILENCE_PEAK / 10] = 0.0
    return (periodic * loud).astype(np.float32)


def _reference_level(values: np.ndarray, q: float = 95.0) -> float:
    """High percentile of a non-negative series, at least a quarter of its maximum (0 if all zero)."""
    if values.size == 0:
        return 0.0
    return float(max(np.percentile(values, q), 0.25 * float(np.max(values))))


def _unit(values: np.ndarray, reference: float) -> np.ndarray:
    if reference <= 0.0:
        return np.zeros(values.shape, np.float32)
    return np.clip(values / reference, 0.0, 1.0).astype(np.float32)
