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
