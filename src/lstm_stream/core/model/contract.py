"""The model contract: which ONNX models can be served, and how the runner sees them.

A servable model is a recurrent *step* model: it takes a feature vector and its
recurrent state, and returns the policy output and the new state. Which of its
inputs and outputs play which part is decided by :mod:`lstm_stream.core.model.names`
(declared by the user, or inferred by documented rules). This module checks
their shapes and element types and records how to adapt them, so that
everything after it sees one canonical form:

- ``x`` float32 ``[batch, features]``; ``y`` float32 ``[batch, outputs]``, with
  any extra outputs (a value head, an uncertainty) as further columns;
- each state float32 ``[layers, batch, hidden]``.

Models may take ``x`` as ``[batch, features]``, ``[batch, 1, features]`` or
``[1, batch, features]`` (the same for outputs), states as ``[layers, batch,
hidden]`` or ``[batch, layers, hidden]``, in float32, float16 or float64, with
a dynamic batch or a fixed batch of 1, and with weights in external data files
beside the ``.onnx`` file. See docs/model-contract.md.

The contract is read with :mod:`lstm_stream.core.model.onnx_proto`, so it needs neither
onnxruntime nor the ``onnx`` package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lstm_stream.core.errors import ModelContractError, ModelFormatError, ModelIntegrityError
from lstm_stream.core.model.cell import CellKind
from lstm_stream.core.model.names import ModelIO, NameMapping, map_names
from lstm_stream.core.model.onnx_proto import OnnxModel, ValueInfo, read_model, type_name
from lstm_stream.core.model.shipped import resolve_model_path

INPUT_NAME = "x"  # the canonical names, and the names of models made by lstm-stream
OUTPUT_NAME = "y"
FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64"}  # by TensorProto element type
LAYERS_BATCH_HIDDEN, BATCH_LAYERS_HIDDEN = "layers_batch_hidden", "batch_layers_hidden"

# metadata_props keys that lstm-stream understands; values are JSON where noted.
META_FEATURE_NAMES = "feature_names"  # JSON list of str, one per feature
META_OUTPUT_NAMES = "output_names"  # JSON list of str, one per output
META_NORMALIZATION = "normalization"  # JSON {"mean": [...], "std": [...], "folded": bool}
META_PREPROCESSING = "preprocessing"  # JSON list of str: what the graph does to raw x
META_CELL = "cell"  # "lstm" | "gru"


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor: fed as ``input``, returned as ``output``."""

    input: str
    output: str
    layers: int
    hidden: int
    batch_first: bool = False  # the model's layout is [batch, layers, hidden]


@dataclass(frozen=True)
class PortSpec:
    """``x``, ``y`` or an extra output as the model has it."""

    name: str
    width: int  # features, outputs
    layout: str = "bf"  # "bf" [batch, n]; "b1f" [batch, 1, n]; "1bf" [1, batch, n]


