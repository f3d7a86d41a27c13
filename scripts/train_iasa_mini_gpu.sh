#!/usr/bin/env bash
# IASA-mini v2 on one GPU machine, in resumable stages (models/README.md tells the history).
#
#   bash scripts/train_iasa_mini_gpu.sh prepare   # on the CPU machine (~5 min): motion bundle, ComfyUI tarball,
#                                                 # held-out shards for bench.quality; then carry .dev/synth/motion
#                                                 # and .dev/gpu to the GPU machine
#   bash scripts/train_iasa_mini_gpu.sh start     # runs every stage not done yet, in the background (setsid)
#   bash scripts/train_iasa_mini_gpu.sh wait 560  # follows the log for up to 560 s, then copies what is done
#   bash scripts/train_iasa_mini_gpu.sh run       # the same stages in the foreground
#   TINY_VAE_MIN=5 bash scripts/train_iasa_mini_gpu.sh tiny-start   # only the tiny autoencoder, distilled from
#                                                 # TINY_FROM (default the shipped models/vae VAE); `wait` as above
#
# Inputs (carried to the machine, ignored by git): the motion bundle (.dev/synth/motion, from
# `python iasa_cli.py training.synth.build motion ...` on a machine with espeak-ng) and a ComfyUI tree as
# .dev/gpu/comfy.tar.gz (the `comfy/` package and its top-level modules; `scripts/pack_comfy_tree.sh`).
# A stage whose weights already exist in $W (e.g. fetched from an earlier machine and carried back in
# .dev/v2) is skipped. Budgets (minutes of training loop per stage) come from the environment.
# Outputs for the caller go to $OUT (files over 15 MiB are split into .partNN pieces: `cat` joins them).
#
# A VAE stage and the teacher that follows its latents in one session, two device calls (a call carries 64 MiB: the
# VAE's init in the first, the teacher's in the second; every bundled model file hidden, scripts/device_tree.sh):
#   call 1, carry .dev/synth/motion .dev/gpu .dev/v12 (holding init_vae.safetensors):
#     export IASA_V2_WORK=.dev/v12 VAE_INIT=.dev/v12/init_vae.safetensors LONG_PART=all ... TEACHER_MIN=6.5 \
#       TEACHER_INIT=.dev/v12/init_teacher.safetensors INIT_WAIT=420 && bash $0 start && bash $0 wait 575
#   call 2 at once, carry .dev/v12init (holding teacher.safetensors), the same exports:
#     cp .dev/v12init/teacher.safetensors .dev/v12/t.tmp && mv .dev/v12/t.tmp .dev/v12/init_teacher.safetensors && \
#       bash $0 wait 585
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/gpu_env.sh
W=${IASA_V2_WORK:-.dev/v2}
MOTION=${MOTION:-.dev/synth/motion}
SHARDS=${SHARDS:-/tmp/iasa_v2_shards}
# The VAE learns in two stages: 17-frame windows (all weights) for most of its steps, then 97-frame windows
# (decoder only, so latents stay valid). Both train through the whole-window pass (training/vae_parallel.py,
# 3.8x faster than the chunked one at 49 frames: bench/results/vae_step.json). History: run 1 gave 49-frame
# windows all 5 minutes (207 steps, 18.8 dB); run 2 spent 5.5 minutes on 5-frame windows, which did not
# carry over to longer ones (16.1 dB at 17 frames, 20.5 dB after 1.5 minutes on 49), docs/training/.
VAE_MIN=${VAE_MIN:-20}
VAE_LONG_MIN=${VAE_LONG_MIN:-2}
TEACHER_MIN=${TEACHER_MIN:-8.5}   # 0 skips the teacher (a VAE-only session)
TINY_VAE_MIN=${TINY_VAE_MIN:-0}   # 0 (default) skips the tiny-autoencoder stage (training/tiny_vae_train.py)
VAE_LR=${VAE_LR:-6e-4}   # 1e-3 and 3e-4 tied on a CPU A/B (dim 16, 280 steps: 17.87 vs 17.97 dB)
# Shapes (the defaults are the v2 recipe). CPU dry run of every stage at tiny shapes (~10 min on 2 cores):
#   RENDER_LIMIT=16 T_CLIPS=4 IASA_V2_WORK=.dev/v2dry SHARDS=/tmp/dry_shards VAE_DIM=8 VAE_FRAMES=5 VAE_CROP=32 VAE_BATCH=2 LONG_FRAMES=9 \
#   VAE_CLIPS=4 LONG_CROP=32 LONG_BATCH=2 T_LAYERS=1 T_FFN=256 T_FRAMES=5 T_BATCH=2 EVAL=1 WORKERS=2 DEVICE=cpu \
#   VAE_MIN=0.3 VAE_LONG_MIN=0.2 TEACHER_MIN=0.3 TINY_VAE_MIN=0.3 TINY_FRAMES=5 TINY_CROP=32 TINY_BATCH=2 \
#   PYTHON=.iasa/venv/bin/python OUT=/tmp/dry_out bash scripts/train_iasa_mini_gpu.sh run
VAE_DIM=${VAE_DIM:-32}; VAE_FRAMES=${VAE_FRAMES:-17}; VAE_CROP=${VAE_CROP:-128}; VAE_BATCH=${VAE_BATCH:-16}
VAE_CLIPS=${VAE_CLIPS:-1000}   # clips each VAE stage loads (all 1000: ~37 s)
LONG_FRAMES=${LONG_FRAMES:-97}; LONG_CROP=${LONG_CROP:-64}; LONG_BATCH=${LONG_BATCH:-16}
# The long-window VAE stage: decoder only (latents of the first stage stay valid) or all weights (the encoder
# learns long windows too; the latents are recalibrated). VAE_INIT: start it from these weights instead of
# the first stage's (which is then skipped), e.g. the staged run-3 VAE.
LONG_PART=${LONG_PART:-decoder}; LONG_LR=${LONG_LR:-3e-4}; LONG_WARMUP=${LONG_WARMUP:-10}
LONG_EVAL_FRAMES=${LONG_EVAL_FRAMES:-$LONG_FRAMES}; VAE_INIT=${VAE_INIT:-}
# LONG_EXTRA: more flags for that stage, e.g. "--warm-latents 56": train past the causal caches' warm-up (the
# decode of a long video fell apart after ~150 frames; training/vae_stream.py says why).
LONG_EXTRA=${LONG_EXTRA:-}
T_LAYERS=${T_LAYERS:-8}; T_FFN=${T_FFN:-1024}; T_FRAMES=${T_FRAMES:-49}; T_BATCH=${T_BATCH:-32}
# TEACHER_INIT: continue a teacher (e.g. the shipped one) instead of training from scratch; its VAE must be the one
# in $W/vae_long (copy the shipped VAE there to skip both VAE stages). T_LR / T_WARMUP: its learning-rate schedule.
TEACHER_INIT=${TEACHER_INIT:-}; T_LR=${T_LR:-4e-4}; T_WARMUP=${T_WARMUP:-200}
# INIT_WAIT: seconds the teacher stage waits for TEACHER_INIT to appear (0: fail at once). A call carries 64 MiB, so a
# session that trains the VAE and then the teacher carries the teacher's init in its second call, moved into place
# (an atomic `mv`) by that call's command while the first stages run.
INIT_WAIT=${INIT_WAIT:-0}
# T_EXTRA: more teacher_train arguments, e.g. "--continuation-windows 2" (windows sliced from each clip's one encode,
# as IASA Long Video's later windows see them); give such a run its own T_LATENTS cache file, since the
# distillation reads the default one and rebuilds a cache that holds other windows.
TINY_FRAMES=${TINY_FRAMES:-17}; TINY_CROP=${TINY_CROP:-128}; TINY_BATCH=${TINY_BATCH:-16}
# The tiny autoencoder is local in time (~20 frames), but the VAE it learns from is not: that VAE's latents change with
# their position in the encoded window for ~70 frames, and a tiny decoder taught on windows of N frames breaks on
# latents from further into a long encode (N=17 and N=65 measured, docs/training/session_2026_12_06). TINY_EVAL_FRAMES
# checks it on longer windows than it trained on; TINY_EXTRA: more flags (--init, --lr, --no-preview-decoder, ...).
TINY_EVAL_FRAMES=${TINY_EVAL_FRAMES:-$TINY_FRAMES}; TINY_EXTRA=${TINY_EXTRA:-}
EVAL=${EVAL:-8}; WORKERS=${WORKERS:-16}; DEVICE=${DEVICE:-auto}
RENDER_LIMIT=${RENDER_LIMIT:-0}; T_CLIPS=${T_CLIPS:-0}   # >0: first N clips per split / teacher clips (dry runs)
LOG="$W/pipeline.log"
PY=${PYTHON:-python3}
mkdir -p "$W"


