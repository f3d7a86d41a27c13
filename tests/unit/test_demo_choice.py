"""The demo picks the IASA-mini talking workflow only when both bundled weight files exist."""
from __future__ import annotations

import json

from iasa.harness.demo import DEMO_INPUTS, MINI_WEIGHTS, MINI_WORKFLOW, POSE_WORKFLOW, choose_workflow


def test_talking_workflow_needs_both_files(tmp_path, capsys):
    assert choose_workflow(tmp_path) == POSE_WORKFLOW
    out = capsys.readouterr().out
    assert "NOTE" in out and "missing" in out and "iasa_mini_teacher.safetensors" in out and "iasa_mini_vae" in out
    teacher, vae = (tmp_path / key / name for name, key in MINI_WEIGHTS.items())
    teacher.parent.mkdir()
    teacher.write_bytes(b"x")
    assert choose_workflow(tmp_path) == POSE_WORKFLOW
    assert "iasa_mini_vae" in capsys.readouterr().out
    vae.parent.mkdir()
    vae.write_bytes(b"x")
    assert choose_workflow(tmp_path) == MINI_WORKFLOW
    assert capsys.readouterr().out == ""


def test_talking_workflow_reads_bundled_inputs_and_models():
    wf = json.loads(MINI_WORKFLOW.read_text())
    names = {p.name for p in DEMO_INPUTS}
    files = {v for n in wf.values() for k, v in n["inputs"].items()
             if k in ("audio", "image", "pose_file") and isinstance(v, str)}
    assert len(files) == 3
    assert files <= names and all(p.is_file() for p in DEMO_INPUTS)
    models = {v for n in wf.values() for k, v in n["inputs"].items() if k in ("unet_name", "vae_name")}
    assert models == set(MINI_WEIGHTS)
