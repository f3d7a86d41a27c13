"""IASA Distill Student: DMD distillation of a teacher MODEL into a few-step sparse student, inside ComfyUI.

The node converts its inputs (nodes/distill_inputs.py) and runs ``training.distill.train.distill``, the
same run as the command line. The run folder ``output/iasa_distill/<name>/`` keeps checkpoints, loss
curves and the VAE copy; the student goes to ``models/diffusion_models/<name>.safetensors`` (+ ``.json``
card), the optional LoRA to ``models/loras/<name>_lora.safetensors``. /interrupt saves a checkpoint and
stops; queueing the same name again resumes from it.

ComfyUI's layers check for /interrupt in every forward (``comfy.ops.run_every_op``), which would abort a
training step half-way (fake score updated, generator not). While the run trains, that per-layer check is
switched off and the run checks between steps instead, so an interruption always ends on a step boundary
with a checkpoint that resumes exactly.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..training import distributed as D
from ..training.distill.export import ATTACHMENT, find_weights_file, read_card
from ..training.distill.train import Hooks, check_teacher, distill, parse_args, state_fingerprint
from ..training.tiny_wan import file_sha256
from .distill_inputs import (NO_FEATURE_NET, data_problem, feature_net_options, first_folder, model_files,
                             output_name_problem, output_stem, shard_folder, teacher_module, vae_copy, vae_module)
from .files import list_input_folders
from .types import DatasetType

log = logging.getLogger(__name__)
RUNS = "iasa_distill"


def _float(name: str, default: float, lo: float, hi: float, step: float, tip: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=lo, max=hi, step=step, tooltip=tip)


class IASADistillStudent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASADistillStudent",
            display_name="IASA Distill Student",
            category="IASA/training",
            description="Distils a pose-conditioned Wan teacher (Fun-Control layout with ref_conv, e.g. IASA-mini) "
                        "into a 1-4 step student with input-aware sparse (causal) attention: DMD2 distribution "
                        "matching against the teacher with CFG plus a region loss on face, lips, hands, arms and "
                        "torso. Writes <name>.safetensors (+ card) for UNETLoader; /interrupt checkpoints, the same "
                        "name again resumes.",
            is_experimental=True,
            inputs=[
                io.Model.Input("teacher", tooltip="The teacher (UNETLoader): a Wan Fun-Control model with ref_conv "
                                                  "reference tokens, such as the bundled IASA-mini teacher."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE the teacher was trained with (IASA-mini: iasa_mini_vae)."),
                io.Combo.Input("data", options=list_input_folders() or [""],
                               tooltip="A folder of training shards inside ComfyUI's input folder (IASA Build "
                                       "Dataset, or training.synth.build render). Ignored when dataset is connected."),
                io.Int.Input("student_steps", default=4, min=1, max=4,
                             tooltip="Sampling steps of the student (its fixed timesteps go into its card)."),
                io.Int.Input("iterations", default=0, min=0, max=1_000_000,
                             tooltip="Generator updates; 0 = as many as the minutes allow (measured)."),
                _float("minutes", 10.0, 0.0, 100_000.0, 0.5, "Training time budget in minutes; 0 = no limit "
                       "(then iterations must be set)."),
                _float("shift", 3.0, 0.1, 100.0, 0.1, "Flow shift of the teacher (its card's sampling.shift; "
                       "IASA-mini: 3). The student's timesteps are shifted by it."),
                _float("guidance", 3.0, 1.0, 20.0, 0.1, "CFG scale of the teacher as the real score (the cfg the "
                       "teacher is sampled with)."),
                io.Int.Input("fake_updates", default=5, min=1, max=20,
                             tooltip="Fake-score updates per generator update (DMD2 two-time-scale rule)."),
                _float("learning_rate", 2e-5, 1e-7, 1e-2, 1e-6, "AdamW learning rate of the student and the fake score."),
                io.Int.Input("frames", default=17, min=5, max=161, step=4,
                             tooltip="Video frames per training window (1 + 4k); longer = slower and more memory."),
                io.Int.Input("batch", default=2, min=1, max=256, tooltip="Windows per step."),
                _float("face", 1.0, 0.0, 100.0, 0.1, "Region-loss weight of the face."),
                _float("lips", 1.0, 0.0, 100.0, 0.1, "Region-loss weight of the lips."),
                _float("hands", 1.0, 0.0, 100.0, 0.1, "Region-loss weight of each hand."),
                _float("arms", 0.5, 0.0, 100.0, 0.1, "Region-loss weight of the arms and shoulders."),
                _float("torso", 0.5, 0.0, 100.0, 0.1, "Region-loss weight of the torso."),
                _float("region_weight", 1.0, 0.0, 100.0, 0.1, "Weight of the whole region loss against DMD "
                       "(0 = DMD only)."),
                io.Combo.Input("feature_net", options=feature_net_options(), default=NO_FEATURE_NET,
                               tooltip="Optional feature network for the region loss (LPIPS-style AlexNet/VGG "
                                       "weights in models/iasa_feature_nets); none = masked L1 + SSIM only."),
                io.String.Input("output_name", default="iasa_mini_student",
                                tooltip="File name of the student (no folders): models/diffusion_models/<name>."
                                        "safetensors. The same name again resumes its checkpoint."),
                io.Boolean.Input("save_lora", default=False,
                                 tooltip="Also write <name>_lora.safetensors (student minus teacher) to the loras "
                                         "folder for LoraLoaderModelOnly on the teacher."),
                io.Int.Input("lora_rank", default=64, min=1, max=1024, tooltip="Rank of the LoRA's low-rank parts."),
                io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1, tooltip="Seed of the training draws."),
                DatasetType.Input("dataset", optional=True,
                                  tooltip="Shards from IASA Build Dataset (replaces the data folder)."),
            ],
            outputs=[io.Model.Output(display_name="student"), io.Image.Output(display_name="loss_plot")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, data, output_name, input_types=None):
        linked = input_types or {}
        return output_name_problem(output_name) or (None if "dataset" in linked else data_problem(data)) or True

    @classmethod
    def execute(cls, teacher, vae, data, student_steps, iterations, minutes, shift, guidance, fake_updates,
                learning_rate, frames, batch, face, lips, hands, arms, torso, region_weight, feature_net, output_name,
                save_lora, lora_rank, seed, dataset=None) -> io.NodeOutput:
        name = output_stem(output_name)
        if iterations == 0 and minutes == 0:
            raise ValueError("iterations, minutes: both are 0; set the number of iterations, a time budget, or both")
        if (frames - 1) % 4:
            raise ValueError(f"frames: must be 1 + 4k (5, 9, 13, 17, ...), got {frames}")
        folder = shard_folder(data, dataset)
        run_dir = Path(folder_paths.get_output_directory()) / RUNS / name
        with torch.inference_mode(False):
            teacher_m, vae_m = teacher_module(teacher), vae_module(vae)
            check_teacher(teacher_m, vae_m.z_dim)
            vae_file = vae_copy(vae_m, run_dir / "vae.safetensors")
            teacher_file = find_weights_file(teacher_m, model_files("diffusion_models"))
            teacher_info = {"file": teacher_file.name, "sha256": file_sha256(teacher_file)} if teacher_file else \
                {"file": None, "weights_sha256": state_fingerprint(teacher_m)}
            args = ["--vae", str(vae_file), "--data", str(folder), "--out", str(run_dir), "--name", name,
                    "--export-dir", str(first_folder("diffusion_models")), "--lora-dir", str(first_folder("loras")),
                    "--lora-rank", str(lora_rank if save_lora else 0), "--student-steps", str(student_steps),
                    "--shift", str(shift), "--guidance", str(guidance), "--fake-updates", str(fake_updates),
                    "--lr", str(learning_rate), "--frames", str(frames), "--batch", str(batch), "--seed", str(seed),
                    "--steps", str(iterations), "--max-minutes", str(minutes), "--region-weight", str(region_weight),
                    "--region-weights", f"face={face},lips={lips},left_hand={hands},right_hand={hands},arms={arms},"
                                        f"torso={torso}",
                    "--log-every", "1", "--checkpoint-every", "50",
                    "--render-workers", "1"]
            if dataset is not None and dataset.get("latents_cache"):
                args += ["--latents-cache", dataset["latents_cache"]]   # encoded by IASA Build Dataset, reused if it fits
            if feature_net != NO_FEATURE_NET:
                args += ["--feature-net", folder_paths.get_full_path_or_raise("iasa_feature_nets", feature_net),
                         "--feature-weight", "1.0"]
            a = parse_args(args)
            progress = _Progress(cls.hidden.unique_id, iterations, minutes)
            device = comfy.model_management.get_torch_device()
            with _interrupts_between_steps():
                summary = distill(teacher_m, teacher_info, vae_m, {"name": "ComfyUI VAE", "sha256": file_sha256(vae_file)},
                                  a, D.DistInfo(device=device), progress.hooks(),
                                  teacher_card=read_card(teacher_file) if teacher_file else None,
                                  argv=["training.distill.train", "--teacher", teacher_info["file"] or "<teacher MODEL>",
                                        *args])
        if summary["stop_reason"] == "interrupted":
            log.info("IASA Distill Student: interrupted at step %d; checkpoint in %s (queue '%s' again to resume)",
                     summary["step"], run_dir, name)
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise comfy.model_management.InterruptProcessingException()
        student = comfy.sd.load_diffusion_model(summary["weights"])
        student.set_attachments(ATTACHMENT, summary["card"])
        return io.NodeOutput(student, _image(Path(summary["loss_plot"])))


@contextlib.contextmanager
def _interrupts_between_steps():
    """Switch off ComfyUI's per-layer interrupt check while training (see the module docstring)."""
    import comfy.ops

    original = comfy.ops.run_every_op
    comfy.ops.run_every_op = lambda: None
    try:
        yield
    finally:
        comfy.ops.run_every_op = original


