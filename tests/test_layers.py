"""The direction of imports between the layers (pyproject.toml's [tool.importlinter]).

`lint-imports` checks the package as it is, and a copy of it with one import that goes
up a layer, to show the check can fail.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers.support import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT), str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_every_layer_imports_only_from_the_layers_below() -> None:
    done = lint(REPO / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_a_core_module_importing_serve_breaks_the_contract(tmp_path: Path) -> None:
    package = tmp_path / "lstm_stream"
    shutil.copytree(REPO / "src" / "lstm_stream", package,
                    ignore=shutil.ignore_patterns("__pycache__", "models", "data"))
    state = package / "core" / "state.py"
    state.write_text(state.read_text() + "\nfrom lstm_stream.serve import runner  # noqa\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert "lstm_stream.core is not allowed to import lstm_stream.serve" in done.stdout


# The only function-local imports of the package's own modules: modules whose whole
# job is an optional dependency (torch, ray), loaded only when asked for.
LOCAL_OWN_IMPORTS = {
    ("evaluate/check.py", "lstm_stream.core.backends.torch"),  # check --torch
    ("evaluate/fleet.py", "lstm_stream.evaluate.ray"),  # eval --ray
}


def local_own_imports(src: Path) -> set[tuple[str, str]]:
    """(module path, imported module) for every import of lstm_stream inside a function."""
    found = set()
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                        "lstm_stream"):
                    found.add((path.relative_to(src).as_posix(), node.module or ""))
                elif isinstance(node, ast.Import):
                    found.update((path.relative_to(src).as_posix(), a.name)
                                 for a in node.names if a.name.startswith("lstm_stream"))
    return found


def test_own_modules_are_imported_at_the_top_except_optional_ones() -> None:
    found = local_own_imports(REPO / "src" / "lstm_stream")
    assert found == LOCAL_OWN_IMPORTS, ("import these at the top of the module, or, for a "
                                        "module of an optional dependency, list it here: "
                                        f"{sorted(found ^ LOCAL_OWN_IMPORTS)}")


def test_the_local_import_check_finds_one(tmp_path: Path) -> None:
    (tmp_path / "late.py").write_text("def f():\n    from lstm_stream.core import state\n")
    assert local_own_imports(tmp_path) == {("late.py", "lstm_stream.core")}
