"""IASA-mini trainers end to end on CPU: loss goes down on a tiny overfit batch, an interrupted run
resumed from its checkpoint equals an uninterrupted one, 2-process gloo DDP equals one process on the
same global batch. Tiny sizes (32 px procedural clips, width-8 VAE, one-block DiT)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from iasa.training import distributed as D
from iasa.training.logs import LossLog
from iasa.training.runner import RunConfig, Runner, make_optimizer
from iasa.training.teacher_data import LatentSet
from iasa.training.tiny_wan import TeacherConfig, VAEConfig, build_teacher, build_vae, save_model
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)

ROOT = Path(__file__).resolve().parents[2]
DATA = "procedural:3:9:32"


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vae") / "vae.safetensors"
    return save_model(build_vae(VAEConfig(dim=8), seed=1), path, {"name": "untrained test VAE"}, dtype=torch.float32)


def _record(step_fn, losses: list):
    def wrapped(step):
        loss, metrics = step_fn(step)
        losses.append(float(loss.detach()))
        return loss, metrics
    return wrapped


def _run_cfg(tmp: Path, steps: int, lr: float) -> RunConfig:
    return RunConfig(out=str(tmp), steps=steps, lr=lr, warmup=0, min_lr_frac=1.0, checkpoint_every=0,
                     log_every=10 ** 6, resume=False)


def test_teacher_loss_decreases_on_a_tiny_overfit_batch(tmp_path):
    from iasa.training.teacher_train import TeacherStep

    g = torch.Generator().manual_seed(0)
    ctrl = torch.randn(1, 16, 2, 4, 4, generator=g)
    labels = torch.zeros(1, 2, 2, 2, dtype=torch.uint8)
    labels[:, :, 0, 0] = 1                                       # one face token per frame
    lat = LatentSet(x0=torch.tanh(2 * ctrl.flip(1)), control=ctrl, ref_random=torch.zeros(1, 16, 1, 4, 4),
                    labels=labels, frame_select=torch.eye(2, dtype=torch.bool)[None], ids=["a"])
    args = types.SimpleNamespace(batch=8, p_uncond=0.0, ref_random_prob=0.0, shift=3.0, context_tokens=1, amp="none",
                                 sparse_prob=0.5)
    info = D.DistInfo()
    model = build_teacher(TeacherConfig(dim=128, num_layers=1, ffn_dim=256), seed=0)
    cfg = _run_cfg(tmp_path, 40, 2e-3)
    gen = torch.Generator().manual_seed(0)
    runner = Runner(cfg, info, model, model, make_optimizer(model.parameters(), cfg, info.device), {"data": gen}, "t")
    losses: list[float] = []
    runner.run(_record(TeacherStep(model, lat, args, info, gen), losses))
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.6 * first, (first, last)


def test_vae_loss_decreases_on_a_tiny_overfit_batch(tmp_path):
    from iasa.training.vae_train import AutoEncoder, recon_losses
    from .test_training import _frames

    x = _frames(1, 5, 16)
    vae = build_vae(VAEConfig(dim=8), seed=0)
    ae = AutoEncoder(vae)
    cfg = _run_cfg(tmp_path, 30, 3e-3)
    info = D.DistInfo()

    def step_fn(step):
        rec, _, _ = ae(x)
        loss = recon_losses(rec, x)["l1"]
        return loss, {"loss": loss.detach()}

    runner = Runner(cfg, info, vae, ae, make_optimizer(vae.parameters(), cfg, info.device), {}, "v")
    losses: list[float] = []
    runner.run(_record(step_fn, losses))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    rows = runner.losslog.rows()
    assert rows and rows[-1]["step"] == 30 and (tmp_path / "v_loss.png").is_file()


def _vae_args(out: Path, *extra: str) -> list[str]:
    return ["--data", DATA, "--out", str(out), "--dim", "8", "--frames", "5", "--crop", "16", "--batch", "2",
            "--steps", "6", "--log-every", "1", "--checkpoint-every", "2", "--eval-clips", "1", "--eval-frames", "5",
            "--calib-clips", "2", "--device", "cpu", *extra]


def _ckpt_model(out: Path) -> dict[str, torch.Tensor]:
    from iasa.training.checkpoint import CheckpointManager

    files, state = CheckpointManager.load(CheckpointManager(out / "checkpoints").latest())
    return files["model"], state


def _simulate_kill_after(out: Path, step: int) -> None:
    """Keep only the checkpoint of ``step`` (as if the process died before writing a later one)."""
    import shutil

    ck = out / "checkpoints"
    for p in ck.glob("ckpt-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    (ck / "latest.json").write_text(json.dumps({"path": f"ckpt-{step:08d}", "step": step}))


def test_vae_resume_equals_uninterrupted_run(tmp_path):
    from iasa.training import vae_train

    full = vae_train.main(_vae_args(tmp_path / "a"))
    part = vae_train.main(_vae_args(tmp_path / "b", "--stop-after", "3"))
    assert part["stop_reason"] == "stop_after" and part["step"] == 3 and "weights" not in part
    _simulate_kill_after(tmp_path / "b", 2)
    resumed = vae_train.main(_vae_args(tmp_path / "b"))
    assert resumed["step"] == full["step"] == 6
    a, sa = _ckpt_model(tmp_path / "a")
    b, sb = _ckpt_model(tmp_path / "b")
    assert sa["step"] == sb["step"] == 6
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["heldout_psnr_fp32"] == full["heldout_psnr_fp32"]
    assert [r["step"] for r in LossLog(tmp_path / "b", "vae_loss").rows()] == list(range(1, 7))
    for name in ("vae_loss.png", "vae_loss.json", "iasa_mini_vae.safetensors", "iasa_mini_vae.json", "summary.json"):
        assert (tmp_path / "b" / name).is_file(), name


def test_vae_decoder_fine_tune_from_exported_weights_keeps_the_encoder(tmp_path, vae_file):
    """--init + --train-part decoder: the encoder side (hence the latents a teacher was trained on) is
    bit-identical, the decoder moved, the card says where the weights came from."""
    from iasa.training import vae_train
    from iasa.training.tiny_wan import file_sha256, read_weights

    vae_train.main(_vae_args(tmp_path / "ft", "--init", str(vae_file), "--train-part", "decoder",
                             "--save-dtype", "fp32"))
    before, _ = read_weights(vae_file)
    after, card = read_weights(tmp_path / "ft" / "iasa_mini_vae.safetensors")
    enc = [k for k in before if k.startswith(("encoder.", "conv1."))]
    dec = [k for k in before if k.startswith(("decoder.", "conv2."))]
    assert enc and dec and len(enc) + len(dec) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in dec)
    assert card["init"]["sha256"] == file_sha256(vae_file) and card["train_part"] == "decoder"


def test_init_from_weights_of_another_size_is_refused_by_name(tmp_path, vae_file):
    from iasa.training import vae_train
    from iasa.training.tiny_wan import ModelFileError

    with pytest.raises(ModelFileError, match=r"--init .*vae.safetensors.*width"):
        vae_train.main(_vae_args(tmp_path / "x", "--dim", "16", "--init", str(vae_file)))


def _teacher_args(out: Path, vae: Path, cache: Path, *extra: str) -> list[str]:
    return ["--data", DATA, "--vae", str(vae), "--out", str(out), "--dim", "128", "--layers", "1", "--ffn", "128",
            "--frames", "5", "--batch", "4", "--steps", "5", "--log-every", "1", "--checkpoint-every", "2",
            "--p-uncond", "0.5", "--ref-random-prob", "0.5", "--latents-cache", str(cache), "--eval-windows", "1",
            "--eval-steps", "2", "--render-workers", "1", "--device", "cpu", *extra]


def test_teacher_resume_equals_uninterrupted_run(tmp_path, vae_file):
    from iasa.training import teacher_train

    cache = tmp_path / "latents.safetensors"
    full = teacher_train.main(_teacher_args(tmp_path / "a", vae_file, cache))
    teacher_train.main(_teacher_args(tmp_path / "b", vae_file, cache, "--stop-after", "3"))
    _simulate_kill_after(tmp_path / "b", 2)
    resumed = teacher_train.main(_teacher_args(tmp_path / "b", vae_file, cache))
    a, _ = _ckpt_model(tmp_path / "a")
    b, _ = _ckpt_model(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["heldout_sample_psnr"] == full["heldout_sample_psnr"]
    assert (tmp_path / "b" / "iasa_mini_teacher.safetensors").is_file() and (tmp_path / "b" / "preview.png").is_file()
    card = json.loads((tmp_path / "b" / "iasa_mini_teacher.json").read_text())
    assert card["trained_steps"] == 5                       # steps run (3 + 2 after the resume), from the runner
    assert {"heldout_sample_psnr", "train_sample_psnr"} <= set(card["eval"])   # side by side


def test_teacher_fine_tune_scores_its_init_on_the_same_windows_and_noise(tmp_path, vae_file):
    """--init: the card holds the starting weights' held-out sample PSNR beside the new one, measured as the run
    that made those weights measured itself (same windows, same noise)."""
    from iasa.training import teacher_train
    from iasa.training.tiny_wan import file_sha256

    cache = tmp_path / "latents.safetensors"
    first = teacher_train.main(_teacher_args(tmp_path / "a", vae_file, cache, "--save-dtype", "fp32"))
    start = tmp_path / "a" / "iasa_mini_teacher.safetensors"
    tuned = teacher_train.main(_teacher_args(tmp_path / "b", vae_file, cache, "--init", str(start), "--steps", "2",
                                             "--warmup", "0"))
    assert tuned["init_heldout_sample_psnr"] == pytest.approx(first["heldout_sample_psnr"], abs=1e-3)
    assert tuned["heldout_sample_psnr"] != tuned["init_heldout_sample_psnr"]   # 2 steps at lr 4e-4 change it
    card = json.loads((tmp_path / "b" / "iasa_mini_teacher.json").read_text())
    assert card["eval"]["init_heldout_sample_psnr"] == tuned["init_heldout_sample_psnr"]
    assert card["init"]["sha256"] == file_sha256(start) and card["trained_steps"] == 2


def test_two_process_gloo_ddp_equals_one_process_on_the_global_batch(tmp_path, vae_file):
    """torchrun, 2 CPU ranks x 2 windows == 1 process x 4 windows (gradients averaged), ranks in sync."""
    from iasa.training import teacher_train

    cache = tmp_path / "latents.safetensors"
    common = ["--eval-windows", "0", "--steps", "3"]
    teacher_train.main(_teacher_args(tmp_path / "single", vae_file, cache, *common))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "iasa_cli.py"), "training.teacher_train",
           *_teacher_args(tmp_path / "ddp", vae_file, cache, *common)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    single, _ = _ckpt_model(tmp_path / "single")
    ddp, _ = _ckpt_model(tmp_path / "ddp")
    init = build_teacher(TeacherConfig(dim=128, num_layers=1, ffn_dim=128), seed=0).state_dict()
    assert any(not torch.equal(single[k], init[k]) for k in single)
    for k in single:
        assert torch.allclose(single[k], ddp[k], atol=2e-6, rtol=1e-5), k


def _timed_linear_run(monkeypatch, cfg: RunConfig):
    """A Linear model, a fake clock that advances 10 ms per training step (deterministic --steps 0
    measurement), and its Runner; returns (runner, step_fn, clock, model)."""
    from iasa.training import runner as runner_mod

    clock = [0.0]
    monkeypatch.setattr(runner_mod, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    model = torch.nn.Linear(4, 1)
    x = torch.randn(8, 4)

    def step_fn(step):
        clock[0] += 0.01
        loss = model(x).pow(2).mean()
        return loss, {"loss": loss.detach()}

    opt = make_optimizer(model.parameters(), cfg, torch.device("cpu"))
    return Runner(cfg, D.DistInfo(), model, model, opt, {}, "m"), step_fn, clock, model


def test_measured_step_count_fills_the_time_budget(tmp_path, monkeypatch):
    """--steps 0: the runner measures the step time, fixes the step count, ends the schedule with the budget."""
    from iasa.training.runner import AUTO_FILL, AUTO_TIMED, AUTO_WARM, lr_at

    cfg = RunConfig(out=str(tmp_path), steps=0, max_minutes=0.02, lr=1e-2, warmup=AUTO_WARM + AUTO_TIMED + 5,
                    min_lr_frac=0.1, checkpoint_every=0, log_every=10 ** 6, resume=False)
    runner, step_fn, clock, model = _timed_linear_run(monkeypatch, cfg)
    assert runner.run(step_fn) == "steps"
    expected = AUTO_WARM + AUTO_TIMED + int((0.02 * 60 * AUTO_FILL - 0.01 * (AUTO_WARM + AUTO_TIMED)) / 0.01)
    assert abs(cfg.steps - expected) <= 1 and runner.step == cfg.steps
    assert clock[0] <= 0.02 * 60
    assert lr_at(cfg.steps - 1, cfg) == pytest.approx(0.1 * 1e-2, rel=0.05)
    _, state = _ckpt_model(tmp_path)
    assert state["total_steps"] == cfg.steps
    with pytest.raises(ValueError, match="max-minutes"):
        Runner(RunConfig(out=str(tmp_path / "x"), steps=0), D.DistInfo(), model, model,
               make_optimizer(model.parameters(), cfg, torch.device("cpu")), {}, "m").run(step_fn)


def test_measured_step_count_is_measured_again_after_slow_first_steps(tmp_path, monkeypatch, caplog):
    """Steps 1-30 cost 40 ms, later ones 10 ms (autotuning of new shapes at the start, as in the warm VAE stage):
    the first measurement plans too few steps; the one at step 100 moves the end so the budget is filled."""
    from iasa.training.runner import AUTO_FILL, AUTO_REPLAN

    cfg = RunConfig(out=str(tmp_path), steps=0, max_minutes=0.1, lr=1e-2, warmup=5, min_lr_frac=0.1,
                    checkpoint_every=0, log_every=10 ** 6, resume=False)
    runner, _, clock, model = _timed_linear_run(monkeypatch, cfg)
    x = torch.randn(8, 4)

    def step_fn(step):
        clock[0] += 0.04 if step < 30 else 0.01
        loss = model(x).pow(2).mean()
        return loss, {"loss": loss.detach()}

    with caplog.at_level("INFO", logger="iasa.training.runner"):
        assert runner.run(step_fn) == "steps"
    first_plan = 25 + int((0.1 * 60 * AUTO_FILL - 25 * 0.04) / 0.04)
    assert f"-> {first_plan} steps" in caplog.text and "(was" in caplog.text
    used = 30 * 0.04 + (cfg.steps - 30) * 0.01
    assert cfg.steps > 2 * first_plan and AUTO_REPLAN < cfg.steps
    assert 0.8 * 0.1 * 60 <= used <= 0.1 * 60   # (the first plan would have used 39 %)


def test_measured_run_caps_a_warm_up_longer_than_a_tenth_of_its_steps(tmp_path, monkeypatch, caplog):
    """The v2 VAE run asked for 200 warm-up steps and got 207 steps in its budget: the LR never left the ramp.
    A measured run now shortens the warm-up to 10 % of the measured steps (logged), and a resumed run keeps it."""
    from iasa.training.runner import AUTO_TIMED, AUTO_WARM, WARMUP_MAX_FRAC, lr_at

    cfg = RunConfig(out=str(tmp_path), steps=0, max_minutes=0.05, lr=1e-2, warmup=10 ** 4, min_lr_frac=0.1,
                    checkpoint_every=100, log_every=10 ** 6, resume=False)
    runner, step_fn, _, model = _timed_linear_run(monkeypatch, cfg)
    with caplog.at_level("WARNING", logger="iasa.training.runner"):
        runner.run(step_fn)
    assert cfg.warmup == max(AUTO_WARM + AUTO_TIMED, int(WARMUP_MAX_FRAC * cfg.steps)) < cfg.steps // 5
    assert "shortened" in caplog.text
    assert lr_at(cfg.warmup, cfg) == pytest.approx(1e-2, rel=1e-3)  # full LR right after the ramp
    resumed = RunConfig(out=str(tmp_path), steps=0, max_minutes=0.05, lr=1e-2, warmup=10 ** 4, resume=True)
    Runner(resumed, D.DistInfo(), model, model, make_optimizer(model.parameters(), resumed, torch.device("cpu")),
           {}, "m").resume()
    assert resumed.warmup == cfg.warmup and resumed.steps == cfg.steps
