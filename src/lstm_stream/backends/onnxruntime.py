"""The default backend: onnxruntime, with every session option chosen for per-call latency.

A small LSTM step is a few microseconds of arithmetic, so what matters is the
fixed cost of a ``run`` call: one intra-op thread (the calling thread does the
work, no hand-off), no inter-op parallelism, no spinning threads burning a core
between messages, and the graph optimised once at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import numpy as np
import onnxruntime as ort

from lstm_stream.backends.base import StepBackend
from lstm_stream.contract import INPUT_NAME, OUTPUT_NAME, ModelContract
from lstm_stream.errors import BackendError

Runner = Callable[[list[str], dict[str, Any]], list[np.ndarray]]


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

    name: ClassVar[str] = "onnxruntime"

    def __init__(self, contract: ModelContract, *, threads: int = 1) -> None:
        super().__init__(contract, threads=threads)
        try:
            # The bytes the contract hashed, when it has them: not the file again.
            self.session = ort.InferenceSession(
                contract.data if contract.data is not None else str(contract.path),
                sess_options=session_options(threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise BackendError(
                f"onnxruntime could not load {str(contract.path)!r}: {err}"
            ) from err
        self._state_inputs = [s.input for s in contract.states]
        self._output_names = [OUTPUT_NAME, *(s.output for s in contract.states)]
        # One feeds dict reused for every call: the hot path only rebinds values.
        self._feeds: dict[str, Any] = {}
        self._run = self._fast_run()

    def _fast_run(self) -> Runner:
        """The session's C++ ``run``, skipping the Python wrapper's per-call checks.

        ``InferenceSession.run`` re-validates the input names in Python on every
        call (about 1.5 us here); the contract has already checked them at load
        time. The binding is private API, so it is probed once with zeros and
        compared with the public ``run``; on any difference or error the public
        ``run`` is used.
        """
        public = cast(Runner, self.session.run)
        binding = getattr(self.session, "_sess", None)
        if binding is None:
            return public
        feeds: dict[str, Any] = {INPUT_NAME: np.zeros((1, self.contract.n_features), np.float32)}
        for spec in self.contract.states:
            feeds[spec.input] = np.zeros((spec.layers, 1, spec.hidden), np.float32)
        try:
            fast = binding.run(self._output_names, feeds, None)
            slow = public(self._output_names, feeds)
            same = all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
        except Exception:  # any change in the private API: use the public one
            return public
        if not same:
            return public
        fast_run = binding.run
        return cast(Runner, lambda names, inputs: fast_run(names, inputs, None))

    def step(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        feeds = self._feeds
        feeds[INPUT_NAME] = x
        for name, value in zip(self._state_inputs, states, strict=True):
            feeds[name] = value
        outs = self._run(self._output_names, feeds)
        return outs[0], tuple(outs[1:])
