"""Checks and conversions for IASA Distill Student: ComfyUI's MODEL / VAE -> the training code's modules,
output names, data folders and the model folders it writes to. Every error names the input and the fix."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

import folder_paths

from ..training.distill.feature_net import FOLDER_KEY as FEATURE_FOLDER
from ..training.synth.shards import ShardFormatError, shard_index, shard_paths
from ..training.tiny_wan import (ModelFileError, build_teacher, build_vae, teacher_config_from_state_dict,
                                 vae_config_from_state_dict)
from .files import input_folder_problem, resolve_input_folder

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NO_FEATURE_NET = "none"


def output_name_problem(name: str) -> str | None:
    stem = (name or "").strip().removesuffix(".safetensors")
    if any(c in stem for c in "/\\") or ".." in stem or os.path.isabs(stem):
        return (f"output_name: '{name}' has a path in it; give a plain name such as 'my_student' (the student is "
                f"written to ComfyUI's diffusion_models folder as <name>.safetensors)")
    if not NAME.match(stem):
        return (f"output_name: '{name}' is not a usable file name; use 1-100 letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit")
    return None


def output_stem(name: str) -> str:
    problem = output_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name.strip().removesuffix(".safetensors")


def shard_folder(data: str, dataset: dict | None) -> Path:
    """The shard folder of the ``dataset`` input (IASA Build Dataset) or of ``data``, checked to hold
    readable shards with training clips."""
    if dataset is not None:
        if not isinstance(dataset, dict) or "path" not in dataset:
            raise ValueError("dataset: expected the output of IASA Build Dataset")
        folder, what = Path(dataset["path"]), "dataset"
    else:
        folder, what = Path(resolve_input_folder(data, "data")), "data"
    try:
        paths = shard_paths(folder)
        clips = [m for p in paths for m in shard_index(p)]
    except FileNotFoundError:
        raise ValueError(f"{what}: folder '{folder.name}' holds no training shards (*.safetensors); make them with "
                         f"IASA Build Dataset (videos with speech) or `iasa_cli.py training.synth.build render`") from None
    except (ShardFormatError, OSError, ValueError) as e:
        raise ValueError(f"{what}: {e}") from None
    if not any(m.get("split") == "train" for m in clips):
        raise ValueError(f"{what}: the shards in '{folder.name}' have no clips of the 'train' split "
                         f"({len(clips)} clips); rebuild them with a training split")
    return folder


def data_problem(data: str) -> str | None:
    return input_folder_problem(data, "data")


def check_wan_teacher(model) -> None:
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    name = type(dm).__name__
    if dm is None or name != "WanModel" or not hasattr(dm, "blocks"):
        raise ValueError(f"teacher: IASA Distill Student distils ComfyUI's native Wan DiT (WanModel, Fun-Control layout "
                         f"with ref_conv, like the bundled IASA-mini); got {name if dm is not None else type(model).__name__}. "
                         f"Load the teacher with UNETLoader")


def teacher_module(model) -> torch.nn.Module:
    """A float32 copy of the teacher MODEL's diffusion model (LoRA and other weight patches applied)."""
    import comfy.model_management

    check_wan_teacher(model)
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.model.diffusion_model.state_dict().items()}
    try:
        cfg = teacher_config_from_state_dict(sd)
    except (ModelFileError, ValueError, KeyError) as e:
        raise ValueError(f"teacher: {e}") from None
    module = build_teacher(cfg, init=False)
    module.load_state_dict(sd, strict=True)
    return module


def vae_module(vae) -> torch.nn.Module:
    """A float32 copy of a ComfyUI VAE that is a Wan 2.1 VAE (the latent space of the teacher)."""
    model = getattr(vae, "first_stage_model", None)
    if model is None:
        raise ValueError("vae: expected a VAE from VAELoader")
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    try:
        cfg = vae_config_from_state_dict(sd)
    except ModelFileError as e:
        raise ValueError(f"vae: {e}; use the VAE the teacher was trained with (IASA-mini: iasa_mini_vae)") from None
    module = build_vae(cfg, init=False)
    module.load_state_dict(sd, strict=True)
    return module


def vae_copy(vae: torch.nn.Module, path: Path) -> Path:
    """The VAE as a file for the latent cache's key (its sha256): the same weights give the same bytes, so
    IASA Build Dataset's latents are reused by IASA Distill Student."""
    from ..training.tiny_wan import save_model

    return save_model(vae, path, {"name": "VAE copy (IASA latent cache key)"}, dtype=torch.float32)


def register_feature_net_folder() -> str:
    """``models/iasa_feature_nets`` for the region loss's optional feature networks (safetensors only)."""
    default = os.path.join(folder_paths.models_dir, FEATURE_FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FEATURE_FOLDER, ([], set()))
    if default not in paths:
        paths = [default, *paths]
    folder_paths.folder_names_and_paths[FEATURE_FOLDER] = (paths, {".safetensors", ".sft"})
    return default


def feature_net_options() -> list[str]:
    return [NO_FEATURE_NET, *folder_paths.get_filename_list(FEATURE_FOLDER)]


def model_files(key: str) -> list[Path]:
    """Full paths of the files ComfyUI lists for a model folder key."""
    return [Path(p) for n in folder_paths.get_filename_list(key) if (p := folder_paths.get_full_path(key, n))]


def first_folder(key: str) -> Path:
    """Where to write a model of ``key``: ``models/<key>`` of the base directory when listed (ComfyUI lists the
    legacy ``models/unet`` first for diffusion_models), else the first folder of the key; created if missing."""
    paths = folder_paths.get_folder_paths(key)
    preferred = os.path.join(folder_paths.models_dir, key)
    folder = Path(next((p for p in paths if os.path.normpath(p) == os.path.normpath(preferred)), paths[0]))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
