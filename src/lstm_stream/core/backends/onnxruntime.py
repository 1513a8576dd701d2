"""The default backend: onnxruntime, with every session option chosen for per-call latency.

A small LSTM step is a few microseconds of arithmetic, so what matters is the
fixed cost of a ``run`` call: one intra-op thread (the calling thread does the
work, no hand-off), no inter-op parallelism, no spinning threads burning a core
between messages, and the graph optimised once at load time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
import onnxruntime as ort

from lstm_stream.core.backends.base import BackendName, StepBackend
from lstm_stream.core.errors import BackendError
from lstm_stream.core.model.contract import ModelContract

# InferenceSession.run, or the private fast path that replaces it: (output names, feeds)
SessionRun = Callable[[list[str], dict[str, Any]], list[np.ndarray]]

# The output check multiplies by zero, which numpy reports for NaN/Inf values:
# those steps are rejected with their own reason, the warning is noise.
warnings.filterwarnings("ignore", "invalid value encountered in dot", RuntimeWarning,
                        module=__name__)


@dataclass(slots=True)
class _BoundBuffers:
    """The arrays a batch-1 IOBinding reads from and writes to.

    ``y`` (with any extra outputs as further columns) and ``new_states`` are views
    of one flat buffer, so that checking every output for NaN and Inf is one dot
    product (:meth:`OnnxRuntimeBackend.finite`). With a batch of one, a model's
    own layouts ([batch, 1, n], [batch, layers, hidden]) hold the same bytes as
    the canonical ones, so a float32 model is bound to reshaped views of these
    very arrays; a float16 or float64 model gets buffers of its own type
    (``model_*``) that each step casts into and out of.
    """

    x: np.ndarray  # (1, features)
    states: tuple[np.ndarray, ...]  # each (layers, 1, hidden)
    outputs: np.ndarray  # flat float32: y, the extras, then each new state
    y: np.ndarray  # (1, outputs + extras), a view of ``outputs``
    new_states: tuple[np.ndarray, ...]  # views of ``outputs``
    model_x: np.ndarray  # what onnxruntime reads and writes: these, or typed copies
    model_states: tuple[np.ndarray, ...]
    model_outputs: np.ndarray
    zeros: np.ndarray  # as long as ``outputs``
    io: Any = None  # the onnxruntime IOBinding over them


def _batch1_buffers(contract: ModelContract) -> _BoundBuffers:
    width = contract.n_outputs + contract.n_extra
    outputs = np.zeros(width + sum(s.layers * s.hidden for s in contract.states), np.float32)
    x = np.zeros((1, contract.n_features), np.float32)
    states = tuple(np.zeros((s.layers, 1, s.hidden), np.float32) for s in contract.states)
    new_states, start = [], width
    for s in contract.states:
        new_states.append(outputs[start:start + s.layers * s.hidden].reshape(s.layers, 1,
                                                                             s.hidden))
        start += s.layers * s.hidden
    dtype = np.dtype(contract.dtype)
    typed = dtype != np.float32
    model_outputs = np.zeros(len(outputs), dtype) if typed else outputs
    return _BoundBuffers(x, states, outputs, outputs[:width].reshape(1, width),
                         tuple(new_states), np.zeros(x.shape, dtype) if typed else x,
                         tuple(np.zeros(a.shape, dtype) for a in states) if typed else states,
                         model_outputs, np.zeros(len(outputs), np.float32))


def _model_views(contract: ModelContract, bound: _BoundBuffers
                 ) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(name, array in the model's shape) for every input and output, over ``bound``'s
    model buffers: the bytes of a batch of one are laid out alike in either layout."""
    def shaped(array: np.ndarray, layout: str) -> np.ndarray:
        n = array.size
        return array.reshape({"bf": (1, n), "b1f": (1, 1, n), "1bf": (1, 1, n)}[layout])

    inputs = [(contract.x.name, shaped(bound.model_x, contract.x.layout))]
    for spec, arr in zip(contract.states, bound.model_states, strict=True):
        shape = (1, spec.layers, spec.hidden) if spec.batch_first else arr.shape
        inputs.append((spec.input, arr.reshape(shape)))
    outputs, start = [], 0
    for port in (contract.y, *contract.extras):
        outputs.append((port.name, shaped(bound.model_outputs[start:start + port.width],
                                          port.layout)))
        start += port.width
    for spec in contract.states:
        size = spec.layers * spec.hidden
        shape = (1, spec.layers, spec.hidden) if spec.batch_first else (spec.layers, 1,
                                                                         spec.hidden)
        outputs.append((spec.output, bound.model_outputs[start:start + size].reshape(shape)))
        start += size
    return inputs, outputs


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Session options for the lowest per-call latency of a tiny model."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3  # warnings from the optimiser are noise for users
    return opts


