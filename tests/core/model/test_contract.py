"""The model contract: built models load with the right facts; violating models are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from lstm_stream.core.errors import ModelContractError
from lstm_stream.core.model.contract import PortSpec, StateSpec, load_contract
from lstm_stream.core.model.names import ModelIO

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
C = ("c", FLOAT, [2, "batch", 8])
Y = ("y", FLOAT, ["batch", 2])
H_OUT = ("h_out", FLOAT, [2, "batch", 8])
C_OUT = ("c_out", FLOAT, [2, "batch", 8])


@pytest.mark.parametrize(
    ("inputs", "outputs", "metadata", "match"),
    [
        ([("obs", FLOAT, ["batch", 4]), ("hidden", FLOAT, [2, "batch", 8])],
         [Y, ("hidden_next", FLOAT, [2, "batch", 8])], None,
         r"cannot tell which input is x: 'obs', 'hidden'(.|\n)*state input 'hidden' has no "
         r"output that returns it by name; outputs of the same shape: 'hidden_next'"),
        ([X, H], [("out", FLOAT, ["batch", 2]), ("value", FLOAT, ["batch", 1]), H_OUT], None,
         r"cannot tell which output is the policy output y: 'out', 'value'"),
        ([X, H, C], [Y, H_OUT], None, r"state input 'c' has no output that returns it"),
        ([("x", INT64, ["batch", 4]), H], [Y, H_OUT], None,
         r"'x' is int64; lstm-stream serves float32, float16 and float64 models"),
        ([X, ("h", TensorProto.DOUBLE, [2, "batch", 8])], [Y, H_OUT], None,
         r"its tensors mix x float32, y float32, h float64"),
        ([X, ("h", FLOAT, [2, "batch", "hidden"])], [Y, H_OUT], None,
         r"'h' .* has shape \[2, batch, hidden\]; its hidden dimension must be a fixed"),
        ([X, ("h", FLOAT, ["batch", 8])], [Y, H_OUT], None,
         r"'h' .* has shape \[batch, 8\], rank 2; a state must be rank 3"),
        ([("x", FLOAT, ["batch", 4, 3]), H], [Y, H_OUT], None,
         r"input 'x' has shape \[batch, 4, 3\]; it must be \[batch, features\], "
         r"\[batch, 1, features\] or \[1, batch, features\]"),
        ([X, H], [Y, ("h_out", FLOAT, [2, "batch", 9])], None,
         r"state output 'h_out' has shape \[2, batch, 9\]"),
        ([X], [Y], None, r"no state inputs"),
        ([("x", FLOAT, [8, 4]), ("h", FLOAT, [2, 8, 8])], [("y", FLOAT, [8, 2]),
                                                          ("h_out", FLOAT, [2, 8, 8])], None,
         r"fixed batch \(x batch 8, y batch 8, h batch 8\)(.|\n)*dynamic_axes=\{\"x\": "
         r"\{0: \"batch\"\}, \"h\": \{1: \"batch\"\}"),
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


def test_every_problem_is_listed_at_once_with_the_flags_to_pass(tmp_path: Path) -> None:
    """The names torch's dynamo exporter gives when none are passed: nothing can be
    paired by name, and h and c have the same shape, so nothing is guessed."""
    path = _model(tmp_path, [("obs", FLOAT, ["batch", 1, 10]), ("h0_", FLOAT, [2, "batch", 48]),
                             ("c0_", FLOAT, [2, "batch", 48])],
                  [("linear", FLOAT, ["batch", 3]), ("linear_1", FLOAT, ["batch", 1]),
                   ("getitem_1", FLOAT, [2, "batch", 48]), ("getitem_2", FLOAT, [2, "batch", 48])])
    with pytest.raises(ModelContractError) as info:
        load_contract(path)
    text = str(info.value)
    assert "1. cannot tell which input is x" in text
    assert "cannot tell which output is the policy output y: 'linear', 'linear_1'" in text
    assert "state input 'h0_' has no output" in text and "state input 'c0_' has no output" in text
    assert ("--io x=obs,y=linear --state h0_=getitem_1 --state c0_=getitem_2" in text)
    assert "cannot be told apart" in text  # says that the state pairing is a guess
    declared = ModelIO(x="obs", y="linear", states={"h0_": "getitem_1", "c0_": "getitem_2"})
    contract = load_contract(path, declared)
    assert [s.input for s in contract.states] == ["h0_", "c0_"]
    assert contract.extras == (PortSpec("linear_1", 1, "bf"),)
    assert contract.x == PortSpec("obs", 10, "b1f")


def test_torch_names_layouts_and_extras_are_inferred(tmp_path: Path) -> None:
    path = _model(tmp_path, [("obs", FLOAT, ["batch", 1, 10]), ("h0", FLOAT, ["batch", 2, 48]),
                             ("c0", FLOAT, ["batch", 2, 48])],
                  [("action", FLOAT, ["batch", 1, 3]), ("hn", FLOAT, ["batch", 2, 48]),
                   ("cn", FLOAT, ["batch", 2, 48])])
    contract = load_contract(path)
    assert contract.x == PortSpec("obs", 10, "b1f") and contract.y == PortSpec("action", 3, "b1f")
    assert contract.states == (StateSpec("h0", "hn", 2, 48, batch_first=True),
                               StateSpec("c0", "cn", 2, 48, batch_first=True))
    assert "state h0 -> hn: torch's names h0 -> hn, c0 -> cn" in contract.decided
    assert "y = action: the only output that is not a state" in contract.decided


def test_a_fixed_batch_of_one_is_served_without_batching(tmp_path: Path) -> None:
    path = _model(tmp_path, [("x", FLOAT, [1, 4]), ("h", FLOAT, [2, 1, 8])],
                  [("y", FLOAT, [1, 2]), ("h_out", FLOAT, [2, 1, 8])])
    contract = load_contract(path)
    assert contract.fixed_batch == 1 and contract.states == (StateSpec("h", "h_out", 2, 8),)
    assert any("batching is off" in line for line in contract.decided)


def test_declared_names_that_do_not_exist_are_named(tmp_path: Path) -> None:
    path = _model(tmp_path, [X, H], [Y, H_OUT])
    with pytest.raises(ModelContractError, match=r"declared x 'obs' is not an input \(inputs: "
                       r"'x', 'h'\)(.|\n)*declared state output 'hn' is not an output"):
        load_contract(path, ModelIO(x="obs", states={"h": "hn"}))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.onnx"
    with pytest.raises(
        ModelContractError, match=r"Could not read model file '.*nowhere/model\.onnx'"
    ):
        load_contract(path)
