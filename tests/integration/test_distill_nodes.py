"""Distillation through the real server, tiny random models (a 1-block IASA-mini-layout teacher, a width-8 VAE,
two 9-frame 32x32 procedural clips): IASA Student Sampler equals SamplerCustom + IASA Student Sigmas + lcm and
works behind IASA Sparse Attention; IASA Distill Student writes a student (and LoRA) that stock loaders list
and load, reports progress, stops on /interrupt leaving a checkpoint, resumes under the same name; bad
inputs give clear errors and the server runs the next prompt."""
from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import numpy as np
import pytest
import torch

from .conftest import TINY_WAN, rejection_text
from .test_bad_input import assert_server_still_serves
from .test_iasa_mini import random_wan

TEACHER, VAE, STUDENT = "iasa_test_distill_teacher.safetensors", "iasa_test_distill_vae.safetensors", \
    "iasa_test_student.safetensors"
SHARDS, EMPTY = "iasa_test_shards", "iasa_test_empty_shards"


def _perturbed_teacher(seed: int):
    return random_wan(seed, ffn_dim=128)


def write_shards(folder, n_clips: int = 2, frames: int = 9, size: int = 32) -> None:
    from iasa.pose.keypoints import PoseSequence
    from iasa.pose.regions import sequence_masks
    from iasa.training.procedural import make_clip
    from iasa.training.synth.shards import write_shard

    clips = []
    for i in range(n_clips):
        c = make_clip(i, frames, size)
        c.update(audio=np.zeros(frames * 640, np.int16), masks=sequence_masks(PoseSequence(c["keypoints"], size, size)))
        clips.append(c)
    write_shard(folder / "shard-000.safetensors", clips)


@pytest.fixture(scope="module")
def distill_env(server):
    from iasa.training.distill.schedule import StudentSchedule
    from iasa.training.tiny_wan import VAEConfig, build_vae, save_model

    models = server.base / "models"
    for sub in ("diffusion_models", "vae", "loras"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    save_model(_perturbed_teacher(0), models / "diffusion_models" / TEACHER,
               {"name": "test teacher", "sampling": {"shift": 3.0}}, dtype=torch.float32)
    save_model(build_vae(VAEConfig(dim=8), seed=1), models / "vae" / VAE, {"name": "test VAE"}, dtype=torch.float32)
    card = {"name": "test student", "student": StudentSchedule((1000.0, 500.0), 3.0).to_card()}
    save_model(_perturbed_teacher(5), models / "diffusion_models" / STUDENT, card, dtype=torch.bfloat16)
    (server.base / "input" / SHARDS).mkdir(exist_ok=True)
    write_shards(server.base / "input" / SHARDS)
    (server.base / "input" / EMPTY).mkdir(exist_ok=True)
    return server.base


def _conditioning(vae_node: str = "2") -> dict:
    """Nodes 3-5: zero text, the demo speaker as ref_image, a 5-frame 32x32 Wan22FunControlToVideo latent."""
    return {
        "3": {"class_type": "IASAEmptyConditioning", "inputs": {"tokens": 8, "width": 4096}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "synth_speaker.png"}},
        "5": {"class_type": "Wan22FunControlToVideo",
              "inputs": {"positive": ["3", 0], "negative": ["3", 0], "vae": [vae_node, 0], "width": 32, "height": 32,
                         "length": 5, "batch_size": 1, "ref_image": ["4", 0]}},
    }


def _saved_latent(base, outputs: dict, node: str) -> torch.Tensor:
    from safetensors.torch import load_file

    f = outputs[node]["latents"][0]
    return load_file(str(base / "output" / f["subfolder"] / f["filename"]))["latent_tensor"]


def _save(node: str, prefix: str) -> dict:
    return {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": f"iasa_test/{prefix}"}}


def _distill(name: str, iterations: int, minutes: float = 0.0, teacher: list | None = None, data: str = SHARDS,
             **over) -> dict:
    inputs = {"teacher": teacher or ["1", 0], "vae": ["2", 0], "data": data, "student_steps": 2,
              "iterations": iterations, "minutes": minutes, "shift": 3.0, "guidance": 3.0, "fake_updates": 1,
              "learning_rate": 1e-3, "frames": 5, "batch": 2, "face": 1.0, "lips": 1.0, "hands": 1.0, "arms": 0.5,
              "torso": 0.5, "region_weight": 1.0, "feature_net": "none", "output_name": name, "save_lora": False,
              "lora_rank": 128, "seed": 0, **over}
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": TEACHER, "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "10": {"class_type": "IASADistillStudent", "inputs": inputs},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 1]}},
    }


