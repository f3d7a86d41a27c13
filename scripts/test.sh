#!/usr/bin/env bash
# README command 2: run the test suite (unit tests, then integration tests against a real headless ComfyUI).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
exec "${IASA_HOME:-$REPO/.iasa}/venv/bin/python" -m pytest tests "$@"
