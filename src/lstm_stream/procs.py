"""The one way to launch ``lstm-stream serve`` as a subprocess and wait for it.

:func:`runner_process` starts ``python -m lstm_stream serve`` on free loopback
ports (unless told which), waits until its control socket answers ``status``,
and stops it (SIGTERM, then SIGKILL) when the ``with`` block ends. The demo,
the bench, the simulator loop and the tests all start the runner through it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lstm_stream.serve.client import ControlError, control_request


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_endpoint() -> str:
    """A tcp endpoint on loopback with a port that is free right now."""
    return f"tcp://127.0.0.1:{free_port()}"


@dataclass
class RunnerProcess:
    """A running ``lstm-stream serve`` subprocess and its endpoints."""

    proc: subprocess.Popen[bytes]
    input: str
    output: str
    control: str


@contextmanager
def runner_process(model: str | Path, input_endpoint: str, *extra: str,
                   timeout_s: float = 20.0, cwd: str | Path | None = None,
                   output: str | None = None, control: str | None = None
                   ) -> Iterator[RunnerProcess]:
    """Start ``lstm-stream serve`` and yield it once its control socket answers
    (output and control on free loopback ports unless given)."""
    output, control = output or free_endpoint(), control or free_endpoint()
    cmd = [sys.executable, "-m", "lstm_stream", "serve", str(model), "--input", input_endpoint,
           "--output", output, "--control", control, *extra]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_ready(proc, control, timeout_s)
        yield RunnerProcess(proc, input_endpoint, output, control)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
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
