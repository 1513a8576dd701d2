"""``lstm-stream demo``: the runner end to end on this machine, with nothing to set up.

Starts ``lstm-stream serve`` as a real subprocess on free loopback ports, plays a
vehicle stack that publishes a few synthetic sensor streams at a fixed rate,
checks every output against the numpy backend stepped offline over the same
sequences (so carried state is verified, not assumed) and reports latency.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from lstm_stream.backends.numpy import NumpyBackend
from lstm_stream.client import ControlError, VehicleStack, control_request
from lstm_stream.contract import load_contract
from lstm_stream.protocol import encode_sensor

log = logging.getLogger(__name__)


def free_endpoint() -> str:
    """A tcp endpoint on loopback with a port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@dataclass
class RunnerProcess:
    """A running ``lstm-stream serve`` subprocess and its endpoints."""

    proc: subprocess.Popen[bytes]
    input: str
    output: str
    control: str


@contextmanager
def runner_process(model: str | Path, input_endpoint: str, *extra: str,
                   timeout_s: float = 20.0, cwd: str | Path | None = None
                   ) -> Iterator[RunnerProcess]:
    """Start ``lstm-stream serve`` and yield it once its control socket answers."""
    output, control = free_endpoint(), free_endpoint()
    cmd = [sys.executable, "-m", "lstm_stream", "serve", str(model), "--input", input_endpoint,
           "--output", output, "--control", control, *extra]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_ready(proc, control, timeout_s)
        yield RunnerProcess(proc, input_endpoint, output, control)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _wait_ready(proc: subprocess.Popen[bytes], control: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise ControlError(f"`lstm-stream serve` exited with code {proc.returncode}:\n"
                               f"{err.strip()}")
        try:
            control_request(control, {"cmd": "status"}, timeout_s=0.5)
            return
        except ControlError:
            pass
    raise ControlError(f"`lstm-stream serve` did not answer on {control} within {timeout_s} s.")


@dataclass
class DemoReport:
    """What the demo measured."""

    sent: int = 0
    received: int = 0
    max_abs_error: float = 0.0  # served output vs the numpy backend offline
    round_trip_us: list[float] = field(default_factory=list)
    runner_us: list[float] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)

    def percentiles(self, values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        arr = np.asarray(values)
        return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 99)} | {
            "max": float(arr.max())}


def synthetic_drive(streams: int, steps: int, features: int, seed: int = 0) -> np.ndarray:
    """Smooth, noisy sensor signals shaped (streams, steps, features), float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[None, :, None] * 0.05
    freq = rng.uniform(0.2, 2.0, size=(streams, 1, features))
    phase = rng.uniform(0, 2 * np.pi, size=(streams, 1, features))
    noise = 0.05 * rng.normal(size=(streams, steps, features))
    return (np.sin(freq * t + phase) + noise).astype(np.float32)


def run_demo(model: str | Path, *, streams: int = 3, steps: int = 200, rate_hz: float = 100.0,
             progress: Callable[[DemoReport], None] | None = None) -> DemoReport:
    """Serve ``model`` in a subprocess, drive it, and compare with the numpy backend."""
    contract = load_contract(model)
    reference = NumpyBackend(contract)
    drive = synthetic_drive(streams, steps, contract.n_features)
    names = [f"demo/{i}" for i in range(streams)]
    ref_states = {n: tuple(np.zeros((s.layers, 1, s.hidden), np.float32)
                           for s in contract.states) for n in names}
    report = DemoReport()
    ctx = zmq.Context()
    try:
        with VehicleStack(ctx) as stack, runner_process(model, stack.sensors_endpoint) as run:
            stack.wait_subscribed()
            stack.connect_outputs(run.output, run.control)
            period = 1.0 / rate_hz
            start = time.perf_counter()
            for k in range(steps):
                time.sleep(max(0.0, start + k * period - time.perf_counter()))
                sent_at = time.perf_counter_ns()
                for i, name in enumerate(names):
                    stack.send(encode_sensor(k, drive[i, k], stream=name, stamp_ns=sent_at))
                report.sent += streams
                outputs = []
                for _ in range(streams):  # stamp each output as it arrives
                    outputs.append((stack.receive(1)[0][1], time.perf_counter_ns()))
                for out, received_at in outputs:
                    name = out["stream"]
                    x = drive[names.index(name), out["seq"]].reshape(1, -1)
                    y, ref_states[name] = reference.step(x, ref_states[name])
                    err = float(np.max(np.abs(np.asarray(out["y"]) - y[0])))
                    report.max_abs_error = max(report.max_abs_error, err)
                    report.round_trip_us.append((received_at - out["stamp_ns"]) / 1e3)
                    report.runner_us.append(out["latency_ns"] / 1e3)
                    report.received += 1
                if progress is not None and k % max(1, int(rate_hz / 2)) == 0:
                    progress(report)
            report.status = control_request(run.control, {"cmd": "status"}, context=ctx)
    finally:
        ctx.destroy(linger=0)
    return report
