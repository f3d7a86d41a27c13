"""Windows restarted from key frames (sampling/rekeyed_decode.py, node IASA Long VAE Decode): the windows cover the
latent; a short video is one stock decode; every later window is decoded as [key, its latents] with the key
encoded from the frame before it, the key's frame dropped, the overlap cross-faded; bad inputs name the fix."""
from __future__ import annotations

import gc
import pathlib

import pytest
import torch

from iasa.sampling.rekeyed_decode import DecodeWindows, decode_rekeyed, frames_of


def test_spans_cover_the_latent_with_the_asked_overlap():
    w = DecodeWindows(6, 2)
    assert w.spans(6) == [(0, 6)]
    assert w.spans(13) == [(0, 6), (4, 10), (8, 13)]
    assert w.spans(7) == [(0, 6), (4, 7)]
    assert DecodeWindows(4, 0).spans(9) == [(0, 4), (4, 8), (8, 9)]
    assert frames_of(1) == 1 and frames_of(43) == 169
    with pytest.raises(ValueError, match="overlap"):
        DecodeWindows(4, 3)
    with pytest.raises(ValueError, match="window"):
        DecodeWindows(1, 0)


class FakeVAE:
    """Latent ``[1, 1, N, 1, 1]`` holding numbers; decode: latent 0 -> one frame, every later latent -> four
    frames, each frame the latent's value plus 1000 x (decode call); encode: the frame's value. Logs the calls."""

    def __init__(self):
        self.calls, self.encoded = 0, []

    def decode(self, z):
        self.calls += 1
        v = z[0, 0, :, 0, 0]
        vals = torch.cat([v[:1], v[1:].repeat_interleave(4)]) + 1000 * self.calls
        return vals.view(1, -1, 1, 1, 1).expand(1, -1, 2, 2, 3).clone()

    def encode(self, frames):
        assert frames.shape[0] == 1
        self.encoded.append(float(frames[0, 0, 0, 0]))
        return frames[:1, :1, :1, :1].reshape(1, 1, 1, 1, 1) * 0 + 7.0   # the key latent's own value: 7


def test_later_windows_restart_from_the_decoded_frame_before_them():
    vae = FakeVAE()
    z = torch.arange(10, dtype=torch.float64).view(1, 1, 10, 1, 1)
    out = decode_rekeyed(z, vae.decode, vae.encode, DecodeWindows(6, 2, key="decoded"))
    v = out[0, :, 0, 0, 0]
    assert out.shape == (1, frames_of(10), 2, 2, 3) and vae.calls == 2
    # window 0 = latents 0..5 -> frames 0..20 (call 1); window 1 = latents 4..9, restarted from frame 4*4-4 = 12
    assert vae.encoded == [1000 + 3]                      # frame 12 is latent 3's (frames 9..12) in call 1
    first = frames_of(4)                                  # frame 13: the first frame of latent 4
    assert torch.equal(v[:first], torch.tensor([1000.0] + [1000.0 + j for j in range(1, 4) for _ in range(4)]))
    shared = frames_of(6) - first                         # frames 13..20 decoded by both windows
    ramp = torch.arange(1, shared + 1, dtype=torch.float64) / (shared + 1)
    old = torch.tensor([1000.0 + j for j in (4, 5) for _ in range(4)])
    new = torch.tensor([2000.0 + j for j in (4, 5) for _ in range(4)])
    torch.testing.assert_close(v[first:first + shared], old * (1 - ramp) + new * ramp)
    assert torch.equal(v[first + shared:], torch.tensor([2000.0 + j for j in (6, 7, 8, 9) for _ in range(4)]))


def test_a_video_that_fits_one_window_is_one_stock_decode():
    vae = FakeVAE()
    z = torch.arange(5, dtype=torch.float64).view(1, 1, 5, 1, 1)
    out = decode_rekeyed(z, vae.decode, vae.encode, DecodeWindows(5, 1))
    assert vae.calls == 1 and not vae.encoded
    assert torch.equal(out, vae.decode(z)[:, :, :, :, :] - 1000)   # the second fake call adds 1000 more


