"""The model contract: which ONNX models can be served, and what they look like.

A servable model has an input ``x`` ``[batch, features]`` plus state inputs,
and outputs ``y`` ``[batch, outputs]`` plus one ``<state>_out`` per state input
(an LSTM has ``h``/``h_out`` and ``c``/``c_out``, each ``[layers, batch, hidden]``;
a GRU has only ``h``/``h_out``). Nothing else is required; optional metadata in
the model's ``metadata_props`` is read when present. See docs/model-contract.md.

The contract is read from the ONNX file with :mod:`lstm_stream.onnx_proto`, so
it needs neither onnxruntime nor the ``onnx`` package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstm_stream.errors import ModelContractError
from lstm_stream.onnx_proto import OnnxModel, ValueInfo, read_model

INPUT_NAME = "x"
OUTPUT_NAME = "y"
STATE_OUTPUT_SUFFIX = "_out"
FLOAT = 1  # TensorProto.FLOAT

# metadata_props keys that lstm-stream understands; values are JSON where noted.
META_FEATURE_NAMES = "feature_names"  # JSON list of str, one per feature
META_OUTPUT_NAMES = "output_names"  # JSON list of str, one per output
META_NORMALIZATION = "normalization"  # JSON {"mean": [...], "std": [...], "folded": bool}
META_CELL = "cell"  # "lstm" | "gru"
META_TASK = "task"  # free text, e.g. "regression"


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor: fed as ``input``, returned as ``output``."""

    input: str
    output: str
    layers: int
    hidden: int


@dataclass(frozen=True)
class ModelContract:
    """What the runner needs to know about a model, checked at load time."""

    path: Path
    sha256: str
    n_features: int
    n_outputs: int
    states: tuple[StateSpec, ...]
    cell: str  # "lstm", "gru" or "custom"
    feature_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    normalization: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    graph: OnnxModel | None = field(default=None, repr=False, compare=False)
    # The exact bytes that were hashed and parsed: backends load these, never the
    # file again, so what runs is what model.sha256 pinned.
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def feature_index(self) -> dict[str, int] | None:
        """Position of each named feature, when the model names its features."""
        if self.feature_names is None:
            return None
        return {name: i for i, name in enumerate(self.feature_names)}


