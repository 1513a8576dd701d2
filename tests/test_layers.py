"""The direction of imports between the layers (pyproject.toml's [tool.importlinter]),
no import cycles, and no function-local imports of the package's own modules.

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

import grimp  # import-linter's graph builder, in the [dev] extra with it

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
    state = package / "core" / "state" / "store.py"
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


def cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of a module graph: its strongly connected parts of two or more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(imports.get(module, ())):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            part = []
            while True:
                other = stack.pop()
                part.append(other)
                if other == module:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("lstm_stream", cache_dir=None)
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert len(imports) > 50  # the whole package was read
    assert cycles(imports) == []


def test_the_cycle_check_finds_one() -> None:
    imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(imports) == [["a", "b", "c"]]


MAX_MODULE_LINES = 450  # issue 14: a module that grows past this has several jobs


def test_no_module_is_over_450_lines() -> None:
    long = {path.relative_to(REPO).as_posix(): n
            for path in sorted((REPO / "src" / "lstm_stream").rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"split these modules by concept: {long}"
