"""Step backends: one LSTM step ``(x, states) -> (y, new states)`` behind one interface.

Backends are chosen by name from :data:`BACKENDS`; each module is imported only
when asked for, so that ``torch`` is never imported unless the torch backend is.
"""

from __future__ import annotations

import importlib

from lstm_stream.core.backends.base import BackendName, StepBackend
from lstm_stream.core.errors import BackendError
from lstm_stream.core.model.contract import ModelContract

# name -> (module, class). Imported lazily: see create_backend.
BACKENDS: dict[BackendName, tuple[str, str]] = {
    BackendName.ONNXRUNTIME: ("lstm_stream.core.backends.onnxruntime", "OnnxRuntimeBackend"),
    BackendName.NUMPY: ("lstm_stream.core.backends.numpy", "NumpyBackend"),
    BackendName.TORCH: ("lstm_stream.core.backends.torch", "TorchBackend"),
}


def create_backend(name: str, contract: ModelContract, *, threads: int = 1) -> StepBackend:
    """Create the backend called ``name`` for the model described by ``contract``."""
    try:
        module_name, class_name = BACKENDS[BackendName(name)]
    except ValueError:
        choices = ", ".join(sorted(BACKENDS))
        raise BackendError(f"Unknown backend {name!r}; choose one of: {choices}.") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        hint = " Install it with `pip install torch==2.13.0`." if name == BackendName.TORCH else ""
        raise BackendError(f"Backend {name!r} is not available: {err}.{hint}") from err
    cls: type[StepBackend] = getattr(module, class_name)
    return cls(contract, threads=threads)


__all__ = ["BACKENDS", "BackendName", "StepBackend", "create_backend"]
