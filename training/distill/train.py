"""Distil a pose-conditioned Wan teacher (IASA-mini layout: Fun-Control concat + ref_conv reference) into a
few-step sparse student with DMD2 + the region loss. :func:`distill` is one run, shared by the command line
(:func:`main`) and the ComfyUI node (IASA Distill Student), which passes modules and hooks instead of files.

CPU dry run (tiny shapes; a random teacher and VAE as tests/unit/test_distill_wan.py writes them)::

    python iasa_cli.py training.distill.train --teacher T.safetensors --vae V.safetensors --data procedural:3:9:32 \\
        --out .dev/runs/distill-smoke --frames 5 --batch 2 --steps 3 --fake-updates 2 --device cpu

GPU (the v2 teacher; ``scripts/distill_iasa_mini_gpu.sh`` runs this with its paths)::

    torchrun --nproc_per_node=N iasa_cli.py training.distill.train --teacher <teacher> --vae <vae> \\
        --data <shards> --latents-cache <shards>.latents.safetensors --out .dev/v2/student --frames 49 \\
        --batch 16 --steps 0 --max-minutes 8

Models that do not fit one GPU three times over (student, fake score, teacher, plus Adam states and the EMA):
add ``--shard fsdp2`` to the torchrun command (``SHARD=fsdp2`` in the script). The student, the fake score,
their optimizer states and the EMA are then sharded per transformer block with FSDP2 (``training/sharding.py``);
the frozen teacher stays replicated on every rank (no gradients or optimizer state; sharding it would add an
all-gather to each of its calls, and evaluation and the LoRA export read it whole on rank 0). Checkpoints and
the exported files are the DDP path's full state dicts, so either mode resumes the other's run. Default
``--shard ddp``; with one process both are the same plain run.

Outputs in ``--out``: ``<name>.safetensors`` + ``.json`` card (stock UNETLoader; ``--export-dir`` elsewhere),
``<name>_lora.safetensors`` with ``--lora-rank`` > 0, ``distill_loss.csv/.json/.png`` (DMD, fake-score and
region curves), ``summary.json``, ``checkpoints/`` (a rerun with the same ``--out`` resumes exactly).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...attention.pose_layout import REFERENCE_ATTENDS
from .. import distributed as D
from ..checkpoint import CheckpointManager
from ..model_card import provenance
from ..runner import RunConfig, Runner, check_window_args, configure_cuda, lr_at, make_optimizer
from ..sharding import SHARD_MODES, FSDPStateIO, StateIO, gathered_copy, shard_blocks
from ..teacher_train import get_latents
from ..tiny_wan import config_dict, file_sha256, load_teacher, load_vae, teacher_config_from_state_dict
from ..vae_train import wan21_latent_format
from .data import DataMismatchError, DistillData, GroundTruth, build_ground_truth, check_matches, \
    iter_train_clips, load_ground_truth, save_ground_truth
from .dmd import DMDConfig, DMDStep, EMA
from .export import save_lora, save_student
from .region_loss import DEFAULT_WEIGHTS, RegionLoss, RegionLossConfig
from .schedule import StudentSchedule
from .wan import WanModels, WanRegionTerm, check_region_split

log = logging.getLogger(__name__)
PLOT = ("dmd", "fake", "region")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="training.distill.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="", help="teacher safetensors (IASA-mini layout; the node passes a module)")
    p.add_argument("--vae", required=True, help="the VAE the teacher's latents come from (safetensors)")
    p.add_argument("--data", required=True, help="shard dir/file, or procedural:N[:T[:S]]")
    p.add_argument("--name", default="iasa_mini_student", help="output file stem")
    p.add_argument("--export-dir", default="", help="where <name>.safetensors goes (default --out)")
    p.add_argument("--lora-dir", default="", help="where <name>_lora.safetensors goes (default --out)")
    p.add_argument("--lora-rank", type=int, default=0, help="also write a LoRA over the teacher (0 = no)")
    p.add_argument("--student-steps", type=int, default=4, help="1-4 sampling steps of the student")
    p.add_argument("--timesteps", default="", help="comma-separated student timesteps (default for the steps)")
    p.add_argument("--shift", type=float, default=0.0, help="flow shift (0 = the teacher card's sampling.shift, else 3)")
    p.add_argument("--guidance", type=float, default=3.0, help="CFG scale of the real score (teacher)")
    p.add_argument("--fake-updates", type=int, default=5, help="fake-score updates per generator update")
    p.add_argument("--fake-lr", type=float, default=0.0, help="fake-score learning rate (0 = --lr)")
    p.add_argument("--t-min", type=float, default=0.02)
    p.add_argument("--t-max", type=float, default=0.98)
    p.add_argument("--ema-decay", type=float, default=0.99, help="EMA of the generator (0 = export raw weights)")
    p.add_argument("--ema-start", type=int, default=0, help="steps before the EMA starts averaging")
    p.add_argument("--score-attention", choices=("sparse", "dense"), default="sparse",
                   help="attention of the real and fake scores (the student is always sparse)")
    p.add_argument("--region-weight", type=float, default=1.0, help="lambda_region (paper Eq. 6; 0 = DMD only)")
    p.add_argument("--region-weights", default="", help="per region, e.g. face=1,lips=2,left_hand=1 "
                   f"(default {','.join(f'{k}={v}' for k, v in DEFAULT_WEIGHTS.items())})")
    p.add_argument("--region-frames", type=int, default=4, help="decoded frames per window for the region loss")
    p.add_argument("--region-batch", type=int, default=2,
                   help="windows of the global batch the region loss decodes (every batch/N-th), 0 = all; shared "
                        "evenly by several processes; the decode with grad "
                        "dominates memory (16 x 49 x 256^2 ran out of 139 GB on an H200)")
    p.add_argument("--l1", type=float, default=1.0)
    p.add_argument("--ssim", type=float, default=1.0)
    p.add_argument("--feature-net", default="", help="feature network safetensors for the region loss")
    p.add_argument("--feature-weight", type=float, default=0.0)
    p.add_argument("--frames", type=int, default=49, help="pixel frames per window (1 + 4k)")
    p.add_argument("--stride", type=int, default=0)
    p.add_argument("--max-windows-per-clip", type=int, default=0)
    p.add_argument("--max-clips", type=int, default=0)
    p.add_argument("--batch", type=int, default=16, help="global batch (windows), split over ranks")
    p.add_argument("--ref-random-prob", type=float, default=0.5)
    p.add_argument("--top-k", type=int, default=2, help="past frames kept per frame by the student's mask")
    p.add_argument("--bidirectional", action="store_true", help="top-K among all frames (default causal)")
    p.add_argument("--reference-attends", choices=REFERENCE_ATTENDS, default="everything",
                   help="what the student's reference (ref_conv) tokens attend to under its mask; the teacher and the "
                        "fake score keep the whole video (attention/pose_layout.py REFERENCE_ATTENDS)")
    p.add_argument("--amp", choices=("bf16", "none"), default="bf16")
    p.add_argument("--latents-cache", default="", help="latent cache (default <out>/latents.safetensors); the "
                   "teacher run's cache is reused when its settings match")
    p.add_argument("--render-workers", type=int, default=0)
    p.add_argument("--encode-batch", type=int, default=8)
    p.add_argument("--save-dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--eval-windows", type=int, default=0, help="held-out windows scored after training "
                   "(student vs teacher vs reference copy; evaluate.py)")
    p.add_argument("--eval-teacher-steps", type=int, default=20)
    p.add_argument("--eval-cfg", type=float, default=0.0, help="teacher CFG in the evaluation (0 = --guidance)")
    p.add_argument("--device", default="auto")
    p.add_argument("--shard", choices=SHARD_MODES, default="ddp",
                   help="several ranks: ddp replicates the trained models; fsdp2 shards student, fake score, "
                        "their optimizer states and the EMA per block (the teacher stays replicated)")
    RunConfig.add_args(p, out=".dev/runs/distill", steps=0, max_minutes=8.0, lr=2e-5, warmup=20, min_lr_frac=1.0,
                       weight_decay=0.0, log_every=10, checkpoint_every=200)
    a = p.parse_args(argv)
    check_window_args(p, a)
    return a


def parse_region_weights(text: str) -> dict[str, float]:
    weights = dict(DEFAULT_WEIGHTS)
    for part in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--region-weights: {part!r} is not name=number (e.g. face=1,lips=2)") from None
    return weights


@dataclass
class Hooks:
    """What the ComfyUI node plugs into the run: progress/EMA after every step, interruption, log rows."""

    after_step: Callable[[int, Runner], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_log: Callable[[dict], None] | None = None


class DistillState(torch.nn.Module):
    """Everything trained, for checkpoints: the generator, the fake score and the generator's EMA."""

    def __init__(self, student: torch.nn.Module, fake: torch.nn.Module, ema: EMA | None):
        super().__init__()
        self.student, self.fake = student, fake
        self.ema = ema if ema is not None else torch.nn.Module()

    @property
    def export_module(self) -> torch.nn.Module:
        return self.ema.shadow if isinstance(self.ema, EMA) else self.student


