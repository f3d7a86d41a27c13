"""A real ComfyUI server (headless, CPU) with the pack installed, shared by the integration tests."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from iasa.harness.client import ComfyClient
from iasa.harness.demo import DEMO_INPUTS
from iasa.harness.server import REPO, ComfyServer, prepare_base

API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))


def write_bad_inputs(input_dir: pathlib.Path) -> None:
    """Files for the bad-input tests, made here so nothing large is committed."""
    sr = 16000
    sf.write(input_dir / "silence.wav", np.zeros(2 * sr, np.float32), sr)
    t = np.arange(int(0.1 * sr)) / sr
    sf.write(input_dir / "too_short.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
    (input_dir / "not_audio.wav").write_text("this is a text file, not a RIFF/WAVE file\n")
    (input_dir / "corrupt.flac").write_bytes(b"fLaC" + np.random.default_rng(0).bytes(4096))
    Image.new("RGB", (320, 240), (40, 90, 140)).save(input_dir / "no_person.png")


TINY_WAN = "iasa_test_tiny_wan.safetensors"


def write_tiny_wan(path: pathlib.Path) -> None:
    """A 3-layer Wan (dim 256, 2 heads of 128, t2v) with random weights, in the layout UNETLoader reads.

    Every weight is perturbed, the zero-initialised output head included, so that attention changes the
    result (otherwise sparse and dense would agree trivially)."""
    import torch

    from iasa.training.tiny_wan import TeacherConfig, build_teacher, save_model

    model = build_teacher(TeacherConfig(dim=256, num_layers=3, ffn_dim=512, in_dim=16), seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    save_model(model, path, {"purpose": "integration tests"}, dtype=torch.float32)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_home")
    prepare_base(base, DEMO_INPUTS)
    write_bad_inputs(base / "input")
    (base / "custom_nodes" / "iasa_testing_pack").symlink_to(pathlib.Path(__file__).parent / "testing_pack")
    (base / "models" / "diffusion_models").mkdir(parents=True, exist_ok=True)
    write_tiny_wan(base / "models" / "diffusion_models" / TINY_WAN)
    (base / "secret.wav").write_bytes((base / "input" / "silence.wav").read_bytes())  # outside input/
    with ComfyServer(base) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server) -> ComfyClient:
    return ComfyClient(server.url)


@pytest.fixture(scope="session")
def object_info(client) -> dict:
    return client.get_json("/object_info")


def load_api_workflow(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / name).read_text())


def speech_pose_nodes(seed: int) -> dict:
    """API nodes 1-5: 1 s of the bundled speech -> features; the astronaut photo -> pose -> audio-driven pose."""
    return {
        "1": {"class_type": "IASALoadAudio", "inputs": {"audio": "speech.wav", "sample_rate": 0, "mono": True,
                                                        "start": 0.0, "duration": 1.0}},
        "2": {"class_type": "IASAAudioFeatures", "inputs": {"audio": ["1", 0], "fps": 25.0}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "reference.jpg"}},
        "4": {"class_type": "IASAExtractPose", "inputs": {"image": ["3", 0], "smoothing": 0.0, "no_person": "error"}},
        "5": {"class_type": "IASAAudioToPose", "inputs": {"reference_pose": ["4", 0], "features": ["2", 0],
                                                          "seed": seed, "mouth": 1.0, "head": 1.0, "gestures": 1.0,
                                                          "blinks": True, "driving_mode": "loop"}},
    }


def rejection_text(client, prompt: dict, node: str = "1") -> str:
    """Queue a prompt that validation must refuse; the text of ``node``'s validation errors."""
    from iasa.harness.client import PromptRejected

    with pytest.raises(PromptRejected) as exc:
        client.queue(prompt)
    errors = exc.value.body["node_errors"][node]["errors"]
    return " ".join(e.get("details", "") + " " + e.get("message", "") for e in errors)
