"""Distribution matching distillation, DMD2 style, over any models and data.

One training step (:class:`DMDStep`, a ``step_fn`` for ``training.runner.Runner``):

1. ``fake_updates`` fake-score updates: the student makes samples (its own few-step chain, no gradients,
   at a random step of its schedule), and the fake score is trained on them with the flow-matching loss
   (``training.flow.flow_loss``: noise them at a training sigma, regress the velocity);
2. one generator update: backward simulation (the chain, without gradients, up to a random step ``k``;
   then the student's step ``k`` with gradients), the sample is noised at a sigma drawn with
   ``t`` in ``[t_min, t_max]`` (kept away from 0 and 1), and the DMD gradient
   ``(x0_fake - x0_real) / mean|x0 - x0_real|`` (DMD/DMD2 normaliser, per sample) is applied through the
   surrogate ``0.5 * mse(x0, stopgrad(x0 - grad))``; the real x0 comes from the frozen teacher with CFG,
   the fake x0 from the fake score. An optional region term (paper Eq. 5) adds ``region_weight * loss``.

The runner backpropagates the returned generator loss and steps the generator's optimizer; the fake
score's optimizer is stepped here. Every random number comes from the run's shared generator in
global-batch shape and each rank keeps its rows, so N ranks equal one process on the global batch and
a resumed run draws what the uninterrupted one drew.

Adapters: ``models`` has ``student_x0(x, sigma, cond, grad)``, ``real_x0(x, sigma, cond)`` and
``fake_velocity(x, sigma, cond, grad)`` (``grad=True`` calls the DDP-wrapped module); ``data.draw(gen)``
returns a :class:`Batch`. ``wan.py`` has the Wan ones; the tests use a 1-D Gaussian-mixture toy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import flow
from .schedule import StudentSchedule, chain_input


@dataclass
class DMDConfig:
    guidance: float = 3.0          # CFG scale of the real score (the teacher)
    fake_updates: int = 5          # fake-score updates per generator update
    t_min: float = 0.02            # DMD noise levels: t in [t_min, t_max] (fractions of 1000), then shifted
    t_max: float = 0.98
    fake_grad_clip: float = 1.0
    region_weight: float = 1.0     # lambda_region of paper Eq. 6

    def __post_init__(self):
        if self.fake_updates < 1:
            raise ValueError(f"fake_updates must be >= 1, got {self.fake_updates}")
        if not 0 < self.t_min < self.t_max < 1:
            raise ValueError(f"DMD timesteps: need 0 < t_min < t_max < 1, got {self.t_min}, {self.t_max}")
        if self.guidance < 1:
            raise ValueError(f"guidance (real-score CFG) must be >= 1, got {self.guidance}")
        if self.region_weight < 0:
            raise ValueError(f"region_weight must be >= 0, got {self.region_weight}")


@dataclass
class Batch:
    cond: Any                      # what the models adapter reads (this rank's rows)
    latent_shape: tuple[int, ...]  # one sample's latent shape
    rows: slice                    # this rank's rows of the global batch
    global_batch: int
    gt: Any = None                 # what the region term reads


def dmd_sigmas(n: int, shift: float, t_min: float, t_max: float, generator: torch.Generator,
               device: torch.device | str) -> torch.Tensor:
    """Sigmas for the DMD gradient: ``t ~ U(t_min, t_max)`` pushed through the flow shift."""
    u = t_min + (t_max - t_min) * torch.rand(n, generator=generator, device=device)
    return flow.time_snr_shift(shift, u)


def dmd_gradient(x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """``(fake - real) / mean|x0 - real|`` with the mean per sample (DMD / DMD2), NaN-free, float32."""
    x0, real_x0, fake_x0 = x0.detach().float(), real_x0.float(), fake_x0.float()
    dims = tuple(range(1, x0.ndim))
    norm = (x0 - real_x0).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((fake_x0 - real_x0) / norm)


def dmd_loss(x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """Surrogate whose gradient w.r.t. ``x0`` is ``dmd_gradient / x0.numel()`` (DMD2's ``0.5 * mse``)."""
    grad = dmd_gradient(x0, real_x0, fake_x0)
    return 0.5 * F.mse_loss(x0.float(), (x0.detach().float() - grad).detach(), reduction="mean")


class EMA(torch.nn.Module):
    """Exponential moving average of a module's parameters (buffers copied). Before ``start`` steps it
    tracks the weights exactly."""

    def __init__(self, module: torch.nn.Module, decay: float, start: int = 0):
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.start = float(decay), int(start)
        self.shadow = copy.deepcopy(module).requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = self.decay if step > self.start else 0.0
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.lerp_(p.detach().to(s.dtype), 1.0 - d)
        for s, b in zip(self.shadow.buffers(), module.buffers()):
            s.copy_(b)


RegionTerm = Callable[[torch.Tensor, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class DMDStep:
    def __init__(self, models, data, schedule: StudentSchedule, cfg: DMDConfig, fake_optimizer: torch.optim.Optimizer,
                 fake_params: list[torch.nn.Parameter], generator: torch.Generator, device: torch.device | str,
                 region: RegionTerm | None = None, fake_lr: Callable[[int], float] | None = None):
        self.models, self.data, self.schedule, self.cfg = models, data, schedule, cfg
        self.fake_opt, self.fake_params, self.gen = fake_optimizer, list(fake_params), generator
        self.device = torch.device(device)
        self.region, self.fake_lr = region, fake_lr
        self.sigmas = schedule.sigmas().to(self.device)

    # -- random draws (global batch shape, this rank's rows) ---------------------------------------
    def _randn(self, b: Batch) -> torch.Tensor:
        return torch.randn((b.global_batch, *b.latent_shape), generator=self.gen, device=self.device)[b.rows]

    def _rows(self, values: torch.Tensor, b: Batch) -> torch.Tensor:
        return values[b.rows]

    def _step_index(self) -> int:
        return int(torch.randint(0, self.schedule.steps, (1,), generator=self.gen, device=self.device).item())

    # -- pieces ------------------------------------------------------------------------------------
    def student_input(self, b: Batch, k: int) -> torch.Tensor:
        """Backward simulation: the input of step ``k`` made by the student's own chain (no gradients)."""
        noise = self._randn(b)
        step_noise = [self._randn(b) for _ in range(k)]
        fn = lambda x, s: self.models.student_x0(x, s, b.cond, grad=False)  # noqa: E731
        return chain_input(fn, noise, step_noise, self.sigmas, k)

    @torch.no_grad()
    def student_sample(self, b: Batch) -> torch.Tensor:
        """A student x0 at a random step of its schedule (what the fake score learns)."""
        k = self._step_index()
        x = self.student_input(b, k)
        return self.models.student_x0(x, self.sigmas[k].expand(x.shape[0]), b.cond, grad=False).float()

    def fake_update(self, step: int) -> torch.Tensor:
        """One flow-matching step of the fake score on fresh student samples; returns its loss."""
        b = self.data.draw(self.gen)
        x0 = self.student_sample(b)
        sigma = self._rows(flow.sample_sigmas(b.global_batch, self.schedule.shift, generator=self.gen,
                                              device=self.device), b)
        noise = self._randn(b)
        x_t = flow.noisy_latent(x0, noise, sigma)
        if self.fake_lr is not None:
            for g in self.fake_opt.param_groups:
                g["lr"] = self.fake_lr(step)
        self.fake_opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            v = self.models.fake_velocity(x_t, sigma, b.cond, grad=True)
            loss = flow.flow_loss(v, x0, noise)
            loss.backward()
        if self.cfg.fake_grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.fake_params, self.cfg.fake_grad_clip, foreach=True)
        self.fake_opt.step()
        return loss.detach()

    def generator_loss(self, b: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        k = self._step_index()
        x = self.student_input(b, k)
        x0 = self.models.student_x0(x, self.sigmas[k].expand(x.shape[0]), b.cond, grad=True)
        sigma = self._rows(dmd_sigmas(b.global_batch, self.schedule.shift, self.cfg.t_min, self.cfg.t_max,
                                      self.gen, self.device), b)
        noise = self._randn(b)
        with torch.no_grad():
            x_t = flow.noisy_latent(x0.detach().float(), noise, sigma)
            real = self.models.real_x0(x_t, sigma, b.cond).float()
            fake = flow.denoised(x_t, self.models.fake_velocity(x_t, sigma, b.cond, grad=False).float(), sigma)
        loss = dmd_loss(x0, real, fake)
        metrics = {"dmd": loss.detach()}
        if self.region is not None and self.cfg.region_weight > 0:
            r, parts = self.region(x0, b)
            loss = loss + self.cfg.region_weight * r
            metrics["region"] = r.detach()
            metrics.update(parts)
        return loss, metrics

    def __call__(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fake = torch.stack([self.fake_update(step) for _ in range(self.cfg.fake_updates)]).mean()
        loss, metrics = self.generator_loss(self.data.draw(self.gen))
        metrics["fake"] = fake
        return loss, metrics
