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

from lstm_stream.backends.numpy import NumpyBackend
from lstm_stream.client import VehicleStack
from lstm_stream.contract import load_contract
from lstm_stream.demo import RunnerProcess, free_endpoint, runner_process

REPO = Path(__file__).resolve().parents[1]
Served = RunnerProcess


@contextmanager
def serve_process(model: Path | str, input_endpoint: str, *extra: str,
                  output: str | None = None) -> Iterator[Served]:
    """`lstm-stream serve` run from the repository root (where models/ lives)."""
    with runner_process(model, input_endpoint, *extra, cwd=REPO, output=output) as served:
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