def test_bad_latents_and_encoders_are_refused_with_the_fix():
    vae = FakeVAE()
    with pytest.raises(ValueError, match="video latent"):
        decode_rekeyed(torch.zeros(1, 1, 4, 4), vae.decode, vae.encode, DecodeWindows(2, 0))
    with pytest.raises(ValueError, match="Wan 2.1-layout VAE"):
        decode_rekeyed(torch.zeros(1, 1, 5, 1, 1), vae.decode, lambda f: torch.zeros(1, 1, 2, 1, 1),
                       DecodeWindows(3, 1, key="decoded"))


def test_key_first_restarts_every_window_from_the_videos_own_first_latent():
    vae = FakeVAE()
    z = torch.arange(10, dtype=torch.float64).view(1, 1, 10, 1, 1) + 50
    out = decode_rekeyed(z, vae.decode, vae.encode, DecodeWindows(6, 2, key="first"))
    assert not vae.encoded and vae.calls == 2            # nothing re-encoded
    v = out[0, :, 0, 0, 0]
    assert torch.equal(v[frames_of(6):], torch.tensor([2000.0 + 50 + j for j in (6, 7, 8, 9) for _ in range(4)]))
    with pytest.raises(ValueError, match="key"):
        DecodeWindows(6, 2, key="middle")


VAE_FILE = pathlib.Path(__file__).resolve().parents[2] / "models" / "vae" / "iasa_mini_vae.safetensors"


@pytest.mark.skipif(not VAE_FILE.is_file(), reason="needs the bundled models/vae/iasa_mini_vae.safetensors")
def test_node_on_the_bundled_vae_through_comfyui():
    from iasa.training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path()
    from iasa.bench.quality import stock_vae
    from iasa.nodes.vae_nodes import IASALongVAEDecode

    vae = stock_vae(VAE_FILE)
    g = torch.Generator().manual_seed(0)
    short, long = (torch.randn(1, 16, n, 4, 4, generator=g) for n in (5, 12))
    with torch.inference_mode():
        stock_short = vae.decode(short).reshape(-1, 32, 32, 3)
        stock_long = vae.decode(long).reshape(-1, 32, 32, 3)
        one = IASALongVAEDecode.execute(samples={"samples": short}, vae=vae, window=8, overlap=2).args[0]
        many = IASALongVAEDecode.execute(samples={"samples": long}, vae=vae, window=8, overlap=2).args[0]
    assert torch.equal(one, stock_short)                       # fits one window: exactly VAEDecode
    assert many.shape == stock_long.shape == (frames_of(12), 32, 32, 3)
    first_restart = frames_of(6)                               # window 2 starts at latent 6
    assert torch.equal(many[:first_restart], stock_long[:first_restart])
    assert not torch.equal(many[first_restart:], stock_long[first_restart:])
    with pytest.raises(ValueError, match="video latent"):
        IASALongVAEDecode.execute(samples={"samples": torch.zeros(1, 16, 4, 4)}, vae=vae, window=8, overlap=2)
    del vae   # while ComfyUI's modules are alive (its ModelPatcher.__del__ fails at interpreter exit)
    gc.collect()


def test_the_bench_workflow_variant_sets_every_input_of_the_node():
    """bench/workflows/iasa_mini_student_long_decode.json is an API prompt: ComfyUI rejects a node with a required
    input missing (a run of bench.quality was refused for the missing ``key``)."""
    import json

    from iasa.sampling.rekeyed_decode import KEY_SOURCES

    wf = json.loads((pathlib.Path(__file__).resolve().parents[2] / "bench" / "workflows"
                     / "iasa_mini_student_long_decode.json").read_text())
    (node,) = [n for n in wf.values() if n["class_type"] == "IASALongVAEDecode"]
    assert set(node["inputs"]) == {"samples", "vae", "window", "overlap", "key"} and node["inputs"]["key"] in KEY_SOURCES
