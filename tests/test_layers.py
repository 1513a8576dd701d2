"""The direction of imports between the layers (pyproject.toml's [tool.importlinter]),
no import cycles, and no function-local imports of the package's own modules.

`lint-imports` checks the package as it is, and copies of it with one import that goes
up a layer (of the package, or of core's own sub-packages), to show the check can fail.
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
    assert "2 kept, 0 broken" in done.stdout  # the package's layers, and core's


def copy_with_import(tmp_path: Path, module: str, statement: str) -> Path:
    """A copy of the package in ``tmp_path`` whose ``module`` (a path under lstm_stream/)
    ends with ``statement``; returns the directory to put on the path."""
    package = tmp_path / "lstm_stream"
    shutil.copytree(REPO / "src" / "lstm_stream", package,
                    ignore=shutil.ignore_patterns("__pycache__", "models", "data"))
    path = package / module
    path.write_text(path.read_text() + f"\n{statement}  # noqa\n")
    return tmp_path


def test_a_core_module_importing_serve_breaks_the_contract(tmp_path: Path) -> None:
    done = lint(copy_with_import(tmp_path, "core/state/store.py",
                                 "from lstm_stream.serve import runner"))
    assert done.returncode != 0
    assert "lstm_stream.core is not allowed to import lstm_stream.serve" in done.stdout


def test_a_wire_module_importing_the_state_store_breaks_cores_contract(tmp_path: Path) -> None:
    done = lint(copy_with_import(tmp_path, "core/wire/shard.py",
                                 "from lstm_stream.core.state import store"))
    assert done.returncode != 0
    assert "core: config > step > state | backends > model > wire BROKEN" in done.stdout
    assert ("lstm_stream.core.wire is not allowed to import lstm_stream.core.state"
            in done.stdout)
    assert "lstm_stream.core.wire.shard -> lstm_stream.core.state.store" in done.stdout


def test_logs_importing_serve_breaks_the_contract_as_they_are_siblings(tmp_path: Path) -> None:
    done = lint(copy_with_import(tmp_path, "logs/format.py",
                                 "from lstm_stream.serve import client"))
    assert done.returncode != 0
    assert "lstm_stream.logs is not allowed to import lstm_stream.serve" in done.stdout


# The only function-local imports of the package's own modules: modules that import an
# optional dependency (torch, ray, mcap) at their top, loaded only when asked for. The CLI
# handlers import them under cli/extras.py's needs_extra, which names what to install.
LOCAL_OWN_IMPORTS = {
    ("evaluate/check.py", "lstm_stream.core.backends.torch"),  # check --torch
    ("evaluate/fleet.py", "lstm_stream.evaluate.ray"),  # eval --ray
    ("cli/bench.py", "lstm_stream.bench.evalbench"),  # bench --eval: mcap
    ("cli/log_command.py", "lstm_stream.logs.foxglove"),  # log export: mcap
    ("cli/log_command.py", "lstm_stream.logs.info"),  # log info: mcap
    ("cli/log_command.py", "lstm_stream.logs.recover"),  # log recover: mcap
    ("cli/log_command.py", "lstm_stream.logs.rosbag"),  # log info: mcap (and rosbags)
    ("cli/record_replay_eval.py", "lstm_stream.evaluate.compare"),  # eval: mcap
    ("cli/record_replay_eval.py", "lstm_stream.evaluate.fleet"),  # eval: mcap
    ("cli/record_replay_eval.py", "lstm_stream.logs.record"),  # record: mcap
    ("cli/record_replay_eval.py", "lstm_stream.logs.replay"),  # replay: mcap
    ("cli/train.py", "lstm_stream.train.data"),  # train: torch, mcap
    ("cli/train.py", "lstm_stream.train.distributed"),  # train: torch
    ("cli/train.py", "lstm_stream.train.export"),  # train, export: torch
    ("cli/train.py", "lstm_stream.train.loop"),  # train: torch
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
