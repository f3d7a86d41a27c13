"""Held-out measurements of a distilled student next to its teacher (the numbers issue 9 asks for).

On ``windows`` held-out windows (the first ``frames`` frames of each held-out clip; the window's first
frame is the reference picture): the student's few-step chain and the teacher's Euler + CFG run from the
same noise under the same input-aware mask, both are decoded, and each is scored against the ground truth
with ``bench.video_metrics`` (PSNR, SSIM, PSNR inside face / mouth / hands, mouth-audio correlation), next
to the "reference picture copied to every frame" baseline. Sampling seconds are DiT time only.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ...attention.pose_layout import SparseAttentionConfig
from ...bench.video_metrics import clip_scores, mean_scores
from ...pose.keypoints import PoseSequence
from ...pose.regions import sequence_masks
from ..clips import load_clips
from ..teacher_data import build_latent_set
from ..teacher_train import sample as teacher_sample
from ..teacher_train import window_mask
from ..vae_train import wan21_latent_format
from .schedule import StudentSchedule, sample
from .wan import WanModels, autocast

log = logging.getLogger(__name__)
KEYS = ("psnr", "ssim", "psnr_face", "psnr_mouth", "psnr_hands", "mouth_audio_corr")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """float ``[3, T, H, W]`` in -1..1 -> uint8 ``[T, H, W, 3]``."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()


@torch.no_grad()
def evaluate(student, teacher, vae, schedule: StudentSchedule, data: str, frames: int, dev: torch.device,
             windows: int = 8, teacher_steps: int = 20, teacher_cfg: float = 3.0, top_k: int = 2, causal: bool = True,
             amp: bool = True, seed: int = 1234, student_reference_itself: bool = False) -> dict:
    try:
        clips = load_clips(data, "heldout", None, keys=("frames", "keypoints", "masks", "energy"))
    except ValueError:
        log.warning("no held-out clips in %s: evaluating on training clips", data)
        clips = load_clips(data, "train", None, keys=("frames", "keypoints", "masks", "energy"))
    held = [c for c in clips if len(c["frames"]) >= frames][:windows]
    if not held:
        raise ValueError(f"evaluation: no clip has {frames} frames")
    hl = build_latent_set(held, vae, frames, 10 ** 9, dev, workers=1, amp=amp, seed=seed,
                          pattern=SparseAttentionConfig(top_k=top_k, causal=causal))
    ref = hl.x0[:, :, :1]
    every = torch.arange(len(hl), device=dev)
    mask = window_mask(hl, every)
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    noise = torch.randn(hl.x0.shape, generator=g, device=dev)
    models = WanModels(student, student, student, student, teacher, teacher_cfg, amp=amp)
    student_mask = window_mask(hl, every, True) if student_reference_itself else mask
    cond = {"control": hl.control, "ref": ref, "mask": mask, "student_mask": student_mask}
    _sync(dev)
    t0 = time.perf_counter()
    x_student = sample(lambda x, s: models.student_x0(x, s, cond, grad=False), noise, schedule.sigmas().to(dev), g)
    _sync(dev)
    t1 = time.perf_counter()
    x_teacher = teacher_sample(teacher, hl.control, ref, noise, teacher_steps, schedule.shift, teacher_cfg,
                               "bf16" if amp else "none", mask)
    _sync(dev)
    t2 = time.perf_counter()
    fmt = wan21_latent_format()
    scores: dict[str, list] = {"student": [], "teacher": [], "reference_copy": []}
    for i, clip in enumerate(held):
        gt = np.ascontiguousarray(clip["frames"][:frames])
        h, w = gt.shape[1:3]
        masks = {k: v[:frames] for k, v in clip["masks"].items()} if isinstance(clip.get("masks"), dict) else \
            sequence_masks(PoseSequence(np.asarray(clip["keypoints"][:frames], np.float32), w, h))
        energy = np.asarray(clip.get("energy", np.zeros(frames)))[:frames]
        for name, x in (("student", x_student), ("teacher", x_teacher)):
            with autocast(dev, amp):
                video = vae.decode(fmt.process_out(x[i:i + 1].float())).float()[0]
            scores[name].append(clip_scores(_to_uint8(video), gt, masks, energy))
        scores["reference_copy"].append(clip_scores(np.broadcast_to(gt[:1], gt.shape).copy(), gt, masks, energy))
    out = {name: mean_scores(v, KEYS) for name, v in scores.items()}
    out.update(windows=len(held), frames=frames, student_steps=schedule.steps, teacher_steps=teacher_steps,
               teacher_cfg=teacher_cfg, dit_seconds={"student": round(t1 - t0, 4), "teacher": round(t2 - t1, 4)},
               speedup=round((t2 - t1) / max(t1 - t0, 1e-9), 2))
    log.info("distill eval (%d held-out windows): student PSNR %s / teacher %s / reference copy %s; DiT %.3f s vs "
             "%.3f s", len(held), out["student"]["psnr"], out["teacher"]["psnr"], out["reference_copy"]["psnr"],
             t1 - t0, t2 - t1)
    return out