class OnnxRuntimeBackend(StepBackend):
    """Steps the model with an onnxruntime ``InferenceSession`` on the CPU."""

    name: ClassVar[str] = BackendName.ONNXRUNTIME

    def __init__(self, contract: ModelContract, *, threads: int = 1) -> None:
        super().__init__(contract, threads=threads)
        options = session_options(threads)
        if contract.external:  # the data files the contract read (and hashed), from memory
            blobs = list(contract.external.values())
            options.add_external_initializers_from_files_in_memory(
                list(contract.external), blobs, [len(b) for b in blobs])
        try:
            # The bytes the contract hashed, when it has them: not the file again.
            self.session = ort.InferenceSession(
                contract.data if contract.data is not None else str(contract.path),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise BackendError(
                f"onnxruntime could not load {str(contract.path)!r}: {err}"
            ) from err
        self._x_name = contract.x.name
        self._state_inputs = [s.input for s in contract.states]
        self._output_names = contract.output_order
        self._adapted = contract.adapted  # layouts, types or extras to convert
        # One feeds dict reused for every call: the hot path only rebinds values.
        self._feeds: dict[str, Any] = {}
        self._run = cast(SessionRun, self.session.run)
        self._warm_up()
        self._run = self._fast_run()
        self._bound = self._bind_batch1()

    def _warm_up(self) -> None:
        """One step before serving: the first run costs far more than the next (kernel
        selection, allocation), and a model onnxruntime cannot run fails here, not on
        every message."""
        c = self.contract
        try:
            self.step(np.zeros((1, c.n_features), np.float32),
                      [np.zeros((s.layers, 1, s.hidden), np.float32) for s in c.states])
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise BackendError(
                f"onnxruntime loaded {str(c.path)!r} but cannot run it: {err}. "
                + ("onnxruntime's CPU LSTM/GRU kernels take float32 and float16, not "
                   "float64: export in float32, or serve it with --backend numpy."
                   if c.dtype == "float64" else "Check the model with `lstm-stream check`.")
            ) from err

    def _fast_run(self) -> SessionRun:
        """The session's C++ ``run``, skipping the Python wrapper's per-call checks.

        ``InferenceSession.run`` re-validates the input names in Python on every
        call (about 1.5 us here); the contract has already checked them at load
        time. The binding is private API, so it is probed once with zeros and
        compared with the public ``run``; on any difference or error the public
        ``run`` is used.
        """
        public = cast(SessionRun, self.session.run)
        binding = getattr(self.session, "_sess", None)
        if binding is None:
            return public
        c = self.contract
        feeds: dict[str, Any] = c.model_inputs(
            np.zeros((1, c.n_features), np.float32),
            [np.zeros((s.layers, 1, s.hidden), np.float32) for s in c.states])
        try:
            fast = binding.run(self._output_names, feeds, None)
            slow = public(self._output_names, feeds)
            same = all(np.array_equal(a, b, equal_nan=True)
                       for a, b in zip(fast, slow, strict=True))
        except Exception:  # any change in the private API: use the public one
            return public
        if not same:
            return public
        fast_run = binding.run
        return cast(SessionRun, lambda names, inputs: fast_run(names, inputs, None))

    def _bind_batch1(self) -> _BoundBuffers | None:
        """Batch-1 inputs and outputs bound once to preallocated arrays (IOBinding).

        A ``run`` converts every input to an OrtValue and allocates every output;
        with the arrays bound once, a step only copies x and the state in and
        reads the outputs where onnxruntime wrote them: about 2 us less per
        step here, and no allocation. Probed once against ``run`` with random
        inputs; on any difference or error, :meth:`step` is used instead.
        """
        c = self.contract
        rng = np.random.default_rng(0)
        bound = _batch1_buffers(c)
        try:
            io = self.session.io_binding()
            inputs, outputs = _model_views(c, bound)
            for name, arr in inputs:
                io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
            for name, arr in outputs:
                io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr))
            bound.io = io
            x = rng.normal(size=bound.x.shape).astype(np.float32)
            states = [rng.normal(size=a.shape).astype(np.float32) for a in bound.states]
            y, new = self._bound_step(bound, x, states)
            want_y, want_new = self.step(x, states)
            same = np.array_equal(y, want_y, equal_nan=True) and all(
                np.array_equal(a, b, equal_nan=True) for a, b in zip(new, want_new, strict=True))
        except Exception:  # an onnxruntime without IOBinding on CPU: use run
            return None
        return bound if same else None

    def _bound_step(self, bound: _BoundBuffers, x: np.ndarray, states: Sequence[np.ndarray]
                    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        np.copyto(bound.model_x, x)  # casts, for a float16 or float64 model
        for buf, value in zip(bound.model_states, states, strict=True):
            np.copyto(buf, value)
        self.session.run_with_iobinding(bound.io)
        if bound.model_outputs is not bound.outputs:
            np.copyto(bound.outputs, bound.model_outputs)
        return bound.y.copy(), bound.new_states

    def step_one(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        bound = self._bound
        if bound is None:
            return self.step(x, states)
        return self._bound_step(bound, x, states)

    def finite(self, y: np.ndarray, new_states: Sequence[np.ndarray]) -> bool:
        bound = self._bound
        if bound is not None and new_states is bound.new_states:
            # v . 0 is 0 when every value is finite, NaN otherwise (inf * 0 = NaN):
            # one call over y and every state, a third of the cost of one per tensor.
            # The float32 side: a float64 value beyond float32's range is Inf there.
            return bool(bound.outputs.dot(bound.zeros) == 0.0)
        return super().finite(y, new_states)

    def step(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        if self._adapted:
            outs = self._run(self._output_names, self.contract.model_inputs(x, states))
            return self.contract.canonical_outputs(outs)
        feeds = self._feeds
        feeds[self._x_name] = x
        for name, value in zip(self._state_inputs, states, strict=True):
            feeds[name] = value
        outs = self._run(self._output_names, feeds)
        return outs[0], tuple(outs[1:])
