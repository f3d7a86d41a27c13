"""Tests for audio/loading.py: decoding real files written here, trimming, resampling, AUDIO helpers
and every refused input (message names the input and says what to do)."""
from __future__ import annotations

import logging
import pathlib

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from iasa.audio.loading import (
    MIN_SECONDS,
    SILENCE_PEAK,
    AudioInputError,
    audio_to_mono,
    check_min_length,
    check_not_silent,
    load_audio_file,
)

SR = 22050
SECONDS = 1.5
FREQS = (220.0, 330.0)          # left, right
SPEECH = pathlib.Path(__file__).resolve().parents[2] / "assets" / "demo" / "speech.wav"


def stereo_tone(seconds: float = SECONDS, sr: int = SR) -> np.ndarray:
    """[N, 2] float32: a different sine per channel."""
    t = np.arange(int(round(seconds * sr))) / sr
    return np.stack([0.5 * np.sin(2 * np.pi * FREQS[0] * t), 0.3 * np.sin(2 * np.pi * FREQS[1] * t)], 1).astype(
        np.float32
    )


def dominant_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.fft.rfftfreq(x.shape[0], 1.0 / sr)[spec.argmax()])


def write_mp4(path: pathlib.Path, audio: np.ndarray | None, sr: int = SR, frames: int = 38) -> None:
    """A tiny H.264 mp4, with an AAC stereo track when ``audio`` ([N, 2]) is given."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        stream = None
        if audio is not None:
            stream = container.add_stream("aac", rate=sr)
            stream.layout = "stereo"
        for _ in range(frames):
            image = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            for packet in video.encode(image):
                container.mux(packet)
        if stream is not None:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio.T), format="fltp", layout="stereo")
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)


FORMATS = [("wav", "WAV", None), ("flac", "FLAC", None), ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("audio")
    data = stereo_tone()
    out = {}
    for ext, fmt, subtype in FORMATS:
        out[ext] = root / f"tone.{ext}"
        sf.write(out[ext], data, SR, format=fmt, subtype=subtype)
    out["mp4"] = root / "tone.mp4"
    write_mp4(out["mp4"], data)
    return out


# --------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [f[0] for f in FORMATS])
def test_load_audio_formats(files, ext):
    audio = load_audio_file(files[ext], mono=False)
    wave = audio["waveform"]
    assert isinstance(wave, torch.Tensor) and wave.dtype == torch.float32
    assert wave.ndim == 3 and wave.shape[:2] == (1, 2)
    assert audio["sample_rate"] == SR and isinstance(audio["sample_rate"], int)
    n = wave.shape[-1]
    assert abs(n - SECONDS * SR) <= 0.02 * SECONDS * SR  # lossy codecs may pad a little
    mid = wave[0, :, SR // 4: SR // 4 + 8192].numpy()
    for ch, freq in enumerate(FREQS):
        assert abs(dominant_freq(mid[ch], SR) - freq) < 5.0
    if ext in ("wav", "flac"):  # lossless: sample exact (16-bit quantisation)
        np.testing.assert_allclose(wave[0].numpy().T, stereo_tone(), atol=1e-4)


def test_mono_averages_channels(files):
    mono = load_audio_file(files["wav"])["waveform"]
    stereo = load_audio_file(files["wav"], mono=False)["waveform"]
    assert mono.shape == (1, 1, stereo.shape[-1])
    np.testing.assert_allclose(mono[0, 0].numpy(), stereo[0].mean(0).numpy(), atol=1e-6)


def test_mp4_aac_audio_track(files):
    audio = load_audio_file(files["mp4"], mono=False)
    wave = audio["waveform"]
    assert audio["sample_rate"] == SR and wave.shape[:2] == (1, 2)
    # AAC adds encoder priming/padding (about 1-2 k samples); the content must be the tones
    assert SECONDS * SR <= wave.shape[-1] <= SECONDS * SR + 4096
    for ch, freq in enumerate(FREQS):
        assert abs(dominant_freq(wave[0, ch, 4096:4096 + 16384].numpy(), SR) - freq) < 5.0
    trimmed = load_audio_file(files["mp4"], start=0.5, duration=0.6)
    assert trimmed["waveform"].shape == (1, 1, int(round(0.6 * SR)))


def test_resample(files):
    audio = load_audio_file(files["flac"], sample_rate=16000, mono=False)
    assert audio["sample_rate"] == 16000
    assert abs(audio["waveform"].shape[-1] - SECONDS * 16000) <= 1
    for ch, freq in enumerate(FREQS):
        assert abs(dominant_freq(audio["waveform"][0, ch].numpy(), 16000) - freq) < 2.0


def test_trim_start_and_duration(files):
    audio = load_audio_file(files["wav"], mono=False, start=0.25, duration=0.6)
    first, n = int(round(0.25 * SR)), int(round(0.6 * SR))
    assert audio["waveform"].shape == (1, 2, n)
    np.testing.assert_allclose(audio["waveform"][0].numpy().T, stereo_tone()[first:first + n], atol=1e-4)


def test_duration_past_end_reads_to_end(files):
    audio = load_audio_file(files["wav"], start=0.5, duration=100.0)
    assert audio["waveform"].shape[-1] == int(round(SECONDS * SR)) - int(round(0.5 * SR))


def test_speech_demo_clip():
    audio = load_audio_file(SPEECH)
    assert audio["sample_rate"] == 22050
    assert 6.0 < audio["waveform"].shape[-1] / 22050 < 7.5
    check_not_silent(audio["waveform"][0, 0].numpy(), "speech.wav")  # must not raise


# --------------------------------------------------------------------------------------------------
# AUDIO dict -> mono
# --------------------------------------------------------------------------------------------------
def test_audio_to_mono_stock_batch(caplog):
    rng = np.random.default_rng(0)
    wave = torch.from_numpy(rng.normal(0, 0.1, (2, 3, 8000)).astype(np.float32))
    with caplog.at_level(logging.WARNING):
        mono, rate = audio_to_mono({"waveform": wave, "sample_rate": 8000}, "speech")
    assert rate == 8000 and mono.dtype == np.float32 and mono.shape == (8000,)
    np.testing.assert_allclose(mono, wave[0].mean(0).numpy(), atol=1e-6)
    assert "2 audio clips" in caplog.text
    second, _ = audio_to_mono({"waveform": wave, "sample_rate": 8000}, batch_index=1)
    np.testing.assert_allclose(second, wave[1].mean(0).numpy(), atol=1e-6)


def test_audio_to_mono_accepts_our_loader_and_half_precision(files):
    audio = load_audio_file(files["wav"], mono=False)
    mono, rate = audio_to_mono(audio)
    assert rate == SR and mono.shape == (audio["waveform"].shape[-1],)
    half = {"waveform": audio["waveform"].half(), "sample_rate": SR}
    np.testing.assert_allclose(audio_to_mono(half)[0], mono, atol=2e-3)


@pytest.mark.parametrize(
    "value, needle",
    [
        (None, "not an AUDIO value"),
        ({"waveform": torch.zeros(1, 1, 100)}, "not an AUDIO value"),
        ({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, "non-empty"),
        ({"waveform": [0.0, 1.0], "sample_rate": 16000}, "expected a torch tensor"),
        ({"waveform": torch.zeros(1, 1, 100), "sample_rate": 0}, "sample_rate"),
        ({"waveform": torch.full((1, 1, 100), float("nan")), "sample_rate": 16000}, "NaN"),
    ],
)
def test_audio_to_mono_rejects_bad_values(value, needle):
    with pytest.raises(AudioInputError, match=needle) as info:
        audio_to_mono(value, "speech")
    assert "'speech'" in str(info.value)


def test_audio_to_mono_bad_batch_index():
    with pytest.raises(AudioInputError, match="batch_index 3 is out of range.*from 0 to 1"):
        audio_to_mono({"waveform": torch.zeros(2, 1, 100), "sample_rate": 16000}, batch_index=3)


# --------------------------------------------------------------------------------------------------
# refused inputs
# --------------------------------------------------------------------------------------------------
def test_error_is_value_error():
    assert issubclass(AudioInputError, ValueError)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioInputError) as info:
        load_audio_file(path)
    msg = str(info.value)
    assert str(path) in msg and "not found" in msg and "input folder" in msg


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioInputError) as info:
        load_audio_file(path)
    msg = str(info.value)
    assert str(path) in msg and "text file" in msg and "Re-export" in msg and "WAV" in msg


def test_corrupt_binary_file(tmp_path):
    path = tmp_path / "broken.flac"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioInputError) as info:
        load_audio_file(path)
    msg = str(info.value)
    assert str(path) in msg and "damaged" in msg and "Re-export" in msg


def test_corrupt_video_file(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x01garbage" * 200)
    with pytest.raises(AudioInputError, match="Cannot decode") as info:
        load_audio_file(path)
    assert str(path) in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioInputError, match="empty") as info:
        load_audio_file(path)
    assert str(path) in str(info.value)


def test_video_without_audio(tmp_path):
    path = tmp_path / "silent_film.mp4"
    write_mp4(path, None, frames=25)
    with pytest.raises(AudioInputError) as info:
        load_audio_file(path)
    msg = str(info.value)
    assert str(path) in msg and "no audio track" in msg and "separate audio file" in msg


@pytest.mark.parametrize("ext", ["wav", "mp4"])
def test_start_beyond_end(files, ext):
    with pytest.raises(AudioInputError) as info:
        load_audio_file(files[ext], start=5.0)
    msg = str(info.value)
    assert str(files[ext]) in msg and "beyond the end" in msg and "Use a start below" in msg


def test_too_short_file(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(path, 0.1 * np.ones(int(0.1 * SR), np.float32), SR)
    with pytest.raises(AudioInputError) as info:
        load_audio_file(path)
    msg = str(info.value)
    assert MIN_SECONDS == 0.5
    assert str(path) in msg and "0.100 s" in msg and "minimum is 0.5 s" in msg and "at least 0.5 s" in msg


def test_trim_leaving_too_little(files):
    with pytest.raises(AudioInputError, match="too short: 0.300 s.*widen the range"):
        load_audio_file(files["wav"], start=1.2)


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"start": -1.0}, "start"), ({"duration": 0.0}, "duration"), ({"sample_rate": 0}, "sample_rate")],
)
def test_bad_options(files, kwargs, needle):
    with pytest.raises(AudioInputError, match=needle) as info:
        load_audio_file(files["wav"], **kwargs)
    assert str(files["wav"]) in str(info.value)


def test_check_not_silent():
    with pytest.raises(AudioInputError) as info:
        check_not_silent(np.zeros(16000, np.float32), "speech")
    msg = str(info.value)
    assert "'speech'" in msg and "silent" in msg and "Connect a clip that contains speech" in msg
    quiet = np.random.default_rng(2).uniform(-1, 1, 16000).astype(np.float32) * (SILENCE_PEAK * 0.5)
    with pytest.raises(AudioInputError, match="silent"):
        check_not_silent(quiet, "speech")
    check_not_silent(quiet * 10, "speech")  # peak 5e-4: quiet but not silent


def test_check_min_length():
    check_min_length(np.zeros(8000, np.float32), 16000, "x")  # exactly 0.5 s is fine
    with pytest.raises(AudioInputError, match="'x' is too short: 0.499 s"):
        check_min_length(np.zeros(7990, np.float32), 16000, "x")