# ------------------------------------------------------------------------------------------ student sampling
def test_student_sampler_equals_sampler_custom_with_student_sigmas_and_runs_behind_sparse_attention(client, distill_env):
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": STUDENT, "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        **_conditioning(),
        "6": {"class_type": "IASAStudentSampler", "inputs": {"model": ["1", 0], "positive": ["5", 0], "latent": ["5", 2],
                                                             "seed": 7, "steps": 0}},
        "7": {"class_type": "IASAStudentSigmas", "inputs": {"model": ["1", 0], "steps": 0}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "lcm"}},
        "9": {"class_type": "SamplerCustom", "inputs": {"model": ["1", 0], "add_noise": True, "noise_seed": 7, "cfg": 1.0,
                                                        "positive": ["5", 0], "negative": ["5", 1], "sampler": ["8", 0],
                                                        "sigmas": ["7", 0], "latent_image": ["5", 2]}},
        "12": {"class_type": "IASALoadPose", "inputs": {"pose_file": "synth_speaker_pose.json", "canvas_width": 0,
                                                        "canvas_height": 0}},
        "13": {"class_type": "IASASparseAttention",
               "inputs": {"model": ["1", 0], "pose": ["12", 0], "top_k": 2, "direction": "causal", "face": True,
                          "hands": True, "arms": True, "torso": True, "block_size": 16, "dense_blocks": 0,
                          "dense_steps": 0, "kernel": "sdpa", "conditioning": ["15", 0]}},
        # sparse attention needs a grid where blocks of 16 tokens are cheaper than dense: 8x8 tokens per frame
        "15": {**_conditioning()["5"], "inputs": {**_conditioning()["5"]["inputs"], "width": 128, "height": 128,
                                                   "length": 9}},
        "14": {"class_type": "IASAStudentSampler", "inputs": {"model": ["13", 0], "positive": ["15", 0],
                                                              "latent": ["15", 2], "seed": 7, "steps": 1}},
        "16": {"class_type": "IASAStudentSampler", "inputs": {"model": ["1", 0], "positive": ["15", 0],
                                                              "latent": ["15", 2], "seed": 7, "steps": 1}},
        "20": _save("6", "student_sampler"), "21": _save("9", "sampler_custom"), "22": _save("14", "student_sparse"),
        "23": _save("16", "student_dense"),
    }
    result = client.run(prompt)
    assert result.status == "success", result.error.get("exception_message", result.error)
    own, stock = _saved_latent(distill_env, result.outputs, "20"), _saved_latent(distill_env, result.outputs, "21")
    assert own.shape == (1, 16, 2, 4, 4) and torch.isfinite(own).all() and float(own.abs().mean()) > 0
    assert torch.equal(own, stock)
    sparse, dense = _saved_latent(distill_env, result.outputs, "22"), _saved_latent(distill_env, result.outputs, "23")
    assert sparse.shape == dense.shape == (1, 16, 3, 16, 16) and torch.isfinite(sparse).all()
    assert not torch.allclose(sparse, dense, atol=1e-4)  # the pose mask changed the student's attention
    assert {d["max"] for d in result.progress("6")} == {2} and {d["max"] for d in result.progress("14")} == {1}


def test_student_nodes_refuse_a_model_that_is_not_a_student(client, distill_env):
    prompt = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": TEACHER, "weight_dtype": "default"}},
              "2": {"class_type": "IASAStudentSigmas", "inputs": {"model": ["1", 0], "steps": 0}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    result = client.run(prompt)
    assert result.status == "error" and result.error["node_id"] == "2"
    msg = result.error["exception_message"]
    assert "model: not an IASA student" in msg and "IASA Distill Student" in msg, msg
    assert_server_still_serves(client)


# ------------------------------------------------------------------------------------------ distillation
def test_distill_writes_a_student_that_stock_loaders_list_and_load(client, distill_env):
    result = client.run(_distill("iasa_test_distilled", iterations=2, save_lora=True))
    assert result.status == "success", result.error
    progress = result.progress("10")
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 2
    assert result.outputs["11"]["images"]                                   # the loss plot
    unets = client.get_json("/object_info/UNETLoader")["UNETLoader"]["input"]["required"]["unet_name"][0]
    loras = client.get_json("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]
    assert "iasa_test_distilled.safetensors" in unets and "iasa_test_distilled_lora.safetensors" in loras
    card = json.loads((distill_env / "models" / "diffusion_models" / "iasa_test_distilled.json").read_text())
    assert card["trained_steps"] == 2 and card["student"]["timesteps"] == [1000.0, 500.0]
    assert card["teacher"]["file"] == TEACHER and len(card["teacher"]["sha256"]) == 64
    assert (distill_env / "output" / "iasa_distill" / "iasa_test_distilled" / "distill_loss.png").is_file()

    sample = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "iasa_test_distilled.safetensors",
                                                     "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        **_conditioning(),
        "6": {"class_type": "IASAStudentSampler", "inputs": {"model": ["1", 0], "positive": ["5", 0],
                                                             "latent": ["5", 2], "seed": 1, "steps": 0}},
        "7": {"class_type": "UNETLoader", "inputs": {"unet_name": TEACHER, "weight_dtype": "default"}},
        "8": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["7", 0], "strength_model": 1.0,
                                                              "lora_name": "iasa_test_distilled_lora.safetensors"}},
        "9": {"class_type": "IASAStudentSampler", "inputs": {"model": ["8", 0], "positive": ["5", 0],
                                                             "latent": ["5", 2], "seed": 1, "steps": 0}},
        "20": _save("6", "distilled"), "21": _save("9", "distilled_lora"),
    }
    result = client.run(sample)
    assert result.status == "success", result.error
    full, lora = _saved_latent(distill_env, result.outputs, "20"), _saved_latent(distill_env, result.outputs, "21")
    assert torch.isfinite(full).all() and torch.allclose(full, lora, atol=2e-2), float((full - lora).abs().max())


