"""IASA Long Video through the real server: a clip 2x the window (3 windows) on a tiny random IASA-mini-format teacher
(Fun-Control concat + ref_conv reference, conditioned by stock Wan22FunControlToVideo), sampled by stock
KSampler and SamplerCustom, alone and with IASA Sparse Attention in both node orders, and a random student of the
same format under IASA Student Sampler. The patches' own counters (read by the testing pack's IASATestPatchStats)
show the windowed calls happened."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_safetensors

from iasa.harness.demo import saved_files
from iasa.sampling.long_video import LongVideoConfig, LongVideoPatch

from .test_bad_input import assert_server_still_serves
from .test_iasa_mini import install_random_mini, install_random_student

TEACHER, VAE = "iasa_test_long_teacher.safetensors", "iasa_test_long_vae.safetensors"
STUDENT = "iasa_test_long_student.safetensors"   # 2 steps (its card), like STEPS
# 65 frames (17 latent frames of 8 x 8 tokens at 128 x 128) in windows of 33 frames (9 latent frames) overlapping
# by 8 (2 latent frames): big enough that IASA Sparse Attention's kernel is cheaper than dense (it refuses
# grids where it is not).
PIXEL_FRAMES, SIZE = 65, 128
WINDOW, OVERLAP = 33, 8
LATENT_SHAPE = (1, 16, (PIXEL_FRAMES - 1) // 4 + 1, SIZE // 8, SIZE // 8)
WINDOWS = len(LongVideoPatch(LongVideoConfig.from_pixel_frames(WINDOW, OVERLAP)).plan(LATENT_SHAPE[2]).windows)
STEPS = 2


@pytest.fixture(scope="module")
def long_models(server):
    return install_random_mini(server, TEACHER, VAE)


def base_graph() -> dict:
    """Audio-driven pose (2.6 s, 65 frames) of the bundled speaker -> skeleton video -> Fun-Control conditioning
    with the speaker as ref_image, a 128 x 128 x 65 latent; the tiny teacher."""
    return {
        "1": {"class_type": "IASALoadAudio", "inputs": {"audio": "speech.wav", "sample_rate": 0, "mono": True,
                                                        "start": 0.0, "duration": PIXEL_FRAMES / 25}},
        "2": {"class_type": "IASAAudioFeatures", "inputs": {"audio": ["1", 0], "fps": 25.0}},
        "3": {"class_type": "IASALoadPose", "inputs": {"pose_file": "synth_speaker_pose.json", "canvas_width": 0,
                                                       "canvas_height": 0}},
        "4": {"class_type": "IASAAudioToPose", "inputs": {"reference_pose": ["3", 0], "features": ["2", 0],
                                                          "seed": 3, "mouth": 1.0, "head": 1.0, "gestures": 1.0,
                                                          "blinks": True, "driving_mode": "loop"}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "synth_speaker.png"}},
        "6": {"class_type": "IASARenderPose", "inputs": {"pose": ["4", 0], "width": SIZE, "height": SIZE, "body": True,
                                                         "face": True, "hands": True}},
        "7": {"class_type": "IASAEmptyConditioning", "inputs": {"tokens": 8, "width": 4096}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "9": {"class_type": "Wan22FunControlToVideo",
              "inputs": {"positive": ["7", 0], "negative": ["7", 0], "vae": ["8", 0], "width": SIZE, "height": SIZE,
                         "length": PIXEL_FRAMES, "batch_size": 1, "ref_image": ["5", 0], "control_video": ["6", 0]}},
        "10": {"class_type": "UNETLoader", "inputs": {"unet_name": TEACHER, "weight_dtype": "default"}},
    }


def long_node(model, window=WINDOW, overlap=OVERLAP, fuse="ramp") -> dict:
    return {"class_type": "IASALongVideo", "inputs": {"model": list(model), "window_frames": window,
                                                      "overlap_frames": overlap, "fuse": fuse}}


def sparse_node(model) -> dict:
    return {"class_type": "IASASparseAttention",
            "inputs": {"model": list(model), "pose": ["4", 0], "top_k": 1, "direction": "bidirectional",
                       "face": True, "hands": True, "arms": True, "torso": True, "block_size": 16,
                       "dense_blocks": 0, "dense_steps": 0, "kernel": "sdpa"}}


def ksampler(model, seed=21) -> dict:
    return {"class_type": "KSampler", "inputs": {"model": list(model), "seed": seed, "steps": STEPS, "cfg": 1.0,
                                                 "sampler_name": "euler", "scheduler": "simple",
                                                 "positive": ["9", 0], "negative": ["9", 1],
                                                 "latent_image": ["9", 2], "denoise": 1.0}}


def finish(g: dict, model, sampled, prefix: str) -> dict:
    g["30"] = {"class_type": "SaveLatent", "inputs": {"samples": list(sampled), "filename_prefix": prefix}}
    g["31"] = {"class_type": "IASATestPatchStats", "inputs": {"model": list(model), "latent": list(sampled)}}
    return g


def run(client, prompt) -> tuple[torch.Tensor, dict]:
    result = client.run(prompt, timeout=900)
    assert result.status == "success", result.error
    f = next(f for f in saved_files(result.outputs) if f["filename"].endswith(".latent"))
    latent = load_safetensors(client.view(f["filename"], f.get("subfolder", ""), "output"))["latent_tensor"]
    return latent.float(), result.outputs["31"]["stats"][0]


def graph_with(chain: str, seed: int = 21, tag: str = "") -> dict:
    """``chain``: "long", "sparse_long" (Sparse Attention first) or "long_sparse"."""
    g = base_graph()
    if chain == "long":
        g["11"] = long_node(("10", 0))
        last = ("11", 0)
    elif chain == "sparse_long":
        g["11"], g["12"] = sparse_node(("10", 0)), long_node(("11", 0))
        last = ("12", 0)
    else:
        g["11"], g["12"] = long_node(("10", 0)), sparse_node(("11", 0))
        last = ("12", 0)
    g["20"] = ksampler(last, seed)
    return finish(g, last, ("20", 0), f"iasa_test/long_{chain}{tag}")


def test_ksampler_runs_a_clip_three_windows_long_window_by_window(client, long_models):
    latent, stats = run(client, graph_with("long"))
    assert latent.shape == LATENT_SHAPE and torch.isfinite(latent).all()
    assert stats["LongVideoPatch"] == {"calls": STEPS, "windowed_calls": STEPS, "window_calls": STEPS * WINDOWS}


def test_sparse_attention_runs_inside_the_windows_in_either_node_order(client, long_models):
    first, stats_first = run(client, graph_with("sparse_long"))
    second, stats_second = run(client, graph_with("long_sparse"))
    assert torch.equal(first, second)                      # same windows, same sparse layouts: same latent
    for stats in (stats_first, stats_second):
        assert stats["LongVideoPatch"]["window_calls"] == STEPS * WINDOWS
        sparse = stats["SparseAttentionPatch"]
        assert sparse["sparse"] == STEPS * WINDOWS * 1     # every window's self-attention (1 layer) went sparse
        assert sparse.get("layouts_built") == WINDOWS      # one pose layout per window, reused by both steps
        assert "dense_fallback" not in sparse
    dense, _ = run(client, graph_with("long", tag="_dense"))  # (KSampler may come from the cache)
    assert (dense - first).abs().mean() > 1e-4 * dense.abs().mean()   # and the sparse mask changed the result


def test_sampler_custom_runs_the_windows_too(client, long_models):
    g = base_graph()
    g["11"] = long_node(("10", 0), fuse="triangle")
    g["12"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["13"] = {"class_type": "BasicScheduler", "inputs": {"model": ["11", 0], "scheduler": "simple",
                                                          "steps": STEPS, "denoise": 1.0}}
    g["20"] = {"class_type": "SamplerCustom", "inputs": {"model": ["11", 0], "add_noise": True, "noise_seed": 5,
                                                         "cfg": 1.0, "positive": ["9", 0], "negative": ["9", 1],
                                                         "sampler": ["12", 0], "sigmas": ["13", 0],
                                                         "latent_image": ["9", 2]}}
    latent, stats = run(client, finish(g, ("11", 0), ("20", 0), "iasa_test/long_custom"))
    assert latent.shape == LATENT_SHAPE and torch.isfinite(latent).all()
    assert stats["LongVideoPatch"]["window_calls"] == STEPS * WINDOWS


@pytest.fixture(scope="module")
def long_student(server, long_models):
    return install_random_student(server, STUDENT, timesteps=(1000.0, 500.0))


def student_graph(model_node: str, sampler: str, seed: int = 9) -> dict:
    """The base graph with the student loaded; ``sampler``: "student" (IASA Student Sampler, the card's steps) or
    "custom" (SamplerCustom + IASA Student Sigmas + lcm, cfg 1) on ``model_node``'s model."""
    g = base_graph()
    g["10"]["inputs"]["unet_name"] = STUDENT
    g["11"] = long_node(("10", 0))
    if sampler == "student":
        g["20"] = {"class_type": "IASAStudentSampler", "inputs": {"model": [model_node, 0], "positive": ["9", 0],
                                                                  "latent": ["9", 2], "seed": seed, "steps": 0}}
    else:
        g["12"] = {"class_type": "IASAStudentSigmas", "inputs": {"model": [model_node, 0], "steps": 0}}
        g["13"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "lcm"}}
        g["20"] = {"class_type": "SamplerCustom", "inputs": {"model": [model_node, 0], "add_noise": True,
                                                             "noise_seed": seed, "cfg": 1.0, "positive": ["9", 0],
                                                             "negative": ["9", 1], "sampler": ["13", 0],
                                                             "sigmas": ["12", 0], "latent_image": ["9", 2]}}
    return finish(g, (model_node, 0), ("20", 0), f"iasa_test/long_student_{model_node}_{sampler}")