def check_teacher(teacher: torch.nn.Module, channels: int) -> None:
    """The data gives ``[x_t C | control C | empty C]`` + ref_conv tokens (``C`` latent channels of the VAE):
    the teacher must read exactly that."""
    cfg = teacher_config_from_state_dict(teacher.state_dict())
    c = int(channels)
    if cfg.in_dim != 3 * c or cfg.out_dim != c or not cfg.ref_conv:
        raise DataMismatchError(
            f"teacher: in_dim {cfg.in_dim}, out_dim {cfg.out_dim}, ref_conv {'yes' if cfg.ref_conv else 'no'}, but the "
            f"data has {c}-channel latents in the Fun-Control layout (in_dim {3 * c} = noise | pose video | start "
            f"image, out_dim {c}, reference as ref_conv tokens); use a Fun-Control teacher with ref_conv such as "
            f"IASA-mini, and the VAE its latents were made with")


def state_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's tensors (for weights that did not come from a file)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def prepare_data(a, info: D.DistInfo, vae, dev: torch.device):
    """Latents (the teacher's cache when it matches) and the ground truth (cached beside them).

    Rank 0 alone checks, builds and writes both caches; the other ranks read them after a barrier (calling
    ``get_latents`` on every rank at once would let a late rank see rank 0's fresh cache, skip the barrier
    inside it and run ahead)."""
    solo = D.DistInfo(rank=0, world_size=1, local_rank=info.local_rank, device=info.device)
    cache = Path(a.latents_cache or Path(a.out) / "latents.safetensors")
    gt_path = cache.with_name(cache.name.removesuffix(".safetensors") + ".gt.safetensors")
    want = {"data": str(a.data), "frames": a.frames, "stride": a.stride or a.frames, "max_clips": a.max_clips,
            "max_windows_per_clip": a.max_windows_per_clip}
    if info.is_main:
        lat = get_latents(a, solo, vae, dev)
        gt: GroundTruth | None = None
        if gt_path.is_file():
            gt, meta = load_ground_truth(gt_path)
            if any(meta.get(k) != v for k, v in want.items()) or gt.ids != lat.ids:
                gt = None
        if gt is None:
            gt = build_ground_truth(iter_train_clips(a.data, a.max_clips), a.frames, a.stride or a.frames,
                                    a.max_windows_per_clip)
            save_ground_truth(gt, gt_path, want)
    D.barrier(info)
    if not info.is_main:
        lat = get_latents(a, solo, vae, dev)
        gt, _ = load_ground_truth(gt_path)
    check_matches(lat, gt)
    if dev.type == "cuda":
        gt = GroundTruth(gt.frames.pin_memory(), gt.masks.pin_memory(), gt.ids)
    return lat, gt


