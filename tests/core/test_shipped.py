"""The shipped models: inside the package, found from any directory, after any install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lstm_stream.core.errors import ModelContractError
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.model.shipped import SHIPPED, resolve_model_path, shipped_model

from helpers.support import REPO


def test_the_repository_models_are_the_shipped_ones() -> None:
    for name in SHIPPED:
        assert (REPO / "models" / name).read_bytes() == shipped_model(name).read_bytes()


def test_a_missing_default_model_resolves_to_the_shipped_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a directory without models/
    assert resolve_model_path("models/random_lstm.onnx") == shipped_model("random_lstm.onnx")
    assert load_contract("models/lane_keep_lstm.onnx").path == shipped_model(
        "lane_keep_lstm.onnx")
    # the user's own file of that name wins
    (tmp_path / "models").mkdir()
    own = tmp_path / "models" / "random_lstm.onnx"
    own.write_bytes(shipped_model("lane_keep_lstm.onnx").read_bytes())
    assert resolve_model_path("models/random_lstm.onnx") == Path("models/random_lstm.onnx")
    assert load_contract("models/random_lstm.onnx").n_features == load_contract(
        shipped_model("lane_keep_lstm.onnx")).n_features
    # any other missing path is an error naming it
    with pytest.raises(ModelContractError, match=r"Could not read model file "
                       r"'models/mine.onnx'"):
        load_contract("models/mine.onnx")


@pytest.mark.slow
def test_a_non_editable_install_runs_the_demo_from_any_directory(tmp_path: Path) -> None:
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                              "--no-build-isolation", "--target", str(site), str(REPO)],
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