async def _run_and_interrupt(url: str, prompt: dict, node: str, after: int, timeout: float = 600) -> list:
    """Queue ``prompt``, POST /interrupt once ``node`` reported ``after`` progress updates; the events."""
    client_id, events = uuid.uuid4().hex, []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                assert r.status == 200, await r.text()
                prompt_id = (await r.json())["prompt_id"]

            async def follow():
                seen = 0
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    m = json.loads(msg.data)
                    if m.get("data", {}).get("prompt_id") not in (None, prompt_id):
                        continue
                    events.append((m["type"], m["data"]))
                    if m["type"] == "progress" and m["data"].get("node") == node:
                        seen += 1
                        if seen == after:
                            await session.post(f"{url}/interrupt")
                    if m["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                        return

            await asyncio.wait_for(follow(), timeout)
    return events


def test_distill_stops_on_interrupt_with_a_checkpoint_and_the_same_name_resumes(client, server, distill_env):
    name = "iasa_test_interrupted"
    events = asyncio.run(_run_and_interrupt(server.url, _distill(name, iterations=10_000, minutes=10.0), "10", after=1))
    kinds = [k for k, _ in events]
    assert "execution_interrupted" in kinds and "execution_error" not in kinds, events[-3:]
    latest = distill_env / "output" / "iasa_distill" / name / "checkpoints" / "latest.json"
    assert latest.is_file()
    step = json.loads(latest.read_text())["step"]
    assert step >= 1
    assert not (distill_env / "models" / "diffusion_models" / f"{name}.safetensors").exists()
    result = client.run(_distill(name, iterations=step + 1))                  # same name: resumes
    assert result.status == "success", result.error
    card = json.loads((distill_env / "models" / "diffusion_models" / f"{name}.json").read_text())
    assert card["trained_steps"] == step + 1
    log = (distill_env / "output" / "iasa_distill" / name / "distill_loss.csv").read_text().splitlines()
    assert len(log) == step + 2                                                # header + every step once


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("case, words", [
    ("not_wan", ["teacher", "WanModel", "UNETLoader"]),
    ("t2v_teacher", ["teacher", "in_dim 16", "Fun-Control", "ref_conv"]),
    ("empty_shards", ["data", EMPTY, "no training shards", "IASA Build Dataset"]),
])
def test_distill_bad_inputs_give_clear_node_errors(client, distill_env, case, words):
    if case == "not_wan":
        prompt = _distill("iasa_test_bad", 1, teacher=["30", 0])
        prompt["30"] = {"class_type": "IASATestNotWanModel", "inputs": {}}
    elif case == "t2v_teacher":
        prompt = _distill("iasa_test_bad", 1, teacher=["30", 0])
        prompt["30"] = {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_WAN, "weight_dtype": "default"}}
    else:
        prompt = _distill("iasa_test_bad", 1, data=EMPTY)
    result = client.run(prompt)
    assert result.status == "error" and result.error["node_id"] == "10", result.error
    msg = result.error["exception_message"]
    for w in words:
        assert w in msg, msg
    assert_server_still_serves(client)


@pytest.mark.parametrize("name", ["../escape", "sub/student", "/abs/student", "a\\b"])
def test_distill_refuses_an_output_name_with_a_path(client, distill_env, name):
    text = rejection_text(client, _distill(name, 1), node="10")
    assert "output_name" in text and "path" in text and "plain name" in text, text
    assert_server_still_serves(client)


def test_distill_refuses_a_data_folder_outside_the_input_folder(client, distill_env):
    text = rejection_text(client, _distill("iasa_test_bad", 1, data="../models"), node="10")
    assert "data" in text and "outside" in text and "refused" in text, text
