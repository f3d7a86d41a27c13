"""The student's timesteps and its few-step chain.

A student is trained on a fixed list of 1-4 timesteps (``t`` in 0..1000, first 1000 = pure noise) at a
flow ``shift``; its sigmas are ``time_snr_shift(shift, t / 1000)`` followed by 0, the numbers IASA Student
Sigmas hands to stock ``SamplerCustom``. Because ComfyUI's flow models feed ``sigma * 1000`` to the network
whatever shift their ``model_sampling`` has, these sigmas mean the same thing behind any ModelSamplingSD3.

The chain is ComfyUI's ``sample_lcm`` for a flow model: ``x = sigma_0 * noise`` (``noise_scaling`` of an
empty latent), then per step ``x0 = student(x, sigma_i)`` and, unless the next sigma is 0,
``x = sigma_{i+1} * fresh_noise + (1 - sigma_{i+1}) * x0``. Training runs the same chain without gradients
up to the step it trains (backward simulation), so the student is trained on the inputs it will see.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .. import flow

MAX_STEPS = 4
DEFAULT_TIMESTEPS: dict[int, tuple[float, ...]] = {
    1: (1000.0,),
    2: (1000.0, 500.0),
    3: (1000.0, 757.0, 522.0),        # CausVid's 3-step list
    4: (1000.0, 750.0, 500.0, 250.0),
}


@dataclass(frozen=True)
class StudentSchedule:
    timesteps: tuple[float, ...]
    shift: float

    def __post_init__(self):
        ts = tuple(float(t) for t in self.timesteps)
        object.__setattr__(self, "timesteps", ts)
        if not 1 <= len(ts) <= MAX_STEPS:
            raise ValueError(f"student timesteps: 1 to {MAX_STEPS} steps, got {len(ts)} ({list(ts)})")
        if any(not 0 < t <= 1000 for t in ts) or any(b >= a for a, b in zip(ts, ts[1:])):
            raise ValueError(f"student timesteps must be strictly decreasing values in (0, 1000], got {list(ts)}")
        if not self.shift > 0:
            raise ValueError(f"student shift must be > 0, got {self.shift}")

    @classmethod
    def default(cls, steps: int, shift: float) -> "StudentSchedule":
        if steps not in DEFAULT_TIMESTEPS:
            raise ValueError(f"student steps must be 1 to {MAX_STEPS}, got {steps}")
        return cls(DEFAULT_TIMESTEPS[steps], shift)

    @classmethod
    def parse(cls, text: str, steps: int, shift: float) -> "StudentSchedule":
        """``"1000,750,500,250"`` or ``""`` (the default list for ``steps``)."""
        if not text.strip():
            return cls.default(steps, shift)
        try:
            ts = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"--timesteps {text!r}: expected comma-separated numbers like 1000,750,500,250") from None
        return cls(ts, shift)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def sigmas(self) -> torch.Tensor:
        """float32 ``[steps + 1]``, last 0 (a SIGMAS value)."""
        s = [float(flow.time_snr_shift(self.shift, t / flow.MULTIPLIER)) for t in self.timesteps]
        return torch.tensor(s + [0.0], dtype=torch.float32)

    def subset(self, steps: int) -> "StudentSchedule":
        """Sampling with fewer steps than trained: ``steps`` of the trained timesteps, evenly spread, the
        first (noisiest) always included. Every input the student then sees is a re-noised x0 at a sigma
        it was trained at."""
        if not 1 <= steps <= self.steps:
            raise ValueError(f"steps: this student was trained for {self.steps} steps; choose 1 to {self.steps}, "
                             f"got {steps}")
        idx = np.unique(np.round(np.linspace(0, self.steps - 1, steps)).astype(int))
        return StudentSchedule(tuple(self.timesteps[i] for i in idx), self.shift)

    def to_card(self) -> dict:
        return {"timesteps": list(self.timesteps), "shift": self.shift, "steps": self.steps,
                "sigmas": [round(float(s), 7) for s in self.sigmas()]}

    @classmethod
    def from_card(cls, card: dict) -> "StudentSchedule":
        return cls(tuple(card["timesteps"]), float(card["shift"]))


X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (x_t, sigma [B]) -> x0


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``CONST.noise_scaling``: ``sigma * noise + (1 - sigma) * x0`` (one sigma for the batch)."""
    return sigma * noise + (1.0 - sigma) * x0


@torch.no_grad()
def chain_input(x0_fn: X0Fn, noise: torch.Tensor, step_noise: list[torch.Tensor], sigmas: torch.Tensor,
                k: int) -> torch.Tensor:
    """The input of step ``k`` of the chain (backward simulation): steps ``0..k-1`` run without gradients,
    each re-noised with ``step_noise[i]``."""
    x = noise * sigmas[0]
    for i in range(k):
        s = sigmas[i].to(x.device)
        x0 = x0_fn(x, s.expand(x.shape[0]))
        x = renoise(x0, step_noise[i], sigmas[i + 1].to(x.device))
    return x


@torch.no_grad()
def sample(x0_fn: X0Fn, noise: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The full chain from ``noise`` (what ComfyUI's ``lcm`` sampler computes), fresh noise between steps."""
    x = noise * sigmas[0]
    for i in range(len(sigmas) - 1):
        s = sigmas[i].to(x.device)
        x0 = x0_fn(x, s.expand(x.shape[0]))
        if float(sigmas[i + 1]) > 0:
            fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = renoise(x0, fresh, sigmas[i + 1].to(x.device))
        else:
            x = x0
    return x
