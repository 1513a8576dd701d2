"""The model contract: built models load with the right facts; violating models are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from lstm_stream.contract import StateSpec, load_contract
from lstm_stream.errors import ModelContractError

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def test_lstm_model_contract(model_factory: Any) -> None:
    path = model_factory(cell="lstm", layers=2, hidden=8, features=5, outputs=2)
    contract = load_contract(path)
    assert contract.n_features == 5
    assert contract.n_outputs == 2
    assert contract.states == (StateSpec("h", "h_out", 2, 8), StateSpec("c", "c_out", 2, 8))
    assert contract.cell == "lstm"
    assert contract.feature_names == ("f00", "f01", "f02", "f03", "f04")
    assert contract.output_names == ("steer", "accel")
    assert contract.normalization is not None and contract.normalization["folded"] is True
    assert len(contract.normalization["mean"]) == 5
    assert contract.metadata["generator"] == "tools/make_model.py seed=0"


def test_gru_model_contract(model_factory: Any) -> None:
    names = ["speed", "yaw", "lat"]
    path = model_factory(cell="gru", layers=1, hidden=6, features=3, outputs=3,
                         normalize=False, feature_names=names)  # fmt: skip
    contract = load_contract(path)
    assert (contract.n_features, contract.n_outputs, contract.cell) == (3, 3, "gru")
    assert contract.states == (StateSpec("h", "h_out", 1, 6),)
    assert contract.feature_names == tuple(names)
    assert contract.feature_index == {"speed": 0, "yaw": 1, "lat": 2}
    assert contract.output_names == ("y0", "y1", "y2")
    assert contract.normalization is None


def _model(
    tmp_path: Path,
    inputs: list[tuple[str, int, list[Any]]],
    outputs: list[tuple[str, int, list[Any]]],
    metadata: dict[str, str] | None = None,
) -> Path:
    """A model with the given inputs/outputs; the contract only reads the graph's signature."""
    graph = helper.make_graph(
        [],
        "violating",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, metadata or {})
    path = tmp_path / "violating.onnx"
    onnx.save(model, str(path))
    return path


X = ("x", FLOAT, ["batch", 4])
H = ("h", FLOAT, [2, "batch", 8])
Y = ("y", FLOAT, ["batch", 2])
H_OUT = ("h_out", FLOAT, [2, "batch", 8])


@pytest.mark.parametrize(
    ("inputs", "outputs", "metadata", "match"),
    [
        ([("features", FLOAT, ["batch", 4]), H], [Y, H_OUT], None,
         r"no input named 'x' \(its inputs are 'features', 'h'\)"),
        ([X, H], [("out", FLOAT, ["batch", 2]), H_OUT], None, r"no output named 'y'"),
        ([X, H, ("c", FLOAT, [2, "batch", 8])], [Y, H_OUT], None,
         r"state input 'c' has no matching output 'c_out'"),
        ([X, H], [Y, H_OUT, ("debug", FLOAT, ["batch", 3])], None, r"an output 'debug'"),
        ([("x", INT64, ["batch", 4]), H], [Y, H_OUT], None,
         r"input 'x' has element type 7.*float32"),
        ([X, ("h", TensorProto.DOUBLE, [2, "batch", 8])], [Y, H_OUT], None,
         r"input 'h' has element type 11"),
        ([X, ("h", FLOAT, [2, "batch", "hidden"])], [Y, H_OUT], None,
         r"input 'h' has shape \[2, batch, hidden\]; its hidden dimension"),
        ([X, ("h", FLOAT, ["batch", 8])], [Y, H_OUT], None,
         r"input 'h' has shape \[batch, 8\], rank 2; the contract needs rank 3"),
        ([("x", FLOAT, ["batch", 4, 1]), H], [Y, H_OUT], None, r"input 'x' .* rank 3"),
        ([X, H], [Y, ("h_out", FLOAT, [2, "batch", 9])], None,
         r"state output 'h_out' has shape \[2, batch, 9\]"),
        ([X], [Y], None, r"no state inputs"),
        ([X, H], [Y, H_OUT], {"feature_names": json.dumps(["a", "b", "c"])},
         r"'feature_names' lists 3 names but input 'x' has 4 features"),
        ([X, H], [Y, H_OUT], {"output_names": json.dumps(["steer"])},
         r"'output_names' lists 1 names but output 'y' has 2 values"),
        ([X, H], [Y, H_OUT], {"feature_names": "[not json"},
         r"metadata 'feature_names' is not valid JSON"),
        ([X, H], [Y, H_OUT], {"normalization": "{'mean': 1}"},
         r"metadata 'normalization' is not valid JSON"),
        ([X, H], [Y, H_OUT], {"feature_names": json.dumps({"a": 1})},
         r"'feature_names' must be a JSON list of strings"),
    ],
)  # fmt: skip
def test_contract_violations_are_refused_naming_the_culprit(
    tmp_path: Path, inputs: Any, outputs: Any, metadata: Any, match: str
) -> None:
    path = _model(tmp_path, inputs, outputs, metadata)
    with pytest.raises(ModelContractError, match=match) as info:
        load_contract(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.onnx"
    with pytest.raises(
        ModelContractError, match=r"Could not read model file '.*nowhere/model\.onnx'"
    ):
        load_contract(path)
