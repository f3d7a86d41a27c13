"""Run a module of this pack outside ComfyUI: ``python iasa_cli.py bench.attention --help``.

The pack's modules use relative imports (ComfyUI imports the pack under its folder name). Outside
ComfyUI this script registers the checkout as the package ``iasa`` and runs ``iasa.<module>``.
Works under torchrun too: ``torchrun --nproc_per_node=2 iasa_cli.py training.train_teacher ...``.
"""
from __future__ import annotations

import pathlib
import runpy
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parent
PACKAGE = "iasa"


def register_package(name: str = PACKAGE) -> types.ModuleType:
    """Make ``import iasa.<sub>`` resolve to this checkout without running the pack's ``__init__``."""
    if name in sys.modules:
        return sys.modules[name]
    mod = types.ModuleType(name)
    mod.__path__ = [str(ROOT)]
    mod.__file__ = str(ROOT / "__init__.py")
    sys.modules[name] = mod
    return mod


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    register_package()
    module = argv[0].removesuffix(".py").replace("/", ".")
    sys.argv = [module, *argv[1:]]
    runpy.run_module(f"{PACKAGE}.{module}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
