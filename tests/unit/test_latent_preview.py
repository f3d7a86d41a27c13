"""The latent-to-RGB preview map: the fit, its file, and that the shipped file belongs to the bundled VAE."""
import json

import numpy as np
import pytest

from iasa.preview.latent_rgb import (DEFAULT_FILE, DEFAULT_VAE, PreviewFactorsError, apply_latent_rgb, file_sha256,
                                     fit_latent_rgb, read_factors, write_factors)


def test_fit_recovers_a_linear_map_and_the_file_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    true_f, true_b = rng.normal(size=(16, 3)) * 0.1, np.array([0.1, -0.2, 0.05])
    lat = rng.normal(size=(500, 16))
    rgb = apply_latent_rgb(lat, true_f, true_b) + rng.normal(scale=1e-4, size=(500, 3))
    f, b = fit_latent_rgb(lat, rgb)
    np.testing.assert_allclose(f, true_f, atol=1e-4)
    np.testing.assert_allclose(b, true_b, atol=1e-4)
    path = write_factors(tmp_path / "f.json", f, b, {"vae": "x"})
    rf, rb, meta = read_factors(path)
    np.testing.assert_allclose(rf, f, atol=1e-6)
    np.testing.assert_allclose(rb, b, atol=1e-6)
    assert meta == {"vae": "x"}


def test_too_few_samples_is_refused():
    with pytest.raises(ValueError, match="N > C \\+ 1"):
        fit_latent_rgb(np.zeros((10, 16)), np.zeros((10, 3)))


@pytest.mark.parametrize("content,match", [(None, "not found"), ("{", "not valid JSON"),
                                           ('{"latent_rgb_factors": [[1, 2, 3]], "latent_rgb_factors_bias": [0, 0, 0]}',
                                            r"needs latent_rgb_factors \[16\]\[3\]")])
def test_bad_files_name_the_file_and_the_fix(tmp_path, content, match):
    path = tmp_path / "f.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PreviewFactorsError, match=match) as e:
        read_factors(path)
    assert str(path) in str(e.value) and "python iasa_cli.py preview.latent_rgb" in str(e.value)


def test_shipped_factors_were_fitted_to_the_bundled_vae():
    """Fails when the VAE in models/vae is replaced: rerun python iasa_cli.py preview.latent_rgb."""
    factors, bias, meta = read_factors(DEFAULT_FILE)
    assert meta["vae_sha256"] == file_sha256(DEFAULT_VAE), "stale: rerun python iasa_cli.py preview.latent_rgb"
    assert meta["fit_psnr_db"] > meta["stock_wan21_factors_psnr_db"] + 10, json.dumps(meta)