def test_student_sampler_behind_long_video_runs_every_window_like_sampler_custom(client, long_student):
    """IASA Student Sampler on a clip three windows long: one windowed call per step, each window once, a latent
    of the clip's shape; it equals stock SamplerCustom + IASA Student Sigmas + lcm through the same windows, and
    differs from the student on the whole clip in one call (the windows were really used)."""
    latent, stats = run(client, student_graph("11", "student"))
    assert latent.shape == LATENT_SHAPE and torch.isfinite(latent).all() and latent.abs().mean() > 0
    assert stats["LongVideoPatch"] == {"calls": STEPS, "windowed_calls": STEPS, "window_calls": STEPS * WINDOWS}
    stock, stock_stats = run(client, student_graph("11", "custom"))
    assert stock_stats["LongVideoPatch"]["window_calls"] == STEPS * WINDOWS
    assert torch.equal(latent, stock)
    whole, whole_stats = run(client, student_graph("10", "student"))
    assert "LongVideoPatch" not in whole_stats and whole.shape == LATENT_SHAPE
    assert (whole - latent).abs().mean() > 1e-4 * whole.abs().mean()


def test_a_window_that_is_not_1_plus_4k_is_a_clear_node_error(client, long_models):
    g = base_graph()
    g["11"] = long_node(("10", 0), window=50)
    g["20"] = ksampler(("11", 0))
    result = client.run(finish(g, ("11", 0), ("20", 0), "iasa_test/long_bad"))
    assert result.status == "error"
    assert result.error["node_id"] == "11"
    message = result.error["exception_message"]
    for w in ("window_frames", "50", "1 + 4k", "49", "53"):
        assert w in message, message
    assert_server_still_serves(client)


