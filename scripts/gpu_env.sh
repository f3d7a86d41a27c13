# Sourced by the scripts that run on the GPU machine (train_iasa_mini_gpu.sh, distill_iasa_mini_gpu.sh,
# realtime_gpu.sh): the ComfyUI tree and the pure-Python modules that machine lacks, both carried in .dev/gpu
# (made here by scripts/pack_comfy_tree.sh). A tree unpacked from an older tarball is replaced.
gpu_env() {
  if [ -z "${COMFYUI_DIR:-}" ] && [ ! -f .dev/gpu/comfy.tar.gz ]; then
    echo "[gpu_env] no .dev/gpu/comfy.tar.gz (scripts/pack_comfy_tree.sh makes it): using the installed ComfyUI" >&2
  elif [ -z "${COMFYUI_DIR:-}" ]; then
    export COMFYUI_DIR=/tmp/iasa_comfy
    local sum
    sum=$(sha256sum .dev/gpu/comfy.tar.gz | cut -c1-16)
    if [ "$(cat "$COMFYUI_DIR/.iasa_tarball" 2>/dev/null)" != "$sum" ]; then
      rm -rf "$COMFYUI_DIR" && mkdir -p "$COMFYUI_DIR" && tar -xzf .dev/gpu/comfy.tar.gz -C "$COMFYUI_DIR"
      echo "$sum" > "$COMFYUI_DIR/.iasa_tarball"
    fi
  fi
  [ ! -d .dev/gpu/pylib ] || export PYTHONPATH="$PWD/.dev/gpu/pylib${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1
}
