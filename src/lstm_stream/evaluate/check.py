"""``lstm-stream check MODEL``: does the runner serve this model as the model computes?

Before a model goes to the car, a user wants one answer: will ``serve`` output
what the model outputs, message by message, with its state carried between
messages? :func:`check_model` steps random (or given) sequences through the
runner's own path (the wire decoder, the state store, batching across streams,
the adapted names, layouts and types) and compares every output with
independent references:

- ``session``: a plain onnxruntime session of the same file, fed by hand in
  the model's own names, shapes and type, its state outputs fed back as its
  state inputs; this catches any mistake in how the runner adapts the model;
- ``torch``: with ``--torch module.py:Factory``, the PyTorch module the model
  was exported from, called the same way; this also catches a step graph that
  does not compute what the module computes (a wrong weight, a state that is
  not carried).

The report lists the largest difference per output and reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from lstm_stream.core.backends import BackendName, create_backend
from lstm_stream.core.errors import LstmStreamError
from lstm_stream.core.model.contract import ModelContract, PortSpec, load_contract
from lstm_stream.core.model.names import ModelIO
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.protocol import Rejection, encode_sensor

# A reference: (the model's inputs by name, in its own shapes) -> its outputs by name.
Reference = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class CheckError(LstmStreamError):
    """The check could not run (the model or the torch factory could not be used)."""


@dataclass
class CheckReport:
    """The largest |runner - reference| per reference and output."""

    model: str
    sequences: int
    steps: int
    tolerance: float
    differences: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max((v for ref in self.differences.values() for v in ref.values()), default=0.0)

    @property
    def passed(self) -> bool:
        return self.worst <= self.tolerance

    def render(self) -> str:
        lines = [f"check      {self.model}: {self.sequences} sequences x {self.steps} steps, "
                 f"served message by message vs each reference (tolerance {self.tolerance:g})"]
        for ref, diffs in self.differences.items():
            for name, value in diffs.items():
                mark = "ok" if value <= self.tolerance else "DIFFERS"
                lines.append(f"  {ref:<8} {name:<24} max |difference| {value:.3g}  {mark}")
        lines.append("check: OK" if self.passed else
                     f"check: FAILED (max difference {self.worst:.3g} > {self.tolerance:g})")
        return "\n".join(lines)


def default_tolerance(contract: ModelContract) -> float:
    """1e-5, or 1e-2 for a float16 model (its own rounding is about 1e-3)."""
    return 1e-2 if contract.dtype == "float16" else 1e-5


def check_model(path: str | Path, io: ModelIO | None = None, *, sequences: int = 4,
                steps: int = 20, seed: int = 0, tolerance: float | None = None,
                torch_factory: str | None = None,
                xs: np.ndarray | None = None) -> CheckReport:
    """Serve ``sequences`` random sequences of ``steps`` messages (or ``xs``, shaped
    (sequences, steps, features)) through the runner's stepper and compare."""
    contract = load_contract(path, io)
    if xs is None:
        xs = np.random.default_rng(seed).normal(
            size=(sequences, steps, contract.n_features)).astype(np.float32)
    served = _serve(contract, xs)
    references: dict[str, Reference] = {"session": _session_reference(contract)}
    if torch_factory is not None:
        from lstm_stream.core.backends.torch import module_reference  # torch: only when asked

        references[BackendName.TORCH] = module_reference(torch_factory, contract)
    report = CheckReport(str(path), xs.shape[0], xs.shape[1],
                         default_tolerance(contract) if tolerance is None else tolerance)
    for name, reference in references.items():
        report.differences[name] = _compare(contract, served, reference, xs)
    return report


def _serve(contract: ModelContract, xs: np.ndarray) -> np.ndarray:
    """What the runner outputs (y and extras, float32) for each (sequence, step)."""
    stepper = StreamStepper(contract, create_backend(BackendName.ONNXRUNTIME, contract),
                            max_streams=max(1024, xs.shape[0]), idle_timeout_s=1e9)
    out = np.zeros((xs.shape[0], xs.shape[1], contract.n_outputs + contract.n_extra),
                   np.float32)
    results: list[Any] = []  # Stepped or Rejection: these messages are single readings
    for t in range(xs.shape[1]):  # a message of every sequence per tick, as a farm sends
        items = [([b"sensors", encode_sensor(t, xs[b, t], stream=f"seq{b}")], t)
                 for b in range(xs.shape[0])]
        results[:] = [outcome for outcome, _ in stepper.step_many(items, max_batch=64)]
        for b, result in enumerate(results):
            if isinstance(result, Rejection):
                raise CheckError(f"The runner rejected sequence {b} step {t}: "
                                 f"{result.reason}: {result.detail}")
            out[b, t] = result.y[0]
    return out


def _session_reference(contract: ModelContract) -> Reference:
    """A plain onnxruntime session of the same bytes, default options, no fast paths."""
    options = ort.SessionOptions()
    if contract.external:
        blobs = list(contract.external.values())
        options.add_external_initializers_from_files_in_memory(
            list(contract.external), blobs, [len(b) for b in blobs])
    session = ort.InferenceSession(contract.data or str(contract.path), options,
                                   providers=["CPUExecutionProvider"])

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))

    return run


def _compare(contract: ModelContract, served: np.ndarray, reference: Reference,
             xs: np.ndarray) -> dict[str, float]:
    """Step the reference over ``xs`` in the model's own terms; max |difference| per output."""
    dtype = np.dtype(contract.dtype)
    batches = [list(range(xs.shape[0]))] if contract.fixed_batch is None else [
        [b] for b in range(xs.shape[0])]
    worst: dict[str, float] = {}
    for rows in batches:
        n = len(rows)
        states = {s.input: np.zeros((n, s.layers, s.hidden) if s.batch_first else
                                    (s.layers, n, s.hidden), dtype) for s in contract.states}
        for t in range(xs.shape[1]):
            inputs = {contract.x.name: _shaped(xs[rows, t], contract.x, dtype), **states}
            outputs = reference(inputs)
            start = 0
            for port in (contract.y, *contract.extras):
                got = served[rows, t, start:start + port.width]
                want = np.asarray(outputs[port.name], np.float64).reshape(n, port.width)
                _worst(worst, port.name if port is not contract.y else f"{port.name} (y)",
                       float(np.abs(got - want).max()))
                start += port.width
            states = {s.input: np.asarray(outputs[s.output]).astype(dtype)
                      for s in contract.states}
    return worst


def _shaped(x: np.ndarray, port: PortSpec, dtype: np.dtype[np.generic]) -> np.ndarray:
    """(batch, features) as the model takes it."""
    n, width = x.shape
    shape = {"bf": (n, width), "b1f": (n, 1, width), "1bf": (1, n, width)}[port.layout]
    return np.ascontiguousarray(x.reshape(shape), dtype=dtype)


def _worst(worst: dict[str, float], name: str, value: float) -> None:
    worst[name] = max(worst.get(name, 0.0), value if np.isfinite(value) else float("inf"))

