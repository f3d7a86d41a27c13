#!/usr/bin/env bash
# bench.realtime on a GPU machine (README "Real time"): unpack the carried ComfyUI tree, run the benchmark,
# leave the JSON and the log in $OUT. Carry .dev/gpu (made by `bash scripts/pack_comfy_tree.sh` here).
#
#   bash scripts/realtime_gpu.sh [bench.realtime arguments]        # ~6-8 min on one H200
#
# Then, back here: cp <fetched>/realtime.json bench/results/ and
# `python iasa_cli.py bench.realtime --table bench/results/realtime.json` for the README table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/gpu_env.sh
gpu_env
OUT=${OUT:-/tmp/realtime_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
"${PYTHON:-python3}" iasa_cli.py bench.realtime --out "$OUT/realtime.json" "$@" 2>&1 | tee "$OUT/realtime.log"