def keyed_graph(with_sparse: bool, overlap: int = 8) -> dict:
    """The clip as keyed windows: Wan22FunControlToVideo without its control video, IASA Keyed Windows (the pose
    video per window), stock KSampler, IASA Long VAE Decode of the keyed latent."""
    g = base_graph()
    del g["9"]["inputs"]["control_video"]
    model = ("10", 0)
    if with_sparse:
        g["11"] = sparse_node(model)
        model = ("11", 0)
    g["12"] = {"class_type": "IASAKeyedWindows", "inputs": {"model": list(model), "positive": ["9", 0],
                                                            "negative": ["9", 1], "latent": ["9", 2], "vae": ["8", 0],
                                                            "control_video": ["6", 0], "window_frames": WINDOW,
                                                            "overlap_frames": overlap}}
    g["20"] = ksampler(("12", 0))
    g["20"]["inputs"].update(positive=["12", 1], negative=["12", 2], latent_image=["12", 3])
    g["21"] = {"class_type": "IASALongVAEDecode", "inputs": {"samples": ["20", 0], "vae": ["8", 0], "window": 32,
                                                             "overlap": 8, "key": "first"}}
    g["22"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "iasa_test/keyed"}}
    return finish(g, ("12", 0), ("20", 0), f"iasa_test/keyed_{int(with_sparse)}_{overlap}")


def test_keyed_windows_sample_each_window_as_a_clip_of_its_own_and_decode_the_whole_video(client, long_models):
    """65 frames in keyed windows of 33 sharing 8 or more: 3 windows (2 would share only 1), each 9 latent frames,
    sampled in one latent of 27 by stock KSampler, one model call per window and step, a sparse pose layout per
    window; the decode gives back the video's 65 frames."""
    from iasa.sampling.keyed_windows import KeyedWindowPlan

    plan = KeyedWindowPlan(PIXEL_FRAMES, WINDOW, 8)
    result = client.run(keyed_graph(with_sparse=True), timeout=900)
    assert result.status == "success", result.error
    f = next(f for f in saved_files(result.outputs) if f["filename"].endswith(".latent"))
    latent = load_safetensors(client.view(f["filename"], f.get("subfolder", ""), "output"))["latent_tensor"]
    assert latent.shape == (1, 16, plan.latent_total, SIZE // 8, SIZE // 8) == (1, 16, 27, 16, 16)
    stats = result.outputs["31"]["stats"][0]
    assert stats["LongVideoPatch"] == {"calls": STEPS, "windowed_calls": STEPS, "window_calls": STEPS * len(plan)}
    assert stats["SparseAttentionPatch"]["layouts_built"] == len(plan)
    assert "dense_fallback" not in stats["SparseAttentionPatch"]
    frames = [f for f in saved_files(result.outputs) if f["filename"].endswith(".png")]
    assert len(frames) == PIXEL_FRAMES


def test_keyed_windows_name_a_short_control_video(client, long_models):
    g = keyed_graph(with_sparse=False, overlap=4)
    g["6"]["inputs"]["pose"] = ["3", 0]                     # the one-frame reference pose: far too short
    result = client.run(g)
    assert result.status == "error" and result.error["node_id"] == "12"
    message = result.error["exception_message"]
    assert "control_video" in message and "frames" in message, message
    assert_server_still_serves(client)
