"""The training loop shared by the VAE and teacher trainers: LR schedule, time budget, checkpoints,
resume, loss logging, all without per-step host syncs (metrics stay on the device until a log step).

A trainer supplies ``step_fn(step) -> (loss, {name: tensor})`` and the modules; :meth:`Runner.run` does
the rest. Stops: ``steps`` reached, ``max_minutes`` of loop time spent (clean stop: checkpoint, and the
trainer exports), or ``stop_after`` steps in this process (checkpoint only: simulates an interruption).

Optional hooks (the distillation uses them; all default off): ``extra_optimizers`` (more optimizers whose
state goes into the checkpoints, e.g. a second model's), ``after_step(step)`` (after each optimizer step,
e.g. an EMA update or a progress bar), ``should_stop()`` (checked before every step; True stops with
reason ``"interrupted"``: checkpoint, no export), ``on_log(row)`` (every logged row), ``plot_series``
(the curves of the PNG; default: every logged metric) and ``state_io`` (how model and optimizer state is read
and written: ``training.sharding.FSDPStateIO`` for FSDP2-sharded modules; the files are the same either way).

``steps = 0`` with ``max_minutes``: the step count is measured, not guessed. After 5 untimed and 20 timed
steps (inside the LR warm-up) the runner sets ``steps`` so the loop ends at ~97 % of the budget, and the
cosine schedule ends there too; at step 100 it measures steps 25..100 and moves that end once more (early
steps can be slow: a VAE stage with varying window lengths planned 186 steps from 2.1 s/step, then ran at
0.8 s/step and used 54 % of its budget). The number is kept in checkpoints, so a resumed run keeps it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from . import distributed as D
from .checkpoint import CheckpointManager, optimizer_state_from_tensors, optimizer_to_tensors, rng_from_tensors, \
    rng_to_tensors
from .logs import LossLog

log = logging.getLogger(__name__)


def check_window_args(p: argparse.ArgumentParser, a: argparse.Namespace, frame_args: tuple[str, ...] = ("frames",),
                      crop: bool = False) -> None:
    """argparse errors for Wan's video rules: frame counts of 1 + 4k, crops that are multiples of 8."""
    for name in frame_args:
        n = getattr(a, name)
        if (n - 1) % 4:
            p.error(f"--{name.replace('_', '-')} must be 1 + 4k (Wan's temporal compression), got {n}")
    if crop and a.crop and a.crop % 8:
        p.error(f"--crop must be a multiple of 8, got {a.crop}")


def write_summary(name: str, out: str | Path, summary: dict, info: D.DistInfo, t_start: float,
                  logged: dict | None = None) -> dict:
    """Finish a trainer's ``summary``: ``total_seconds`` since ``t_start``; rank 0 writes ``out/summary.json``
    and logs ``logged`` (default: the summary)."""
    summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    if info.is_main:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "summary.json").write_text(json.dumps(summary, indent=1))
        log.info("%s summary: %s", name, json.dumps(summary if logged is None else logged))
    return summary


@dataclass
class RunConfig:
    out: str = "runs/run"
    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 100
    min_lr_frac: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_minutes: float = 0.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 25
    stop_after: int = 0
    resume: bool = True
    seed: int = 0

    @classmethod
    def add_args(cls, p: argparse.ArgumentParser, **defaults) -> None:
        g = p.add_argument_group("run")
        for f in fields(cls):
            d = defaults.get(f.name, f.default)
            name = "--" + f.name.replace("_", "-")
            if f.type in ("bool", bool):
                g.add_argument(name, action=argparse.BooleanOptionalAction, default=d)
            else:
                typ = {"int": int, "float": float, "str": str}.get(f.type, str) if isinstance(f.type, str) else f.type
                g.add_argument(name, type=typ, default=d)

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "RunConfig":
        return cls(**{f.name: getattr(a, f.name) for f in fields(cls)})


AUTO_WARM, AUTO_TIMED, AUTO_FILL = 5, 20, 0.97
AUTO_REPLAN = 100   # measured again over steps 25..100: early steps can be slow (autotuning of new shapes)
WARMUP_MAX_FRAC = 0.1  # a measured run caps its warm-up at this share of its steps


def configure_cuda(device: torch.device) -> None:
    """TF32 matmuls and cuDNN autotuning for training on CUDA (no effect elsewhere)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def lr_at(step: int, cfg: RunConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_frac * lr`` at ``steps`` (a function of the step only;
    constant after the warm-up while ``steps`` is still being measured)."""
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.steps <= 0:
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup)
    frac = min(1.0, (step - cfg.warmup) / span)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(params, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=cfg.weight_decay, **kw)


