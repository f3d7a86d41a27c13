"""Test set-up: the checkout is importable as the package ``iasa`` (see iasa_cli.py)."""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iasa_cli import register_package  # noqa: E402

register_package()
