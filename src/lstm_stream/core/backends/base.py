"""The interface every step backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import ClassVar

import numpy as np

from lstm_stream.core.model.contract import ModelContract


class BackendName(StrEnum):
    """The backends ``model.backend`` (and ``--backend``) chooses from."""

    ONNXRUNTIME = "onnxruntime"
    NUMPY = "numpy"
    TORCH = "torch"  # needs torch: for checking, never the default


class StepBackend(ABC):
    """Runs one step of a model that follows the model contract.

    ``x`` is float32 ``[batch, features]``; ``states`` holds one float32 array
    per state input, in ``contract.states`` order, each ``[layers, batch, hidden]``.
    ``step`` returns ``y`` ``[batch, outputs]`` and the new states in the same
    order and shapes. Backends hold no per-stream state: state goes in and out.
    """

    name: ClassVar[str]  # a BackendName

    def __init__(self, contract: ModelContract, *, threads: int = 1) -> None:
        self.contract = contract
        self.threads = threads

    @abstractmethod
    def step(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One step for a batch of independent rows."""

    def step_one(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One step of batch 1, the hot path of ``serve``: ``y`` is the caller's, but the
        returned states may be the backend's own buffers, valid only until the next
        call (the state store copies them at once). Same results as :meth:`step`."""
        return self.step(x, states)

    def finite(self, y: np.ndarray, new_states: Sequence[np.ndarray]) -> bool:
        """Whether a step's ``y`` and new states hold only finite values.

        Called after every step (the stepper never commits or publishes NaN or
        Inf); a backend may override it with a cheaper check of its own buffers.
        """
        return bool(np.isfinite(y).all()) and all(bool(np.isfinite(s).all())
                                                  for s in new_states)


StepFn = Callable[[np.ndarray, Sequence[np.ndarray]], tuple[np.ndarray, tuple[np.ndarray, ...]]]


def step_sequences(step: StepFn, contract: ModelContract, xs: np.ndarray
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Step ``xs`` (B, T, F) one time step at a time, state carried as ``serve``
    carries it from zeros: returns y (B, T, O) and the final states."""
    batch = xs.shape[0]
    states: Sequence[np.ndarray] = tuple(
        np.zeros((s.layers, batch, s.hidden), np.float32) for s in contract.states)
    ys = []
    for t in range(xs.shape[1]):
        y, states = step(np.ascontiguousarray(xs[:, t]), states)
        ys.append(np.asarray(y))
    return np.stack(ys, axis=1), [np.asarray(s) for s in states]