stage() {  # stage NAME DONE_FILE command...
  local name=$1 done_file=$2; shift 2
  if [ -f "$done_file" ]; then echo "[v2] $name: done already ($done_file)"; return 0; fi
  echo "[v2] $name: start $(date +%T)"
  local t0=$SECONDS
  "$@"
  echo "[v2] $name: finished in $((SECONDS - t0)) s $(date +%T)"
}

render_shards() {  # the training and held-out shards on this machine's disk (32 GB for the 1000-clip bundle)
  local limit=""
  [ "$RENDER_LIMIT" = "0" ] || limit="--limit $RENDER_LIMIT"
  stage render "$SHARDS/.done" bash -c "$PY iasa_cli.py training.synth.build render --motion $MOTION --out $SHARDS \
      --workers $WORKERS $limit > $W/render.json && touch $SHARDS/.done"
}

wait_for_file() {  # wait_for_file FILE SECONDS
  local f=$1 limit=$2 t0=$SECONDS
  [ -f "$f" ] || echo "[v2] waiting up to $limit s for $f $(date +%T)"
  while [ ! -f "$f" ] && [ $((SECONDS - t0)) -lt "$limit" ]; do sleep 5; done
  [ -f "$f" ] || { echo "[v2] $f: no such file (INIT_WAIT=$limit s)" >&2; return 1; }
}

