"""Flow matching exactly as ComfyUI samples Wan (``ModelSamplingDiscreteFlow`` + ``CONST``).

* noising: ``x_t = (1 - sigma) * x0 + sigma * noise`` (``CONST.noise_scaling``);
* the model predicts the velocity ``noise - x0`` (``CONST.calculate_denoised``: ``x0 = x_t - v * sigma``);
* the Wan time embedding sees ``timestep = sigma * 1000``;
* ``sigma = shift * u / (1 + (shift - 1) * u)`` (``time_snr_shift``). Training draws ``u ~ U(0, 1)``, so
  the sigmas follow the same density as a ``simple``-scheduler sampling run at that ``shift`` (ComfyUI's
  Wan default is 8; ``ModelSamplingSD3`` sets another). Keep the training shift in the model card.

Nothing here imports ComfyUI; tests check these numbers against ComfyUI's own classes.
"""
from __future__ import annotations

from typing import Callable

import torch

MULTIPLIER = 1000.0
NUM_TIMESTEPS = 1000


def time_snr_shift(shift: float, t: torch.Tensor | float):
    """ComfyUI's ``time_snr_shift``: maps ``t`` in [0, 1] to a sigma in [0, 1]."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def sample_sigmas(n: int, shift: float, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` training sigmas in (0, 1): uniform ``u`` pushed through the shift (float32)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float32)
    u = u.clamp(1.0 / NUM_TIMESTEPS, 1.0)  # ComfyUI's discrete table starts at t = 1/1000
    return time_snr_shift(shift, u)


def _bcast(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


def noisy_latent(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = _bcast(sigma, x0.ndim).to(x0.dtype)
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def model_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """What ``WAN21.apply_model`` hands the Wan backbone for ``sigma``."""
    return sigma.float() * MULTIPLIER


def denoised(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x_t - velocity * _bcast(sigma, x_t.ndim).to(x_t.dtype)


def flow_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared velocity error (float32), one number."""
    return torch.mean((pred.float() - velocity_target(x0, noise).float()) ** 2)


def discrete_sigmas(shift: float, timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """``ModelSamplingDiscreteFlow.sigmas``: the table the schedulers read."""
    timestep = (torch.arange(1, timesteps + 1, 1) / timesteps) * MULTIPLIER  # same float ops as ComfyUI
    return time_snr_shift(shift, timestep / MULTIPLIER)


def simple_sigmas(shift: float, steps: int) -> torch.Tensor:
    """ComfyUI's ``simple`` scheduler for a flow model at ``shift`` (``steps + 1`` values, last 0)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    table = discrete_sigmas(shift)
    stride = len(table) / steps
    sig = [float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0]
    return torch.tensor(sig, dtype=torch.float32)


def student_sigmas(steps: int, shift: float = 5.0) -> torch.Tensor:
    """The few-step student schedule: ``u = 1, 1 - 1/N, ..., 1/N`` through the shift, then 0 (``N + 1`` values).

    4 steps at shift 5 give timesteps 1000, 937.5, 833.3, 625: the schedule lightx2v's 4-step Wan LoRAs
    expect (reference/update-2026-12.md section 4); 2 steps give 1000, 833.3; 1 step 1000. Feed it to a
    ``SamplerCustom`` (cfg 1) as SIGMAS.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    u = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
    return torch.cat([time_snr_shift(shift, u), torch.zeros(1, dtype=torch.float64)]).float()


@torch.no_grad()
def sample_euler(velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                 sigmas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``euler`` sampler for a flow model: ``x += v * (sigma_next - sigma)``.

    ``velocity_fn(x, sigma_batch)`` returns the (CFG-combined) velocity. Starts from pure noise at
    ``sigmas[0]`` (``noise_scaling`` of an empty latent at sigma 1 is the noise itself).
    """
    x = noise * sigmas[0]
    for i in range(len(sigmas) - 1):
        s = sigmas[i].to(x.device).expand(x.shape[0])
        v = velocity_fn(x, s)
        x = x + v.to(x.dtype) * (sigmas[i + 1] - sigmas[i]).to(x.device)
    return x


def cfg_velocity(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance as ComfyUI combines it (on x0, equivalently on velocity)."""
    return uncond + (cond - uncond) * scale
