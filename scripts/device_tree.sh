#!/usr/bin/env bash
# What a device call would carry, and how to keep it under the 64 MiB limit (run on the CPU machine).
#
#   bash scripts/device_tree.sh size [carry paths...]   # MiB of tracked + untracked-not-ignored files + the carry paths
#   bash scripts/device_tree.sh hide [files...]         # move bundled weights the GPU job does not read out of the
#                                                       # checkout (default: the student and both tiny-autoencoder
#                                                       # files) into .dev/hidden/
#   bash scripts/device_tree.sh restore                 # put them back (run it after the device calls)
#
# With the five bundled model files (teacher 20 MB, student 20 MB, VAE 28 MB, tiny autoencoder and its preview twin
# 23 MB each) the checkout is ~113 MiB, over the 64 MiB a device call carries; the GPU jobs read the teacher and the
# VAE (distillation, a tiny-autoencoder stage from scratch), not the student or the tiny files (a tiny stage that
# continues from the shipped file names it: hide the teacher instead).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
HIDDEN=.dev/hidden
DEFAULT_HIDE=(models/diffusion_models/iasa_mini_student.safetensors models/vae/iasa_mini_tiny_vae.safetensors
              models/vae_approx/lighttaew2_1_iasa_mini.safetensors)

size() {
  local bytes
  bytes=$( { git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
               [ -f "$f" ] && stat -c %s "$f"; done
             for p in "$@"; do find "$p" -type f -printf '%s\n'; done; } | awk '{s += $1} END {print s + 0}')
  awk -v b="$bytes" 'BEGIN {printf "%.1f MiB would travel (limit 64 MiB)\n", b / 1048576}'
}

case "${1:-size}" in
  size) shift || true; size "$@" ;;
  hide)
    shift || true
    files=("$@"); [ ${#files[@]} -gt 0 ] || files=("${DEFAULT_HIDE[@]}")
    for f in "${files[@]}"; do
      [ -f "$f" ] || { echo "device_tree: $f: no such file" >&2; exit 2; }
      mkdir -p "$HIDDEN/$(dirname "$f")"; mv "$f" "$HIDDEN/$f"; echo "hid $f (restore: bash $0 restore)"
    done
    size ;;
  restore)
    [ -d "$HIDDEN" ] || { echo "device_tree: nothing hidden"; exit 0; }
    (cd "$HIDDEN" && find . -type f -printf '%P\n') | while IFS= read -r f; do
      mkdir -p "$(dirname "$f")"; mv "$HIDDEN/$f" "$f"; echo "restored $f"
    done
    find "$HIDDEN" -depth -type d -empty -delete
    git status --short -- models ;;
  *) echo "usage: $0 size [paths...] | hide [files...] | restore" >&2; exit 2 ;;
esac
