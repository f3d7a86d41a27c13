#!/usr/bin/env bash
# README command 1: set everything up (idempotent), then run the demo headless and print the mp4's path.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
exec "${IASA_HOME:-$REPO/.iasa}/venv/bin/python" "$REPO/iasa_cli.py" harness.demo "$@"
