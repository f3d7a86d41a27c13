"""The Wan side of the distillation: model calls exactly as ComfyUI makes them, and decoding for the region loss.

Every call is ``teacher_train.teacher_velocity``: input ``[x_t | control | 0]``, the reference latent as
``ref_conv`` tokens, a zero text context, optionally the window's input-aware self-attention mask; the
velocity becomes x0 with ``flow.denoised``. The student always runs under the mask (the sparse layout is
built in: causal top-K by default); the real score (frozen teacher) and the fake score run sparse or
dense (``score_sparse``). The real score applies CFG against the zero pose-video latent with the same
reference, the negative the teacher was trained and is sampled with.
"""
from __future__ import annotations

import torch

from .. import flow
from ..teacher_train import teacher_velocity
from .data import GroundTruth, key_pixel_frames
from .dmd import Batch
from .region_loss import RegionLoss


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


class WanModels:
    def __init__(self, student: torch.nn.Module, student_train: torch.nn.Module, fake: torch.nn.Module,
                 fake_train: torch.nn.Module, teacher: torch.nn.Module, guidance: float, score_sparse: bool = True,
                 amp: bool = True, text_dim: int = 4096):
        self.student, self.student_train, self.fake, self.fake_train = student, student_train, fake, fake_train
        self.teacher, self.guidance, self.score_sparse = teacher, float(guidance), score_sparse
        self.amp, self.text_dim = amp, text_dim

    def _velocity(self, module, x, sigma, control, ref, mask) -> torch.Tensor:
        ctx = torch.zeros(x.shape[0], 1, self.text_dim, device=x.device, dtype=x.dtype)
        with autocast(x.device, self.amp):
            return teacher_velocity(module, x, sigma, control, ref, ctx, mask).float()

    def _score_mask(self, cond):
        return cond["mask"] if self.score_sparse else None

    def student_x0(self, x, sigma, cond, grad: bool) -> torch.Tensor:
        mask = cond.get("student_mask", cond["mask"])   # its own where the student's layout differs (reference_attends)
        if grad:
            v = self._velocity(self.student_train, x, sigma, cond["control"], cond["ref"], mask)
        else:
            with torch.no_grad():
                v = self._velocity(self.student, x, sigma, cond["control"], cond["ref"], mask)
        return flow.denoised(x.float(), v, sigma)

    @torch.no_grad()
    def real_x0(self, x, sigma, cond) -> torch.Tensor:
        mask = self._score_mask(cond)
        if self.guidance == 1.0:
            v = self._velocity(self.teacher, x, sigma, cond["control"], cond["ref"], mask)
        else:
            both = self._velocity(self.teacher, torch.cat([x, x]), torch.cat([sigma, sigma]),
                                  torch.cat([cond["control"], torch.zeros_like(cond["control"])]),
                                  torch.cat([cond["ref"], cond["ref"]]), None if mask is None else torch.cat([mask, mask]))
            c, u = both.chunk(2)
            v = flow.cfg_velocity(c, u, self.guidance)
        return flow.denoised(x.float(), v, sigma)

    def fake_velocity(self, x, sigma, cond, grad: bool) -> torch.Tensor:
        if grad:
            return self._velocity(self.fake_train, x, sigma, cond["control"], cond["ref"], self._score_mask(cond))
        with torch.no_grad():
            return self._velocity(self.fake, x, sigma, cond["control"], cond["ref"], self._score_mask(cond))


def decode_prefix(vae, latent_format, x0: torch.Tensor, latent_frames: int, amp: bool = False) -> torch.Tensor:
    """Decode latent frames ``0 .. latent_frames-1`` only (Wan's VAE is causal: these pixels equal those of a
    full decode) -> ``[B, 3, 1 + 4 (latent_frames - 1), H, W]``."""
    with autocast(x0.device, amp):
        return vae.decode(latent_format.process_out(x0[:, :, :latent_frames].float())).float()


def region_rows(windows: int, global_batch: int, rows: slice) -> list[int]:
    """This process's rows (indices into its own slice) of the ``windows`` global-batch windows the region loss
    scores: every ``global_batch // windows``-th window, so that each process of an even split gets the same
    number and several processes make the same update as one process on the global batch."""
    stride = max(1, global_batch // windows)
    picks = range(0, global_batch, stride)[:windows]
    return [i - rows.start for i in picks if rows.start <= i < rows.stop]


def check_region_split(windows: int, global_batch: int, world_size: int) -> None:
    """Refuse a --region-batch that the processes cannot share evenly (their updates would differ from one
    process's on the global batch)."""
    if windows <= 0 or windows >= global_batch or world_size == 1:
        return
    per_rank = global_batch // world_size
    counts = {len(region_rows(windows, global_batch, slice(r * per_rank, (r + 1) * per_rank)))
              for r in range(world_size)}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"--region-batch {windows}: {world_size} processes cannot share it evenly over a global "
                         f"batch of {global_batch}; use a multiple of {world_size} that divides {global_batch}, "
                         "or 0 (every window)")


class WanRegionTerm:
    """Region loss of a batch: ``frames`` latent frames drawn per step (the same for the whole global batch),
    the prefix up to the last of them decoded, the frame ending each compared with the ground truth."""

    def __init__(self, vae, latent_format, gt: GroundTruth, loss: RegionLoss, generator: torch.Generator,
                 amp: bool = False, windows: int = 0):
        self.vae, self.fmt, self.gt, self.loss, self.gen, self.amp = vae, latent_format, gt, loss, generator, amp
        self.windows = windows  # > 0: N windows of the global batch (the decode's activations bound memory)

    def __call__(self, x0: torch.Tensor, b: Batch):
        idx = b.gt["idx"]
        if 0 < self.windows < b.global_batch:
            local = region_rows(self.windows, b.global_batch, b.rows)
            x0, idx = x0[local], idx[local]
        f = x0.shape[2]
        k = min(self.loss.cfg.frames, f)
        pick = torch.randperm(f, generator=self.gen, device=x0.device)[:k].sort().values
        pick_cpu = pick.cpu()
        px = decode_prefix(self.vae, self.fmt, x0, int(pick_cpu.max()) + 1, self.amp)
        keys = torch.tensor(key_pixel_frames(f), device=x0.device)[pick]
        gt_px, bits = self.gt.take(idx, pick_cpu, x0.device)
        return self.loss(px[:, :, keys], gt_px, bits)
