"""IASA Sparse Attention through the real server on a tiny random Wan loaded by the stock UNETLoader."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from iasa.harness.demo import saved_files

from .conftest import TINY_WAN, speech_pose_nodes
from .test_bad_input import assert_server_still_serves


VIDEO_TOKENS = 7 * 8 * 8     # the 128x128x25 latent: 7 latent frames of 8x8 tokens


def graph(model_node: dict | None, extra: dict | None = None, prefix: str = "iasa_test/latent") -> dict:
    """Audio-driven pose (1 s) -> [model patch] -> KSampler on a 128x128x25 latent -> SaveLatent."""
    g = {
        **speech_pose_nodes(seed=5),
        "10": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_WAN, "weight_dtype": "default"}},
        "11": {"class_type": "IASAEmptyConditioning", "inputs": {"tokens": 8, "width": 4096}},
        "12": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 128, "height": 128, "length": 25,
                                                                   "batch_size": 1}},
        "14": {"class_type": "KSampler", "inputs": {"model": ["13", 0] if model_node else ["10", 0], "seed": 11,
                                                     "steps": 3, "cfg": 1.0, "sampler_name": "euler",
                                                     "scheduler": "simple", "positive": ["11", 0],
                                                     "negative": ["11", 0], "latent_image": ["12", 0],
                                                     "denoise": 1.0}},
        "15": {"class_type": "SaveLatent", "inputs": {"samples": ["14", 0], "filename_prefix": prefix}},
    }
    if model_node:
        g["13"] = model_node
    g.update(extra or {})
    return g


def sparse_node(kernel="sdpa", model=("10", 0), **over) -> dict:
    inputs = {"model": list(model), "pose": ["5", 0], "top_k": 2, "direction": "causal", "face": True, "hands": True,
              "arms": True, "torso": True, "block_size": 16, "dense_blocks": 0, "dense_steps": 0, "kernel": kernel}
    inputs.update(over)
    return {"class_type": "IASASparseAttention", "inputs": inputs}


def run_latent(client, prompt) -> tuple[torch.Tensor, object]:
    result = client.run(prompt, timeout=900)
    assert result.status == "success", result.error
    f = next(f for f in saved_files(result.outputs) if f["filename"].endswith(".latent"))
    data = client.view(f["filename"], f.get("subfolder", ""), "output")
    return load_safetensors(data)["latent_tensor"].float(), result


@pytest.fixture(scope="module")
def reference_latent(client):
    node = {"class_type": "IASATestMaskedReference", "inputs": {"model": ["10", 0], "pose": ["5", 0], "top_k": 2,
                                                                "direction": "causal"}}
    return run_latent(client, graph(node, prefix="iasa_test/reference"))[0]


@pytest.fixture(scope="module")
def dense_latent(client):
    return run_latent(client, graph(None, prefix="iasa_test/dense"))[0]


@pytest.mark.parametrize("kernel", ["sdpa", "flex_eager", "auto"])
def test_patched_model_equals_explicit_masked_attention(client, reference_latent, dense_latent, kernel):
    sparse, _ = run_latent(client, graph(sparse_node(kernel), prefix=f"iasa_test/sparse_{kernel}"))
    assert sparse.shape == (1, 16, 7, 16, 16)
    assert torch.isfinite(sparse).all()
    scale = reference_latent.abs().mean()
    # Same function: sparse block layout + kernel vs brute-force Eq. 1-3 mask with plain SDPA.
    assert (sparse - reference_latent).abs().max() < 1e-3 * scale + 1e-4
    # ...and the mask matters: dense attention gives a clearly different latent.
    assert (dense_latent - reference_latent).abs().mean() > 1e-2 * scale


def test_cross_attention_as_long_as_the_video_is_not_made_sparse(client):
    """Text of exactly as many (random) tokens as the video: q and k of cross-attention have equal lengths,
    yet only self-attention (told by its call site) may get the sparse mask."""
    text = {"11": {"class_type": "IASATestRandomConditioning", "inputs": {"tokens": VIDEO_TOKENS, "seed": 3}}}
    ref_node = {"class_type": "IASATestMaskedReference", "inputs": {"model": ["10", 0], "pose": ["5", 0],
                                                                    "top_k": 2, "direction": "causal"}}
    reference, _ = run_latent(client, graph(ref_node, text, prefix="iasa_test/ref_equal"))
    sparse, _ = run_latent(client, graph(sparse_node(), text, prefix="iasa_test/sparse_equal"))
    scale = reference.abs().mean()
    assert (sparse - reference).abs().max() < 1e-3 * scale + 1e-4


def test_preview_and_density_come_back_through_the_api(client):
    extra = {"20": {"class_type": "PreviewImage", "inputs": {"images": ["13", 1]}},
             "21": {"class_type": "PreviewAny", "inputs": {"source": ["13", 2]}}}
    _, result = run_latent(client, graph(sparse_node(), extra, prefix="iasa_test/preview"))
    img = result.outputs["20"]["images"][0]
    png = client.view(img["filename"], img.get("subfolder", ""), img.get("type", "temp"))
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert arr.shape[0] > 50 and arr.shape[1] > 50 and arr.std() > 5
    text = result.outputs["21"]["text"][0]
    assert "block density" in text and "token density" in text


def test_previous_override_still_runs_on_the_dense_path(client):
    """A stand-in for another pack's attention patch, applied first, keeps running for every call the
    sparse patch leaves dense: cross-attention always, self-attention of dense blocks."""
    extra = {"16": {"class_type": "IASATestCountingOverride", "inputs": {"model": ["10", 0]}},
             "17": {"class_type": "IASATestReadCounter", "inputs": {"latent": ["14", 0]}}}
    node = sparse_node(model=("16", 0), dense_blocks=1)
    _, result = run_latent(client, graph(node, extra, prefix="iasa_test/chained"))
    counts = result.outputs["17"]["counts"][0]
    steps, layers = 3, 3
    assert counts.get("cross") == steps * layers        # cross-attention untouched, every layer, every step
    assert counts.get("self") == steps * 1              # only the dense first block's self-attention


def test_a_pose_without_a_person_is_a_fallback_the_node_shows_or_strict_refuses(client):
    """An empty pose (IASA Extract Pose with no_person 'leave empty' on a picture of nobody): the node says it
    will sample densely and why, and under strict it stops with an error naming the input."""
    extra = {"3": {"class_type": "LoadImage", "inputs": {"image": "no_person.png"}},
             "5": {"class_type": "IASAExtractPose", "inputs": {"image": ["3", 0], "smoothing": 0.0,
                                                               "no_person": "leave empty"}},
             "21": {"class_type": "PreviewAny", "inputs": {"source": ["13", 2]}}}
    g = graph(sparse_node(), extra, prefix="iasa_test/nobody")
    for n in ("1", "2", "4"):
        del g[n]
    result = client.run(g, timeout=900)
    assert result.status == "success", result.error
    text = result.outputs["21"]["text"][0]
    assert "dense attention (fallback)" in text and "no person" in text and "logged once per run" in text
    g["13"] = sparse_node(strict=True)
    err = client.run(g, timeout=900).error
    assert err["node_id"] == "13" and err["exception_message"].startswith("pose: IASA Sparse Attention (strict)")
    assert err["exception_type"] == "iasa.attention.patch.DenseFallbackError"
    assert_server_still_serves(client)


def test_a_block_size_costlier_than_dense_is_a_clear_error(client):
    node = sparse_node(block_size=128, width=128, height=128, length=25)   # the size of the sampled latent
    err = client.run(graph(node, prefix="iasa_test/big_blocks"), timeout=900).error
    assert err["node_id"] == "13", err
    msg = err["exception_message"]
    assert msg.startswith("block_size: 128 is too large") and "use block_size 16" in msg
    assert_server_still_serves(client)


def test_a_costly_block_size_on_a_guessed_video_size_is_checked_at_sampling(client):
    """Without the conditioning or a size the node previews on the pose's canvas, a guess: it does not refuse
    the block size there; the sampled video (the same 128 x 128 x 25 here) stops sampling with the error."""
    err = client.run(graph(sparse_node(block_size=128), prefix="iasa_test/big_blocks_guess"), timeout=900).error
    assert err is not None and err["node_id"] != "13", err
    assert err["exception_message"].startswith("block_size: 128 is too large"), err["exception_message"]
    assert_server_still_serves(client)


def _standin(model, take_self=False) -> dict:
    return {"class_type": "IASATestReinstallingOverride", "inputs": {"model": list(model), "take_self": take_self}}


@pytest.mark.parametrize("order", ["core_node_after_iasa", "core_node_before_iasa"])
def test_with_a_core_sparse_node_that_reinstalls_itself_iasa_still_runs(client, reference_latent, order):
    """Newer ComfyUI's Model Sparse Attention puts its override on top every step and chains the earlier one.
    Where it declines a call (always off CUDA) the call reaches IASA's override, which keeps the pose mask:
    the result is the explicit masked attention, in either order of the two nodes."""
    counter = {"30": {"class_type": "IASATestReadCounter", "inputs": {"latent": ["14", 0]}}}
    if order == "core_node_after_iasa":
        extra = {**counter, "16": _standin(("13", 0))}
        prompt = graph(sparse_node(), extra, prefix=f"iasa_test/{order}")
        prompt["14"]["inputs"]["model"] = ["16", 0]
    else:
        extra = {**counter, "16": _standin(("10", 0))}
        prompt = graph(sparse_node(model=("16", 0)), extra, prefix=f"iasa_test/{order}")
    latent, result = run_latent(client, prompt)
    counts = result.outputs["30"]["counts"][0]
    steps, layers = 3, 3
    seen = counts.get("standin_seen", 0)
    if order == "core_node_after_iasa":
        assert seen == 2 * steps * layers, counts          # on top: it sees every self- and cross-attention call
    else:
        assert seen == steps * layers, counts              # below IASA: only the calls IASA leaves dense (cross)
    assert counts.get("standin_installs", 0) <= 2, counts  # re-installing does not grow the chain step by step
    scale = reference_latent.abs().mean()
    assert (latent - reference_latent).abs().max() < 1e-3 * scale + 1e-4


def test_a_core_sparse_node_that_takes_self_attention_bypasses_the_pose_mask(client, dense_latent, reference_latent):
    """Known limit (README, ComfyUI versions): on a GPU the core node's kernel computes the self-attention calls it
    accepts, above IASA's override, so those calls get its block selection and not the pose mask. The stand-in
    takes them as plain dense attention: the result is the dense model's, not the masked one."""
    extra = {"16": _standin(("13", 0), take_self=True),
             "30": {"class_type": "IASATestReadCounter", "inputs": {"latent": ["14", 0]}}}
    prompt = graph(sparse_node(), extra, prefix="iasa_test/core_takes_self")
    prompt["14"]["inputs"]["model"] = ["16", 0]
    latent, result = run_latent(client, prompt)
    assert result.outputs["30"]["counts"][0].get("standin_took") == 3 * 3
    scale = reference_latent.abs().mean()
    assert (latent - dense_latent).abs().max() < 1e-3 * scale + 1e-4
    assert (latent - reference_latent).abs().mean() > 1e-2 * scale
