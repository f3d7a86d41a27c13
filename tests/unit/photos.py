"""Real photos that ship inside installed packages (no downloads), for pose tests."""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
from PIL import Image


def guitar_player() -> np.ndarray:
    """The guitar player of ComfyUI's Wan S2V template (both hands visible), RGB uint8; skips if absent."""
    spec = importlib.util.find_spec("comfyui_workflow_templates_media_video")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("comfyui_workflow_templates_media_video is not installed: no photo with two visible hands")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "templates" / "video_wan2_2_14B_s2v-1.webp"
    if not path.exists():
        pytest.skip(f"{path} is missing: no photo with two visible hands")
    return np.array(Image.open(path).convert("RGB"))
