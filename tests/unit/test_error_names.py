"""Exception classes get a readable module name, however ComfyUI named the pack's modules (the real server:
tests/integration/test_bad_input.py::test_node_errors_have_a_readable_type_and_no_server_path)."""
from __future__ import annotations

import sys
import types

from iasa.errors import ROOT, public_name


def test_a_class_of_a_module_imported_under_its_folder_path_gets_the_iasa_name(tmp_path):
    mangled = "/srv/ComfyUI/custom_nodes/comfyui-iasa.audio.loading"   # how ComfyUI 0.3.75 names it
    module = types.ModuleType(mangled)
    module.__file__ = str(ROOT / "audio" / "loading.py")
    sys.modules[mangled] = module
    try:
        cls = public_name(type("SomeInputError", (ValueError,), {"__module__": mangled}))
    finally:
        del sys.modules[mangled]
    assert cls.__module__ == "iasa.audio.loading"
    assert f"{cls.__module__}.{cls.__qualname__}" == "iasa.audio.loading.SomeInputError"


def test_a_class_defined_outside_the_pack_is_left_alone(tmp_path):
    other = types.ModuleType("elsewhere")
    other.__file__ = str(tmp_path / "elsewhere.py")
    sys.modules["elsewhere"] = other
    try:
        cls = public_name(type("OtherError", (ValueError,), {"__module__": "elsewhere"}))
    finally:
        del sys.modules["elsewhere"]
    assert cls.__module__ == "elsewhere"

