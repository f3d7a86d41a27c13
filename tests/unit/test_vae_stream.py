"""Warm-cache VAE training (training/vae_stream.py): the frames after the warm part equal the stock chunked
``decode(encode(x))`` in float64; gradients reach encoder and decoder only through the trained part; the warm
schedule is deterministic per step; vae_train's ``--warm-latents`` runs end to end."""
from __future__ import annotations

import pytest
import torch

from iasa.training.tiny_wan import VAEConfig, build_vae
from iasa.training.vae_stream import WarmSchedule, WarmWindows, warm_autoencode, warm_start_frame
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def vae():
    net = build_vae(VAEConfig(dim=8), seed=7).double().eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():  # move every weight off its init, so no term hides
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return net


@pytest.fixture(scope="module")
def clip():
    return torch.randn(2, 3, 21, 16, 24, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


@pytest.mark.parametrize("warm", [0, 1, 2, 4])
def test_frames_after_the_warm_part_equal_the_stock_round_trip(vae, clip, warm):
    with torch.no_grad():
        mu_stock = vae.encode(clip)
        stock = vae.decode(mu_stock)
        rec, mu, logvar = warm_autoencode(vae, clip, warm)
    first = warm_start_frame(warm)
    assert rec.shape[2] == clip.shape[2] - first and mu.shape == logvar.shape
    torch.testing.assert_close(rec, stock[:, :, first:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mu, mu_stock[:, :, warm:], rtol=1e-9, atol=1e-9)


def test_gradients_flow_through_the_trained_part_only(vae, clip):
    x = clip[:1].clone().requires_grad_(True)
    vae.zero_grad()
    rec, mu, logvar = warm_autoencode(vae, x, 3)
    (rec.square().mean() + logvar.mean()).backward()
    first = warm_start_frame(3)
    assert x.grad[:, :, :first].abs().max() == 0          # the warm part only filled caches
    assert x.grad[:, :, first:].abs().max() > 0
    for part in (vae.encoder, vae.conv1, vae.conv2, vae.decoder):
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in part.parameters())
    vae.zero_grad()


def test_window_checks(vae):
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        warm_autoencode(vae, torch.zeros(1, 3, 8, 16, 16, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="must leave at least one"):
        warm_autoencode(vae, torch.zeros(1, 3, 9, 16, 16, dtype=torch.float64), 3)


def test_warm_schedule_is_a_function_of_the_step():
    s = WarmSchedule(6, p_zero=0.25, seed=3)
    draws = [s(i) for i in range(400)]
    assert draws == [WarmSchedule(6, p_zero=0.25, seed=3)(i) for i in range(400)]   # resume / every rank
    assert set(draws) == set(range(7))
    assert 0.15 < draws.count(0) / len(draws) < 0.35
    assert s.window(17) == 17 + 24 and WarmSchedule(0)(5) == 0
    with pytest.raises(ValueError, match="p_zero"):
        WarmSchedule(2, p_zero=1.5)


def test_warm_windows_fit_each_step_and_short_clips_serve_short_warm_ups():
    import numpy as np

    from iasa.training.clips import FrameBank

    # clip 0 has 9 frames (only warm 0 fits), clip 1 has 21 (every warm up to 3)
    clips = [{"frames": np.full((n, 8, 8, 3), v, np.uint8)} for n, v in ((9, 0), (21, 255))]
    windows = WarmWindows(FrameBank(clips, 21, torch.device("cpu")), 9, WarmSchedule(3, p_zero=0.5, seed=1))
    gen = torch.Generator().manual_seed(0)
    seen_short_clip = False
    for step in range(40):
        x, warm = windows.sample(step, 4, None, gen)
        assert warm == windows.schedule(step) and x.shape == (4, 3, 9 + 4 * warm, 8, 8)
        from_short = x.flatten(1).amax(1) < 0
        seen_short_clip |= bool(from_short.any())
        assert warm == 0 or not from_short.any()   # the 9-frame clip is drawn only where it fits
    assert seen_short_clip
    assert windows.bank_for(0).n_windows == 1 + 13 and windows.bank_for(3).n_windows == 1


def test_vae_train_with_warm_latents_runs_and_reports_the_profile(tmp_path):
    from iasa.training.vae_train import main

    common = ["--data", "procedural:4:29:48", "--dim", "8", "--frames", "9", "--crop", "32", "--batch", "2",
              "--log-every", "2", "--eval-clips", "2", "--eval-frames", "29", "--calib-clips", "2", "--device", "cpu",
              "--warmup", "1"]
    first = main([*common, "--out", str(tmp_path / "a"), "--steps", "3"])
    out = main([*common, "--out", str(tmp_path / "b"), "--steps", "3", "--warm-latents", "5",
                "--init", first["weights"]])
    assert out["step"] == 3 and out["heldout_windows"] == [2, 29]
    assert len(out["heldout_psnr_per_second"]) == 2 == len(out["init_heldout_psnr_per_second"])
    assert out["init_heldout_psnr"] == pytest.approx(first["heldout_psnr_fp32_calibrated"], abs=1e-3)
    from iasa.training.tiny_wan import read_weights

    card = read_weights(out["weights"])[1]
    assert card["warm"] == {"latents": 5, "p_zero": 0.25} and "heldout_psnr_per_second" in card["metrics"]
