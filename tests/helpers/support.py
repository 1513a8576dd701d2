"""Test support: re-exports of the library's own vehicle-stack client and runner launcher.

Tests drive `lstm-stream serve` exactly as users do: a real subprocess, real
ZeroMQ sockets on loopback with free ports. Nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lstm_stream.core.backends.numpy import NumpyBackend
from lstm_stream.core.model.contract import load_contract
from lstm_stream.procs import RunnerProcess, free_endpoint, runner_process
from lstm_stream.serve.client import VehicleStack

REPO = Path(__file__).resolve().parents[2]
Served = RunnerProcess


@contextmanager
def serve_process(model: Path | str, input_endpoint: str, *extra: str,
                  output: str | None = None, control: str | None = None) -> Iterator[Served]:
    """`lstm-stream serve` run from the repository root (where models/ lives)."""
    with runner_process(model, input_endpoint, *extra, cwd=REPO, output=output,
                        control=control) as served:
        yield served


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the repository root (a clean
    ``sys.modules``: what gets imported, and what the exit code is)."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


class Reference:
    """What the runner should output: the numpy backend with state per stream."""

    def __init__(self, model: Path) -> None:
        self.contract = load_contract(model)
        self.backend = NumpyBackend(self.contract)
        self.states: dict[str, tuple[np.ndarray, ...]] = {}

    def zeros(self) -> tuple[np.ndarray, ...]:
        return tuple(np.zeros((s.layers, 1, s.hidden), np.float32) for s in self.contract.states)

    def step(self, stream: str, x: np.ndarray, reset: bool = False) -> np.ndarray:
        if reset or stream not in self.states:
            self.states[stream] = self.zeros()
        y, new = self.backend.step(x.reshape(1, -1).astype(np.float32), self.states[stream])
        self.states[stream] = tuple(np.array(a) for a in new)
        return np.asarray(y[0])


__all__ = ["REPO", "Reference", "Served", "VehicleStack", "free_endpoint", "run_python",
           "serve_process"]


def poisoned_model(path: Path, target: str, **kwargs: object) -> Path:
    """A real step model (tools/make_model.py) that returns NaN in ``target`` ("y" or a
    state output such as "c_out") for rows whose raw x[0] is negative, and is the plain
    model otherwise (it adds ``0 * sqrt(x[0])``, exactly 0 when x[0] >= 0).

    ``target="weight"`` instead puts a NaN in the output head's weights: every step is NaN.
    """
    import onnx
    from onnx import helper, numpy_helper

    from helpers.tools import build_step_model

    model = build_step_model(**kwargs)  # type: ignore[arg-type]
    graph = model.graph
    if target == "weight":
        (head,) = [t for t in graph.initializer if t.name == "head_W"]
        weights = numpy_helper.to_array(head).copy()
        weights[0, 0] = np.nan
        head.CopyFrom(numpy_helper.from_array(weights, "head_W"))
    else:
        for node in graph.node:
            node.output[:] = [f"{target}_raw" if o == target else o for o in node.output]
        graph.initializer.extend([
            numpy_helper.from_array(np.array([0], np.int64), "poison_start"),
            numpy_helper.from_array(np.array([1], np.int64), "poison_end"),
            numpy_helper.from_array(np.array([1], np.int64), "poison_axis"),
            numpy_helper.from_array(np.array(0.0, np.float32), "poison_zero")])
        graph.node.extend([
            helper.make_node("Slice", ["x", "poison_start", "poison_end", "poison_axis"],
                             ["poison_x0"]),
            helper.make_node("Sqrt", ["poison_x0"], ["poison_root"]),  # NaN below zero
            helper.make_node("Mul", ["poison_root", "poison_zero"], ["poison_term"]),
            helper.make_node("Add", [f"{target}_raw", "poison_term"], [target])])
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
