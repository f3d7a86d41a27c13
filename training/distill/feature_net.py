"""A user-supplied feature network for the region loss (the paper's LPIPS / ArcFace term), read from a
safetensors file; nothing is downloaded.

Supported files: the convolutional ``features.*`` part of a torchvision AlexNet or VGG-16 (the LPIPS
backbones), optionally with LPIPS's per-channel ``lin{i}.weight`` (``[1, C, 1, 1]``) for each tapped layer.
The architecture is read from the header metadata ``iasa_feature_net`` (JSON
``{"arch": "torchvision.alexnet" | "torchvision.vgg16", "taps": [...]}``) or, without it, from the key
layout. In ComfyUI the files live in the model folder ``iasa_feature_nets`` (``models/iasa_feature_nets``).

Distance (LPIPS form): ImageNet-normalised inputs (upsampled to at least 64 px), unit-normalised channels
at each tap, squared differences (weighted by ``lin`` when present), averaged over the mask resized to the
tap's grid, then over taps. The inputs are the masked images, so the distance sees nothing outside the mask.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

FOLDER_KEY = "iasa_feature_nets"
META_KEY = "iasa_feature_net"
MIN_SIZE = 64
# torchvision feature indices of conv layers (for detection) and the ReLU outputs LPIPS taps.
ARCHS = {
    "torchvision.alexnet": {"convs": (0, 3, 6, 8, 10), "taps": (1, 4, 7, 9, 11)},
    "torchvision.vgg16": {"convs": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), "taps": (3, 8, 15, 22, 29)},
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureNetError(ValueError):
    """A file that is not a supported feature network."""


def build_features(arch: str) -> torch.nn.Sequential:
    """The ``features`` part of a torchvision model, uninitialised (built on the meta device: the classifier
    is never materialised); load weights into it."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.alexnet(weights=None) if arch == "torchvision.alexnet" else \
            torchvision.models.vgg16(weights=None)
    return model.features.to_empty(device="cpu")


def detect_arch(keys: set[str]) -> str:
    convs = tuple(sorted({int(k.split(".")[1]) for k in keys if k.startswith("features.") and k.endswith(".weight")}))
    for arch, spec in ARCHS.items():
        if convs == spec["convs"]:
            return arch
    raise FeatureNetError(f"feature network: conv layers at features.{list(convs)} match no supported architecture "
                          f"({', '.join(ARCHS)}); save torchvision AlexNet/VGG-16 'features.*' weights")


class FeatureNet(torch.nn.Module):
    def __init__(self, arch: str, features: torch.nn.Sequential, taps: tuple[int, ...],
                 lins: list[torch.Tensor] | None = None, name: str = ""):
        super().__init__()
        self.arch, self.features, self.taps, self.name = arch, features, tuple(taps), name
        self.n_lins = 0 if lins is None else len(lins)
        for i, t in enumerate(lins or []):
            self.register_buffer(f"lin{i}", t.float().reshape(1, -1, 1, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
            if i >= max(self.taps):
                break
        return out

    def distance(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[N]`` distances of images ``x``, ``y`` ``[N, 3, H, W]`` in 0..1 inside ``mask`` ``[N, 1, H, W]``."""
        h, w = x.shape[-2:]
        if min(h, w) < MIN_SIZE:
            size = (max(MIN_SIZE, round(h * MIN_SIZE / min(h, w))), max(MIN_SIZE, round(w * MIN_SIZE / min(h, w))))
            x, y = (F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (x, y))
            mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
        fx, fy = self._taps((x - self.mean) / self.std), self._taps((y - self.mean) / self.std)
        dist = x.new_zeros(x.shape[0])
        for i, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            d = (a - b) ** 2
            d = (d * getattr(self, f"lin{i}")).sum(1) if self.n_lins else d.sum(1)
            m = F.adaptive_avg_pool2d(mask, d.shape[-2:])[:, 0]
            dist = dist + (d * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-6)
        return dist / len(fx)


def load_feature_net(path: str | Path, device: torch.device | str = "cpu") -> FeatureNet:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature network {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
        sd = {k: f.get_tensor(k) for k in f.keys()}
    arch = meta.get("arch") or detect_arch(set(sd))
    if arch not in ARCHS:
        raise FeatureNetError(f"feature network {path.name}: arch {arch!r} is not supported; choose from {list(ARCHS)}")
    taps = tuple(meta.get("taps", ARCHS[arch]["taps"]))
    features = build_features(arch)
    feat_sd = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
    try:
        features.load_state_dict(feat_sd, strict=True)
    except RuntimeError as e:
        raise FeatureNetError(f"feature network {path.name}: weights do not fit {arch}: {str(e)[:300]}") from None
    lins = None
    if any(k.startswith("lin") for k in sd):
        missing = [f"lin{i}.weight" for i in range(len(taps)) if f"lin{i}.weight" not in sd]
        if missing:
            raise FeatureNetError(f"feature network {path.name}: LPIPS channel weights incomplete, missing {missing}")
        lins = [sd[f"lin{i}.weight"] for i in range(len(taps))]
    return FeatureNet(arch, features.float(), taps, lins, name=path.name).to(device)
