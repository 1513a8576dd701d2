"""The interface every step backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from lstm_stream.contract import ModelContract


class StepBackend(ABC):
    """Runs one step of a model that follows the model contract.

    ``x`` is float32 ``[batch, features]``; ``states`` holds one float32 array
    per state input, in ``contract.states`` order, each ``[layers, batch, hidden]``.
    ``step`` returns ``y`` ``[batch, outputs]`` and the new states in the same
    order and shapes. Backends hold no per-stream state: state goes in and out.
    """

    name: ClassVar[str]

    def __init__(self, contract: ModelContract, *, threads: int = 1) -> None:
        self.contract = contract
        self.threads = threads

    @abstractmethod
    def step(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One step for a batch of independent rows."""
