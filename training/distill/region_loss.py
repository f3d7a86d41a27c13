"""Region loss (paper Eq. 5): decoded student frames against the ground truth inside body-region masks.

Per region ``r`` (face, lips, left/right hand, arms, torso: ``pose.regions.MASK_NAMES``, the masks the
shards carry) and per sample:

* masked L1: ``sum |x - y| * m / (3 * sum m)``;
* SSIM: ``1 - SSIM`` of the masked images ``x * m`` and ``y * m`` (11-tap Gaussian window, images mapped
  to 0..1), averaged over the mask;
* optionally a feature distance from a user-supplied network (``feature_net.py``) on the masked images.

The loss is ``sum_r w_r * (l1 * L1_r + ssim * S_r + feature * F_r)``, averaged over the batch. Because every
term reads the images only through ``x * m``, the loss does not change when pixels outside the masks do,
and its gradient reaches masked pixels only. A region absent from a sample contributes 0.

The paper uses ArcFace for the face and LPIPS elsewhere; their weights cannot be downloaded here, so
L1 + SSIM is the default and the feature network is the plug for users who have such weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...pose.regions import MASK_NAMES

DEFAULT_WEIGHTS = {"face": 1.0, "lips": 1.0, "left_hand": 1.0, "right_hand": 1.0, "arms": 0.5, "torso": 0.5}
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2


@dataclass
class RegionLossConfig:
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    l1: float = 1.0
    ssim: float = 1.0
    feature: float = 0.0
    frames: int = 4                # ground-truth frames compared per sample and step

    def __post_init__(self):
        bad = sorted(set(self.weights) - set(MASK_NAMES))
        if bad:
            raise ValueError(f"region weights: unknown regions {bad}; choose from {list(MASK_NAMES)}")
        neg = {k: v for k, v in self.weights.items() if v < 0}
        if neg or min(self.l1, self.ssim, self.feature) < 0:
            raise ValueError(f"region loss weights must be >= 0, got {neg or (self.l1, self.ssim, self.feature)}")
        if self.frames < 1:
            raise ValueError(f"region loss frames must be >= 1, got {self.frames}")

    @property
    def active(self) -> list[str]:
        return [n for n in MASK_NAMES if self.weights.get(n, 0.0) > 0]

    def to_card(self) -> dict:
        return {"weights": dict(self.weights), "l1": self.l1, "ssim": self.ssim, "feature": self.feature,
                "frames": self.frames}


def pack_mask_bits(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """``{name: bool [...]}`` -> uint8 with bit ``i`` = ``MASK_NAMES[i]`` (absent names: 0)."""
    ref = next(iter(masks.values()))
    out = torch.zeros(ref.shape, dtype=torch.uint8, device=ref.device)
    for i, name in enumerate(MASK_NAMES):
        if name in masks:
            out |= (masks[name].to(torch.bool).to(torch.uint8) << i)
    return out


def mask_of(bits: torch.Tensor, name: str) -> torch.Tensor:
    return ((bits >> MASK_NAMES.index(name)) & 1).to(torch.float32)


def _gauss(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, k // 2), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), padding=(k // 2, 0), groups=c)


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM ``[N, H, W]`` (mean over channels) of images ``[N, C, H, W]`` in 0..1."""
    g = _gauss(device=x.device)
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    s = ((2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (sxx + syy + SSIM_C2))
    return s.mean(dim=1)


class RegionLoss:
    """``__call__(gen, gt, bits)``: ``gen``/``gt`` float ``[B, 3, K, H, W]`` in -1..1, ``bits`` uint8
    ``[B, K, H, W]`` (:func:`pack_mask_bits`). Returns ``(loss, {"region_<name>": value})``."""

    def __init__(self, cfg: RegionLossConfig, feature_net=None):
        if cfg.feature > 0 and feature_net is None:
            raise ValueError("region loss: feature weight > 0 needs a feature network (feature_net.py)")
        self.cfg, self.feature_net = cfg, feature_net

    def __call__(self, gen: torch.Tensor, gt: torch.Tensor, bits: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if gen.shape != gt.shape or gen.ndim != 5 or bits.shape != (gen.shape[0],) + tuple(gen.shape[2:]):
            raise ValueError(f"region loss: gen/gt [B, 3, K, H, W] and masks [B, K, H, W] expected, got "
                             f"{tuple(gen.shape)}, {tuple(gt.shape)}, {tuple(bits.shape)}")
        b, c, k, h, w = gen.shape
        x = ((gen.float() + 1) / 2).permute(0, 2, 1, 3, 4).reshape(b * k, c, h, w)
        y = ((gt.float() + 1) / 2).permute(0, 2, 1, 3, 4).reshape(b * k, c, h, w)
        bits = bits.reshape(b * k, h, w)
        total = gen.new_zeros(b, dtype=torch.float32)
        parts = {}
        for name in self.cfg.active:
            m = mask_of(bits, name)[:, None]                      # [BK, 1, H, W]
            xm, ym = x * m, y * m
            count = m.reshape(b, -1).sum(1)                        # per sample
            term = gen.new_zeros(b, dtype=torch.float32)
            if self.cfg.l1 > 0:
                l1 = (xm - ym).abs().sum(dim=1).reshape(b, -1).sum(1) / (c * count).clamp_min(1.0)
                term = term + self.cfg.l1 * l1
            if self.cfg.ssim > 0:
                s = ((1 - ssim_map(xm, ym)) * m[:, 0]).reshape(b, -1).sum(1) / count.clamp_min(1.0)
                term = term + self.cfg.ssim * s
            if self.cfg.feature > 0:
                term = term + self.cfg.feature * self.feature_net.distance(xm, ym, m).reshape(b, k).mean(1)
            term = torch.where(count > 0, term, torch.zeros_like(term))
            parts[f"region_{name}"] = term.mean().detach()
            total = total + self.cfg.weights[name] * term
        return total.mean(), parts
