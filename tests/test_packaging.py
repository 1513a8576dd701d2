"""Packaging: a non-editable install of the project works from any directory.

Real `pip install` of this repository into a temporary directory; the shipped models
and the demo must work from the installed copy, not from src/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.support import REPO


@pytest.mark.slow
def test_a_non_editable_install_runs_the_demo_from_any_directory(tmp_path: Path) -> None:
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Default build isolation: pip builds the wheel with the build-system requirements
    # of pyproject.toml (setuptools, wheel) from the configured index, so the test does
    # not depend on what this venv has (a venv without `wheel` and an older setuptools
    # failed with "invalid command 'bdist_wheel'" under --no-build-isolation).
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                              "--target", str(site), str(REPO)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)

    where = run("-c", "import lstm_stream; print(lstm_stream.__file__)")
    assert where.stdout.startswith(str(site)), where.stdout  # the installed copy, not src/
    demo = run("-m", "lstm_stream", "demo", "--rate", "0")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo: OK" in demo.stdout
    info = run("-m", "lstm_stream", "info", "models/random_lstm.onnx")
    assert info.returncode == 0, info.stderr
    assert str(site) in info.stdout and "x [batch, 16]" in info.stdout