def _check_resumable(out: Path, meta: dict) -> None:
    path = CheckpointManager(out / "checkpoints").latest()
    if path is None:
        return
    state = json.loads((path / "state.json").read_text())
    old = {k: state.get(k) for k in ("distill", "teacher")}
    if old != {k: meta[k] for k in old}:
        changed = sorted(k for k in meta["distill"] if (old["distill"] or {}).get(k) != meta["distill"][k])
        raise ValueError(f"{out} holds a checkpoint of another distillation ({'teacher' if old['teacher'] != meta['teacher'] else ', '.join(changed)} "
                         f"differ); choose another output name, or delete {out} to start over")


def distill(teacher: torch.nn.Module, teacher_info: dict, vae, vae_card: dict, a: argparse.Namespace,
            info: D.DistInfo, hooks: Hooks | None = None, teacher_card: dict | None = None,
            argv: list[str] | None = None) -> dict:
    hooks = hooks or Hooks()
    t_start = time.perf_counter()
    dev = info.device
    cfg = RunConfig.from_args(a)
    out = Path(cfg.out)
    teacher = teacher.to(dev).eval().requires_grad_(False)
    vae = vae.to(dev).eval().requires_grad_(False)
    lat, gt = prepare_data(a, info, vae, dev)
    check_teacher(teacher, int(lat.x0.shape[1]))
    shift = a.shift or float((teacher_card or {}).get("sampling", {}).get("shift", 3.0))
    schedule = StudentSchedule.parse(a.timesteps, a.student_steps, shift)
    dmd_cfg = DMDConfig(guidance=a.guidance, fake_updates=a.fake_updates, t_min=a.t_min, t_max=a.t_max,
                        region_weight=a.region_weight)
    region_cfg = RegionLossConfig(weights=parse_region_weights(a.region_weights), l1=a.l1, ssim=a.ssim,
                                  feature=a.feature_weight, frames=a.region_frames)
    feature_net = None
    if a.feature_weight > 0:
        from .feature_net import load_feature_net

        feature_net = load_feature_net(a.feature_net, dev)
    amp = a.amp == "bf16"

    student = copy.deepcopy(teacher).train().requires_grad_(True)
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = EMA(student, a.ema_decay, a.ema_start) if a.ema_decay > 0 else None
    state = DistillState(student, fake, ema)
    sharded = a.shard == "fsdp2" and info.world_size > 1
    if sharded:  # in place; the EMA shadow is sharded like the student so its update stays shard-local
        student_train, fake_train = shard_blocks(student, info), shard_blocks(fake, info)
        if ema is not None:
            shard_blocks(ema.shadow, info)
    else:
        student_train, fake_train = D.wrap_ddp(student, info), D.wrap_ddp(fake, info)
    opt = make_optimizer(student.parameters(), cfg, dev)
    fake_opt = make_optimizer(fake.parameters(), cfg, dev)
    state_io = FSDPStateIO(info, [(opt, student), (fake_opt, fake)]) if sharded else StateIO(info)
    fake_ratio = (a.fake_lr or cfg.lr) / cfg.lr
    gen = torch.Generator(device=dev)
    gen.manual_seed(cfg.seed)

    if a.region_weight > 0:
        check_region_split(a.region_batch, a.batch, info.world_size)
    reference_itself = a.reference_attends == "itself"   # the student's mask only; teacher and fake keep theirs
    data = DistillData(lat, a.batch, D.rank_slice(a.batch, info), a.ref_random_prob, sparse=True,
                       student_reference_itself=reference_itself)
    models = WanModels(student, student_train, fake, fake_train, teacher, a.guidance, a.score_attention == "sparse", amp)
    region = WanRegionTerm(vae, wan21_latent_format(), gt, RegionLoss(region_cfg, feature_net), gen, amp,
                           a.region_batch) \
        if a.region_weight > 0 and region_cfg.active else None
    step = DMDStep(models, data, schedule, dmd_cfg, fake_opt, list(fake.parameters()), gen, dev, region,
                   fake_lr=lambda s: lr_at(s, cfg) * fake_ratio)

    settings = {"schedule": schedule.to_card(), "guidance": a.guidance, "fake_updates": a.fake_updates,
                "t_range": [a.t_min, a.t_max], "lr": cfg.lr, "fake_lr": cfg.lr * fake_ratio, "ema_decay": a.ema_decay,
                "ema_start": a.ema_start, "score_attention": a.score_attention, "region_weight": a.region_weight,
                "region_batch": a.region_batch, "region": region_cfg.to_card(), "feature_net": Path(a.feature_net).name if feature_net else None,
                "batch": a.batch, "frames": a.frames, "ref_random_prob": a.ref_random_prob, "top_k": a.top_k,
                "causal": not a.bidirectional, "reference_attends": a.reference_attends, "seed": cfg.seed, "data": str(a.data), "windows": len(lat)}
    meta = {"distill": settings, "teacher": teacher_info}
    if info.is_main:
        _check_resumable(out, meta)
    D.barrier(info)

    def after_step(s: int) -> None:
        if ema is not None:
            ema.update(student, s)
        if hooks.after_step is not None:
            hooks.after_step(s, runner)

    runner = Runner(cfg, info, state, student_train, opt, {"data": gen}, "distill", meta=meta,
                    extra_optimizers={"fake": fake_opt}, after_step=after_step, should_stop=hooks.should_stop,
                    on_log=hooks.on_log, plot_series=PLOT, state_io=state_io)
    runner.resume()
    n_params = sum(p.numel() for p in student.parameters())
    log.info("distill: %.2f M parameters x 3 (student, fake, teacher), %d windows %s, %d-step student %s, "
             "%d fake updates per step, %d rank(s), %s", n_params / 1e6, len(lat), tuple(lat.x0.shape[1:]),
             schedule.steps, list(schedule.timesteps), a.fake_updates, info.world_size,
             "FSDP2-sharded" if sharded else "replicated")
    runner.run(step)
    summary = {"stop_reason": runner.stop_reason, "step": runner.step, "loop_seconds": round(runner.loop_seconds, 2),
               "world_size": info.world_size, "shard": a.shard if info.world_size > 1 else None,
               "windows": len(lat), "params_M": round(n_params / 1e6, 3),
               # replicas must agree; FSDP2 shards are disjoint by design (None: nothing to compare)
               "ranks_in_sync": None if sharded else D.params_in_sync(student, info) and D.params_in_sync(fake, info),
               "loss_plot": str(out / "distill_loss.png")}
    # the module to export, whole on rank 0 (gathered from the shards: every rank takes part)
    export_module = (gathered_copy(state.export_module, teacher, info) if sharded else state.export_module) \
        if runner.finished else None
    if runner.finished and info.is_main:
        card = student_card(a, settings, schedule, teacher, teacher_info, teacher_card, vae_card, runner, dev,
                            info.world_size, argv)
        if a.eval_windows > 0:
            from .evaluate import evaluate

            card["eval"] = summary["eval"] = evaluate(
                export_module.eval(), teacher, vae, schedule, a.data, a.frames, dev, a.eval_windows,
                a.eval_teacher_steps, a.eval_cfg or a.guidance, a.top_k, not a.bidirectional, amp,
                student_reference_itself=reference_itself)
            (out / "eval.json").write_text(json.dumps(summary["eval"], indent=1))
        summary.update(export(export_module, teacher, card, a, out))
    summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    D.barrier(info)
    return summary


