"""Export a trained model as an ONNX step model, and refuse to write one that is wrong.

The step graph follows the model contract (docs/model-contract.md): inputs ``x``
``[batch, F]`` and the state ``h`` (and ``c`` for an LSTM) ``[layers, batch,
hidden]``; outputs ``y``, ``h_out`` (and ``c_out``). It uses only operators the
numpy backend interprets (Sub, Div, Unsqueeze, Slice, LSTM/GRU, Squeeze, Gemm,
Relu, Softmax, Mul, Add, Concat), with the normalisation folded in, so every
backend can serve it. The weights are written in the ONNX gate order by
:mod:`lstm_stream.core.model.cell`'s converters.

Before anything is written, :func:`verify_step_model` steps the graph through
onnxruntime and through the numpy backend over held-out sequences, carrying the
state from step to step as ``serve`` does, and compares every step's ``y`` and
the final state with the PyTorch model run on the whole sequence. A mismatch
beyond ``|a-b| <= max(tol, tol*max(|a|,|b|))`` raises :class:`ExportError` saying
by how much, for which backend, sequence, step and output; the file is not written.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from lstm_stream.core.backends.base import BackendName, StepFn, step_sequences
from lstm_stream.core.backends.numpy import NumpyBackend
from lstm_stream.core.backends.onnxruntime import session_options
from lstm_stream.core.errors import ExportError, LstmStreamError
from lstm_stream.core.model import cell
from lstm_stream.core.model.cell import CellKind
from lstm_stream.core.model.contract import ModelContract, contract_from_graph
from lstm_stream.core.model.onnx_proto import read_model
from lstm_stream.train.checkpoint import load_checkpoint, model_from_checkpoint
from lstm_stream.train.model import SequenceModel

log = logging.getLogger(__name__)

OPSET = 17
IR_VERSION = 8  # what onnxruntime 1.17+ accepts
BATCH = "batch"



@dataclass
class ExportInfo:
    """What the metadata says about the model."""

    feature_names: list[str]
    output_names: list[str]
    config_sha256: str
    validation: dict[str, Any]
    test: dict[str, Any]


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ExportError("Export needs the 'onnx' package: pip install 'onnx>=1.16'.") from err
    return onnx


def build_step_graph(model: SequenceModel, info: ExportInfo) -> Any:
    """The ONNX ``ModelProto`` of one step of ``model`` (not yet verified)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    graph = _GraphBuilder(numpy_helper)
    f, outs = model.shape.features, model.shape.outputs
    layers, hidden = model.config.layers, model.config.hidden
    states = ["h", "c"] if model.cell == CellKind.LSTM else ["h"]
    x = graph.node("Sub", ["x", graph.const("x_mean", model.x_mean)], "x_centred")
    x = graph.node("Div", [x, graph.const("x_std", model.x_std)], "x_norm")  # (B, F)
    axis0 = graph.const("axes_0", np.array([0], np.int64))
    axis1 = graph.const("axes_1", np.array([1], np.int64))
    seq = graph.node("Unsqueeze", [x, axis0], "seq_0")  # (1, B, F): a one-step sequence
    rnn_state = {k: v.detach().numpy() for k, v in model.rnn.state_dict().items()}
    for k in range(layers):
        seq = _recurrent_layer(graph, model.cell, rnn_state, k, seq, states, hidden, axis0, axis1)
    top = graph.node("Squeeze", [seq, axis0], "top")  # (B, H)
    y = _head(graph, model, top)
    for s in states:
        graph.nodes.append(helper.make_node("Concat", [f"{s}_out_{k}" for k in range(layers)],
                                            [f"{s}_out"], axis=0, name=f"concat_{s}"))
    graph.node("Identity", [y], "y")
    state_shape: list[int | str] = [layers, BATCH, hidden]
    g = helper.make_graph(
        graph.nodes, f"{model.cell}_step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, f]),
         *(helper.make_tensor_value_info(s, TensorProto.FLOAT, state_shape) for s in states)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, outs]),
         *(helper.make_tensor_value_info(f"{s}_out", TensorProto.FLOAT, state_shape)
           for s in states)],
        initializer=graph.inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="lstm-stream train",
                              producer_version="1")
    helper.set_model_props(proto, _metadata(model, info))
    onnx.checker.check_model(proto, full_check=True)
    return proto


class _GraphBuilder:
    """Collects nodes and initializers with unique names."""

    def __init__(self, numpy_helper: Any) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._numpy_helper = numpy_helper

    def const(self, name: str, value: np.ndarray | torch.Tensor) -> str:
        array = value.detach().numpy() if isinstance(value, torch.Tensor) else value
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        self.inits.append(self._numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op.lower()}_"
                                           f"{len(self.nodes)}", **attrs))
        return output


