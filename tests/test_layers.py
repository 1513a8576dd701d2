"""The direction of imports between the layers (pyproject.toml's [tool.importlinter]).

`lint-imports` checks the package as it is, and a copy of it with one import that goes
up a layer, to show the check can fail.
"""

from __future__ import annotations

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