def load_contract(path: str | Path) -> ModelContract:
    """Read the ONNX file at ``path`` and check it against the model contract."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelContractError(
            f"Could not read model file {str(path)!r}: {err.strerror or err}. "
            "Check the path (models are looked up relative to the current directory)."
        ) from err
    graph = read_model(data, source=str(path))
    contract = contract_from_graph(graph, path=path, sha256=hashlib.sha256(data).hexdigest())
    return dataclasses.replace(contract, data=data)


def contract_from_graph(graph: OnnxModel, *, path: Path, sha256: str) -> ModelContract:
    """Check a parsed model against the contract; refuse it naming what is wrong."""
    where = f"Model {str(path)!r}"
    inputs = {vi.name: vi for vi in graph.inputs}
    outputs = {vi.name: vi for vi in graph.outputs}

    if INPUT_NAME not in inputs:
        raise ModelContractError(
            f"{where} has no input named {INPUT_NAME!r} (its inputs are "
            f"{_names(graph.inputs)}). The feature vector must be an input called 'x' "
            "shaped [batch, features]."
        )
    if OUTPUT_NAME not in outputs:
        raise ModelContractError(
            f"{where} has no output named {OUTPUT_NAME!r} (its outputs are "
            f"{_names(graph.outputs)}). The policy output must be called 'y' "
            "shaped [batch, outputs]."
        )
    x, y = inputs[INPUT_NAME], outputs[OUTPUT_NAME]
    _check_float(where, "input", x)
    _check_float(where, "output", y)
    n_features = _fixed_dim(where, "input", x, rank=2, axis=1, meaning="features")
    metadata = dict(graph.metadata)
    output_names = _json_names(where, metadata, META_OUTPUT_NAMES)
    n_outputs = _output_width(where, y, output_names)

    states: list[StateSpec] = []
    for name, vi in inputs.items():
        if name == INPUT_NAME:
            continue
        out_name = name + STATE_OUTPUT_SUFFIX
        if out_name not in outputs:
            raise ModelContractError(
                f"{where}: state input {name!r} has no matching output {out_name!r} "
                f"(outputs are {_names(graph.outputs)}). Every input other than 'x' is a "
                "recurrent state and must be returned as '<name>_out'."
            )
        _check_float(where, "input", vi)
        _check_float(where, "output", outputs[out_name])
        layers = _fixed_dim(where, "input", vi, rank=3, axis=0, meaning="layers")
        hidden = _fixed_dim(where, "input", vi, rank=3, axis=2, meaning="hidden")
        _check_state_output(where, outputs[out_name], layers, hidden)
        states.append(StateSpec(input=name, output=out_name, layers=layers, hidden=hidden))
    if not states:
        raise ModelContractError(
            f"{where} has no state inputs: a stateful step model takes 'x' plus its "
            "recurrent state (for an LSTM 'h' and 'c', shaped [layers, batch, hidden])."
        )
    expected_outputs = {OUTPUT_NAME} | {s.output for s in states}
    for name in outputs:
        if name not in expected_outputs:
            raise ModelContractError(
                f"{where} has an output {name!r} that the contract does not know: outputs "
                f"must be 'y' plus one '<state>_out' per state input "
                f"({sorted(expected_outputs)}). Remove it or add its state input."
            )

    feature_names = _json_names(where, metadata, META_FEATURE_NAMES)
    if feature_names is not None and len(feature_names) != n_features:
        raise ModelContractError(
            f"{where}: metadata {META_FEATURE_NAMES!r} lists {len(feature_names)} names "
            f"but input 'x' has {n_features} features."
        )
    if output_names is not None and len(output_names) != n_outputs:
        raise ModelContractError(
            f"{where}: metadata {META_OUTPUT_NAMES!r} lists {len(output_names)} names "
            f"but output 'y' has {n_outputs} values."
        )
    normalization = _json_object(where, metadata, META_NORMALIZATION)
    return ModelContract(
        path=path,
        sha256=sha256,
        n_features=n_features,
        n_outputs=n_outputs,
        states=tuple(states),
        cell=_cell_kind(graph, metadata),
        feature_names=feature_names,
        output_names=output_names,
        normalization=normalization,
        metadata=metadata,
        graph=graph,
    )


def _names(infos: tuple[ValueInfo, ...]) -> str:
    return ", ".join(repr(vi.name) for vi in infos) or "none"


def _check_float(where: str, kind: str, vi: ValueInfo) -> None:
    if vi.elem_type != FLOAT:
        raise ModelContractError(
            f"{where}: {kind} {vi.name!r} has element type {vi.elem_type}, but the contract "
            "needs float32 (ONNX element type 1). Export the model in float32."
        )


def _fixed_dim(where: str, kind: str, vi: ValueInfo, *, rank: int, axis: int, meaning: str) -> int:
    if len(vi.dims) != rank:
        raise ModelContractError(
            f"{where}: {kind} {vi.name!r} has shape {_shape(vi)}, rank {len(vi.dims)}; the "
            f"contract needs rank {rank} ({_expected_shape(rank)})."
        )
    dim = vi.dims[axis]
    if not isinstance(dim, int) or dim <= 0:
        raise ModelContractError(
            f"{where}: {kind} {vi.name!r} has shape {_shape(vi)}; its {meaning} dimension "
            f"(axis {axis}) must be a fixed positive number, not {dim!r}. Only the batch "
            "dimension may be dynamic."
        )
    return dim


def _output_width(where: str, y: ValueInfo, output_names: tuple[str, ...] | None) -> int:
    if len(y.dims) != 2:
        raise ModelContractError(
            f"{where}: output 'y' has shape {_shape(y)}, rank {len(y.dims)}; the contract "
            "needs rank 2 ([batch, outputs])."
        )
    dim = y.dims[1]
    if isinstance(dim, int) and dim > 0:
        return dim
    if output_names is not None:
        return len(output_names)
    raise ModelContractError(
        f"{where}: output 'y' has shape {_shape(y)}; its outputs dimension must be a fixed "
        f"number (or the metadata must list '{META_OUTPUT_NAMES}')."
    )


def _check_state_output(where: str, vi: ValueInfo, layers: int, hidden: int) -> None:
    if len(vi.dims) not in (0, 3):  # 0: shape not declared, accepted
        raise ModelContractError(
            f"{where}: state output {vi.name!r} has shape {_shape(vi)}; it must match its "
            f"input, [layers={layers}, batch, hidden={hidden}]."
        )
    if len(vi.dims) == 3:
        for axis, want in ((0, layers), (2, hidden)):
            got = vi.dims[axis]
            if isinstance(got, int) and got != want:
                raise ModelContractError(
                    f"{where}: state output {vi.name!r} has shape {_shape(vi)} but its input "
                    f"is [layers={layers}, batch, hidden={hidden}]; they must match."
                )


def _shape(vi: ValueInfo) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in vi.dims) + "]"


def _expected_shape(rank: int) -> str:
    return "[batch, features]" if rank == 2 else "[layers, batch, hidden]"


def _json_meta(where: str, metadata: dict[str, str], key: str, expected: str) -> Any:
    """The JSON value of metadata ``key``, or None when absent."""
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ModelContractError(
            f"{where}: metadata {key!r} is not valid JSON ({err}); expected {expected}."
        ) from err


def _json_names(where: str, metadata: dict[str, str], key: str) -> tuple[str, ...] | None:
    value = _json_meta(where, metadata, key, "a list of names")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelContractError(f"{where}: metadata {key!r} must be a JSON list of strings.")
    if len(set(value)) != len(value):
        raise ModelContractError(f"{where}: metadata {key!r} lists a name twice: {value}.")
    return tuple(value)


def _json_object(where: str, metadata: dict[str, str], key: str) -> dict[str, Any] | None:
    value = _json_meta(where, metadata, key, "an object")
    if value is not None and not isinstance(value, dict):
        raise ModelContractError(f"{where}: metadata {key!r} must be a JSON object.")
    return value


def _cell_kind(graph: OnnxModel, metadata: dict[str, str]) -> str:
    declared = metadata.get(META_CELL)
    if declared in ("lstm", "gru"):
        return declared
    ops = {node.op_type for node in graph.nodes}
    if "LSTM" in ops:
        return "lstm"
    if "GRU" in ops:
        return "gru"
    return "custom"
