"""The torch backend, for development: interprets the model's ONNX graph with torch on the CPU.

It runs the same operator rules as the numpy backend
(:mod:`lstm_stream.core.backends.graph`) with torch tensors, and the LSTM/GRU
operators with torch's own cell kernels (``torch.lstm_cell``/``torch.gru_cell``,
what ``nn.LSTMCell``/``nn.GRUCell`` call), so comparing it with the numpy and
onnxruntime backends checks three independent implementations of the maths.
This is the only runtime module that imports torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lstm_stream.core.backends.array_ops import ArrayOps
from lstm_stream.core.backends.base import BackendName
from lstm_stream.core.backends.graph import GraphBackend
from lstm_stream.core.errors import LstmStreamError
from lstm_stream.core.model import cell
from lstm_stream.core.model.contract import ModelContract

_TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
    np.dtype(np.float16): torch.float16, np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32, np.dtype(np.int16): torch.int16,
    np.dtype(np.int8): torch.int8, np.dtype(np.uint8): torch.uint8,
    np.dtype(np.uint16): torch.uint16, np.dtype(np.uint32): torch.uint32,
    np.dtype(np.uint64): torch.uint64, np.dtype(np.bool_): torch.bool,
}  # fmt: skip


def _weights(*arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays)


class TorchOps(ArrayOps):
    """Array operations on CPU torch tensors."""

    def from_numpy(self, array: np.ndarray) -> Any:
        return torch.from_numpy(np.array(array))  # a copy: the input may be read-only

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value.numpy(), dtype=np.float32)

    def host(self, value: Any) -> np.ndarray:
        return np.asarray(value.numpy())

    def ints(self, value: Any) -> list[int]:
        return [int(v) for v in value.reshape(-1).tolist()]

    def int64(self, values: list[int]) -> Any:
        return torch.tensor(values, dtype=torch.int64)

    def zeros(self, shape: tuple[int, ...], like: Any) -> Any:
        return torch.zeros(shape, dtype=like.dtype)

    def getitem(self, value: Any, index: tuple[Any, ...]) -> Any:
        if any(isinstance(s, slice) and (s.step or 1) < 0 for s in index):
            # torch has no negative-step slicing; take the slice in numpy instead.
            return torch.from_numpy(value.numpy()[index].copy())
        return value[index]

    def transpose(self, value: Any, perm: list[int]) -> Any:
        return value.permute(perm)

    def concat(self, values: list[Any], axis: int) -> Any:
        return torch.cat(values, dim=axis)

    def div(self, a: Any, b: Any) -> Any:
        if not (a.is_floating_point() or b.is_floating_point()):
            return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates
        return a / b

    def cast(self, value: Any, dtype: np.dtype[Any]) -> Any:
        return value.to(_TORCH_DTYPES[np.dtype(dtype)])

    def relu(self, value: Any) -> Any:
        return torch.relu(value)

    def tanh(self, value: Any) -> Any:
        return torch.tanh(value)

    def sigmoid(self, value: Any) -> Any:
        return torch.sigmoid(value)

    def softmax(self, value: Any, axis: int) -> Any:
        return torch.softmax(value, dim=axis)

    def prepare_lstm(self, weights: cell.LstmWeights) -> Any:
        # cell's canonical layout is torch's own gate order i, f, g, o.
        return _weights(weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh)

    def lstm(self, prepared: Any, xs: Any, h: Any, c: Any) -> tuple[Any, Any, Any]:
        ys = []
        for x in xs:
            h, c = torch.lstm_cell(x, (h, c), *prepared)
            ys.append(h)
        return torch.stack(ys), h, c

    def prepare_gru(self, weights: cell.GruWeights) -> Any:
        arrays = _weights(weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh)
        return (weights.linear_before_reset, *arrays)

    def gru(self, prepared: Any, xs: Any, h: Any) -> tuple[Any, Any]:
        linear_before_reset, w_ih, w_hh, b_ih, b_hh = prepared
        ys = []
        for x in xs:
            if linear_before_reset:  # torch's GRU
                h = torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
            else:  # the ONNX default: the reset gate scales h before the W_hn product
                h = _gru_reset_first(x, h, w_ih, w_hh, b_ih, b_hh)
            ys.append(h)
        return torch.stack(ys), h


def _gru_reset_first(
    x: torch.Tensor,
    h: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> torch.Tensor:
    """One GRU step with linear_before_reset=0, gate order r, z, n."""
    hid = h.shape[1]
    gx = torch.nn.functional.linear(x, w_ih, b_ih)  # (B, 3H)
    gh = torch.nn.functional.linear(h, w_hh[: 2 * hid], b_hh[: 2 * hid])  # (B, 2H)
    r = torch.sigmoid(gx[:, :hid] + gh[:, :hid])
    z = torch.sigmoid(gx[:, hid : 2 * hid] + gh[:, hid:])
    n = torch.tanh(gx[:, 2 * hid :] + torch.nn.functional.linear(r * h, w_hh[2 * hid :],
                                                                 b_hh[2 * hid :]))  # fmt: skip
    return (1 - z) * n + z * h


class TorchBackend(GraphBackend):
    """Steps the model by interpreting its graph with torch on the CPU."""

    name: ClassVar[str] = BackendName.TORCH

    def __init__(self, contract: ModelContract, *, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            super().__init__(contract, TorchOps(), threads=threads)

    def step(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        with torch.inference_mode():
            return super().step(x, states)


def module_reference(spec: str, contract: ModelContract
                     ) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """The PyTorch module a model was exported from, as a reference for ``lstm-stream
    check``: ``spec`` is ``path/to/module.py:Factory``, where ``Factory()`` returns the
    module. It is called with the model's inputs in the order of the ONNX graph, and its
    (flattened) outputs are taken in the order of the graph's outputs, as the exporter
    traced them."""
    file, sep, name = spec.rpartition(":")
    if not sep or not file or not name:
        raise LstmStreamError(f"--torch {spec!r}: expected PATH.py:FACTORY, such as "
                              "policy.py:make_policy")
    where = Path(file)
    loader = importlib.util.spec_from_file_location(f"lstm_stream_check_{where.stem}", where)
    if loader is None or loader.loader is None or not where.is_file():
        raise LstmStreamError(f"--torch {spec!r}: {file!r} is not a Python file.")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)  # the user's own code, as they asked
    factory = getattr(module, name, None)
    if not callable(factory):
        raise LstmStreamError(f"--torch {spec!r}: {file!r} has no callable {name!r}.")
    net = factory()
    if not isinstance(net, torch.nn.Module):
        raise LstmStreamError(f"--torch {spec!r}: {name}() returned "
                              f"{type(net).__name__}, not a torch.nn.Module.")
    net.eval()
    graph = contract.graph
    assert graph is not None
    in_names = [vi.name for vi in graph.inputs]
    out_names = [vi.name for vi in graph.outputs]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outs = net(*(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in in_names))
        flat = _flatten(outs)
        if len(flat) != len(out_names):
            raise LstmStreamError(f"--torch {spec!r}: the module returned {len(flat)} tensors, "
                                  f"the model has {len(out_names)} outputs ({out_names}).")
        return {n: t.detach().numpy() for n, t in zip(out_names, flat, strict=True)}

    return run


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in _flatten(item)]
