"""Readable names for the pack's exception classes in ComfyUI's error reports.

ComfyUI imports a custom node pack under its folder path (``/…/custom_nodes/comfyui-iasa``), so a class
defined in ``audio/loading.py`` has ``__module__ == "/…/custom_nodes/comfyui-iasa.audio.loading"``, and
the ``exception_type`` of ``/history`` and the UI's error dialog read like a mangled file path.
:func:`public_name` gives such a class the module ``iasa.<package>.<module>`` (the name it has when the
checkout is imported as ``iasa``, see iasa_cli.py), wherever the pack was imported from.
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent


def public_name(cls: type) -> type:
    """Class decorator: ``cls.__module__`` becomes ``iasa.<path of its file inside the pack>``."""
    source = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if source:
        try:
            rel = pathlib.Path(source).resolve().relative_to(ROOT).with_suffix("")
        except ValueError:   # defined outside the pack: leave it alone
            return cls
        cls.__module__ = ".".join(("iasa", *rel.parts))
    return cls
