"""The DMD engine on a 1-D toy whose teacher is known in closed form (a Gaussian mixture): the DMD gradient
equals the hand-computed one, and a few hundred iterations of the engine's own step (backward simulation,
online fake score, normalised DMD gradient) move a 2-step student's samples onto the teacher's
distribution. Plus the student schedule (sigmas, subsets, card round trip)."""
from __future__ import annotations

import math

import pytest
import torch

from iasa.training import flow
from iasa.training.distill.dmd import Batch, DMDConfig, DMDStep, EMA, dmd_gradient
from iasa.training.distill.schedule import StudentSchedule, chain_input, sample
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)

MIX_W, MIX_MU, MIX_S = (0.5, 0.5), (-2.0, 2.0), (0.5, 0.5)


def mixture_x0(x_t: torch.Tensor, sigma: torch.Tensor, w=MIX_W, mu=MIX_MU, s=MIX_S) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ sum_k w_k N(mu_k, s_k^2), x_t = (1 - sigma) x0 + sigma eps (closed form)."""
    sigma = sigma.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    a = 1 - sigma
    logp, post = [], []
    for wk, mk, sk in zip(w, mu, s):
        var = a ** 2 * sk ** 2 + sigma ** 2
        logp.append(math.log(wk) - 0.5 * torch.log(2 * math.pi * var) - (x_t - a * mk) ** 2 / (2 * var))
        post.append(mk + a * sk ** 2 / var * (x_t - a * mk))
    r = torch.softmax(torch.stack(logp), dim=0)
    return (r * torch.stack(post)).sum(0)


def sample_mixture(n: int, gen: torch.Generator) -> torch.Tensor:
    k = (torch.rand(n, generator=gen) < MIX_W[0]).float()
    mu = k * MIX_MU[0] + (1 - k) * MIX_MU[1]
    return mu + MIX_S[0] * torch.randn(n, generator=gen)


class ToyModels:
    def __init__(self, student, fake, real=mixture_x0):
        self.student, self.fake, self.real = student, fake, real

    def student_x0(self, x, sigma, cond, grad):
        return self.student(x, sigma)

    def real_x0(self, x, sigma, cond):
        return self.real(x, sigma)

    def fake_velocity(self, x, sigma, cond, grad):
        return self.fake(x, sigma)


class ToyData:
    """``dims`` independent coordinates per sample (the per-sample DMD normaliser averages over them, as
    it does over a latent's elements)."""

    def __init__(self, batch: int, dims: int = 16):
        self.batch, self.dims = batch, dims

    def draw(self, gen):
        return Batch(cond=None, latent_shape=(self.dims,), rows=slice(0, self.batch), global_batch=self.batch)


class Affine(torch.nn.Module):
    """G(x) = a x + b: its samples from noise are N(b, a^2), so its own x0 posterior is known too."""

    def __init__(self, a=1.0, b=0.3):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.tensor(a)), torch.nn.Parameter(torch.tensor(b))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, sigma):
        self.inputs.append(x.detach().clone())
        return self.a * x + self.b


class MLP(torch.nn.Module):
    def __init__(self, seed: int, width: int = 64, out_scale: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                       torch.nn.SiLU(), torch.nn.Linear(width, 1))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(p.shape[-1]) if p.ndim > 1 else 0.0))
        self.out_scale = out_scale

    def forward(self, x, sigma):
        """Applied to every coordinate of ``x [B, D]`` alike."""
        s = sigma.reshape(-1, 1).expand(x.shape).to(x.dtype)
        out = self.net(torch.stack([x, s], dim=-1).reshape(-1, 2)).reshape(x.shape)
        return self.out_scale * out


class StudentMLP(MLP):
    """x0 = x * (1 - sigma) + MLP: starts near "copy the input" (a student initialised from a rough model)."""

    def forward(self, x, sigma):
        return 0.5 * x + super().forward(x, sigma)


def _w1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.flatten().sort().values - b.flatten().sort().values).abs().mean())


