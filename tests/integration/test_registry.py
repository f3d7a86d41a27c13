"""Registry-ready: pyproject's [tool.comfy] as ComfyUI's own parser reads it, the LICENSE, a description on every
node, and the README's "use it in your own ComfyUI" path (the pack copied into a separate ComfyUI tree's
custom_nodes, ComfyUI started from that tree with its own folders, COMFYUI_DIR pointing at it)."""
from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request

import pytest
from packaging.requirements import Requirement
from PIL import Image

from iasa.harness.server import PACK_LINK_NAME, ComfyServer, comfyui_dir

from .conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RAW_PREFIX = "https://raw.githubusercontent.com/iasa-comfyui/iasa-comfyui/main/"


def test_tool_comfy_is_complete_as_comfyui_parses_it():
    comfy = PYPROJECT["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert str(comfy.get(key, "")).strip(), f"[tool.comfy] {key} is empty"
    assert comfy["Icon"].startswith(RAW_PREFIX), "Icon must be a URL of a file in this repository"
    with Image.open(REPO / comfy["Icon"].removeprefix(RAW_PREFIX)) as icon:
        assert icon.format == "PNG" and icon.size[0] == icon.size[1] >= 128
    assert PYPROJECT["project"]["license"] == {"file": "LICENSE"}
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]
    sys.path.insert(0, str(comfyui_dir()))
    try:
        from comfy_config import config_parser
    finally:
        sys.path.pop(0)
    parsed = config_parser.extract_node_configuration(str(REPO))
    assert parsed is not None, "ComfyUI's config_parser could not read pyproject.toml"
    assert parsed.project.name == PYPROJECT["project"]["name"]
    assert parsed.tool_comfy.publisher_id == comfy["PublisherId"]
    assert parsed.tool_comfy.display_name == comfy["DisplayName"]
    assert parsed.tool_comfy.icon == comfy["Icon"]
    assert parsed.project.license.file == "LICENSE"


def test_every_pack_node_has_a_description(object_info):
    pack = {k: v for k, v in object_info.items() if v["python_module"] == f"custom_nodes.{PACK_LINK_NAME}"}
    assert pack
    for node_id, info in pack.items():
        assert len(info.get("description", "").strip()) > 40, f"{node_id}: no description for ComfyUI's node help"


def _pack_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                         check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def test_requirements_txt_is_satisfied_by_the_test_venv():
    """README step 2 (pip install -r requirements.txt) is what the venv has, so the copy below runs on it."""
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker and not req.marker.evaluate():
            continue
        version = importlib.metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), f"{req.name} {version} does not satisfy {line}"


def test_readme_install_into_your_own_comfyui(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    assert re.search(r"clone it into `ComfyUI/custom_nodes/`.*pip install -r requirements.txt", readme, re.S)
    tree = tmp_path / "ComfyUI"
    shutil.copytree(comfyui_dir(), tree, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "extra_model_paths.yaml*", "user", "output"))
    clone = tree / "custom_nodes" / "iasa-comfyui"     # the repository's name, as `git clone` makes it
    for rel in _pack_files():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, clone / rel)
    monkeypatch.setenv("COMFYUI_DIR", str(tree))
    with ComfyServer(tree, own_tree=True) as srv:
        def get(path):
            with urllib.request.urlopen(srv.url + path, timeout=60) as r:
                return json.loads(r.read())
        info = get("/object_info")
        ours = {k for k, v in info.items() if v["python_module"] == "custom_nodes.iasa-comfyui"}
        assert {"IASALoadAudio", "IASAExtractPose", "IASASparseAttention"} <= ours, sorted(ours)
        templates = get("/api/workflow_templates")
        assert sorted(templates.get("iasa-comfyui", [])) == sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
        assert "/extensions/iasa-comfyui/iasa_load_audio.js" in get("/extensions")
        unets = info["UNETLoader"]["input"]["required"]["unet_name"][0]
        assert "iasa_mini_teacher.safetensors" in unets, "bundled IASA-mini not listed by the stock UNETLoader"
        log = srv.log_tail(400)
    assert "IMPORT FAILED" not in log and "Traceback" not in log, log