run_stages() {
  gpu_env
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  render_shards
  local first_vae="$W/vae/iasa_mini_vae.safetensors"
  if [ -f "$W/vae_long/iasa_mini_vae.safetensors" ]; then   # the final VAE is there: its first stage is not needed
    echo "[v2] vae: skipped (the final VAE $W/vae_long/iasa_mini_vae.safetensors exists)"
  elif [ -n "$VAE_INIT" ]; then
    [ -f "$VAE_INIT" ] || { echo "[v2] VAE_INIT=$VAE_INIT: no such file" >&2; return 1; }
    first_vae=$VAE_INIT
    echo "[v2] vae: skipped (VAE_INIT=$VAE_INIT starts the long-window stage)"
  else
    stage vae "$first_vae" $PY iasa_cli.py training.vae_train --data "$SHARDS" --out "$W/vae" \
        --dim "$VAE_DIM" --frames "$VAE_FRAMES" --crop "$VAE_CROP" --batch "$VAE_BATCH" --steps 0 \
        --max-minutes "$VAE_MIN" --lr "$VAE_LR" --warmup 100 --max-clips "$VAE_CLIPS" --eval-frames 49 \
        --eval-clips "$EVAL" --log-every 50 --device "$DEVICE"
  fi
  stage vae_long "$W/vae_long/iasa_mini_vae.safetensors" $PY iasa_cli.py training.vae_train --data "$SHARDS" \
      --out "$W/vae_long" --init "$first_vae" --train-part "$LONG_PART" --dim "$VAE_DIM" \
      --frames "$LONG_FRAMES" --crop "$LONG_CROP" --batch "$LONG_BATCH" --steps 0 --max-minutes "$VAE_LONG_MIN" \
      --lr "$LONG_LR" --warmup "$LONG_WARMUP" --max-clips "$VAE_CLIPS" --eval-frames "$LONG_EVAL_FRAMES" \
      --eval-clips "$EVAL" --log-every 25 --device "$DEVICE" $LONG_EXTRA
  [ "$TEACHER_MIN" = "0" ] || [ -z "$TEACHER_INIT" ] || [ -f "$W/teacher/iasa_mini_teacher.safetensors" ] || \
      wait_for_file "$TEACHER_INIT" "$INIT_WAIT"
  [ "$TEACHER_MIN" = "0" ] || stage teacher "$W/teacher/iasa_mini_teacher.safetensors" $PY iasa_cli.py training.teacher_train --data "$SHARDS" \
      --vae "$W/vae_long/iasa_mini_vae.safetensors" --latents-cache "${T_LATENTS:-$SHARDS.latents.safetensors}" \
      --out "$W/teacher" --dim 256 --layers "$T_LAYERS" --ffn "$T_FFN" --frames "$T_FRAMES" --batch "$T_BATCH" \
      --steps 0 --max-minutes "$TEACHER_MIN" --shift 3 --lr "$T_LR" --warmup "$T_WARMUP" \
      --render-workers "$((WORKERS - 1))" --encode-batch 32 --max-clips "$T_CLIPS" --eval-windows "$EVAL" \
      --log-every 50 --device "$DEVICE" ${TEACHER_INIT:+--init "$TEACHER_INIT"} ${T_EXTRA:-}
  if [ "$TINY_VAE_MIN" != "0" ]; then   # last: it must distil the VAE that ships, and never delays the teacher
    local final_vae="$W/vae_long/iasa_mini_vae.safetensors"
    [ -f "$final_vae" ] || final_vae="$W/vae/iasa_mini_vae.safetensors"
    tiny_stage "$final_vae"
  fi
  echo "[v2] all stages done $(date +%T)"
}