# ------------------------------------------------------------------------------------------ schedule
def test_student_sigmas_are_shifted_timesteps_ending_in_zero():
    s = StudentSchedule((1000, 750, 500, 250), shift=5.0)
    assert torch.allclose(s.sigmas(), torch.tensor([1.0, 0.9375, 0.8333333, 0.625, 0.0]), atol=1e-6)
    assert StudentSchedule.default(3, 8.0).timesteps == (1000.0, 757.0, 522.0)
    assert s.subset(2).timesteps == (1000.0, 250.0) and s.subset(4) == s and s.subset(1).timesteps == (1000.0,)
    assert StudentSchedule.from_card(s.to_card()) == s
    for bad, words in [(((1000, 1000),), "decreasing"), (((1000, 800, 600, 400, 200),), "1 to 4"),
                       (((1200,),), "(0, 1000]")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")):
            StudentSchedule(*bad, shift=3.0)
    with pytest.raises(ValueError, match="trained for 4 steps"):
        s.subset(5)


def test_chain_input_is_the_lcm_chain_up_to_the_step():
    """Backward simulation feeds step k exactly what the sampler would: re-noised x0 of step k-1."""
    sig = StudentSchedule((1000, 600, 300), shift=3.0).sigmas()
    fn = lambda x, s: 0.5 * x + s[:, None]  # noqa: E731
    g = torch.Generator().manual_seed(0)
    noise, n1, n2 = (torch.randn(4, 3, generator=g) for _ in range(3))
    x1 = sig[1] * n1 + (1 - sig[1]) * fn(noise, sig[0].expand(4))
    assert torch.allclose(chain_input(fn, noise, [n1, n2], sig, 1), x1)
    x2 = sig[2] * n2 + (1 - sig[2]) * fn(x1, sig[1].expand(4))
    assert torch.allclose(chain_input(fn, noise, [n1, n2], sig, 2), x2)
    assert torch.equal(chain_input(fn, noise, [], sig, 0), noise)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    fresh = [torch.randn(4, 3, generator=g2) for _ in range(2)]
    assert torch.allclose(sample(fn, noise, sig, g1), fn(chain_input(fn, noise, fresh, sig, 2), sig[2].expand(4)))


# ------------------------------------------------------------------------------------------ DMD
def test_dmd_gradient_matches_the_hand_computed_one():
    """Closed-form real score (mixture) and fake score (the affine student's own Gaussian): the student's
    parameter gradient is E[(fake - real) / |x0 - real| * dG/dtheta] / B, with sigmas in the kept range."""
    student = Affine(a=0.8, b=0.3)

    def fake_v(x_t, sigma):  # velocity of the student's own distribution N(b, a^2)
        a, b = student.a.detach(), student.b.detach()
        x0 = mixture_x0(x_t, sigma, w=(1.0,), mu=(float(b),), s=(float(a.abs()),))
        return (x_t - x0) / sigma.reshape(-1, 1)

    seen = []

    def real(x_t, sigma):
        seen.append((x_t.clone(), sigma.clone()))
        return mixture_x0(x_t, sigma)

    schedule = StudentSchedule((1000,), shift=3.0)
    cfg = DMDConfig(guidance=1.0, fake_updates=1, t_min=0.02, t_max=0.98)
    B = 64
    step = DMDStep(ToyModels(student, fake_v, real), ToyData(B), schedule, cfg, torch.optim.SGD([torch.zeros(1)], 0.0),
                   [], torch.Generator().manual_seed(3), "cpu")
    loss, metrics = step.generator_loss(ToyData(B).draw(None))
    loss.backward()

    z = student.inputs[-1]                      # the student's input: pure noise at sigma 1
    x_t, sigma = seen[0]
    x0 = (student.a * z + student.b).detach()
    real_x0 = mixture_x0(x_t, sigma)
    fake_x0 = x_t - fake_v(x_t, sigma) * sigma.reshape(-1, 1)
    g = (fake_x0 - real_x0) / (x0 - real_x0).abs().mean(dim=1, keepdim=True)   # per-sample normaliser
    assert torch.allclose(dmd_gradient(x0, real_x0, fake_x0), g)
    n = z.numel()                                # the surrogate is a mean over every element
    assert torch.allclose(student.a.grad, (g * z).sum() / n, rtol=1e-4, atol=1e-8)
    assert torch.allclose(student.b.grad, g.sum() / n, rtol=1e-4, atol=1e-8)
    assert abs(float(student.b.grad)) > 1e-4
    lo, hi = flow.time_snr_shift(3.0, 0.02), flow.time_snr_shift(3.0, 0.98)
    assert float(sigma.min()) >= lo and float(sigma.max()) <= hi and float(sigma.max() - sigma.min()) > 0.3
    assert set(metrics) == {"dmd"}


def test_dmd_moves_a_two_step_students_samples_onto_the_teacher_distribution():
    torch.manual_seed(0)
    schedule = StudentSchedule((1000, 500), shift=1.0)
    student, fake = StudentMLP(seed=1, width=32, out_scale=0.5), MLP(seed=2, width=32)
    teacher = sample_mixture(4000, torch.Generator().manual_seed(9))
    noise = torch.randn(250, 16, generator=torch.Generator().manual_seed(10))

    def student_samples():
        with torch.no_grad():
            return sample(lambda x, s: student(x, s), noise, schedule.sigmas(), torch.Generator().manual_seed(11))

    before = student_samples()
    gen = torch.Generator().manual_seed(0)
    fake_opt = torch.optim.Adam(fake.parameters(), lr=2e-3, fused=True)
    gen_opt = torch.optim.Adam(student.parameters(), lr=5e-3, fused=True)
    step = DMDStep(ToyModels(student, fake), ToyData(32), schedule, DMDConfig(guidance=1.0, fake_updates=5),
                   fake_opt, list(fake.parameters()), gen, "cpu")
    for i in range(100):  # fake score warm-up on the initial student (it starts as a random net)
        step.fake_update(0)
    ema = EMA(student, decay=0.9, start=20)
    for it in range(300):
        gen_opt.zero_grad(set_to_none=True)
        loss, metrics = step(it)
        loss.backward()
        gen_opt.step()
        ema.update(student, it + 1)
    after = student_samples()
    w_before, w_after = _w1(before, teacher), _w1(after, teacher)
    pos = float((after > 0).float().mean())
    assert w_before > 1.0, w_before
    assert w_after < 0.3, (w_before, w_after)                          # measured 0.24 (from 1.8)
    assert 0.35 < pos < 0.65, pos                                      # both modes, not one
    for sign in (1, -1):
        mode = after[after * sign > 0]
        assert abs(float(mode.mean()) - 2.0 * sign) < 0.35 and 0.3 < float(mode.std()) < 0.9, (sign, mode.mean(), mode.std())
    assert all(torch.isfinite(v) for v in metrics.values())
    # The EMA tracks the student: its samples are close to the student's.
    with torch.no_grad():
        ema_after = sample(lambda x, s: ema.shadow(x, s), noise, schedule.sigmas(), torch.Generator().manual_seed(11))
    assert _w1(ema_after, teacher) < 0.45


def test_dmd_config_refuses_timesteps_at_the_ends():
    for kw in ({"t_min": 0.0}, {"t_max": 1.0}, {"t_min": 0.5, "t_max": 0.4}):
        with pytest.raises(ValueError, match="t_min"):
            DMDConfig(**kw)
    with pytest.raises(ValueError, match="fake_updates"):
        DMDConfig(fake_updates=0)
