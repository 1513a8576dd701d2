"""Test support: a stand-in vehicle stack and a real `lstm-stream serve` subprocess.

Everything here uses real ZeroMQ sockets on loopback with free ports and real
processes; nothing is mocked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import zmq

from lstm_stream.client import control_request

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


class VehicleStack:
    """Publishes sensor messages (XPUB, so it knows when the runner has subscribed)
    and listens to the runner's outputs and diagnostics."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.ctx = ctx
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.bind("tcp://127.0.0.1:*")
        self.input_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")

    def wait_subscribed(self, topic: bytes = b"sensors", timeout_s: float = 10.0) -> None:
        """Block until the runner's SUB has subscribed to ``topic`` (no slow joiner)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pub.poll(100, zmq.POLLIN) and self.pub.recv() == b"\x01" + topic:
                return
        raise TimeoutError(f"runner did not subscribe to {topic!r} within {timeout_s} s")

    def connect_outputs(self, output_endpoint: str, control_endpoint: str,
                        timeout_s: float = 10.0) -> None:
        """Connect to the runner's outputs and wait until the runner sees us."""
        self.sub.connect(output_endpoint)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = control_request(control_endpoint, {"cmd": "status"}, context=self.ctx)
            if status["subscriptions"]:
                return
            time.sleep(0.02)
        raise TimeoutError("the runner never saw the output subscription")

    def send(self, payload: bytes, topic: bytes = b"sensors") -> None:
        self.pub.send_multipart([topic, payload])

    def send_frames(self, frames: list[bytes]) -> None:
        self.pub.send_multipart(frames)

    def receive(self, count: int, timeout_s: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
        """The next ``count`` messages from the runner, as (topic, payload map)."""
        out: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sub.poll(int(left * 1000) + 1, zmq.POLLIN):
                raise TimeoutError(f"received {len(out)} of {count} messages: {out[-3:]}")
            topic, payload = self.sub.recv_multipart()
            out.append((topic.decode(), msgpack.unpackb(payload, raw=False)))
        return out

    def close(self) -> None:
        self.pub.close(linger=0)
        self.sub.close(linger=0)


@contextmanager
def serve_process(model: Path | str, input_endpoint: str, *extra: str,
                  timeout_s: float = 20.0) -> Iterator[dict[str, str]]:
    """Run `lstm-stream serve` as a real subprocess; yields its endpoints once it answers."""
    ends = {"input": input_endpoint, "output": endpoint(), "control": endpoint()}
    cmd = [sys.executable, "-m", "lstm_stream", "serve", str(model),
           "--input", ends["input"], "--output", ends["output"], "--control", ends["control"],
           *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_ready(proc, ends["control"], timeout_s)
        ends["pid"] = str(proc.pid)
        yield ends
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def _wait_ready(proc: subprocess.Popen[bytes], control: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()  # type: ignore[union-attr]
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{err}")
        try:
            control_request(control, {"cmd": "status"}, timeout_s=0.5)
            return
        except Exception:
            time.sleep(0.05)
    raise TimeoutError("serve did not answer on its control socket in time")