tiny_stage() {  # tiny_stage VAE: distil the tiny autoencoder (training/tiny_vae_train.py) from that VAE
  stage tiny_vae "$W/tiny_vae/iasa_mini_tiny_vae.safetensors" $PY iasa_cli.py training.tiny_vae_train \
      --data "$SHARDS" --vae "$1" --out "$W/tiny_vae" --frames "$TINY_FRAMES" --crop "$TINY_CROP" \
      --batch "$TINY_BATCH" --steps 0 --max-minutes "$TINY_VAE_MIN" --eval-frames "$TINY_EVAL_FRAMES" \
      --eval-clips "$EVAL" --log-every 25 --device "$DEVICE" $TINY_EXTRA
}

tiny_only() {  # the shards and the tiny autoencoder of an existing VAE (TINY_FROM, default the shipped one)
  gpu_env
  local vae=${TINY_FROM:-models/vae/iasa_mini_vae.safetensors}
  [ -f "$vae" ] || { echo "[v2] TINY_FROM=$vae: no such file" >&2; return 1; }
  [ "$TINY_VAE_MIN" != "0" ] || TINY_VAE_MIN=5
  render_shards
  tiny_stage "$vae"
  echo "[v2] all stages done $(date +%T)"
}

collect() {  # what is done so far -> $OUT (8 files at most); a VAE this machine did not train (its stages'
  [ -n "${OUT:-}" ] || return 0   # summaries are missing: copied in to skip them) does not travel back
  local files=()
  for f in "$W/vae_long/iasa_mini_vae.safetensors" "$W/teacher/iasa_mini_teacher.safetensors"; do
    [ -f "$f" ] || [ "$f" != "$W/vae_long/iasa_mini_vae.safetensors" ] || f="$W/vae/iasa_mini_vae.safetensors"
    [ -f "$f" ] || continue
    [ "$(basename "$f")" != iasa_mini_vae.safetensors ] || [ -f "$(dirname "$f")/summary.json" ] || continue
    files+=("$f")
  done
  local meta
  meta=$(mktemp -d)
  (cd "$W" && tar -czf "$meta/v2_meta.tar.gz" --exclude='*.safetensors' --exclude='checkpoints' . 2>/dev/null) || true
  cp "$meta/v2_meta.tar.gz" "$OUT/"
  for f in "${files[@]}"; do
    local stem
    stem=$(basename "$(dirname "$f")")_$(basename "$f")
    split -b 15M -d "$f" "$OUT/$stem.part"
  done
  if [ -f "$W/tiny_vae/iasa_mini_tiny_vae.safetensors" ]; then   # both tiny files in one tar: 3 parts (8 files back at most)
    local tiny_files=(iasa_mini_tiny_vae.safetensors)   # the preview file only when its decoder was trained
    [ ! -f "$W/tiny_vae/lighttaew2_1_iasa_mini.safetensors" ] || tiny_files+=(lighttaew2_1_iasa_mini.safetensors)
    tar -cf "$meta/tiny_vae.tar" -C "$W/tiny_vae" "${tiny_files[@]}"
    split -b 15M -d "$meta/tiny_vae.tar" "$OUT/tiny_vae.tar.part"
  fi
  ls -la "$OUT"
}

