#!/usr/bin/env bash
# README command 2: run the test suite (unit tests, then integration tests against a real headless ComfyUI).
# Arguments go to pytest; with none it runs everything under tests/ (`bash scripts/test.sh tests/unit/x.py -q`
# runs one file).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then set -- tests "$@"; fi
exec "${IASA_HOME:-$REPO/.iasa}/venv/bin/python" -m pytest "$@"
