"""A small ONNX graph interpreter shared by the numpy and torch backends.

The rules of each operator (attribute defaults, opset differences, broadcasting
of shapes, the LSTM/GRU input conventions) are written once here, against
:class:`ArrayOps`, which says how to do the few things that differ between
array libraries. A backend supplies an ``ArrayOps`` and gets a
:class:`GraphBackend`.

Construction does all the checking and preparation: every node is looked up
in :data:`BUILDERS` up front (an unknown operator fails at load time, not at
the first step), attributes are validated, and LSTM/GRU weights are converted
once. Each builder returns a *kernel*, a closure from the node's input values
to its output values, so a step is one pass over a list of closures.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from lstm_stream.core.backends.array_ops import ArrayOps, Kernel
from lstm_stream.core.backends.base import StepBackend
from lstm_stream.core.backends.recurrent import gru_kernel, lstm_kernel
from lstm_stream.core.errors import BackendError, UnsupportedOperatorError
from lstm_stream.core.model.contract import ModelContract
from lstm_stream.core.model.onnx_proto import DTYPES, Node, OnnxModel, read_model, type_name

log = logging.getLogger(__name__)

IntsGetter = Callable[[list[Any]], list[int] | None]

_CAST_TYPES = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13}  # float and integer TensorProto types


class GraphProgram:
    """A parsed ONNX graph turned into a list of kernels for one :class:`ArrayOps`."""

    def __init__(self, graph: OnnxModel, ops: ArrayOps, *, backend: str) -> None:
        self.graph, self.ops, self.backend = graph, ops, backend
        self.opset = graph.opset.get("", 1)
        unsupported = [
            f"{n.op_type!r} (node {n.name!r})"
            for n in graph.nodes
            if n.op_type not in BUILDERS or n.domain not in ("", "ai.onnx")
        ]
        if unsupported:
            raise UnsupportedOperatorError(
                f"The {backend} backend does not implement the ONNX operator "
                f"{', '.join(unsupported)}. Use the onnxruntime backend, which runs any model."
            )
        # Values known before any step: initializers, the outputs of Constant nodes, and
        # those of nodes whose inputs are all known (folded: run once, here).
        self.consts: dict[str, np.ndarray] = dict(graph.initializers)
        self.kernels: list[tuple[Kernel, Node]] = []
        for node in graph.nodes:  # in topological order, as ONNX requires
            kernel = BUILDERS[node.op_type](node, self)
            if not self._fold(node, kernel):
                self.kernels.append((kernel, node))
        self.env = {name: ops.from_numpy(a) for name, a in self.consts.items()}

    def _fold(self, node: Node, kernel: Kernel) -> bool:
        """Run ``node`` now when every input it has is known at load time; its outputs
        become constants. The dynamo exporter, for one, slices and concatenates an LSTM's
        weights into ONNX's gate order with such nodes, and the LSTM's builder needs
        them as constants. Returns True when the node was folded."""
        given = [name for name in node.inputs if name]
        if not given or not all(name in self.consts for name in given):
            return False
        ins = [self.ops.from_numpy(self.consts[name]) if name else None for name in node.inputs]
        try:
            outs = kernel(ins)
        except (ValueError, IndexError, TypeError, RuntimeError, KeyError) as err:
            raise BackendError(f"The {self.backend} backend failed in {node.op_type} node "
                               f"{node.name!r}, on its constant inputs: {err}") from err
        for name, value in zip(node.outputs, outs, strict=False):
            if name:
                self.consts[name] = self.ops.host(value)
        return True

    def fail(self, node: Node, attribute: str, why: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(
            f"The {self.backend} backend cannot run {node.op_type} node {node.name!r}: "
            f"{attribute} {why}. Use the onnxruntime backend for this model."
        )

    def const(self, node: Node, i: int) -> np.ndarray | None:
        """Input ``i`` of ``node`` when it is known at load time, else None."""
        if i >= len(node.inputs) or not node.inputs[i]:
            return None
        return self.consts.get(node.inputs[i])

    def ints_input(self, node: Node, i: int) -> IntsGetter:
        """Input ``i`` as a list of ints: precomputed when constant, read each step if not."""
        if i >= len(node.inputs) or not node.inputs[i]:
            return lambda ins: None
        known = self.const(node, i)
        if known is not None:
            fixed = [int(v) for v in known.reshape(-1)]
            return lambda ins: fixed
        to_ints = self.ops.ints
        return lambda ins: to_ints(ins[i])

    def run(self, feeds: dict[str, Any], outputs: Sequence[str]) -> list[Any]:
        env = dict(self.env)
        env.update(feeds)
        node = None
        try:
            for kernel, node in self.kernels:
                values = kernel([env[name] if name else None for name in node.inputs])
                for name, value in zip(node.outputs, values, strict=False):
                    if name:
                        env[name] = value
            return [env[name] for name in outputs]
        except (ValueError, IndexError, TypeError, RuntimeError, KeyError) as err:
            where = f"{node.op_type} node {node.name!r}" if node else "the graph"
            raise BackendError(f"The {self.backend} backend failed in {where}: {err}") from err


class GraphBackend(StepBackend):
    """A step backend that interprets ``contract.graph`` with an :class:`ArrayOps`."""

    name: ClassVar[str]

    def __init__(self, contract: ModelContract, ops: ArrayOps, *, threads: int = 1) -> None:
        super().__init__(contract, threads=threads)
        graph = contract.graph
        if graph is None:
            graph = read_model(contract.path.read_bytes(), source=str(contract.path))
        self.ops = ops
        self.program = GraphProgram(graph, ops, backend=self.name)
        self._outputs = contract.output_order
        log.debug("%s backend: %d nodes", self.name, len(graph.nodes))

    def step(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        ops = self.ops
        feeds = {name: ops.from_numpy(value)
                 for name, value in self.contract.model_inputs(x, states).items()}
        outs = [ops.to_numpy(v) for v in self.program.run(feeds, self._outputs)]
        return self.contract.canonical_outputs(outs)


# ------------------------------------------------------------------ operator rules
Builder = Callable[[Node, GraphProgram], Kernel]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _elementwise(fn: Callable[[Any, Any], Any]) -> Builder:
    return lambda node, p: lambda ins: [fn(ins[0], ins[1])]


def _unary(method: str) -> Builder:
    return lambda node, p: (lambda f: lambda ins: [f(ins[0])])(getattr(p.ops, method))


def _constant(node: Node, p: GraphProgram) -> Kernel:
    attrs = node.attributes
    if "value" in attrs:
        array = np.asarray(attrs["value"])
    elif "value_float" in attrs or "value_floats" in attrs:
        array = np.asarray(attrs.get("value_float", attrs.get("value_floats")), np.float32)
    elif "value_int" in attrs or "value_ints" in attrs:
        array = np.asarray(attrs.get("value_int", attrs.get("value_ints")), np.int64)
    else:
        raise p.fail(node, "attribute", f"{sorted(attrs)} (only tensor/float/int values)")
    p.consts[node.outputs[0]] = array
    value = p.ops.from_numpy(array)
    return lambda ins: [value]


def _gemm(node: Node, p: GraphProgram) -> Kernel:
    alpha = float(node.attributes.get("alpha", 1.0))
    beta = float(node.attributes.get("beta", 1.0))
    trans_a = bool(node.attributes.get("transA", 0))
    trans_b = bool(node.attributes.get("transB", 0))

    def run(ins: list[Any]) -> list[Any]:
        a, b = (ins[0].T if trans_a else ins[0]), (ins[1].T if trans_b else ins[1])
        y = a @ b if alpha == 1.0 else (a @ b) * alpha
        if len(ins) > 2 and ins[2] is not None:
            y = y + (ins[2] if beta == 1.0 else ins[2] * beta)
        return [y]

    return run


def _softmax(node: Node, p: GraphProgram) -> Kernel:
    softmax = p.ops.softmax
    if p.opset >= 13:
        axis = int(node.attributes.get("axis", -1))
        return lambda ins: [softmax(ins[0], axis)]
    axis = int(node.attributes.get("axis", 1))

    def coerced(ins: list[Any]) -> list[Any]:  # before opset 13: softmax of a 2-D view
        shape = tuple(ins[0].shape)
        k = _axis(axis, len(shape))
        flat = ins[0].reshape((int(np.prod(shape[:k])), int(np.prod(shape[k:]))))
        return [softmax(flat, 1).reshape(shape)]

    return coerced


def _moved_to_input(node: Node, p: GraphProgram, attribute: str) -> IntsGetter:
    """An argument that opset 13 moved from an attribute to input 1 (axes, split)."""
    if p.opset >= 13:
        return p.ints_input(node, 1)
    fixed = node.attributes.get(attribute)
    return lambda ins: fixed


def _squeeze(node: Node, p: GraphProgram) -> Kernel:
    get_axes = _moved_to_input(node, p, "axes")

    def run(ins: list[Any]) -> list[Any]:
        shape, axes = tuple(ins[0].shape), get_axes(ins)
        drop = {_axis(a, len(shape)) for a in axes} if axes else {
            i for i, d in enumerate(shape) if d == 1}  # fmt: skip
        if any(shape[a] != 1 for a in drop):
            raise ValueError(f"cannot squeeze axes {sorted(drop)} of shape {list(shape)}")
        return [ins[0].reshape(tuple(d for i, d in enumerate(shape) if i not in drop))]

    return run


def _unsqueeze(node: Node, p: GraphProgram) -> Kernel:
    get_axes = _moved_to_input(node, p, "axes")

    def run(ins: list[Any]) -> list[Any]:
        shape = list(ins[0].shape)
        axes = get_axes(ins) or []
        rank = len(shape) + len(axes)
        for a in sorted(_axis(a, rank) for a in axes):
            shape.insert(a, 1)
        return [ins[0].reshape(tuple(shape))]

    return run


def _concat(node: Node, p: GraphProgram) -> Kernel:
    axis, concat = int(node.attributes["axis"]), p.ops.concat
    return lambda ins: [concat(ins, axis)]


def _slice(node: Node, p: GraphProgram) -> Kernel:
    attrs = node.attributes
    if p.opset >= 10:
        starts, ends, axes, steps = (p.ints_input(node, i) for i in (1, 2, 3, 4))
    else:
        a_starts, a_ends, a_axes = attrs.get("starts"), attrs.get("ends"), attrs.get("axes")
        starts, ends, axes = (lambda ins: a_starts), (lambda ins: a_ends), (lambda ins: a_axes)
        steps = lambda ins: None  # noqa: E731
    getitem = p.ops.getitem

    def run(ins: list[Any]) -> list[Any]:
        rank = len(ins[0].shape)
        s, e = starts(ins) or [], ends(ins) or []
        ax = axes(ins) or list(range(len(s)))
        st = steps(ins) or [1] * len(s)
        index: list[slice] = [slice(None)] * rank
        for a, b, c, d in zip(ax, s, e, st, strict=True):
            index[_axis(a, rank)] = slice(b, c, d)  # Python clamps like ONNX does
        return [getitem(ins[0], tuple(index))]

    return run


def _gather(node: Node, p: GraphProgram) -> Kernel:
    axis = int(node.attributes.get("axis", 0))
    return lambda ins: [ins[0][(slice(None),) * _axis(axis, len(ins[0].shape)) + (ins[1],)]]


def _split(node: Node, p: GraphProgram) -> Kernel:
    axis = int(node.attributes.get("axis", 0))
    get_split, count, getitem = _moved_to_input(node, p, "split"), len(node.outputs), p.ops.getitem

    def run(ins: list[Any]) -> list[Any]:
        rank = len(ins[0].shape)
        k = _axis(axis, rank)
        dim = ins[0].shape[k]
        sizes = get_split(ins) or [-(-dim // count)] * count  # ceil, the last part smaller
        parts, start = [], 0
        for size in sizes:
            index = [slice(None)] * rank
            index[k] = slice(start, min(start + size, dim))
            parts.append(getitem(ins[0], tuple(index)))
            start += size
        return parts

    return run


def _reshape(node: Node, p: GraphProgram) -> Kernel:
    get_shape, allow_zero = p.ints_input(node, 1), bool(node.attributes.get("allowzero", 0))

    def run(ins: list[Any]) -> list[Any]:
        shape, src = get_shape(ins) or [], tuple(ins[0].shape)
        if not allow_zero:
            shape = [src[i] if d == 0 else d for i, d in enumerate(shape)]
        return [ins[0].reshape(tuple(shape))]

    return run


def _transpose(node: Node, p: GraphProgram) -> Kernel:
    perm, transpose = node.attributes.get("perm"), p.ops.transpose

    def run(ins: list[Any]) -> list[Any]:
        return [transpose(ins[0], perm or list(range(len(ins[0].shape)))[::-1])]

    return run


def _shape(node: Node, p: GraphProgram) -> Kernel:
    start, end, int64 = node.attributes.get("start", 0), node.attributes.get("end"), p.ops.int64
    return lambda ins: [int64(list(ins[0].shape)[start:end])]


def _cast(node: Node, p: GraphProgram) -> Kernel:
    to = int(node.attributes.get("to", 0))
    if to not in _CAST_TYPES:
        raise p.fail(node, "attribute 'to'", f"is element type {to} ({type_name(to)}; only "
                     "float and integer types)")
    dtype, cast = DTYPES[to], p.ops.cast
    return lambda ins: [cast(ins[0], dtype)]


BUILDERS: dict[str, Builder] = {
    "Identity": lambda node, p: lambda ins: [ins[0]],
    "Constant": _constant,
    "Add": _elementwise(operator.add),
    "Sub": _elementwise(operator.sub),
    "Mul": _elementwise(operator.mul),
    "Div": lambda node, p: (lambda div: lambda ins: [div(ins[0], ins[1])])(p.ops.div),
    "MatMul": _elementwise(operator.matmul),
    "Gemm": _gemm,
    "Relu": _unary("relu"),
    "Tanh": _unary("tanh"),
    "Sigmoid": _unary("sigmoid"),
    "Softmax": _softmax,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Slice": _slice,
    "Gather": _gather,
    "Split": _split,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Shape": _shape,
    "Cast": _cast,
    "LSTM": lstm_kernel,
    "GRU": gru_kernel,
}
