"""The demo picks the IASA-mini talking workflow only when both bundled weight files exist."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from iasa.harness.demo import (DEMO_INPUTS, MINI_V2_WORKFLOW, MINI_WEIGHTS, MINI_WORKFLOW, POSE_WORKFLOW,
                               choose_workflow)


def test_talking_workflow_needs_both_files_and_follows_the_teachers_reference_path(tmp_path, capsys):
    assert choose_workflow(tmp_path) == POSE_WORKFLOW
    out = capsys.readouterr().out
    assert "NOTE" in out and "missing" in out and "iasa_mini_teacher.safetensors" in out and "iasa_mini_vae" in out
    teacher, vae = (tmp_path / key / name for name, key in MINI_WEIGHTS.items())
    teacher.parent.mkdir()
    save_file({"head.modulation": torch.zeros(1, 2, 4)}, str(teacher))        # v1: reference as start image
    assert choose_workflow(tmp_path) == POSE_WORKFLOW
    assert "iasa_mini_vae" in capsys.readouterr().out
    vae.parent.mkdir()
    vae.write_bytes(b"x")
    assert choose_workflow(tmp_path) == MINI_WORKFLOW
    assert capsys.readouterr().out == ""
    save_file({"head.modulation": torch.zeros(1, 2, 4), "ref_conv.weight": torch.zeros(4, 16, 2, 2)}, str(teacher))
    assert choose_workflow(tmp_path) == MINI_V2_WORKFLOW                      # v2: ref_conv reference tokens
    teacher.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        choose_workflow(tmp_path)


@pytest.mark.parametrize("workflow", [MINI_WORKFLOW, MINI_V2_WORKFLOW], ids=["v1", "v2"])
def test_talking_workflow_reads_bundled_inputs_and_models(workflow):
    wf = json.loads(workflow.read_text())
    names = {p.name for p in DEMO_INPUTS}
    files = {v for n in wf.values() for k, v in n["inputs"].items()
             if k in ("audio", "image", "pose_file") and isinstance(v, str)}
    assert len(files) == 3
    assert files <= names and all(p.is_file() for p in DEMO_INPUTS)
    models = {v for n in wf.values() for k, v in n["inputs"].items() if k in ("unet_name", "vae_name")}
    assert models == set(MINI_WEIGHTS)
