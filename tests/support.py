"""Test support: re-exports of the library's own vehicle-stack client and runner launcher.

Tests drive `lstm-stream serve` exactly as users do: a real subprocess, real
ZeroMQ sockets on loopback with free ports. Nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lstm_stream.client import VehicleStack
from lstm_stream.demo import RunnerProcess, free_endpoint, runner_process

REPO = Path(__file__).resolve().parents[1]
Served = RunnerProcess


@contextmanager
def serve_process(model: Path | str, input_endpoint: str, *extra: str) -> Iterator[Served]:
    """`lstm-stream serve` run from the repository root (where models/ lives)."""
    with runner_process(model, input_endpoint, *extra, cwd=REPO) as served:
        yield served


__all__ = ["REPO", "Served", "VehicleStack", "free_endpoint", "serve_process"]
