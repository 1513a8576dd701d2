"""The shipped models: inside the package and found from any directory.

That they are found after a non-editable install is tested in tests/test_packaging.py."""

from __future__ import annotations

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
