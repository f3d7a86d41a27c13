#!/usr/bin/env bash
# Distil the IASA-mini v2 teacher into a 4-step causal sparse student (DMD2 + region loss) on a GPU machine.
#
#   bash scripts/distill_iasa_mini_gpu.sh start     # every stage not done yet, in the background (setsid)
#   bash scripts/distill_iasa_mini_gpu.sh wait 560  # follows the log for up to 560 s, then copies what is done to $OUT
#   bash scripts/distill_iasa_mini_gpu.sh run       # the same stages in the foreground
#
# Stages (a stage whose output exists is skipped, and a killed distillation resumes from its checkpoint):
#   teacher  scripts/train_iasa_mini_gpu.sh run-bg: renders the shards and trains the v2 VAE + teacher unless their
#            weights are already in $W (carried in .dev/v2 from an earlier machine); TEACHER_STAGE=0 skips it
#            and only renders the shards (e.g. TEACHER=models/diffusion_models/iasa_mini_teacher.safetensors
#            VAE=models/vae/iasa_mini_vae.safetensors: the shipped pair).
#   distill  training.distill.train on $TEACHER / $VAE / $SHARDS, reusing the teacher's latent cache
#            ($SHARDS.latents.safetensors, same window length and mask settings), then the held-out evaluation
#            (student vs teacher vs reference copy) into the card and eval.json.
# Carrying the data: the shipped teacher + VAE are tracked files (~49 MB), so the whole 1000-clip motion bundle
# (23 MB) does not fit in the 64 MiB a device call carries. Carry a subset made here instead (~11 MB):
#   python iasa_cli.py training.synth.build subset --motion .dev/synth/motion --out .dev/synth/motion_small \
#       --train 500 --heldout 16
#   run(carry=[".dev/synth/motion_small", ".dev/gpu"], command="export MOTION=.dev/synth/motion_small TEACHER_STAGE=0 \
#       TEACHER=models/diffusion_models/iasa_mini_teacher.safetensors VAE=models/vae/iasa_mini_vae.safetensors \
#       bash scripts/distill_iasa_mini_gpu.sh start && bash scripts/distill_iasa_mini_gpu.sh wait 540")
# The region-loss ablation (issue 9's Table-2 row): ABLATION=1 starts a second distillation beside the first on the
# same GPU, with --region-weight 0 (DMD only), into $W/student_dmd_only as ${NAME}_dmd_only, once the first run has
# written the latent cache (both read it); `wait` follows both and `collect` returns both students.
# The twin is any one-setting variant: TWIN names it (default dmd_only), TWIN_REGION is its --region-weight (default
# 0 for dmd_only, else $REGION) and TWIN_EXTRA is appended to its flags (a repeated flag: the last one wins), e.g.
#   ABLATION=1 TWIN=cfg1 TWIN_EXTRA="--guidance 1" ...   # the real score without CFG, beside the CFG-3 run
# Several GPUs: NPROC=N (torchrun, DDP; --batch is global). EXTRA: more training.distill.train flags.
# A model too big to replicate: SHARD=fsdp2 (FSDP2 per-block sharding of student, fake score, optimizer states and
# EMA; the frozen teacher stays replicated; checkpoints and exported files are the DDP format), i.e.
#   NPROC=8 SHARD=fsdp2 bash scripts/distill_iasa_mini_gpu.sh start
#   = torchrun --standalone --nproc_per_node=8 iasa_cli.py training.distill.train ... --shard fsdp2
# CPU dry run at tiny shapes, 2 gloo ranks (what tests/unit/test_distill_wan.py runs, next to one process):
#   TEACHER_STAGE=0 DEVICE=cpu NPROC=2 TEACHER=t.safetensors VAE=v.safetensors SHARDS=procedural:3:9:32 FRAMES=5 \
#   BATCH=4 STEPS=2 DISTILL_MIN=0 FAKE_UPDATES=2 S_STEPS=2 EVAL=1 EVAL_STEPS=2 LORA_RANK=8 WORKERS=2 \
#   IASA_V2_WORK=/tmp/w bash scripts/distill_iasa_mini_gpu.sh run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/gpu_env.sh
W=${IASA_V2_WORK:-.dev/v2}
SHARDS=${SHARDS:-/tmp/iasa_v2_shards}
TEACHER=${TEACHER:-$W/teacher/iasa_mini_teacher.safetensors}
VAE=${VAE:-$W/vae_long/iasa_mini_vae.safetensors}
LATENTS=${LATENTS:-$SHARDS.latents.safetensors}
S=${STUDENT_DIR:-$W/student}
NAME=${NAME:-iasa_mini_student}
DISTILL_MIN=${DISTILL_MIN:-8}; STEPS=${STEPS:-0}
S_STEPS=${S_STEPS:-4}; FRAMES=${FRAMES:-49}; BATCH=${BATCH:-16}; LR=${LR:-5e-5}; FAKE_UPDATES=${FAKE_UPDATES:-5}
GUIDANCE=${GUIDANCE:-3}; SHIFT=${SHIFT:-3}; REGION=${REGION:-1}; EVAL=${EVAL:-8}; EVAL_STEPS=${EVAL_STEPS:-20}
LORA_RANK=${LORA_RANK:-64}; DEVICE=${DEVICE:-auto}; NPROC=${NPROC:-1}; TEACHER_STAGE=${TEACHER_STAGE:-1}
WORKERS=${WORKERS:-16}; SHARD=${SHARD:-ddp}; EXTRA=${EXTRA:-}
ABLATION=${ABLATION:-0}; TWIN=${TWIN:-dmd_only}; TWIN_EXTRA=${TWIN_EXTRA:-}
if [ "$TWIN" = dmd_only ]; then TWIN_REGION=${TWIN_REGION:-0}; else TWIN_REGION=${TWIN_REGION:-$REGION}; fi
PY=${PYTHON:-python3}
mkdir -p "$W"
LOG="$W/distill.log"
ABL_LOG="$W/distill_$TWIN.log"
ABL_DIR="$W/student_$TWIN"


