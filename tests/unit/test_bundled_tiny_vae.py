"""The bundled tiny autoencoder against the bundled IASA-mini VAE it was distilled from, on a clip no training saw:
33 frames of the demo speaker driven by the demo speech (the synthetic renderer's frames as ground truth), through
ComfyUI's own VAE class as VAELoader builds it. Thresholds sit below what the card's held-out windows gave
(decoder 34.7 dB against the VAE at 17 frames, 24.8 at 97; round trip 1.8 dB under the VAE's at 49 frames)."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from iasa.bench.video_metrics import psnr

REPO = pathlib.Path(__file__).resolve().parents[2]
VAE = REPO / "models" / "vae" / "iasa_mini_vae.safetensors"
TINY = REPO / "models" / "vae" / "iasa_mini_tiny_vae.safetensors"
PREVIEW = REPO / "models" / "vae_approx" / "lighttaew2_1_iasa_mini.safetensors"
MISSING = [str(p.relative_to(REPO)) for p in (VAE, TINY, PREVIEW) if not p.is_file()]

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs the bundled weights ({', '.join(MISSING)} missing; "
                                                      "see models/README.md)")


def _uint8(video: torch.Tensor, frames: int) -> np.ndarray:
    return (video.reshape(-1, *video.shape[-3:])[:frames].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def case() -> dict:
    from iasa.audio.features import features_from_audio
    from iasa.audio.loading import load_audio_file
    from iasa.bench.quality import stock_vae
    from iasa.pose.audio_to_pose import audio_to_pose
    from iasa.pose.keypoints import from_pose_keypoint
    from iasa.pose.pose_files import read_pose_file
    from iasa.training.synth.character import draw_sequence
    from iasa.training.synth.demo_assets import DEFAULT_SEED
    from iasa.training.synth.identity import Identity

    ref_pose = from_pose_keypoint(read_pose_file(REPO / "assets" / "demo" / "synth_speaker_pose.json"))
    audio = load_audio_file(REPO / "assets" / "demo" / "speech.wav", duration=1.4)
    seq = audio_to_pose(ref_pose, features_from_audio(audio, 25.0), seed=3)
    truth = draw_sequence(seq.points[:33], Identity.sample(DEFAULT_SEED), 256)       # [33, 256, 256, 3] uint8
    x = torch.from_numpy(truth).float() / 255.0
    full, tiny = stock_vae(VAE), stock_vae(TINY)
    with torch.inference_mode():
        z = full.encode(x)
        out = {"truth": truth, "vae": _uint8(full.decode(z), 33), "tiny_of_vae_latents": _uint8(tiny.decode(z), 33),
               "tiny_round_trip": _uint8(tiny.decode(tiny.encode(x)), 33), "z": z}
    return out


def test_tiny_decoder_reproduces_the_vae_on_its_latents(case):
    assert case["tiny_of_vae_latents"].shape == case["vae"].shape == case["truth"].shape
    assert psnr(case["tiny_of_vae_latents"], case["vae"]) >= 30.0


def test_tiny_round_trip_is_close_to_the_vae_round_trip(case):
    vae, tiny = psnr(case["vae"], case["truth"]), psnr(case["tiny_round_trip"], case["truth"])
    assert vae >= 26.0, f"the bundled VAE itself: {vae:.2f} dB"
    assert tiny >= vae - 3.0, f"tiny round trip {tiny:.2f} dB vs the VAE's {vae:.2f} dB"


def test_bundled_preview_decoder_shows_the_first_frame_from_normalised_latents(case):
    """What ComfyUI's latent previewer does with the vae_approx file: decode the sampler's normalised x0."""
    from iasa.training.comfy_env import ensure_comfy_on_path
    from iasa.training.tiny_vae import load_tiny_vae

    ensure_comfy_on_path()
    import comfy.latent_formats

    preview, _card = load_tiny_vae(PREVIEW)       # the same numbers as ComfyUI's TAEHV (tests/unit/test_tiny_vae.py)
    x0 = comfy.latent_formats.Wan21().process_in(case["z"][:, :, :1]).float()
    with torch.inference_mode():
        frame = preview.float().decode(x0)[:, :, :1]                  # [1, 3, 1, H, W] in 0..1
    got = _uint8(frame.movedim(1, -1), 1)                            # [1, H, W, 3]
    assert psnr(got, case["vae"][:1]) >= 30.0, psnr(got, case["vae"][:1])
