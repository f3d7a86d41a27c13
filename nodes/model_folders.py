"""Make stock loaders list the pack's bundled weights (IASA-mini).

The pack ships ``models/diffusion_models/*.safetensors`` (read by ``UNETLoader``),
``models/vae/*.safetensors`` (``VAELoader``; the IASA-mini VAE and its tiny autoencoder) and
``models/vae_approx/lighttaew2_1_*.safetensors`` (ComfyUI's latent previews of Wan 2.1-format models, see
``training/tiny_vae.py``; ComfyUI takes the first ``lighttaew2_1*`` name in sorted order, so a user's own
``lighttaew2_1.safetensors`` / ``.pth`` comes before the bundled one).
Each folder is appended to ComfyUI's folder list of that
key, after the user's own folders (``models/...`` of the base directory and any extra-model-paths YAML
entries, which may already be there when the pack imports), so a user's file of the same name wins.
All three keys exist in stock ComfyUI with the weight extensions (the pack's README.md and the ``.json`` model
cards beside the weights are not listed). Should a key be missing (an unusual ComfyUI), it is created
with the safetensors extensions only: a key created with an empty extension set would list every file.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_FOLDERS = {"diffusion_models": ("models", "diffusion_models"), "vae": ("models", "vae"),
                   "vae_approx": ("models", "vae_approx")}
WEIGHT_EXTENSIONS = frozenset({".safetensors", ".sft"})


def _same_folder(a: str, b: str) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def register_bundled_model_folders(root: str | os.PathLike = PACK_ROOT,
                                   folder_paths: ModuleType | None = None) -> dict[str, str]:
    """Append ``<root>/models/<key>`` to ComfyUI's folder list of each bundled key (once; a folder
    already listed, e.g. through a YAML entry, is not added again). Returns ``{key: folder}``."""
    if folder_paths is None:
        import folder_paths
    added = {}
    for key, parts in BUNDLED_FOLDERS.items():
        folder = os.path.join(os.fspath(root), *parts)
        if key not in folder_paths.folder_names_and_paths:
            log.warning("ComfyUI has no '%s' model folder key; creating it for the bundled %s", key, folder)
            folder_paths.folder_names_and_paths[key] = ([folder], set(WEIGHT_EXTENSIONS))
        else:
            paths, _extensions = folder_paths.folder_names_and_paths[key]
            if not any(_same_folder(p, folder) for p in paths):
                paths.append(folder)
        added[key] = folder
    return added