class Runner:
    def __init__(self, cfg: RunConfig, info: D.DistInfo, model: torch.nn.Module, train_module: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator], name: str,
                 meta: dict | None = None, extra_optimizers: dict[str, torch.optim.Optimizer] | None = None,
                 after_step: Callable[[int], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 on_log: Callable[[dict], None] | None = None, plot_series: tuple[str, ...] | None = None,
                 state_io=None):
        from .sharding import StateIO

        self.cfg, self.info, self.model, self.train_module = cfg, info, model, train_module
        self.opt, self.generators, self.name = optimizer, generators, name
        self.meta = meta or {}
        self.extra_optimizers = dict(extra_optimizers or {})
        self.after_step, self.should_stop, self.on_log = after_step, should_stop, on_log
        self.plot_series = plot_series
        self.state_io = state_io if state_io is not None else StateIO(info)
        self.out = Path(cfg.out)
        self.ckpt = CheckpointManager(self.out / "checkpoints", keep=cfg.keep_checkpoints)
        self.losslog = LossLog(self.out, name=f"{name}_loss", enabled=info.is_main)
        self.step = 0
        self.stop_reason = ""
        self._acc: dict[str, torch.Tensor] = {}
        self._acc_n = 0
        self._t_log = time.perf_counter()
        self.loop_seconds = 0.0
        self.step_seconds: list[float] = []

    # ------------------------------------------------------------------ checkpoints
    def resume(self) -> int:
        path = self.ckpt.latest() if self.cfg.resume else None
        if path is None:
            return 0
        files, state = self.ckpt.load(path)
        io = self.state_io
        io.load_model(self.model, files["model"])
        io.load_optimizer(self.opt, optimizer_state_from_tensors(files.get("optim", {}), state["optimizer"]))
        for name, opt in self.extra_optimizers.items():
            io.load_optimizer(opt, optimizer_state_from_tensors(files.get(f"optim_{name}", {}),
                                                                state["extra_optimizers"][name]))
        rng_from_tensors(files["rng"], self.generators)
        self.step = int(state["step"])
        if self.cfg.steps <= 0 and int(state.get("total_steps", 0)) > 0:
            self.cfg.steps = int(state["total_steps"])
        self.cfg.warmup = int(state.get("warmup", self.cfg.warmup))
        self.loop_seconds = float(state.get("loop_seconds", 0.0))
        self.losslog.truncate_after(self.step)
        log.info("%s: resumed from %s (step %d)", self.name, path, self.step)
        return self.step

    def save_checkpoint(self) -> None:
        io = self.state_io  # every rank gathers (a collective when sharded); rank 0 writes
        model_sd, opt_sd = io.model_state(self.model), io.optimizer_state(self.opt)
        extra_sd = {name: io.optimizer_state(opt) for name, opt in self.extra_optimizers.items()}
        if self.info.is_main:
            opt_t, opt_meta = optimizer_to_tensors(opt_sd)
            files = {"model": model_sd, "optim": opt_t, "rng": rng_to_tensors(self.generators)}
            extra_meta = {}
            for name, sd in extra_sd.items():
                files[f"optim_{name}"], extra_meta[name] = optimizer_to_tensors(sd)
            self.ckpt.save(self.step, files,
                           {"optimizer": opt_meta, "loop_seconds": self.loop_seconds, "name": self.name,
                            "total_steps": self.cfg.steps, "warmup": self.cfg.warmup,
                            **({"extra_optimizers": extra_meta} if extra_meta else {}),
                            **self.meta})
        D.barrier(self.info)

    # ------------------------------------------------------------------ logging
    def _accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach().float()
            if hasattr(v, "full_tensor"):  # a DTensor (the grad norm of FSDP2-sharded parameters)
                v = v.full_tensor()
            self._acc[k] = self._acc[k] + v if k in self._acc else v.clone()
        self._acc_n += 1

    def _flush(self) -> dict:
        if not self._acc_n:
            return {}
        names = sorted(self._acc)
        vec = torch.stack([self._acc[k] for k in names]) / self._acc_n
        vec = D.all_reduce_mean(vec, self.info).cpu()  # the one host sync per log interval
        now = time.perf_counter()
        row = {"step": self.step, "lr": lr_at(self.step - 1, self.cfg),
               "sec_per_step": (now - self._t_log) / self._acc_n, **{k: float(v) for k, v in zip(names, vec)}}
        self.step_seconds.append(row["sec_per_step"])
        self._t_log = now
        self._acc, self._acc_n = {}, 0
        self.losslog.append(row)
        if self.on_log is not None:
            self.on_log(row)
        log.info("%s step %d: %s", self.name, self.step,
                 " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        return row

    # ------------------------------------------------------------------ loop
    def _time_up(self, t0: float, done_here: int) -> str:
        """``max_minutes`` is this process's loop budget (a resumed run gets a fresh one)."""
        cfg = self.cfg
        reason = ""
        if self.should_stop is not None and D.broadcast_flag(bool(self.should_stop()), self.info):
            reason = "interrupted"
        elif cfg.stop_after and done_here >= cfg.stop_after:
            reason = "stop_after"
        elif cfg.max_minutes > 0:
            if self.info.world_size == 1 or done_here % 10 == 0:  # ranks agree every 10 steps (one sync)
                up = (time.perf_counter() - t0) >= cfg.max_minutes * 60
                if D.broadcast_flag(up, self.info):
                    reason = "max_minutes"
        return reason

    def _sync(self) -> None:
        if self.info.device.type == "cuda":
            torch.cuda.synchronize(self.info.device)

    def _measure_steps(self, t0: float, t_probe: float, timed: int = AUTO_TIMED, again: bool = False) -> None:
        """Fix ``steps`` from the step time of the last ``timed`` steps so the loop fills ``max_minutes`` (rank 0
        decides). ``again``: the second measurement (steps 25..100), which only moves the end of the schedule."""
        self._sync()
        now = time.perf_counter()
        per_step = (now - t_probe) / timed
        left = self.cfg.max_minutes * 60 * AUTO_FILL - (now - t0)
        total = self.step + max(1, int(left / per_step))
        before = self.cfg.steps
        self.cfg.steps = D.broadcast_int(total, self.info)
        log.info("%s: %.3f s/step measured -> %d steps for a %.1f min budget%s", self.name, per_step,
                 self.cfg.steps, self.cfg.max_minutes, f" (was {before})" if again else "")
        if again:
            return
        cap = max(self.step, int(WARMUP_MAX_FRAC * self.cfg.steps))
        if self.cfg.warmup > cap:  # the v2 VAE run spent 200 of its 207 steps warming up
            log.warning("%s: warm-up of %d steps is more than %d%% of the %d measured steps; shortened to %d",
                        self.name, self.cfg.warmup, round(WARMUP_MAX_FRAC * 100), self.cfg.steps, cap)
            self.cfg.warmup = cap
        if self.cfg.warmup < self.step:
            log.warning("%s: warm-up (%d) is shorter than the step measurement (%d steps); the LR stayed "
                        "constant until now", self.name, self.cfg.warmup, self.step)

    def run(self, step_fn: Callable[[int], tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> str:
        """Train to ``steps`` (or a stop); returns the stop reason ('steps', 'max_minutes', 'stop_after')."""
        cfg = self.cfg
        if cfg.steps <= 0 and cfg.max_minutes <= 0:
            raise ValueError("--steps 0 (measure the step count) needs --max-minutes > 0")
        params = [p for p in self.train_module.parameters() if p.requires_grad]
        t0 = time.perf_counter()
        base_seconds = self.loop_seconds
        done_here = 0
        self._t_log = t0
        reason = "steps"
        t_probe = t0
        auto = cfg.steps <= 0   # the step count is measured in this process (a resumed run keeps its count)
        while cfg.steps <= 0 or self.step < cfg.steps:
            if auto and done_here == AUTO_WARM:
                self._sync()
                t_probe = time.perf_counter()
            elif auto and done_here in (AUTO_WARM + AUTO_TIMED, AUTO_REPLAN):
                first = done_here == AUTO_WARM + AUTO_TIMED
                self._measure_steps(t0, t_probe, done_here - (AUTO_WARM if first else AUTO_WARM + AUTO_TIMED),
                                    again=not first)
                t_probe = time.perf_counter()
                if self.step >= cfg.steps:
                    break
            r = self._time_up(t0, done_here) if done_here or self.should_stop is not None else ""
            if r:
                reason = r
                break
            lr = lr_at(self.step, cfg)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            loss, metrics = step_fn(self.step)
            loss.backward()
            if cfg.grad_clip > 0:
                metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
            self.opt.step()
            self.step += 1
            done_here += 1
            if self.after_step is not None:
                self.after_step(self.step)
            self._accumulate(metrics)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._flush()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.loop_seconds = base_seconds + time.perf_counter() - t0
                self.save_checkpoint()
        self._flush()
        self.loop_seconds = base_seconds + time.perf_counter() - t0
        self.stop_reason = reason
        self.save_checkpoint()
        if self.info.is_main:
            self.losslog.finish(title=f"{self.name} ({self.step} steps)", series=self._series())
        log.info("%s: stopped at step %d (%s), loop %.1f s", self.name, self.step, reason, self.loop_seconds)
        return reason

    def _series(self) -> tuple[str, ...]:
        if self.plot_series:
            return self.plot_series
        rows = self.losslog.rows()
        keys = [k for k in (rows[-1] if rows else {}) if k not in ("step", "lr", "sec_per_step", "grad_norm")]
        return tuple(keys) or ("loss",)

    @property
    def finished(self) -> bool:
        """True when the weights should be exported (not after a simulated interruption)."""
        return self.stop_reason in ("steps", "max_minutes")