distill() {  # S, NAME and REGION may be overridden per call (the ablation twin)
  local launch=("$PY")
  [ "$NPROC" -gt 1 ] && launch=("$PY" -m torch.distributed.run --standalone "--nproc_per_node=$NPROC")
  "${launch[@]}" iasa_cli.py training.distill.train --teacher "$TEACHER" --vae "$VAE" --data "$SHARDS" \
    --latents-cache "$LATENTS" --out "$S" --name "$NAME" --student-steps "$S_STEPS" --shift "$SHIFT" \
    --guidance "$GUIDANCE" --fake-updates "$FAKE_UPDATES" --lr "$LR" --frames "$FRAMES" --batch "$BATCH" \
    --steps "$STEPS" --max-minutes "$DISTILL_MIN" --region-weight "$REGION" --lora-rank "$LORA_RANK" \
    --eval-windows "$EVAL" --eval-teacher-steps "$EVAL_STEPS" --render-workers "$((WORKERS - 1))" \
    --log-every 10 --checkpoint-every 100 --device "$DEVICE" --shard "$SHARD" $EXTRA
}

run_stages() {
  gpu_env
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  if [ "$TEACHER_STAGE" = 1 ]; then
    echo "[distill] teacher stage (scripts/train_iasa_mini_gpu.sh; it skips what is done) $(date +%T)"
    IASA_V2_WORK="$W" SHARDS="$SHARDS" bash scripts/train_iasa_mini_gpu.sh run-bg
  elif [ "${SHARDS#procedural:}" = "$SHARDS" ] && ! ls "$SHARDS"/train-*.safetensors > /dev/null 2>&1; then
    # shipped teacher + VAE: only the shards are needed here
    IASA_V2_WORK="$W" SHARDS="$SHARDS" bash scripts/train_iasa_mini_gpu.sh render
  fi
  for f in "$TEACHER" "$VAE"; do [ -f "$f" ] || { echo "[distill] missing $f" >&2; exit 3; }; done
  if [ -f "$S/$NAME.safetensors" ]; then echo "[distill] done already ($S/$NAME.safetensors)"; else
    echo "[distill] distill stage: start $(date +%T)"; local t0=$SECONDS
    distill
    echo "[distill] distill stage: finished in $((SECONDS - t0)) s $(date +%T)"
  fi
  echo "[distill] all stages done $(date +%T)"
}

