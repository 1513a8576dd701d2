"""What an array library must provide for the graph interpreter (graph.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from lstm_stream.core.model import cell

Kernel = Callable[[list[Any]], list[Any]]  # input values ('' inputs as None) -> outputs


class ArrayOps(ABC):
    """What an array library must provide; values are its arrays (numpy or torch)."""

    @abstractmethod
    def from_numpy(self, array: np.ndarray) -> Any: ...
    @abstractmethod
    def to_numpy(self, value: Any) -> np.ndarray: ...
    @abstractmethod
    def host(self, value: Any) -> np.ndarray: ...  # as numpy, its dtype kept (folding)
    @abstractmethod
    def ints(self, value: Any) -> list[int]: ...
    @abstractmethod
    def int64(self, values: list[int]) -> Any: ...
    @abstractmethod
    def zeros(self, shape: tuple[int, ...], like: Any) -> Any: ...
    @abstractmethod
    def getitem(self, value: Any, index: tuple[Any, ...]) -> Any: ...
    @abstractmethod
    def transpose(self, value: Any, perm: list[int]) -> Any: ...
    @abstractmethod
    def concat(self, values: list[Any], axis: int) -> Any: ...
    @abstractmethod
    def div(self, a: Any, b: Any) -> Any: ...
    @abstractmethod
    def cast(self, value: Any, dtype: np.dtype[Any]) -> Any: ...
    @abstractmethod
    def relu(self, value: Any) -> Any: ...
    @abstractmethod
    def tanh(self, value: Any) -> Any: ...
    @abstractmethod
    def sigmoid(self, value: Any) -> Any: ...
    @abstractmethod
    def softmax(self, value: Any, axis: int) -> Any: ...
    @abstractmethod
    def prepare_lstm(self, weights: cell.LstmWeights) -> Any: ...
    @abstractmethod
    def lstm(self, prepared: Any, xs: Any, h: Any, c: Any) -> tuple[Any, Any, Any]:
        """xs (T, B, I), h and c (B, H) -> (ys (T, B, H), h_T, c_T)."""

    @abstractmethod
    def prepare_gru(self, weights: cell.GruWeights) -> Any: ...
    @abstractmethod
    def gru(self, prepared: Any, xs: Any, h: Any) -> tuple[Any, Any]:
        """xs (T, B, I), h (B, H) -> (ys (T, B, H), h_T)."""
