"""The numpy backend: interprets the model's ONNX graph with numpy and
:mod:`lstm_stream.core.model.cell`.

It needs nothing beyond numpy, runs the LSTM and GRU operators through the
reference cell maths (so it is the backend that shows what the model
*should* compute), and supports the operator subset a small exported step
model uses; see :data:`lstm_stream.core.backends.graph.BUILDERS`. Any other
operator is refused when the backend is created.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from lstm_stream.core.backends.array_ops import ArrayOps
from lstm_stream.core.backends.base import BackendName
from lstm_stream.core.backends.graph import GraphBackend
from lstm_stream.core.model import cell
from lstm_stream.core.model.contract import ModelContract


class NumpyOps(ArrayOps):
    """Array operations on numpy arrays."""

    def from_numpy(self, array: np.ndarray) -> Any:
        return array

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value, dtype=np.float32)

    def host(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def ints(self, value: Any) -> list[int]:
        return [int(v) for v in np.asarray(value).reshape(-1)]

    def int64(self, values: list[int]) -> Any:
        return np.array(values, dtype=np.int64)

    def zeros(self, shape: tuple[int, ...], like: Any) -> Any:
        return np.zeros(shape, dtype=like.dtype)

    def getitem(self, value: Any, index: tuple[Any, ...]) -> Any:
        return value[index]

    def transpose(self, value: Any, perm: list[int]) -> Any:
        return np.transpose(value, perm)

    def concat(self, values: list[Any], axis: int) -> Any:
        return np.concatenate(values, axis=axis)

    def div(self, a: Any, b: Any) -> Any:
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind in "iu" and b.dtype.kind in "iu":  # ONNX integer division truncates
            return np.trunc(a / b).astype(np.result_type(a, b))
        return a / b

    def cast(self, value: Any, dtype: np.dtype[Any]) -> Any:
        return np.asarray(value).astype(dtype)

    def relu(self, value: Any) -> Any:
        return np.maximum(value, 0)

    def tanh(self, value: Any) -> Any:
        return np.tanh(value)

    def sigmoid(self, value: Any) -> Any:
        return cell.sigmoid(value).astype(value.dtype, copy=False)

    def softmax(self, value: Any, axis: int) -> Any:
        e = np.exp(value - np.max(value, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)

    def prepare_lstm(self, weights: cell.LstmWeights) -> Any:
        return weights  # already float32 and in the layout lstm_cell wants

    def lstm(self, prepared: Any, xs: Any, h: Any, c: Any) -> tuple[Any, Any, Any]:
        ys = np.empty((xs.shape[0], *h.shape), dtype=xs.dtype)
        for t in range(xs.shape[0]):
            h, c = cell.lstm_cell(xs[t], h, c, prepared)
            ys[t] = h
        return ys, h, c

    def prepare_gru(self, weights: cell.GruWeights) -> Any:
        return weights

    def gru(self, prepared: Any, xs: Any, h: Any) -> tuple[Any, Any]:
        ys = np.empty((xs.shape[0], *h.shape), dtype=xs.dtype)
        for t in range(xs.shape[0]):
            h = cell.gru_cell(xs[t], h, prepared)
            ys[t] = h
        return ys, h


class NumpyBackend(GraphBackend):
    """Steps the model by interpreting its graph with numpy."""

    name: ClassVar[str] = BackendName.NUMPY

    def __init__(self, contract: ModelContract, *, threads: int = 1) -> None:
        super().__init__(contract, NumpyOps(), threads=threads)
