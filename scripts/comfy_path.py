"""Print the ComfyUI tree to use (harness/server.py: comfyui_dir decides: $COMFYUI_DIR, else the vendored one)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from iasa_cli import register_package  # noqa: E402

register_package()
from iasa.harness.server import comfyui_dir  # noqa: E402

try:
    print(comfyui_dir())
except FileNotFoundError as exc:
    sys.exit(str(exc))