def student_card(a, settings: dict, schedule: StudentSchedule, teacher, teacher_info: dict, teacher_card: dict | None,
                 vae_card: dict, runner: Runner, dev, world_size: int, argv: list[str] | None) -> dict:
    direction = "bidirectional" if a.bidirectional else "causal"
    return {
        "name": f"IASA student {a.name}",
        "format": "Wan 2.1 DiT (the teacher's architecture), stock UNETLoader (WAN21)",
        "config": config_dict(teacher_config_from_state_dict(teacher.state_dict())),
        "student": {**schedule.to_card(), "sampler": "lcm", "cfg": 1.0,
                    "how": f"IASA Student Sampler ({schedule.steps} steps, cfg 1), or SamplerCustom with IASA Student "
                           f"Sigmas and the stock lcm sampler at cfg 1",
                    "attention": {"top_k": a.top_k, "causal": not a.bidirectional,
                                  "reference_attends": a.reference_attends,
                                  "how": f"IASA Sparse Attention (direction {direction}, top_k {a.top_k}, "
                                         f"reference_attends {a.reference_attends}) in front "
                                         f"of the sampler: the student was trained under this mask"},
                    "weights": "ema" if a.ema_decay > 0 else "raw"},
        "teacher": {**teacher_info, **{k: (teacher_card or {}).get(k) for k in ("name", "sampling", "trained_steps")}},
        "distillation": {**settings, "steps_planned": runner.cfg.steps, "trained_steps": runner.step},
        "vae": {k: vae_card.get(k) for k in ("name", "config", "sha256") if k in vae_card},
        "trained_steps": runner.step,
        "text": "unused: the context is zeros",
        **provenance(runner.loop_seconds, dev, world_size, argv),
    }


