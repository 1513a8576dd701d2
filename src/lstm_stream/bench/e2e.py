"""End-to-end latency over ZeroMQ: a fixed-rate load generator against a server process.

The generator binds the sensor socket (XPUB, so it sees the server subscribe)
and subscribes to the server's outputs, in one process on one clock: latency
is output received minus sensor sent, both read from ``time.monotonic_ns``.
A sender thread keeps the schedule (absolute times, never accumulated sleeps);
the receiving thread blocks in ``recv`` and stamps each output on arrival.
At rate 0 the loop is closed: the next message is sent when the previous
output has arrived (as fast as possible, one in flight).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from lstm_stream.bench.stats import summarize_ns
from lstm_stream.core.errors import LstmStreamError
from lstm_stream.procs import free_endpoint, stop_process
from lstm_stream.serve.client import control_request

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Endpoints:
    input: str
    output: str
    control: str
    directory: str | None = None  # ipc: the temporary directory holding the sockets


def endpoints(transport: str) -> Endpoints:
    """Three fresh endpoints on loopback (tcp) or in a temporary directory (ipc)."""
    if transport == "tcp":
        return Endpoints(free_endpoint(), free_endpoint(), free_endpoint())
    if transport == "ipc":
        base = tempfile.mkdtemp(prefix="lstm-stream-bench-")
        return Endpoints(f"ipc://{base}/in", f"ipc://{base}/out", f"ipc://{base}/ctl", base)
    raise LstmStreamError(f"Unknown transport {transport!r}; use tcp or ipc.")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    ends: Endpoints
    startup_s: float | None  # until the control socket answered (runner only)
    rt: str  # what happened with the real-time priority request


@contextlib.contextmanager
def server_process(kind: str, model: str, ends: Endpoints, *, threads: int = 1,
                   pin: int | None = None, rt_priority: int | None = None,
                   busy_poll_us: int = 0, runner_sets: Sequence[str] = ()
                   ) -> Iterator[ServerProcess]:
    """Start ``serve`` (kind 'runner', with ``--set`` ``runner_sets``) or a comparison
    server, pinned and prioritised."""
    if kind == "runner":
        cmd = [sys.executable, "-m", "lstm_stream", "--log-level", "warning", "serve", model,
               "--input", ends.input, "--output", ends.output, "--control", ends.control,
               "--threads", str(threads), "--set", f"input.busy_poll_us={busy_poll_us}"]
        for item in runner_sets:
            cmd += ["--set", item]
    else:
        cmd = [sys.executable, "-m", "lstm_stream.bench.servers", "--impl", kind,
               "--model", model, "--input", ends.input, "--output", ends.output,
               "--busy-poll-us", str(busy_poll_us)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if pin is not None:
            os.sched_setaffinity(proc.pid, {pin})
        rt = set_realtime(proc.pid, rt_priority)
        startup = _wait_runner(proc, ends.control, t0) if kind == "runner" else None
        yield ServerProcess(proc, ends, startup, rt)
    finally:
        stop_process(proc)


def set_realtime(pid: int, priority: int | None) -> str:
    """SCHED_FIFO at ``priority`` for ``pid`` (0 = this process) when permitted."""
    if priority is None:
        return "not requested"
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        return (f"refused: SCHED_FIFO {priority} needs root or CAP_SYS_NICE (try "
                "`sudo setcap cap_sys_nice+ep $(readlink -f $(which python3))` or run as root)")
    except OSError as err:
        return f"refused: {err}"
    return f"SCHED_FIFO {priority}"


def _wait_runner(proc: subprocess.Popen[bytes], control: str, t0: float) -> float:
    while time.monotonic() - t0 < 30:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise LstmStreamError(f"`lstm-stream serve` exited during start-up:\n{err}")
        try:
            control_request(control, {"cmd": "status"}, timeout_s=0.2)
            return time.monotonic() - t0
        except LstmStreamError:
            continue
    raise LstmStreamError("`lstm-stream serve` did not become ready within 30 s")


def process_usage(pid: int) -> dict[str, float]:
    """CPU seconds used so far, and resident / peak resident memory in MB (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK  # utime + stime
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        rss = int(status["VmRSS"].split()[0]) / 1024
        hwm = int(status["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, IndexError, ValueError):
        return {}
    return {"cpu_s": cpu, "rss_mb": round(rss, 1), "peak_rss_mb": round(hwm, 1)}


@dataclass
class LoadResult:
    rate_hz: float
    duration_s: float
    sent: int = 0
    received: int = 0
    latencies_ns: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    runner_ns: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    send_period_error_ns: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "rate_hz": self.rate_hz, "duration_s": self.duration_s,
            "sent": self.sent, "received": self.received, "lost": self.sent - self.received,
            "achieved_rate_hz": round(self.sent / self.elapsed_s, 1) if self.elapsed_s else 0,
            "latency_us": summarize_ns(self.latencies_ns),
            "in_server_us": summarize_ns(self.runner_ns),
            "send_jitter_us": summarize_ns(np.abs(self.send_period_error_ns)),
        }


def generator_sockets(ctx: zmq.Context[Any], ends: Endpoints, *topics: bytes
                      ) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    """A load generator's sockets: the sensor XPUB it binds (it sees the server
    subscribe) and a SUB for ``topics`` of the server's output; no high-water marks."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(ends.input)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(ends.output)
    return pub, sub


def wait_until_served(pub: zmq.Socket[Any], sub: zmq.Socket[Any], timeout_s: float,
                      send_one: Callable[[], object]) -> None:
    """Wait for the server's subscription, then send until outputs flow (slow joiner)."""
    deadline = time.monotonic() + timeout_s
    while not (pub.poll(100) and pub.recv() == b"\x01sensors"):
        if time.monotonic() > deadline:
            raise LstmStreamError("the server never subscribed to the sensor topic")
    while not sub.poll(20):
        if time.monotonic() > deadline:
            raise LstmStreamError("no output from the server: is it publishing 'policy'?")
        send_one()


class LoadGenerator:
    """Publishes sensor messages and receives outputs on one clock."""

    def __init__(self, ctx: zmq.Context[Any], ends: Endpoints, n_features: int,
                 streams: int = 1) -> None:
        self.pub, self.sub = generator_sockets(ctx, ends, b"policy")
        rng = np.random.default_rng(0)
        self.x = [rng.normal(size=n_features).astype("<f4").tobytes() for _ in range(64)]
        self.streams = [f"bench/{i}" for i in range(streams)]
        self.seq = 0

    def payload(self, k: int) -> bytes:
        body = {"stream": self.streams[k % len(self.streams)], "seq": self.seq,
                "stamp_ns": time.monotonic_ns(), "x": self.x[k % 64]}
        packed: bytes = msgpack.packb(body)
        return packed

    def send(self, k: int) -> None:
        self.pub.send_multipart((b"sensors", self.payload(k)))
        if (k + 1) % len(self.streams) == 0:
            self.seq += 1

    def connect(self, timeout_s: float = 10.0) -> None:
        """Wait for the server's subscription, then until outputs flow (slow joiner)."""
        sent = iter(range(1 << 62))
        wait_until_served(self.pub, self.sub, timeout_s, lambda: self.send(next(sent)))
        self.drain(0.2)

    def drain(self, quiet_s: float) -> int:
        n = 0
        while self.sub.poll(int(quiet_s * 1000)):
            self.sub.recv_multipart()
            n += 1
        return n

    def closed_loop(self, count: int) -> LoadResult:
        """Send, wait for the output, repeat: latency with one message in flight."""
        lat = np.empty(count, np.int64)
        inside = np.empty(count, np.int64)
        received = 0
        t0 = time.monotonic()
        for k in range(count):
            self.send(k)
            if not self.sub.poll(1000):
                continue
            _, payload = self.sub.recv_multipart()
            now = time.monotonic_ns()
            out = msgpack.unpackb(payload, raw=False)
            lat[received] = now - out["stamp_ns"]
            inside[received] = out["latency_ns"]
            received += 1
        result = LoadResult(0.0, time.monotonic() - t0, count, received, lat[:received],
                            inside[:received])
        result.elapsed_s = result.duration_s
        return result

    def fixed_rate(self, rate_hz: float, duration_s: float) -> LoadResult:
        """Open loop at ``rate_hz``: the schedule never waits for outputs."""
        count = max(1, int(rate_hz * duration_s))
        lat = np.zeros(count, np.int64)
        inside = np.zeros(count, np.int64)
        received = [0]
        done = threading.Event()

        def receive() -> None:
            sub = self.sub
            while not done.is_set() or sub.poll(0):
                if not sub.poll(50):
                    continue
                _, payload = sub.recv_multipart()
                now = time.monotonic_ns()
                out = msgpack.unpackb(payload, raw=False)
                i = received[0]
                if i < count:
                    lat[i] = now - out["stamp_ns"]
                    inside[i] = out["latency_ns"]
                received[0] = i + 1

        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        period_ns = int(1e9 / rate_hz)
        sent_at = np.empty(count, np.int64)
        start = time.monotonic_ns() + 1_000_000
        for k in range(count):
            target = start + k * period_ns
            wait = target - time.monotonic_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            sent_at[k] = time.monotonic_ns()
            self.send(k)
        elapsed = (time.monotonic_ns() - start) / 1e9
        deadline = time.monotonic() + 2.0
        while received[0] < count and time.monotonic() < deadline:
            time.sleep(0.01)
        done.set()
        thread.join(2)
        n = min(received[0], count)
        result = LoadResult(rate_hz, duration_s, count, n, lat[:n], inside[:n],
                            sent_at - (start + np.arange(count) * period_ns))
        result.elapsed_s = elapsed
        return result

    def close(self) -> None:
        self.pub.close(0)
        self.sub.close(0)


def measure(kind: str, model: str, n_features: int, *, rate_hz: float, duration_s: float,
            transport: str = "tcp", threads: int = 1, pin: int | None = None,
            pin_load: int | None = None, rt_priority: int | None = None,
            busy_poll_us: int = 0, warmup: int = 200,
            closed_loop_count: int = 2000) -> dict[str, Any]:
    """One configuration: start the server, warm up, measure, record its usage."""
    ends = endpoints(transport)
    if pin_load is not None:
        os.sched_setaffinity(0, {pin_load})
    ctx = zmq.Context()
    gen = LoadGenerator(ctx, ends, n_features)
    try:
        with server_process(kind, model, ends, threads=threads, pin=pin,
                            rt_priority=rt_priority, busy_poll_us=busy_poll_us) as server:
            gen.connect()
            gen.closed_loop(warmup)  # discarded
            before = process_usage(server.proc.pid)
            if rate_hz > 0:
                result = gen.fixed_rate(rate_hz, duration_s)
            else:
                result = gen.closed_loop(closed_loop_count)
            after = process_usage(server.proc.pid)
    finally:
        gen.close()
        ctx.destroy(0)
        if ends.directory is not None:
            shutil.rmtree(ends.directory, ignore_errors=True)
    out = result.summary()
    out.update({"server": kind, "transport": transport, "startup_s": server.startup_s,
                "realtime": server.rt})
    if before and after:
        out["server_cpu_percent"] = round(100 * (after["cpu_s"] - before["cpu_s"])
                                          / max(result.elapsed_s, 1e-9), 1)
        out["server_rss_mb"] = after["rss_mb"]
        out["server_peak_rss_mb"] = after["peak_rss_mb"]
    out["_raw_latency_ns"] = result.latencies_ns
    return out