prepare() {  # deterministic (seeded): the same bundle every time
  local py="${IASA_HOME:-.iasa}/venv/bin/python"
  [ -f "$MOTION/train.npz" ] || "$py" iasa_cli.py training.synth.build motion --out "$(dirname "$MOTION")" \
      --train 1000 --heldout 0 --train-seconds 2 8 --audio-codec none
  [ -f "$MOTION/heldout.npz" ] || "$py" iasa_cli.py training.synth.build motion --out "$(dirname "$MOTION")" \
      --train 0 --heldout 48 --heldout-seconds 3 10 --audio-codec mulaw
  [ -f .dev/gpu/comfy.tar.gz ] || bash scripts/pack_comfy_tree.sh
  ls .dev/synth/shards/heldout-*.safetensors > /dev/null 2>&1 || "$py" iasa_cli.py training.synth.build render \
      --motion "$MOTION" --out .dev/synth/shards --splits heldout
  du -sh "$MOTION" .dev/gpu
}

case "${1:-run}" in
  prepare) prepare ;;
  run) run_stages 2>&1 | tee -a "$LOG"; collect ;;
  start)
    setsid nohup bash "$0" run-bg >> "$LOG" 2>&1 < /dev/null &
    echo "[v2] started in the background, log $LOG" ;;
  run-bg) run_stages ;;
  tiny) tiny_only 2>&1 | tee -a "$LOG"; collect ;;   # only the tiny autoencoder, from TINY_FROM (the shipped VAE)
  tiny-start)
    setsid nohup bash "$0" tiny-bg >> "$LOG" 2>&1 < /dev/null &
    echo "[v2] tiny autoencoder started in the background, log $LOG" ;;
  tiny-bg) tiny_only ;;
  render) gpu_env; render_shards ;;   # shards only (the distillation on shipped weights needs them)
  wait)
    no_log "$LOG"
    limit=${2:-560}; t0=$SECONDS
    while [ $((SECONDS - t0)) -lt "$limit" ]; do
      if grep -q "all stages done" "$LOG" 2>/dev/null; then break; fi
      if ! pgrep -f "train_iasa_mini_gpu.sh (run|tiny)-bg" > /dev/null; then echo "[v2] pipeline not running"; break; fi
      sleep 10
    done
    tail -n 40 "$LOG"; collect ;;
  *) echo "usage: $0 prepare|run|start|wait [seconds]|render|tiny|tiny-start" >&2; exit 2 ;;
esac
