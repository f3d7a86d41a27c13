#!/usr/bin/env bash
# README command 2: run the test suite (unit tests, then integration tests against a real headless ComfyUI).
# With test paths (bash scripts/test.sh tests/unit/test_x.py -q) only those run; without, all of tests/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
targets=(tests)
for arg in "$@"; do
  case "$arg" in
    -*) ;;
    *) if [[ -e "${arg%%::*}" ]]; then targets=(); break; fi ;;
  esac
done
exec "${IASA_HOME:-$REPO/.iasa}/venv/bin/python" -m pytest "${targets[@]}" "$@"
