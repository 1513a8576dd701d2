"""tools/make_model.py: deterministic output, a working CLI, and the shipped default model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest

from helpers.tools import build_step_model, make_model

main = make_model.main

REPO = Path(__file__).resolve().parents[1]


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    assert main(["--cell", "gru", "--hidden", "8", "--seed", "3", "-o", str(a)]) == 0
    assert main(["--cell", "gru", "--hidden", "8", "--seed", "3", "-o", str(b)]) == 0
    assert main(["--cell", "gru", "--hidden", "8", "--seed", "4", "-o", str(c)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_cli_prints_path_size_and_sha256(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.onnx"
    assert main(["--layers", "1", "--hidden", "4", "--no-normalize", "-o", str(path)]) == 0
    data = path.read_bytes()
    out = capsys.readouterr().out
    assert str(path) in out and str(len(data)) in out
    assert hashlib.sha256(data).hexdigest() in out
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert "normalization" not in meta and meta["cell"] == "lstm"


def test_metadata_describes_the_model() -> None:
    model = build_step_model(outputs=3, seed=9)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["feature_names"]) == [f"f{i:02d}" for i in range(16)]
    assert json.loads(meta["output_names"]) == ["y0", "y1", "y2"]
    assert meta["task"] == "random-init (untrained placeholder)"
    assert meta["generator"] == "tools/make_model.py seed=9"
    norm = json.loads(meta["normalization"])
    assert norm["folded"] is True and len(norm["mean"]) == len(norm["std"]) == 16
    assert (model.ir_version, model.opset_import[0].version) == (8, 17)


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(ValueError, match="3 feature names for 16 features"):
        build_step_model(feature_names=["a", "b", "c"])
    with pytest.raises(SystemExit) as info:
        main(["--hidden", "0"])
    assert info.value.code == 2


def test_shipped_default_model_is_what_the_tool_builds() -> None:
    shipped = (REPO / "models" / "random_lstm.onnx").read_bytes()
    assert shipped == build_step_model().SerializeToString(), (
        "models/random_lstm.onnx is stale: regenerate it with "
        "`python tools/make_model.py -o models/random_lstm.onnx`"
    )
