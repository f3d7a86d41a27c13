"""Tests for audio/features.py on synthetic signals with known answers and on the bundled speech clip."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import soundfile as sf
import torch

from iasa.audio.features import AudioFeatures, compute_features, features_from_audio, frame_count
from iasa.audio.loading import AudioInputError

SPEECH = pathlib.Path(__file__).resolve().parents[2] / "assets" / "demo" / "speech.wav"
SR = 16000


def harmonic_tone(f0: float, seconds: float, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return sum(amp / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 6)).astype(np.float32)


def place(signal: np.ndarray, at: float, total: float, sr: int = SR) -> np.ndarray:
    """``signal`` starting at ``at`` seconds inside ``total`` seconds of digital silence."""
    out = np.zeros(int(round(total * sr)), np.float32)
    start = int(round(at * sr))
    out[start:start + signal.shape[0]] = signal
    return out


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    data, rate = sf.read(SPEECH, dtype="float32")
    return data, rate


# --------------------------------------------------------------------------------------------------
# frame count and layout
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n_samples, sample_rate, fps, expected",
    [
        (102400, 16000, 25, 160),         # 6.4 s at 16 kHz
        (141120, 22050, 25, 160),         # 6.4 s at 22.05 kHz
        (307200, 48000, 25, 160),         # 6.4 s at 48 kHz
        (16000, 16000, 29.97, 30),        # 29.97 frames -> 30
        (32032, 16000, 29.97, 60),        # 2.002 s * 29.97 = 59.99994
        (1600000, 48000, 29.97, 999),     # 33.33... s * 29.97 = 999 exactly
        (1600001, 48000, 29.97, 1000),
        (265600, 16000, 30, 498),         # 16.6 s: 16.6 * 30 = 498.00000000000006 in floats
        (158080, 16000, 25, 247),         # 9.88 s: 9.88 * 25 = 247.00000000000003 in floats
        (48000, 48000, 24, 24),           # exactly 1 s
        (48001, 48000, 24, 25),           # one sample more opens a frame
        (11200, 16000, 30, 21),           # 0.7 s * 30 = 21 exactly
        (52800, 16000, 24, 80),           # 3.3 s * 24 = 79.2
        (17600, 16000, 16, 18),           # 1.1 s * 16 = 17.6
        (24000, 16000, 16, 24),           # 1.5 s * 16 = 24 exactly
        (160160, 16000, 29.97, 300),      # 10.01 s * 29.97 = 299.9997 -> 300
        (44100 * 60, 44100, 29.97, 1799),  # 60 s * 29.97 = 1798.2
    ],
)
def test_frame_count(n_samples, sample_rate, fps, expected):
    assert frame_count(n_samples, sample_rate, fps) == expected
    signal = np.random.default_rng(0).normal(0, 0.1, n_samples).astype(np.float32)
    if n_samples <= 300_000:  # the full pipeline on the shorter cases
        feats = compute_features(signal, sample_rate, fps)
        assert feats.n_frames == expected
        for name in ("rms", "energy", "onset", "pitch", "voiced"):
            assert getattr(feats, name).shape == (expected,), name
        assert feats.mel.shape == (expected, 40)


def test_layout_and_ranges(speech):
    data, rate = speech
    feats = compute_features(data, rate, 25.0, n_mels=24)
    assert isinstance(feats, AudioFeatures)
    assert feats.fps == 25.0 and feats.sample_rate == 16000
    assert feats.duration == pytest.approx(data.shape[0] / rate)
    assert feats.mel.shape == (feats.n_frames, 24)
    for name in ("rms", "energy", "mel", "onset", "pitch", "voiced"):
        arr = getattr(feats, name)
        assert arr.dtype == np.float32 and np.all(np.isfinite(arr)), name
    for name in ("energy", "onset", "voiced"):
        arr = getattr(feats, name)
        assert arr.min() >= 0.0 and arr.max() <= 1.0, name
    assert feats.energy.max() == pytest.approx(1.0) and feats.onset.max() == pytest.approx(1.0)
    # pitch is given exactly where the frame is voiced
    np.testing.assert_array_equal(feats.pitch > 0, feats.voiced >= 0.5)


# --------------------------------------------------------------------------------------------------
# time alignment
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fps, start, stop", [(25, 1.0, 1.4), (30, 0.5, 1.1), (29.97, 0.7007, 1.3013)])
def test_tone_burst_alignment(fps, start, stop):
    burst = harmonic_tone(200.0, stop - start)
    feats = compute_features(place(burst, start, 2.4), SR, fps)
    first, last = int(round(start * fps)), int(round(stop * fps)) - 1   # frames fully inside the burst
    inside = slice(first, last + 1)
    assert np.all(feats.energy[inside] > 0.9)
    assert np.all(feats.rms[inside] == pytest.approx(np.sqrt(np.mean(burst**2)), rel=0.05))
    assert np.all(feats.energy[: first - 1] < 0.01) and np.all(feats.energy[last + 2:] < 0.01)
    # voicing follows the burst (the 40 ms pitch window may spill one frame over each edge)
    assert np.all(feats.voiced[first + 1: last] > 0.9)
    assert np.all(feats.voiced[: first - 1] == 0.0) and np.all(feats.voiced[last + 2:] == 0.0)
    # log-mel: loud inside, the -100 dB floor in silence
    assert feats.mel[first + 1: last].max(axis=1).min() > -40.0
    assert feats.mel[: first - 1].max() < -90.0


@pytest.mark.parametrize("fps, click_time", [(25, 1.02), (30, 0.75), (16, 1.4)])
def test_onset_peaks_at_click(fps, click_time):
    rng = np.random.default_rng(3)
    signal = rng.normal(0, 1e-3, int(2.0 * SR)).astype(np.float32)     # quiet room noise
    signal[int(round(click_time * SR))] = 0.9
    feats = compute_features(signal, SR, fps)
    expected = int(click_time * fps)                                    # clicks placed mid-frame
    assert int(np.argmax(feats.onset)) == expected
    assert feats.onset[expected] == pytest.approx(1.0)
    far = np.abs(np.arange(feats.n_frames) - expected) > 1
    assert feats.onset[far].max() < 0.3


def test_onset_at_speech_like_attack():
    """A tone that fades in over 5 ms at 0.82 s (frame 20 at 25 fps) after a soft hum."""
    hum = 0.005 * np.sin(2 * np.pi * 100 * np.arange(2 * SR) / SR)
    tone = harmonic_tone(180.0, 0.5)
    tone[:80] *= np.linspace(0, 1, 80)
    tone[-800:] *= np.linspace(1, 0, 800)
    feats = compute_features((hum + place(tone, 0.82, 2.0)).astype(np.float32), SR, 25)
    assert int(np.argmax(feats.onset)) == 20


# --------------------------------------------------------------------------------------------------
# pitch and voicing
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("f0", [110.0, 200.0, 320.0])
@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_pitch_of_harmonic_tone(f0, sample_rate):
    signal = place(harmonic_tone(f0, 1.0, sr=sample_rate), 0.5, 2.0, sr=sample_rate)
    feats = compute_features(signal, sample_rate, 25)
    inside = slice(14, 36)                 # 0.56 .. 1.44 s, clear of the 40 ms window at the edges
    assert np.all(feats.voiced[inside] > 0.9)
    np.testing.assert_allclose(feats.pitch[inside], f0, rtol=0.02)
    silence = np.r_[0:11, 39:50]
    assert np.all(feats.voiced[silence] == 0.0) and np.all(feats.pitch[silence] == 0.0)


def test_noise_is_unvoiced():
    noise = np.random.default_rng(4).normal(0, 0.1, 2 * SR).astype(np.float32)
    feats = compute_features(noise, SR, 25)
    assert feats.voiced.max() < 0.2 and np.all(feats.pitch == 0.0)
    assert feats.energy.mean() > 0.8        # loud, but not voiced


def test_all_silent_signal_gives_zero_features():
    feats = compute_features(np.zeros(SR, np.float32), SR, 25)
    for name in ("rms", "energy", "onset", "pitch", "voiced"):
        assert np.all(getattr(feats, name) == 0.0), name
    assert np.all(feats.mel == pytest.approx(-100.0))


def test_resampling_does_not_change_features():
    base = place(harmonic_tone(150.0, 1.0), 0.4, 1.8)
    t44 = np.arange(int(1.8 * 44100)) / 44100
    on = (t44 >= 0.4) & (t44 < 1.4)
    hi_rate = np.where(on, sum(0.3 / k * np.sin(2 * np.pi * 150.0 * k * (t44 - 0.4)) for k in range(1, 6)), 0.0)
    a = compute_features(base, SR, 25)
    b = compute_features(hi_rate.astype(np.float32), 44100, 25)
    assert a.n_frames == b.n_frames == 45
    np.testing.assert_allclose(a.energy, b.energy, atol=0.02)
    np.testing.assert_array_equal(a.voiced >= 0.5, b.voiced >= 0.5)
    np.testing.assert_allclose(a.mel[12:33], b.mel[12:33], atol=1.0)


# --------------------------------------------------------------------------------------------------
# real speech
# --------------------------------------------------------------------------------------------------
def test_speech_clip(speech):
    data, rate = speech
    fps = 25
    feats = compute_features(data, rate, fps)
    assert feats.n_frames == int(np.ceil(data.shape[0] * fps / rate))
    voiced = feats.voiced >= 0.5
    assert 0.25 < voiced.mean() < 0.8                   # speech: vowels voiced, pauses and consonants not
    assert 70.0 < np.median(feats.pitch[voiced]) < 250.0
    # energy is high while the voice sounds and ~0 where the samples are (nearly) silent
    bounds = np.round(np.arange(feats.n_frames + 1) * rate / fps).astype(int)
    peak = np.array([np.abs(data[a:b]).max() if b > a else 0.0 for a, b in zip(bounds[:-1], bounds[1:])])
    assert feats.energy[voiced].mean() > 0.4
    quiet = peak < 1e-3
    assert quiet.sum() >= 5, "the clip should hold pauses"
    assert feats.energy[quiet].max() < 0.02
    assert np.all(feats.pitch[quiet] == 0.0) and feats.voiced[quiet].max() < 0.5
    deep = quiet & np.roll(quiet, 1) & np.roll(quiet, -1)   # the pitch window spills into neighbours only
    assert feats.voiced[deep].max() < 0.05


# --------------------------------------------------------------------------------------------------
# AUDIO convenience and argument checks
# --------------------------------------------------------------------------------------------------
def test_features_from_audio_stereo_batch(speech):
    data, rate = speech
    wave = torch.from_numpy(np.stack([data, data * 0.5]))[None]        # [1, 2, N] like stock LoadAudio
    feats = features_from_audio({"waveform": wave, "sample_rate": rate}, 24)
    ref = compute_features(data * 0.75, rate, 24)
    assert feats.n_frames == ref.n_frames == frame_count(data.shape[0], rate, 24)
    np.testing.assert_allclose(feats.rms, ref.rms, rtol=1e-4, atol=1e-7)


def test_features_from_audio_refuses_silence_and_short_clips():
    silent = {"waveform": torch.zeros(1, 1, SR), "sample_rate": SR}
    with pytest.raises(AudioInputError, match="'speech' is silent.*Connect a clip that contains speech"):
        features_from_audio(silent, 25, name="speech")
    short = {"waveform": torch.from_numpy(harmonic_tone(200.0, 0.1))[None, None], "sample_rate": SR}
    with pytest.raises(AudioInputError, match="too short: 0.100 s, the minimum is 0.5 s"):
        features_from_audio(short, 25, name="speech")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"fps": 0.0}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"fps": 1000.0}, "fps"),
        ({"n_mels": 0}, "n_mels"),
        ({"sample_rate": 0}, "sample_rate"),
        ({"signal": np.zeros((2, 100), np.float32)}, "mono"),
        ({"signal": np.array([0.0, np.inf], np.float32)}, "NaN or infinite"),
    ],
)
def test_bad_arguments(kwargs, needle):
    args = {"signal": np.zeros(SR, np.float32), "sample_rate": SR, "fps": 25.0, **kwargs}
    with pytest.raises(AudioInputError, match=needle):
        compute_features(**args)
