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


def apply_comfy_flags(flags: list[str]):
    """ComfyUI command-line flags (``--gpu-only``, ``--fast autotune``, ...) for an in-process run, parsed by
    ComfyUI's own ``comfy/cli_args.py`` (its parser and its post-processing) as its ``main.py`` would parse them.

    Only possible before ``comfy.model_management`` is first imported (it reads the flags at import). Returns
    ComfyUI's ``args``. On a machine without CUDA ComfyUI's CPU mode is set, as :func:`ensure_comfy_on_path` does.
    """
    import importlib

    import torch

    ensure_comfy_on_path()
    if "comfy.model_management" in sys.modules:
        raise RuntimeError(f"ComfyUI flags {flags} come too late: comfy.model_management is already imported "
                           "(apply them before anything loads a ComfyUI model)")
    import comfy.cli_args
    import comfy.options

    flags = list(flags)
    argv = sys.argv
    sys.argv = ["comfyui", *flags]
    comfy.options.enable_args_parsing(True)
    try:
        importlib.reload(comfy.cli_args)
    except SystemExit as e:   # argparse exits on an unknown flag, after printing its usage
        raise ValueError(f"ComfyUI does not accept the flags {flags}: see `python main.py --help` of ComfyUI") from e
    finally:
        sys.argv = argv
        comfy.options.enable_args_parsing(False)
    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True   # set, not parsed: --cpu excludes --gpu-only and the other VRAM flags
    log.info("ComfyUI flags for this run: %s", " ".join(flags) or "(none)")
    return comfy.cli_args.args