def export(module: torch.nn.Module, teacher, card: dict, a, out: Path) -> dict:
    """The student file (+ LoRA) from ``module``: the EMA shadow or the raw generator, unsharded."""
    dtype = torch.bfloat16 if a.save_dtype == "bf16" else torch.float32
    weights = save_student(module, Path(a.export_dir or out) / f"{a.name}.safetensors", card, dtype)
    result = {"weights": str(weights), "card": card}
    if a.lora_rank > 0:
        lora, report = save_lora(teacher, module, a.lora_rank,
                                 Path(a.lora_dir or out) / f"{a.name}_lora.safetensors", card)
        result.update({"lora": str(lora), "lora_report": report})
    log.info("distill: wrote %s", ", ".join(str(v) for k, v in result.items() if k in ("weights", "lora")))
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if not a.teacher:
        raise SystemExit("--teacher is required on the command line")
    info = D.init_distributed(a.device)
    configure_cuda(info.device)
    teacher, teacher_card = load_teacher(a.teacher, device=info.device)
    vae, vae_card = load_vae(a.vae, device=info.device)
    vae_card = {**vae_card, "sha256": file_sha256(a.vae)}
    teacher_info = {"file": Path(a.teacher).name, "sha256": file_sha256(a.teacher)}
    summary = distill(teacher, teacher_info, vae, vae_card, a, info, teacher_card=teacher_card,
                      argv=["training.distill.train", *argv])
    if info.is_main:
        log.info("distill summary: %s", json.dumps({k: v for k, v in summary.items() if k != "card"}))
    D.cleanup(info)
    return summary


__all__ = ["Hooks", "distill", "main", "parse_args", "state_fingerprint"]

if __name__ == "__main__":
    main()
    D.exit_after_torchrun()
