#!/usr/bin/env bash
# FlashAttention-4 (PyPI flash-attn-4, the `flash` kernel of IASA Sparse Attention) on a GPU machine that has no
# package index. Its CuTe-DSL compiler library (nvidia-cutlass-dsl-libs-cu13, 92 MB) is larger than one device call
# carries (64 MiB with the checkout), so the wheels travel in two parts, on two calls to the same warm machine:
#
#   bash scripts/fa4_gpu.sh pack                 # here (package index reachable): wheels -> .dev/fa4/part1, part2
#   device call 1, carry .dev/fa4/part1:  bash scripts/fa4_gpu.sh stash
#   device call 2, carry .dev/fa4/part2:  bash scripts/fa4_gpu.sh install && bash scripts/fa4_gpu.sh run \
#                                           python3 iasa_cli.py bench.attention --kernels flex,flash ...
#
# `install` puts the wheels into $FA4_SITE (default /tmp/fa4_site) without their dependencies, skipping any whose
# module the machine already imports (cuda-bindings, protobuf); `run` runs a command with that folder (and the
# CuTe DSL's own package folder, which the wheel's .pth file would add) on PYTHONPATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FA4_SITE=${FA4_SITE:-/tmp/fa4_site}
STASH=${FA4_STASH:-/tmp/fa4_parts}
PY=${PYTHON:-python3}
FA4_VERSION=${FA4_VERSION:-4.0.0b40}; DSL_VERSION=${DSL_VERSION:-4.8.1}
BIG=nvidia_cutlass_dsl_libs_cu13

pack() {   # pip download for the GPU machine's Python (3.12, manylinux x86_64), split the big wheel in two
  local d=.dev/fa4/download
  rm -rf .dev/fa4 && mkdir -p "$d" .dev/fa4/part1 .dev/fa4/part2
  pip download --no-deps --pre --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 -d "$d" \
    "flash-attn-4==$FA4_VERSION" "nvidia-cutlass-dsl==$DSL_VERSION" "nvidia-cutlass-dsl-libs-base==$DSL_VERSION" \
    "nvidia-cutlass-dsl-libs-core==$DSL_VERSION" "nvidia-cutlass-dsl-libs-cu13==$DSL_VERSION" quack-kernels \
    apache-tvm-ffi torch-c-dlpack-ext cuda-pathfinder "cuda-bindings>=13,<14" "protobuf>=4.21.12,<7" "typing-extensions<5"
  xz -T0 -9e -c "$d"/${BIG}-*.whl > .dev/fa4/big.whl.xz
  # part 1 carries the small wheels too: split the big one so that both parts are the same size
  local small big first
  small=$(find "$d" -name '*.whl' ! -name "${BIG}-*" -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  big=$(stat -c %s .dev/fa4/big.whl.xz)
  first=$(( (big + small) / 2 - small ))
  head -c "$first" .dev/fa4/big.whl.xz > .dev/fa4/part1/big.whl.xz.part00
  tail -c +"$((first + 1))" .dev/fa4/big.whl.xz > .dev/fa4/part2/big.whl.xz.part01
  rm .dev/fa4/big.whl.xz
  (cd "$d" && ls ${BIG}-*.whl) > .dev/fa4/part2/big_wheel_name
  find "$d" -name '*.whl' ! -name "${BIG}-*" -exec mv {} .dev/fa4/part1/ \;
  rm -rf "$d"
  du -sh .dev/fa4/part1 .dev/fa4/part2
}

stash() {  # call 1 on the device: keep part 1 outside the checkout (the next call's copy replaces the checkout)
  mkdir -p "$STASH" && cp .dev/fa4/part1/* "$STASH/" && ls -la "$STASH"
}

module_of() {  # wheel file -> the top-level module it provides
  case "$1" in
    cuda_bindings-*) echo cuda.bindings ;;
    cuda_pathfinder-*) echo cuda.pathfinder ;;
    protobuf-*) echo google.protobuf ;;
    typing_extensions-*) echo typing_extensions ;;
    *) echo "" ;;
  esac
}

install() {  # call 2: join the big wheel and install everything into $FA4_SITE
  [ -f "$STASH/big.whl.xz.part00" ] || { echo "[fa4] no part 1 in $STASH: run 'stash' on this machine first" >&2; exit 2; }
  local name; name=$(cat .dev/fa4/part2/big_wheel_name)
  cat "$STASH/big.whl.xz.part00" .dev/fa4/part2/big.whl.xz.part01 | xz -d > "$STASH/$name"
  local wheels=() w m
  for w in "$STASH"/*.whl; do
    m=$(module_of "$(basename "$w")")
    if [ -n "$m" ] && "$PY" -c "import $m" 2>/dev/null; then echo "[fa4] $m already importable: not installing $(basename "$w")"; continue; fi
    wheels+=("$w")
  done
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install --no-deps --no-index --target "$FA4_SITE" "${wheels[@]}" 2>&1 | tail -2
  else   # no pip on the machine: a wheel is a zip of its install tree
    echo "[fa4] $PY has no pip: unzipping the wheels into $FA4_SITE"
    mkdir -p "$FA4_SITE" && for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$FA4_SITE"; done
  fi
  run "$PY" -c "import flash_attn.cute, cutlass.cute, importlib.metadata as m; print('[fa4] flash-attn-4', m.version('flash-attn-4'), 'ready')"
}

run() {
  PYTHONPATH="$FA4_SITE/nvidia_cutlass_dsl/dsl_packages:$FA4_SITE${PYTHONPATH:+:$PYTHONPATH}" "$@"
}

cmd=${1:-}; shift || true
case "$cmd" in
  pack) pack ;;
  stash) stash ;;
  install) install ;;
  run) run "$@" ;;
  *) echo "usage: $0 pack|stash|install|run <command...>" >&2; exit 2 ;;
esac
