"""The LSTM and GRU operators of the graph interpreter: ONNX conventions checked once,
weights converted once (core/model/cell.py), then one ``ArrayOps`` call per step."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from lstm_stream.core.backends.array_ops import ArrayOps, Kernel
from lstm_stream.core.errors import BackendError, UnsupportedOperatorError
from lstm_stream.core.model import cell
from lstm_stream.core.model.onnx_proto import Node


class Program(Protocol):
    """What a kernel builder reads of the program it is built for (graph.GraphProgram)."""

    ops: ArrayOps

    def fail(self, node: Node, attribute: str, why: str) -> UnsupportedOperatorError: ...

    def const(self, node: Node, i: int) -> np.ndarray | None: ...


def _recurrent_attributes(node: Node, p: Program, activations: list[str]) -> None:
    """Refuse what the cell maths does not implement; return the hidden size."""
    attrs = node.attributes
    checks = [
        ("direction", attrs.get("direction", "forward"), "forward"),
        ("layout", attrs.get("layout", 0), 0),
        ("input_forget", attrs.get("input_forget", 0), 0),
        ("clip", attrs.get("clip"), None),
        ("activation_alpha", attrs.get("activation_alpha"), None),
        ("activation_beta", attrs.get("activation_beta"), None),
    ]
    given = attrs.get("activations")
    checks.append(("activations", given, given if given in (None, activations) else activations))
    for name, got, want in checks:
        if got != want:
            raise p.fail(node, f"attribute {name!r}", f"is {got!r} (only {want!r} is supported)")
    for i, what in ((4, "sequence_lens"), (7, "P (peepholes)")):
        if i < len(node.inputs) and node.inputs[i]:
            raise p.fail(node, f"input {what}", "is given (it must be omitted)")
    for i, what in ((1, "W"), (2, "R"), (3, "B")):
        given = i < len(node.inputs) and bool(node.inputs[i])
        if (given or i < 3) and p.const(node, i) is None:
            raise p.fail(node, f"input {what}", "must be known at load time (an initializer, "
                         "or computed from initializers only)")


def _check_hidden(node: Node, hidden: int) -> None:
    declared = node.attributes.get("hidden_size")
    if declared is not None and declared != hidden:
        raise BackendError(
            f"{node.op_type} node {node.name!r} declares hidden_size={declared} but its "
            f"weights R are for hidden size {hidden}; the model is inconsistent."
        )


def lstm_kernel(node: Node, p: Program) -> Kernel:
    _recurrent_attributes(node, p, ["Sigmoid", "Tanh", "Tanh"])
    W, R, B = (p.const(node, i) for i in (1, 2, 3))
    assert W is not None and R is not None
    try:
        weights = cell.lstm_from_onnx(W.astype(np.float32), R.astype(np.float32),
                                      None if B is None else B.astype(np.float32))  # fmt: skip
    except ValueError as err:
        raise BackendError(f"LSTM node {node.name!r} has malformed weights: {err}") from err
    _check_hidden(node, weights.hidden)
    prepared, ops, hidden = p.ops.prepare_lstm(weights), p.ops, weights.hidden

    def run(ins: list[Any]) -> list[Any]:
        xs = ins[0]  # (T, B, I)
        steps, batch = xs.shape[0], xs.shape[1]
        h0 = ins[5] if len(ins) > 5 and ins[5] is not None else ops.zeros((1, batch, hidden), xs)
        c0 = ins[6] if len(ins) > 6 and ins[6] is not None else ops.zeros((1, batch, hidden), xs)
        ys, h, c = ops.lstm(prepared, xs, h0[0], c0[0])
        # ONNX shapes: Y (T, directions, B, H), Y_h and Y_c (directions, B, H).
        return [ys.reshape((steps, 1, batch, hidden)), h[None], c[None]]

    return run


def gru_kernel(node: Node, p: Program) -> Kernel:
    _recurrent_attributes(node, p, ["Sigmoid", "Tanh"])
    W, R, B = (p.const(node, i) for i in (1, 2, 3))
    assert W is not None and R is not None
    lbr = int(node.attributes.get("linear_before_reset", 0))
    try:
        weights = cell.gru_from_onnx(W.astype(np.float32), R.astype(np.float32),
                                     None if B is None else B.astype(np.float32), lbr)  # fmt: skip
    except ValueError as err:
        raise BackendError(f"GRU node {node.name!r} has malformed weights: {err}") from err
    _check_hidden(node, weights.hidden)
    prepared, ops, hidden = p.ops.prepare_gru(weights), p.ops, weights.hidden

    def run(ins: list[Any]) -> list[Any]:
        xs = ins[0]
        steps, batch = xs.shape[0], xs.shape[1]
        h0 = ins[5] if len(ins) > 5 and ins[5] is not None else ops.zeros((1, batch, hidden), xs)
        ys, h = ops.gru(prepared, xs, h0[0])
        return [ys.reshape((steps, 1, batch, hidden)), h[None]]

    return run