def _recurrent_layer(graph: _GraphBuilder, kind: str, rnn_state: dict[str, np.ndarray], k: int,
                     seq: str, states: list[str], hidden: int, axis0: str, axis1: str) -> str:
    """Layer ``k`` as an ONNX LSTM/GRU node over a one-step sequence; returns its output."""
    from onnx import helper

    start = graph.const(f"layer_{k}", np.array([k], np.int64))
    end = graph.const(f"layer_{k}_end", np.array([k + 1], np.int64))
    ins = [graph.node("Slice", [s, start, end, axis0], f"{s}_{k}") for s in states]  # (1, B, H)
    if kind == CellKind.LSTM:
        (w,) = cell.lstm_from_torch(rnn_state, k + 1)[k:k + 1]
        W, R, B = cell.lstm_to_onnx(w)  # gate order i, o, f, c
        attrs: dict[str, Any] = {"hidden_size": hidden}
    else:
        (gw,) = cell.gru_from_torch(rnn_state, k + 1)[k:k + 1]
        W, R, B = cell.gru_to_onnx(gw)  # gate order z, r, h
        attrs = {"hidden_size": hidden, "linear_before_reset": 1}  # PyTorch's GRU
    weights = [graph.const(f"{n}_{k}", a.astype(np.float32)) for n, a in
               (("W", W), ("R", R), ("B", B))]
    outputs = [f"Y_{k}", *(f"{s}_out_{k}" for s in states)]
    graph.nodes.append(helper.make_node(kind.upper(), [seq, *weights, "", *ins], outputs,
                                        name=f"{kind}_{k}", **attrs))
    # Y is (1, 1, B, H) = (seq, directions, B, H); drop the directions axis.
    return graph.node("Squeeze", [f"Y_{k}", axis1], f"seq_{k + 1}")


def _head(graph: _GraphBuilder, model: SequenceModel, top: str) -> str:
    """Head, then softmax (classification) or de-normalisation (regression): ``(B, O)``."""
    layers = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    out = top
    for i, lin in enumerate(layers):
        if i > 0:
            out = graph.node("Relu", [out], f"head_relu_{i}")
        out = graph.node("Gemm", [out, graph.const(f"head_W_{i}", lin.weight),
                                  graph.const(f"head_b_{i}", lin.bias)], f"head_{i}", transB=1)
    if model.config.task == "classification":
        return graph.node("Softmax", [out], "probabilities", axis=1)
    out = graph.node("Mul", [out, graph.const("y_std", model.y_std)], "y_scaled")
    out = graph.node("Add", [out, graph.const("y_mean", model.y_mean)], "y_value")
    i = model.shape.add_input_index
    if i >= 0:  # the model predicts a change of input i: add its raw value back
        s = graph.const("add_start", np.array([i], np.int64))
        e = graph.const("add_end", np.array([i + 1], np.int64))
        raw = graph.node("Slice", ["x", s, e, graph.const("add_axis", np.array([1], np.int64))],
                         "x_added")  # (B, 1)
        out = graph.node("Add", [out, raw], "y_plus_input")
    return out


def _metadata(model: SequenceModel, info: ExportInfo) -> dict[str, str]:
    task = model.config.task
    created = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    return {
        "feature_names": json.dumps(info.feature_names),
        "output_names": json.dumps(info.output_names),
        "normalization": json.dumps({"mean": model.x_mean.tolist(),
                                     "std": model.x_std.tolist(), "folded": True}),
        "cell": model.cell,
        "task": ("classification: y holds the class probabilities" if task == "classification"
                 else "regression: y holds the targets in data units"),
        "training_config_sha256": info.config_sha256,
        "validation_metrics": json.dumps(info.validation, sort_keys=True),
        "test_metrics": json.dumps(info.test, sort_keys=True),
        "created": created,
        "producer": "lstm-stream train",
    }


# ----------------------------------------------------------------------- verification


@dataclass
class Mismatch:
    """The worst difference found between a backend and PyTorch."""

    backend: str
    sequence: int
    step: int
    output: str
    index: int
    got: float
    want: float

    @property
    def diff(self) -> float:
        return abs(self.got - self.want)


def verify_step_model(data: bytes, model: SequenceModel, sequences: Sequence[np.ndarray],
                      tolerance: float = 1e-5) -> float:
    """Step ``data`` through onnxruntime and numpy; compare with PyTorch. Max |diff| back."""
    contract = _contract(data)
    worst = 0.0
    for backend, step in _steppers(data, contract):
        mismatch = _compare(step, model, sequences, contract, backend, tolerance)
        if mismatch is not None:
            raise ExportError(
                f"Export verification failed: the {backend} step model differs from the "
                f"PyTorch model by {mismatch.diff:.3g} (tolerance {tolerance:g}) at held-out "
                f"sequence {mismatch.sequence}, step {mismatch.step}, output "
                f"{mismatch.output!r}[{mismatch.index}]: got {mismatch.got:.7g}, PyTorch "
                f"{mismatch.want:.7g}. The model was not written.")
    for backend, step in _steppers(data, contract):
        worst = max(worst, _max_diff(step, model, sequences, contract))
        log.info("export check: %s agrees with PyTorch over %d sequences", backend,
                 len(sequences))
    return worst


