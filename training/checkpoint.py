"""Atomic training checkpoints without pickle: tensors in safetensors, everything else in JSON.

Layout under the run directory::

    checkpoints/ckpt-00000100/{model.safetensors, optim.safetensors, rng.safetensors, state.json}
    checkpoints/latest.json        {"path": "ckpt-00000100", "step": 100}

A checkpoint directory is written under a temporary name and renamed into place (``os.replace``), then
``latest.json`` is replaced atomically, so a run killed at any moment leaves the previous checkpoint
readable. Older checkpoints beyond ``keep`` are deleted after the new one is in place.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
LATEST = "latest.json"
PREFIX = "ckpt-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read back."""


# ----------------------------------------------------------------------------- optimizer <-> tensors
def optimizer_to_tensors(opt: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``opt.state_dict()`` (or such a dict: integer parameter indices) split into a flat tensor dict and a
    JSON-able rest."""
    sd = opt.state_dict() if isinstance(opt, torch.optim.Optimizer) else opt
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"state.{idx}.{key}"] = val.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    opt.load_state_dict(optimizer_state_from_tensors(tensors, meta))


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of :func:`optimizer_to_tensors`: an ``opt.state_dict()``-shaped dict."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = val
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------ RNG <-> tensors
def rng_to_tensors(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    for name, g in generators.items():
        out[f"gen_{name}"] = g.get_state()
    return out


def rng_from_tensors(tensors: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    if "torch_cpu" in tensors:
        torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    for name, g in generators.items():
        key = f"gen_{name}"
        if key not in tensors:
            raise CheckpointError(f"checkpoint has no RNG state for generator {name!r}")
        g.set_state(tensors[key])


# ----------------------------------------------------------------------------------------- manager
def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


class CheckpointManager:
    def __init__(self, directory: str | Path, keep: int = 2):
        self.dir = Path(directory)
        self.keep = max(1, int(keep))

    def save(self, step: int, files: dict[str, dict[str, torch.Tensor]], state: dict) -> Path:
        """``files``: name -> tensor dict (one ``<name>.safetensors`` each); ``state``: JSON-able."""
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{PREFIX}{step:08d}"
        final = self.dir / name
        tmp = self.dir / f".{name}.tmp{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for fname, tensors in files.items():
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp / f"{fname}.safetensors"))
        _write_json(tmp / "state.json", {**state, "step": int(step)})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_json(self.dir / LATEST, {"path": name, "step": int(step)})
        self._prune(keep_name=name)
        return final

    def _prune(self, keep_name: str) -> None:
        done = sorted(p for p in self.dir.glob(f"{PREFIX}*") if p.is_dir())
        for p in done[: max(0, len(done) - self.keep)]:
            if p.name != keep_name:
                shutil.rmtree(p, ignore_errors=True)

    def latest(self) -> Path | None:
        pointer = self.dir / LATEST
        if not pointer.is_file():
            return None
        path = self.dir / json.loads(pointer.read_text())["path"]
        if not (path / "state.json").is_file():
            raise CheckpointError(f"{pointer} points at {path}, which has no state.json; delete {pointer} to start over")
        return path

    @staticmethod
    def load(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        from safetensors.torch import load_file

        path = Path(path)
        state_file = path / "state.json"
        if not state_file.is_file():
            raise CheckpointError(f"{path} is not a checkpoint directory (no state.json)")
        files = {p.stem: load_file(str(p)) for p in sorted(path.glob("*.safetensors"))}
        return files, json.loads(state_file.read_text())


def model_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
