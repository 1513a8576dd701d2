"""The scripts of ``tools/``, loaded by file path (they are scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as the module ``name`` (once; a script that imports a sibling
    by its plain name, as ``export_policy`` imports ``policies``, finds it loaded)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"no tool {name!r} in {TOOLS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


make_model = load_tool("make_model")
build_step_model = make_model.build_step_model


def policies() -> ModuleType:
    """tools/policies.py (imports torch)."""
    return load_tool("policies")


def export_policy() -> ModuleType:
    """tools/export_policy.py (imports torch, and tools/policies.py)."""
    policies()
    return load_tool("export_policy")


def fuzz_serve() -> ModuleType:
    """tools/fuzz_serve.py."""
    return load_tool("fuzz_serve")