@dataclass(frozen=True)
class ModelContract:
    """What the runner needs to know about a model, checked at load time."""

    path: Path
    sha256: str
    n_features: int
    n_outputs: int
    states: tuple[StateSpec, ...]
    cell: CellKind
    feature_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    normalization: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    graph: OnnxModel | None = field(default=None, repr=False, compare=False)
    # The exact bytes that were hashed and parsed: backends load these, never the
    # file again, so what runs is what model.sha256 pinned.
    data: bytes | None = field(default=None, repr=False, compare=False)
    x: PortSpec = PortSpec(INPUT_NAME, 0)
    y: PortSpec = PortSpec(OUTPUT_NAME, 0)
    extras: tuple[PortSpec, ...] = ()
    dtype: str = "float32"  # the model's float type; the runner's side is float32
    fixed_batch: int | None = None  # 1: exported with a fixed batch of one
    decided: tuple[str, ...] = ()  # how each name was mapped, for `lstm-stream info`
    external: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def feature_index(self) -> dict[str, int] | None:
        """Position of each named feature, when the model names its features."""
        if self.feature_names is None:
            return None
        return {name: i for i, name in enumerate(self.feature_names)}

    @property
    def n_extra(self) -> int:
        """Columns of the extra outputs, after the ``n_outputs`` of y."""
        return sum(e.width for e in self.extras)

    @property
    def output_order(self) -> list[str]:
        """The model's output names in the order backends return them."""
        return [self.y.name, *(e.name for e in self.extras), *(s.output for s in self.states)]

    @property
    def adapted(self) -> bool:
        """Whether feeding or reading this model needs anything but the arrays as they are."""
        ports = (self.x, self.y, *self.extras)
        return (self.dtype != "float32" or bool(self.extras) or any(p.layout != "bf" for p in ports)
                or any(s.batch_first for s in self.states))

    def model_inputs(self, x: np.ndarray, states: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs by its own names, laid out and typed as it takes them, from
        canonical ``x`` (B, F) and states (layers, B, hidden)."""
        dtype = np.dtype(self.dtype)
        feeds = {self.x.name: _to_layout(x, self.x.layout).astype(dtype, copy=False)}
        for spec, value in zip(self.states, states, strict=True):
            if spec.batch_first:
                value = np.ascontiguousarray(value.transpose(1, 0, 2))
            feeds[spec.input] = value.astype(dtype, copy=False)
        return feeds

    def canonical_outputs(self, outs: Sequence[np.ndarray]
                          ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """``y`` (B, outputs + extras) and the states (layers, B, hidden), float32, from
        the model's outputs in :attr:`output_order`."""
        heads = [_from_layout(np.asarray(o), p.layout)
                 for o, p in zip(outs, (self.y, *self.extras), strict=False)]
        y = heads[0] if len(heads) == 1 else np.concatenate(heads, axis=1)
        states = []
        for spec, value in zip(self.states, outs[1 + len(self.extras):], strict=True):
            value = np.asarray(value)
            states.append(value.transpose(1, 0, 2) if spec.batch_first else value)
        if self.dtype != "float32":
            return y.astype(np.float32), tuple(s.astype(np.float32) for s in states)
        return y, tuple(states)


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    batch, width = x.shape
    return x if layout == "bf" else x.reshape((batch, 1, width) if layout == "b1f"
                                              else (1, batch, width))


def _from_layout(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == "bf":
        return value
    return value.reshape(value.shape[0] * value.shape[1], value.shape[2])


def load_contract(path: str | Path, io: ModelIO | None = None) -> ModelContract:
    """Read the ONNX file at ``path`` (and any external data files beside it) and check
    it against the contract, with the user's declaration ``io`` of its names."""
    path = resolve_model_path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelContractError(
            f"Could not read model file {str(path)!r}: {err.strerror or err}. "
            "Check the path (models are looked up relative to the current directory)."
        ) from err
    external: dict[str, bytes] = {}
    graph = read_model(data, source=str(path), external=_external_loader(path, external))
    digest = hashlib.sha256(data)
    for blob in external.values():  # a changed data file changes the model's identity
        digest.update(blob)
    contract = contract_from_graph(graph, path=path, sha256=digest.hexdigest(), io=io)
    return dataclasses.replace(contract, data=data, external=external)


def _external_loader(path: Path, loaded: dict[str, bytes]) -> Any:
    """Reads external data files next to ``path``, keeping what it read in ``loaded``."""

    def load(location: str) -> bytes:
        if location not in loaded:
            rel = PurePosixPath(location)
            if not location or rel.is_absolute() or ".." in rel.parts:
                raise ModelFormatError(
                    f"ONNX model {str(path)!r} names the external data file {location!r}, "
                    "which is not a plain path beside the model; refusing to read it.")
            file = path.parent / rel
            try:
                loaded[location] = file.read_bytes()
            except OSError as err:
                raise ModelFormatError(
                    f"ONNX model {str(path)!r} keeps tensors in the external data file "
                    f"{str(file)!r}, which could not be read ({err.strerror or err}). Keep "
                    "the .onnx.data file beside the .onnx file, or re-export with "
                    "torch.onnx.export(..., external_data=False).") from err
        return loaded[location]

    return load


def contract_from_graph(graph: OnnxModel, *, path: Path, sha256: str,
                        io: ModelIO | None = None) -> ModelContract:
    """Check a parsed model against the contract; refuse it listing everything wrong."""
    io = io or ModelIO()
    where = f"Model {str(path)!r}"
    names = map_names(graph, io)
    inputs = {vi.name: vi for vi in graph.inputs}
    outputs = {vi.name: vi for vi in graph.outputs}
    problems = list(names.problems)  # everything wrong is listed at once
    metadata = dict(graph.metadata)
    output_names = _json_names(where, metadata, META_OUTPUT_NAMES)
    dtype = _float_type(names, inputs, outputs, problems)
    batches: dict[str, int | str | None] = {}
    x = (_port(inputs[names.x], "input", "features", None, problems, batches) if names.x
         else PortSpec("", 0))
    y = (_port(outputs[names.y], "output", "outputs",
               len(output_names) if output_names else None, problems, batches) if names.y
         else PortSpec("", 0))
    extras = tuple(_port(outputs[n], "extra output", "values", None, problems, batches)
                   for n in names.extras)
    states = tuple(_state(inputs[i], outputs[o], io.state_layout, batches.get(names.x),
                          problems, batches) for i, o in names.states)
    fixed = _fixed_batch(batches, names, problems)
    if not names.x and not any(isinstance(d, str) or d is None
                               for vi in graph.inputs for d in vi.dims):
        problems.append("every input has a fixed shape: if the batch is fixed too (the "
                        "exporter was not told it is dynamic), re-export with a dynamic batch "
                        "(docs/model-contract.md)")
    feature_names = _json_names(where, metadata, META_FEATURE_NAMES)
    if feature_names is not None and x.width and len(feature_names) != x.width:
        problems.append(f"metadata {META_FEATURE_NAMES!r} lists {len(feature_names)} names "
                        f"but input {x.name!r} has {x.width} features")
    if output_names is not None and y.width and len(output_names) != y.width:
        problems.append(f"metadata {META_OUTPUT_NAMES!r} lists {len(output_names)} names "
                        f"but output {y.name!r} has {y.width} values")
    if problems:
        raise ModelContractError(
            f"{where} cannot be served (inputs {_signature(graph.inputs)}; outputs "
            f"{_signature(graph.outputs)}):\n"
            + "\n".join(f"  {n}. {p}" for n, p in enumerate(problems, 1))
            + (f"\n{names.advice}" if names.advice else ""))
    decided = list(names.decided)
    if dtype != "float32":
        decided.append(f"{dtype} model: float32 values are cast once per step")
    if fixed == 1:
        decided.append("fixed batch of 1: one message per call (batching is off)")
    return ModelContract(
        path=path, sha256=sha256, n_features=x.width, n_outputs=y.width, states=states,
        cell=_cell_kind(graph, metadata), feature_names=feature_names,
        output_names=output_names,
        normalization=_json_object(where, metadata, META_NORMALIZATION), metadata=metadata,
        graph=graph, x=x, y=y, extras=extras, dtype=dtype, fixed_batch=fixed,
        decided=tuple(decided))


def _shape(vi: ValueInfo) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in vi.dims) + "]"


def _signature(infos: tuple[ValueInfo, ...]) -> str:
    return ", ".join(f"{vi.name} {_shape(vi)}" for vi in infos) or "none"


def _float_type(names: NameMapping, inputs: dict[str, ValueInfo],
                outputs: dict[str, ValueInfo], problems: list[str]) -> str:
    """The model's one float type; every tensor the runner touches must have it."""
    tensors = [*([inputs[names.x]] if names.x else []),
               *([outputs[names.y]] if names.y else []), *(outputs[n] for n in names.extras)]
    for i, o in names.states:
        tensors += [inputs[i], outputs[o]]
    kinds = {vi.elem_type for vi in tensors}
    for vi in tensors:
        if vi.elem_type not in FLOAT_TYPES:
            problems.append(f"{vi.name!r} is {type_name(vi.elem_type)}; lstm-stream serves "
                            "float32, float16 and float64 models (export the model in float)")
    floats = kinds & FLOAT_TYPES.keys()
    if len(floats) > 1:
        problems.append("its tensors mix " + ", ".join(
            f"{vi.name} {type_name(vi.elem_type)}" for vi in tensors)
            + "; x, y, the extras and the states must share one float type")
    return FLOAT_TYPES[min(floats)] if floats else "float32"


def _batch_axes(vi: ValueInfo) -> tuple[int, int] | None:
    """(batch axis, width axis) of a rank-2 or rank-3 x, y or extra; None if unusable."""
    dims = vi.dims
    if len(dims) == 2:
        return 0, 1
    if len(dims) != 3:
        return None
    a, b = dims[0], dims[1]
    if b == 1:
        return 0, 2  # [batch, 1, n]
    if a == 1:
        return 1, 2  # [1, batch, n]
    if isinstance(a, str) and isinstance(b, str) and ("batch" in a) != ("batch" in b):
        return (0, 2) if "batch" in a else (1, 2)  # [batch, time, n]: time is fed as 1
    return None


def _port(vi: ValueInfo, kind: str, meaning: str, width_hint: int | None,
          problems: list[str], batches: dict[str, int | str | None]) -> PortSpec:
    axes = _batch_axes(vi)
    if axes is None:
        problems.append(f"{kind} {vi.name!r} has shape {_shape(vi)}; it must be [batch, "
                        f"{meaning}], [batch, 1, {meaning}] or [1, batch, {meaning}]")
        return PortSpec(vi.name, 0)
    batch_axis, width_axis = axes
    width = vi.dims[width_axis]
    if not isinstance(width, int) or width <= 0:
        if width_hint is None:
            problems.append(f"{kind} {vi.name!r} has shape {_shape(vi)}; its {meaning} "
                            "dimension must be a fixed number (only the batch may be dynamic)")
            return PortSpec(vi.name, 0)
        width = width_hint
    batches[vi.name] = vi.dims[batch_axis]
    layout = "bf" if len(vi.dims) == 2 else ("b1f" if batch_axis == 0 else "1bf")
    return PortSpec(vi.name, width, layout)


def _state(vi: ValueInfo, out: ValueInfo, declared: str, x_batch: int | str | None,
           problems: list[str], batches: dict[str, int | str | None]) -> StateSpec:
    where = f"state input {vi.name!r} (returned as {out.name!r})"
    if len(vi.dims) != 3:
        problems.append(f"{where} has shape {_shape(vi)}, rank {len(vi.dims)}; a state must "
                        "be rank 3, [layers, batch, hidden] or [batch, layers, hidden]")
        return StateSpec(vi.name, out.name, 0, 0)
    batch_axis = _state_batch_axis(vi, declared, x_batch)
    if batch_axis is None:
        problems.append(f"{where} has shape {_shape(vi)}: cannot tell its batch axis; "
                        "declare model.io.state_layout = \"layers_batch_hidden\" or "
                        "\"batch_layers_hidden\"")
        return StateSpec(vi.name, out.name, 0, 0)
    layers, hidden = vi.dims[1 - batch_axis], vi.dims[2]
    for value, meaning in ((layers, "layers"), (hidden, "hidden")):
        if not isinstance(value, int) or value <= 0:
            problems.append(f"{where} has shape {_shape(vi)}; its {meaning} dimension must be "
                            f"a fixed positive number, not {value!r} (only the batch may be "
                            "dynamic)")
    batches[vi.name] = vi.dims[batch_axis]
    if out.dims and (len(out.dims) != 3 or any(
            isinstance(out.dims[a], int) and isinstance(vi.dims[a], int)
            and out.dims[a] != vi.dims[a] for a in range(3))):
        problems.append(f"state output {out.name!r} has shape {_shape(out)} but its input "
                        f"{vi.name!r} is {_shape(vi)}; they must match")
    ok = isinstance(layers, int) and isinstance(hidden, int)
    return StateSpec(vi.name, out.name, layers if ok else 0, hidden if ok else 0,  # type: ignore[arg-type]
                     batch_first=batch_axis == 0)


def _state_batch_axis(vi: ValueInfo, declared: str, x_batch: int | str | None) -> int | None:
    if declared == LAYERS_BATCH_HIDDEN:
        return 1
    if declared == BATCH_LAYERS_HIDDEN:
        return 0
    a, b = vi.dims[0], vi.dims[1]
    matches = [axis for axis, d in ((0, a), (1, b)) if d == x_batch and d is not None]
    if len(matches) == 1:
        return matches[0]
    if len(matches) == 2:  # [1, 1, hidden] with a batch of 1: the same bytes either way
        return 1
    dynamic = [axis for axis, d in ((0, a), (1, b)) if not isinstance(d, int)]
    if len(dynamic) == 1:
        return dynamic[0]
    return 1 if not dynamic else None  # all fixed: torch's [layers, batch, hidden]


def _fixed_batch(batches: dict[str, int | str | None], names: NameMapping,
                 problems: list[str]) -> int | None:
    fixed = {name: d for name, d in batches.items() if isinstance(d, int)}
    if not fixed:
        return None
    sizes = set(fixed.values())
    if sizes == {1}:
        return 1
    listed = ", ".join(f"{n} batch {d}" for n, d in fixed.items())
    axes = {names.x or "x": 0}
    axes.update({i: 1 for i, _ in names.states})
    legacy = ", ".join(f'"{n}": {{{a}: "batch"}}' for n, a in axes.items())
    problems.append(
        f"it was exported with a fixed batch ({listed}); the runner steps one message or a "
        "batch of streams per call, so the batch must be dynamic (or 1). Re-export with a "
        f"dynamic batch: torch.onnx.export(..., dynamo=False, dynamic_axes={{{legacy}, ...}}) "
        "(outputs too), or with the dynamo exporter a sample of batch >= 2 and "
        "dynamic_shapes naming torch.export.Dim(\"batch\") for the same axes")
    return None


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


def _cell_kind(graph: OnnxModel, metadata: dict[str, str]) -> CellKind:
    declared = metadata.get(META_CELL)
    if declared in (CellKind.LSTM, CellKind.GRU):
        return CellKind(declared)
    ops = {node.op_type for node in graph.nodes}
    if "LSTM" in ops:
        return CellKind.LSTM
    if "GRU" in ops:
        return CellKind.GRU
    return CellKind.CUSTOM


def check_model_pin(contract: ModelContract, pinned: str) -> None:
    """Refuse a model whose SHA-256 differs from ``model.sha256`` (when pinned)."""
    if pinned and contract.sha256 != pinned:
        raise ModelIntegrityError(
            f"Model {str(contract.path)!r} has SHA-256 {contract.sha256}, but model.sha256 "
            f"pins {pinned}. Refusing to serve a model that is not the one pinned: restore "
            "the right file, or update the pin after checking the new model.")