ablation_stage() {  # the twin (default DMD only): waits for the first run's latent cache, then distils its variant
  gpu_env
  local t0=$SECONDS
  while [ ! -f "$LATENTS" ]; do
    if ! pgrep -f "distill_iasa_mini_gpu.sh run-bg" > /dev/null; then
      echo "[distill] ablation: the first run stopped before writing $LATENTS" >&2; exit 3
    fi
    sleep 5
  done
  echo "[distill] ablation: latent cache there after $((SECONDS - t0)) s; $TWIN distill start $(date +%T)"
  if [ -f "$ABL_DIR/${NAME}_$TWIN.safetensors" ]; then echo "[distill] ablation: done already"; else
    t0=$SECONDS
    S="$ABL_DIR" NAME="${NAME}_$TWIN" REGION="$TWIN_REGION" EXTRA="$EXTRA $TWIN_EXTRA" distill
    echo "[distill] ablation: finished in $((SECONDS - t0)) s $(date +%T)"
  fi
  echo "[distill] ablation done $(date +%T)"
}

collect() {  # the students (split into 15 MiB pieces: `cat` joins them), the first run's LoRA and a tarball of
  # the rest -> $OUT (7 files at most with the ablation twin)
  [ -n "${OUT:-}" ] || return 0
  [ -d "$S" ] || return 0
  local parts=(-C "$(cd "$(dirname "$S")" && pwd)" "$(basename "$S")" -C "$(cd "$W" && pwd)" distill.log)
  [ -d "$ABL_DIR" ] && parts+=("$(basename "$ABL_DIR")" "$(basename "$ABL_LOG")")
  tar -czf "$OUT/distill_meta.tar.gz" --exclude='*.safetensors' --exclude='checkpoints' "${parts[@]}" || true
  for f in "$S/$NAME.safetensors" "$S/${NAME}_lora.safetensors" "$ABL_DIR/${NAME}_$TWIN.safetensors"; do
    [ -f "$f" ] && split -b 15M -d "$f" "$OUT/$(basename "$f").part"
  done
  ls -la "$OUT"
}

case "${1:-run}" in
  run) run_stages 2>&1 | tee -a "$LOG"; collect ;;
  start)
    setsid nohup bash "$0" run-bg >> "$LOG" 2>&1 < /dev/null &
    echo "[distill] started in the background, log $LOG"
    if [ "$ABLATION" = 1 ]; then
      sleep 2; setsid nohup bash "$0" ablation-bg >> "$ABL_LOG" 2>&1 < /dev/null &
      echo "[distill] $TWIN twin started in the background, log $ABL_LOG"
    fi ;;
  run-bg) run_stages ;;
  ablation-bg) ablation_stage ;;
  wait)
    no_log "$LOG"
    limit=${2:-560}; t0=$SECONDS
    while [ $((SECONDS - t0)) -lt "$limit" ]; do
      if ! pgrep -f "distill_iasa_mini_gpu.sh (run|ablation)-bg" > /dev/null; then
        grep -q "\[distill\] all stages done" "$LOG" 2>/dev/null || echo "[distill] pipeline not running"; break
      fi
      sleep 10
    done
    tail -n 40 "$LOG"
    [ -f "$ABL_LOG" ] && { echo "--- $ABL_LOG"; tail -n 15 "$ABL_LOG"; }
    collect ;;
  *) echo "usage: $0 run|start|wait [seconds]" >&2; exit 2 ;;
esac
