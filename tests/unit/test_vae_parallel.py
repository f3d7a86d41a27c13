"""Whole-window encode/decode (training/vae_parallel.py) equals ComfyUI's chunked ``WanVAE.encode``/``decode``
in float64 for windows of 1, 5, 9 and 17 frames, with the trained-looking (random, non-zero) weights, and
its gradients are the stock path's gradients."""
from __future__ import annotations

import pytest
import torch

from iasa.training.tiny_wan import VAEConfig, build_vae
from iasa.training.vae_parallel import decode_parallel, encode_parallel
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def vae():
    net = build_vae(VAEConfig(dim=8), seed=5).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():  # every gamma / zero bias away from its init, so no term hides
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return net


@pytest.mark.parametrize("frames", [1, 5, 9, 17])
def test_encode_and_decode_equal_the_chunked_stock_methods(vae, frames):
    x = torch.randn(2, 3, frames, 32, 24, generator=torch.Generator().manual_seed(frames), dtype=torch.float64)
    with torch.no_grad():
        mu_stock, mu_par = vae.encode(x), encode_parallel(vae, x)
        assert mu_par.shape == mu_stock.shape == (2, 16, 1 + (frames - 1) // 4, 4, 3)
        torch.testing.assert_close(mu_par, mu_stock, rtol=1e-10, atol=1e-10)
        rec_stock, rec_par = vae.decode(mu_stock), decode_parallel(vae, mu_stock)
    assert rec_par.shape == rec_stock.shape == x.shape
    torch.testing.assert_close(rec_par, rec_stock, rtol=1e-10, atol=1e-10)


def test_gradients_equal_the_stock_path(vae):
    x = torch.randn(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = []
    for enc, dec in ((vae.encode, vae.decode), (lambda v: encode_parallel(vae, v), lambda z: decode_parallel(vae, z))):
        vae.zero_grad()
        (dec(enc(x)) - x).square().mean().backward()
        grads.append([p.grad.clone() for p in vae.parameters()])
    for g_stock, g_par in zip(*grads):
        torch.testing.assert_close(g_par, g_stock, rtol=1e-9, atol=1e-12)


def test_window_length_must_be_one_plus_four_k(vae):
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        encode_parallel(vae, torch.zeros(1, 3, 6, 16, 16, dtype=torch.float64))


def test_vae_step_benchmark_dry_run_compares_the_two_paths(tmp_path):
    from iasa.bench.vae_step import main

    out = main(["--dry-run", "--out", str(tmp_path / "vae_step.json")])
    assert (tmp_path / "vae_step.json").exists() and out["dry_run"]
    for row in out["train_step"]:
        assert row["chunked_s"] > 0 and row["parallel_s"] > 0
        assert row["rel_l2_parallel_vs_chunked"] < 1e-5  # float32 on the CPU: the same reconstruction
    assert out["encode"][0]["speedup"] > 0
