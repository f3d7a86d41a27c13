"""Provenance fields of the IASA-mini model cards (``<weights>.json`` beside each file and the same JSON in
the safetensors header under ``tiny_wan.CARD_KEY``): the command that trained the file, its training time,
hardware, software versions and date. The trainers add their own data, steps and metrics.
"""
from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def training_command(argv: list[str] | None = None, world_size: int = 1) -> str:
    """The command line that ran this training, as ``iasa_cli.py <module> args`` (runpy leaves the module's
    file path in ``argv[0]``; it is written back as the module name)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(".py"):
        try:
            argv[0] = ".".join(Path(argv[0]).resolve().relative_to(REPO).with_suffix("").parts)
        except ValueError:
            pass
    launcher = f"torchrun --nproc_per_node={world_size}" if world_size > 1 else "python"
    return f"{launcher} iasa_cli.py " + " ".join(shlex.quote(a) for a in argv)


def hardware(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(device)} ({torch.cuda.device_count()} visible)"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def comfyui_version() -> str:
    """``__version__`` of the ComfyUI tree the training classes come from ("unknown" if not found)."""
    from .comfy_env import comfy_dir

    try:
        text = (comfy_dir() / "comfyui_version.py").read_text()
    except OSError:
        return "unknown"
    m = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    return m.group(1) if m else "unknown"


def provenance(train_seconds: float, device: torch.device | str, world_size: int = 1,
               argv: list[str] | None = None, init: dict | None = None) -> dict:
    """``{"command", "train_seconds", "world_size", "hardware", "versions", "date"}`` for a model card, plus
    ``"init"`` (the weights a fine-tune started from, ``tiny_wan.init_from_weights``) when given."""
    return {**({"init": init} if init else {}), "command": training_command(argv, world_size), "train_seconds": round(float(train_seconds), 1),
            "world_size": int(world_size), "hardware": hardware(device),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "comfyui": comfyui_version()},
            "date": time.strftime("%Y-%m-%d")}