def _image(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), np.float32) / 255.0)[None]


class _Progress:
    """ComfyUI progress bar + current losses as the node's progress text; notices /interrupt."""

    def __init__(self, node_id, iterations: int, minutes: float):
        self.node_id, self.budget = node_id, max(1, int(minutes * 60))
        self.bar = comfy.utils.ProgressBar(iterations or self.budget, node_id=node_id)
        self.t0 = time.perf_counter()
        self.interrupted = False

    def hooks(self) -> Hooks:
        return Hooks(after_step=self.after_step, should_stop=self.should_stop, on_log=self.on_log)

    def should_stop(self) -> bool:
        return self.interrupted or comfy.model_management.processing_interrupted()

    def after_step(self, step: int, runner) -> None:
        try:
            if runner.cfg.steps > 0:
                self.bar.update_absolute(step, runner.cfg.steps)
            else:
                self.bar.update_absolute(min(int(time.perf_counter() - self.t0), self.budget), self.budget)
        except comfy.model_management.InterruptProcessingException:  # the hook saw /interrupt: stop after this step
            self.interrupted = True

    def on_log(self, row: dict) -> None:
        text = f"step {row['step']}: " + ", ".join(f"{k} {row[k]:.4g}" for k in ("dmd", "fake", "region") if k in row)
        try:
            from server import PromptServer

            PromptServer.instance.send_progress_text(text, self.node_id)
        except Exception as e:  # no server (in-process use): the log line below is enough
            log.debug("progress text not sent: %s", e)
        log.info("IASA Distill Student %s", text)
