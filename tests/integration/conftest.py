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


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_home")
    prepare_base(base, DEMO_INPUTS)
    write_bad_inputs(base / "input")
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
