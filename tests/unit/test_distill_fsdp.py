"""FSDP2 (``--shard fsdp2``) in the distillation on 2 gloo CPU ranks: the GPU recipe with SHARD=fsdp2 equals one
process on the global batch (same tolerance as the DDP test) and writes the same checkpoint and export formats;
an interrupted FSDP2 run resumed from its (full, unsharded) checkpoint equals an uninterrupted FSDP2 run; a
model without transformer blocks is refused by name."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iasa.training import distributed as D
from iasa.training.sharding import shard_blocks
from iasa.training.tiny_wan import read_weights
from .test_distill_wan import ROOT, _args, _ckpt, assert_same_updates, files, rerun_single, run_recipe  # noqa: F401
from .test_training_runs import _simulate_kill_after
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)


def test_fsdp2_recipe_on_two_gloo_ranks_equals_one_process_on_the_global_batch(tmp_path, files):
    work = tmp_path / "w"
    run_recipe(files, work, SHARD="fsdp2")
    d = work / "student"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["shard"] == "fsdp2" and summary["ranks_in_sync"] is None
    assert "2 rank(s), FSDP2-sharded" in (work / "distill.log").read_text()
    weights, card = read_weights(d / "iasa_mini_student.safetensors")
    assert "--shard fsdp2" in card["command"] and card["trained_steps"] == 2 and card["eval"]["windows"] == 1
    assert (d / "iasa_mini_student_lora.safetensors").is_file()

    single = rerun_single(card, tmp_path / "single")        # world of one: --shard fsdp2 shards nothing
    fsdp, fsdp_state = _ckpt(d)
    assert_same_updates(single, fsdp)                       # full (unsharded) tensors, the same names
    for name in ("optim", "optim_fake"):                    # Adam moments under the plain integer indices
        for k, v in single[name].items():
            assert fsdp[name][k].shape == v.shape and fsdp[name][k].dtype == v.dtype, (name, k)
    _, single_state = _ckpt(tmp_path / "single")
    for key in ("optimizer", "extra_optimizers"):
        assert fsdp_state[key] == single_state[key], key
    ref, _ = read_weights(tmp_path / "single" / "iasa_mini_student.safetensors")
    assert set(ref) == set(weights)                         # the export: the EMA student, whole
    for k, v in ref.items():
        assert weights[k].shape == v.shape and weights[k].dtype == v.dtype, k
        assert torch.allclose(weights[k], v, atol=1e-3), k


def _torchrun(out: Path, files, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "iasa_cli.py",
           "training.distill.train", *_args(out, files, "--shard", "fsdp2", *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "2 rank(s), FSDP2-sharded" in res.stderr, res.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_fsdp2_resume_equals_an_uninterrupted_fsdp2_run(tmp_path, files):
    full = _torchrun(tmp_path / "a", files)
    part = _torchrun(tmp_path / "b", files, "--stop-after", "3")
    assert part["stop_reason"] == "stop_after" and "weights" not in part
    _simulate_kill_after(tmp_path / "b", 2)                 # resume from the step-2 checkpoint
    resumed = _torchrun(tmp_path / "b", files)
    assert resumed["step"] == full["step"] == 4 and resumed["stop_reason"] == "steps" and resumed["shard"] == "fsdp2"
    (a, _), (b, _) = _ckpt(tmp_path / "a"), _ckpt(tmp_path / "b")
    assert set(a) == {"model", "optim", "optim_fake", "rng"}
    for name in ("model", "optim", "optim_fake"):
        assert set(a[name]) == set(b[name]) and all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    wa, _ = read_weights(full["weights"])
    wb, _ = read_weights(resumed["weights"])
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fsdp2_refuses_a_model_without_blocks_and_a_world_of_one_shards_nothing():
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no `blocks` ModuleList; use --shard ddp"):
        shard_blocks(lin, D.DistInfo(world_size=2))
    assert shard_blocks(lin, D.DistInfo()) is lin and type(lin) is torch.nn.Linear
