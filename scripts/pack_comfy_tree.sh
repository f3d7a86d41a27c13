#!/usr/bin/env bash
# Pack the ComfyUI tree the venv vendors (the modules training imports) into .dev/gpu/comfy.tar.gz, to
# carry to a GPU machine that cannot install it (scripts/train_iasa_mini_gpu.sh unpacks it). Tokenizer data is
# left out (training builds no text encoder; the code package comfy/ldm/cosmos/cosmos_tokenizer stays, comfy.sd imports it): 0.6 MB instead of 6.1, room in the 64 MiB a device call carries.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMFY=$("${IASA_HOME:-$REPO/.iasa}/venv/bin/python" "$REPO/scripts/comfy_path.py")
mkdir -p "$REPO/.dev/gpu"
tar -czf "$REPO/.dev/gpu/comfy.tar.gz" -C "$COMFY" --exclude=__pycache__ --exclude="comfy/sd1_tokenizer" --exclude="comfy/text_encoders/*_tokenizer" \
  comfy comfy_api comfy_execution comfy_config utils folder_paths.py main.py comfyui_version.py node_helpers.py \
  latent_preview.py
# Pure-Python modules ComfyUI's samplers import that the GPU machine's Python lacks (scripts/gpu_env.sh puts
# them on PYTHONPATH there): comfy.k_diffusion.sampling imports torchsde, which imports trampoline.
SITE=$("${IASA_HOME:-$REPO/.iasa}/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf "$REPO/.dev/gpu/pylib" && mkdir -p "$REPO/.dev/gpu/pylib"
for m in torchsde trampoline; do cp -r "$SITE/$m" "$REPO/.dev/gpu/pylib/"; done
find "$REPO/.dev/gpu/pylib" -name __pycache__ -prune -exec rm -rf {} +
ls -la "$REPO/.dev/gpu/comfy.tar.gz"; du -sh "$REPO/.dev/gpu/pylib"
