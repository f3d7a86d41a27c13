# Sourced by the scripts that run on the GPU machine (train_iasa_mini_gpu.sh, distill_iasa_mini_gpu.sh,
# realtime_gpu.sh): the ComfyUI tree and the pure-Python modules that machine lacks, both carried in .dev/gpu
# (made here by scripts/pack_comfy_tree.sh). A tree unpacked from an older tarball is replaced.
gpu_env() {
  if [ -z "${COMFYUI_DIR:-}" ] && [ ! -f .dev/gpu/comfy.tar.gz ]; then
    echo "[gpu_env] no .dev/gpu/comfy.tar.gz (scripts/pack_comfy_tree.sh makes it): using the installed ComfyUI" >&2
  elif [ -z "${COMFYUI_DIR:-}" ]; then
    export COMFYUI_DIR=${IASA_COMFY_UNPACK_DIR:-/tmp/iasa_comfy}   # the unpacked tree (tests put it elsewhere)
    local sum
    sum=$(sha256sum .dev/gpu/comfy.tar.gz | cut -c1-16)
    # Two pipelines started side by side (e.g. the tiny autoencoder beside a VAE stage) once unpacked into the
    # same folder at the same time and one lost its tree: unpack under a lock, and into a fresh folder moved into
    # place, so a reader never sees half a tree.
    (
      flock 9
      if [ "$(cat "$COMFYUI_DIR/.iasa_tarball" 2>/dev/null)" != "$sum" ]; then
        rm -rf "$COMFYUI_DIR.new" && mkdir -p "$COMFYUI_DIR.new" && tar -xzf .dev/gpu/comfy.tar.gz -C "$COMFYUI_DIR.new"
        echo "$sum" > "$COMFYUI_DIR.new/.iasa_tarball"
        rm -rf "$COMFYUI_DIR" && mv "$COMFYUI_DIR.new" "$COMFYUI_DIR"
      fi
    ) 9> "$COMFYUI_DIR.lock"
  fi
  [ ! -d .dev/gpu/pylib ] || export PYTHONPATH="$PWD/.dev/gpu/pylib${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1
}

no_log() {  # no_log LOG: `wait` before (or without) `start`: say where it looked, and how the two must agree
  [ -f "$1" ] || { echo "[wait] no log $1: 'wait' finds the run by the same variables as 'start' (IASA_V2_WORK ...);" \
                        "export them for both, e.g. 'export IASA_V2_WORK=... && bash $0 start && bash $0 wait 540'" >&2; exit 2; }
}
