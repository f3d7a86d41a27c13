"""Sampling previews over the websocket with IASA Latent Preview, on a server started with --preview-method
latent2rgb (ComfyUI 0.3.75 sends previews only when its launch flag asks for them)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from iasa.harness.client import ComfyClient
from iasa.harness.demo import DEMO_INPUTS
from iasa.harness.server import ComfyServer, prepare_base
from iasa.preview.latent_rgb import DEFAULT_FILE, read_factors

from .conftest import TINY_WAN, write_tiny_wan
from .test_sparse_attention import graph, run_latent


@pytest.fixture(scope="module")
def preview_client(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_home_previews")
    prepare_base(base, DEMO_INPUTS)
    (base / "models" / "diffusion_models").mkdir(parents=True, exist_ok=True)
    write_tiny_wan(base / "models" / "diffusion_models" / TINY_WAN)
    with ComfyServer(base, extra_args=("--preview-method", "latent2rgb")) as srv:
        yield ComfyClient(srv.url)


def _images(result) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.float32) for b in result.preview_images()]


def _mean_preview(x0: np.ndarray, factors, bias) -> np.ndarray:
    return (np.clip((x0 @ np.asarray(factors) + np.asarray(bias) + 1) / 2, 0, 1) * 255).mean(axis=0)


def test_previews_use_the_fitted_factors_and_leave_sampling_alone(preview_client):
    from iasa.training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path()
    import comfy.latent_formats

    fmt = comfy.latent_formats.Wan21()
    stock_latent, stock = run_latent(preview_client, graph(None, prefix="iasa_test/preview_stock"))
    node = {"class_type": "IASALatentPreview", "inputs": {"model": ["10", 0]}}
    ours_latent, ours = run_latent(preview_client, graph(node, prefix="iasa_test/preview_ours"))
    ours_img, stock_img = _images(ours), _images(stock)
    assert len(ours_img) == len(stock_img) == 3, "one preview per sampling step"
    assert (ours_latent - stock_latent).abs().max() == 0, "the preview factors must not change what is sampled"
    # The last step's preview is the factors applied to the final latent's first frame (model space).
    x0 = fmt.process_in(ours_latent)[0, :, 0].permute(1, 2, 0).reshape(-1, 16).numpy()
    factors, bias, _ = read_factors(DEFAULT_FILE)
    np.testing.assert_allclose(ours_img[-1].reshape(-1, 3).mean(0), _mean_preview(x0, factors, bias), atol=6)
    np.testing.assert_allclose(stock_img[-1].reshape(-1, 3).mean(0),
                               _mean_preview(x0, fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias), atol=6)
    assert np.abs(ours_img[-1] - stock_img[-1]).mean() > 5, "previews did not change colours"