def _contract(data: bytes) -> ModelContract:
    try:
        return contract_from_graph(read_model(data, source="<export>"), path=Path("<export>"),
                                   sha256=hashlib.sha256(data).hexdigest())
    except LstmStreamError as err:
        raise ExportError(f"The exported graph breaks the model contract: {err}") from err


def _steppers(data: bytes, contract: ModelContract) -> list[tuple[str, StepFn]]:
    session = ort.InferenceSession(data, sess_options=session_options(1),
                                   providers=["CPUExecutionProvider"])
    names = [s.input for s in contract.states]
    outputs = ["y", *(s.output for s in contract.states)]

    def ort_step(x: np.ndarray, states: Sequence[np.ndarray]
                 ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        outs = session.run(outputs, {"x": x, **dict(zip(names, states, strict=True))})
        return outs[0], tuple(outs[1:])

    return [(BackendName.ONNXRUNTIME, ort_step), (BackendName.NUMPY, NumpyBackend(contract).step)]


def _reference(model: SequenceModel, xs: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """PyTorch on whole sequences ``xs`` (B, T, F): y (B, T, O) and the final states."""
    with torch.no_grad():
        y, state = model(torch.from_numpy(xs))
    return y.numpy(), [s.numpy() for s in state]


def _by_length(sequences: Sequence[np.ndarray]) -> dict[int, list[int]]:
    """Sequences of one length are stepped together: that also exercises a dynamic batch."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(sequences):
        groups.setdefault(len(s), []).append(i)
    return groups


def _compare(step: StepFn, model: SequenceModel, sequences: Sequence[np.ndarray],
             contract: ModelContract, backend: str, tol: float) -> Mismatch | None:
    worst: Mismatch | None = None
    worst_excess = 0.0
    state_names = [s.output for s in contract.states]
    for idx in _by_length(sequences).values():
        xs = np.stack([sequences[i] for i in idx]).astype(np.float32)  # (B, T, F)
        want_y, want_s = _reference(model, xs)
        got_y, got_s = step_sequences(step, contract, xs)
        pairs = [("y", got_y, want_y)] + [(n, g.transpose(1, 0, 2)[:, None], w.transpose(
            1, 0, 2)[:, None]) for n, g, w in zip(state_names, got_s, want_s, strict=True)]
        for name, got, want in pairs:  # got/want (B, T or 1, ...)
            excess = np.abs(got - want) - np.maximum(tol, tol * np.maximum(np.abs(got),
                                                                          np.abs(want)))
            excess = np.where(np.isnan(got) | np.isnan(want), np.inf, excess)
            flat = int(np.argmax(excess))
            if excess.reshape(-1)[flat] > worst_excess:
                b, t, *rest = np.unravel_index(flat, excess.shape)
                step_no = int(t) if name == "y" else len(sequences[idx[int(b)]]) - 1
                worst_excess = float(excess.reshape(-1)[flat])
                worst = Mismatch(backend, idx[int(b)], step_no, name,
                                 int(np.ravel_multi_index(rest, got.shape[2:])) if rest else 0,
                                 float(got.reshape(-1)[flat]), float(want.reshape(-1)[flat]))
    return worst


def _max_diff(step: StepFn, model: SequenceModel, sequences: Sequence[np.ndarray],
              contract: ModelContract) -> float:
    worst = 0.0
    for idx in _by_length(sequences).values():
        xs = np.stack([sequences[i] for i in idx]).astype(np.float32)
        want_y, _ = _reference(model, xs)
        got_y, _ = step_sequences(step, contract, xs)
        worst = max(worst, float(np.max(np.abs(got_y - want_y))))
    return worst


# --------------------------------------------------------------------------- writing


def write_verified(proto: Any, model: SequenceModel, sequences: Sequence[np.ndarray],
                   path: Path, tolerance: float = 1e-5) -> float:
    """Verify ``proto`` against ``model``, then (only then) write it to ``path``."""
    if not sequences:
        raise ExportError("Export needs at least one held-out sequence to verify against.")
    data: bytes = proto.SerializeToString()
    worst = verify_step_model(data, model, sequences, tolerance)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    log.info("exported %s (%d bytes, max |step - PyTorch| = %.2e over %d sequences)", path,
             len(data), worst, len(sequences))
    return worst


def export_checkpoint(checkpoint: Path, output: Path, tolerance: float | None = None) -> float:
    """Export the model in ``checkpoint`` to ``output``; returns the verified max |diff|."""
    ckpt = load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(ckpt, str(checkpoint))
    history: list[dict[str, Any]] = ckpt["history"]
    best = next((r for r in history if r["epoch"] == ckpt["best_epoch"]), {})
    info = ExportInfo(
        feature_names=list(ckpt["feature_names"]),
        output_names=list(ckpt["output_names"]),
        config_sha256=ckpt["config_sha256"],
        validation={k[4:]: v for k, v in best.items() if k.startswith("val_")},
        test=dict(ckpt["test"]))
    sequences = [t.numpy() for t in ckpt["verify_x"]]
    proto = build_step_graph(model, info)
    tol = config.export.tolerance if tolerance is None else tolerance
    return write_verified(proto, model, sequences, output, tol)
