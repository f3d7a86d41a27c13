"""Make ComfyUI's own modules importable from training code (``import comfy.ldm.wan.model``).

Training uses ComfyUI's model classes unchanged (WanVAE, WanModel), so the weights it writes load in
stock ComfyUI. The tree is ``$COMFYUI_DIR`` when set (e.g. a copy carried to a GPU machine), else the
tree vendored by the pack's venv (``harness/server.py: comfyui_dir``). On a machine without CUDA,
ComfyUI's model management is told ``--cpu`` before it first imports (it queries CUDA at import).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


from ..harness.server import comfyui_dir as comfy_dir  # noqa: E402  (the one home of "where is ComfyUI")


def ensure_comfy_on_path(cpu: bool | None = None) -> Path:
    """Put the ComfyUI tree on ``sys.path`` (once) and return it.

    ``cpu``: force ComfyUI's CPU mode; ``None`` = CPU mode exactly when CUDA is unavailable. Only
    effective before ``comfy.model_management`` is first imported.
    """
    tree = comfy_dir()
    if str(tree) not in sys.path:
        sys.path.insert(0, str(tree))
    if "comfy.model_management" not in sys.modules:
        import torch
        import comfy.cli_args

        want_cpu = (not torch.cuda.is_available()) if cpu is None else cpu
        if want_cpu:
            comfy.cli_args.args.cpu = True
    elif cpu:
        log.warning("comfy.model_management was imported before ensure_comfy_on_path(cpu=True); CPU mode not forced")
    return tree
