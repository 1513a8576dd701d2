"""Throughput over real sockets: many streams at the highest sustainable rate.

A simulation farm runs hundreds of vehicles against one policy server, so the
question is no longer "how long does one message take" but "how many steps per
second does one runner process sustain with N streams, and what does each
message wait meanwhile". This suite answers it for 1, 10, 100 and 1000 streams
against a real ``lstm-stream serve`` process (unbatched and batched), next to:

- floor (a'): the ``decode`` server (servers.py): ZeroMQ receive and msgpack
  decode in Python, answering each message like ``echo`` so it can be counted;
- floor (b'): the bare batched ``InferenceSession.run`` in this process,
  steps/s = batch / time per run, batch = min(streams, max_batch);
- the naive loops a user would write, as servers behind the same sockets.

The load generator is one thread with a bounded window of messages in flight
(credit based): it sends while fewer than ``window`` messages are unanswered
and otherwise waits for outputs, so the rate is the highest the server sustains
without a queue growing anywhere, and nothing is dropped by a high-water mark.
Streams are served round robin, each stream's ``seq`` increasing by one per
message; every output is checked for loss and for order within its stream.
The generator measures its own share too (CPU per message, time spent waiting
for outputs), so a reader can tell whether a figure was limited by the server
or by the generator.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from lstm_stream.bench.e2e import (
    Endpoints,
    ServerProcess,
    endpoints,
    generator_sockets,
    process_usage,
    server_process,
    wait_until_served,
)
from lstm_stream.bench.platform import platform_record
from lstm_stream.bench.report import model_record, render_platform, render_table
from lstm_stream.bench.stats import summarize_ns
from lstm_stream.bench.step import has_torch, time_calls
from lstm_stream.core.config import BatchingConfig, StateConfig
from lstm_stream.core.contract import ModelContract, load_contract
from lstm_stream.core.errors import LstmStreamError
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.serve.client import control_request

log = logging.getLogger(__name__)

FLOOR_A = "decode"
RUNNERS = ("runner-unbatched", "runner")
SERVERS = ("decode", *RUNNERS, "naive-ort", "naive-torch")
KNOWN_SERVERS = (*SERVERS, "echo")
LABELS = {
    "decode": "floor a': receive + decode",
    "echo": "echo (floor a of the latency suite)",
    "runner-unbatched": "runner, max_batch 1",
    "runner": "runner, batched",
    "naive-ort": "naive onnxruntime server",
    "naive-torch": "naive torch server",
}
# Every server's input and output high-water marks are 10,000 messages (the runner's
# defaults, servers.py): a window up to that can never make ZeroMQ drop a message.
MAX_WINDOW = 10_000
STALL_S = 5.0  # no output for this long with messages in flight: the server is stuck
GENERATOR_BOUND_WAIT = 10.0  # % of the time waiting for outputs below which the
# generator, not the server, set the pace


@dataclass
class ThroughputSettings:
    model: str = "models/random_lstm.onnx"
    streams: tuple[int, ...] = (1, 10, 100, 1000)
    duration_s: float = 5.0
    warmup_s: float = 0.5
    window: int | None = None  # messages in flight; None: default_window()
    transports: tuple[str, ...] = ("tcp",)
    servers: tuple[str, ...] = SERVERS
    max_batch: int | None = None  # the runner's batching.max_batch; None: its default
    max_wait_us: int | None = None  # the runner's batching.max_wait_us; None: its default
    floor_b_runs: int = 20000
    threads: int = 1
    pin: int | None = None
    pin_load: int | None = None
    rt_priority: int | None = None
    busy_poll_us: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_limit(self) -> int:
        """The batched runner's max_batch, which floor (b') takes as its batch."""
        return self.max_batch if self.max_batch is not None else BatchingConfig().max_batch


def default_window(streams: int, max_batch: int) -> int:
    """Messages in flight: 4 per stream, at least two full batches and at least 64.

    Several messages per stream keep a message of every stream waiting at the
    runner, so its batches can fill (two batches: one waiting while the other
    is stepped); the floor of 64 keeps a single stream's pipeline full across
    the ZeroMQ round trip through both I/O threads (hundreds of microseconds
    under load), which a fast server answers many messages within.
    """
    return min(MAX_WINDOW, max(64, 2 * max_batch, 4 * streams))


# -- the load generator -------------------------------------------------------


@dataclass
class Phase:
    """What one run of the generator saw, and what it cost the generator."""

    streams: int
    window: int
    sent: int
    received: int
    rejected: int
    reordered: int
    stalled: bool
    elapsed_s: float  # first send to last output
    latencies_ns: np.ndarray
    thread_cpu_s: float  # the generator thread's CPU time
    process_cpu_s: float  # the whole generator process (with ZeroMQ's I/O thread)
    wait_s: float  # blocked waiting for outputs with the window full

    def summary(self) -> dict[str, Any]:
        elapsed = max(self.elapsed_s, 1e-9)
        per_msg = self.thread_cpu_s / self.received * 1e6 if self.received else None
        return {
            "streams": self.streams, "window": self.window, "sent": self.sent,
            "received": self.received, "lost": self.sent - self.received - self.rejected,
            "rejected": self.rejected, "reordered": self.reordered, "stalled": self.stalled,
            "elapsed_s": round(self.elapsed_s, 3),
            "steps_per_s": round(self.received / elapsed, 1),
            "latency_us": summarize_ns(self.latencies_ns),
            "generator": {
                "thread_cpu_percent": round(100 * self.thread_cpu_s / elapsed, 1),
                "process_cpu_percent": round(100 * self.process_cpu_s / elapsed, 1),
                "wait_percent": round(100 * self.wait_s / elapsed, 1),
                "cpu_us_per_message": round(per_msg, 2) if per_msg else None,
                "messages_per_cpu_s": round(1e6 / per_msg) if per_msg else None,
            },
        }


class ThroughputGenerator:
    """Round-robin sensor messages over ``streams`` streams, ``window`` in flight.

    One thread sends and receives: with two cores shared by the generator, the
    server and both ZeroMQ I/O threads, a second generator thread would only
    take CPU from the server, and one thread needs no locks for its counters.
    """

    def __init__(self, ctx: zmq.Context[Any], ends: Endpoints, n_features: int,
                 streams: int, window: int) -> None:
        # diagnostics too: rejections give credit back
        self.pub, self.sub = generator_sockets(ctx, ends, b"policy", b"diagnostics")
        rng = np.random.default_rng(0)
        xs = [rng.normal(size=n_features).astype("<f4").tobytes() for _ in range(64)]
        self.names = [f"bench/{i}" for i in range(streams)]
        self.xs = [xs[i % 64] for i in range(streams)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.window = window
        self.cursor = 0  # the stream the next message goes to
        self.seq = 0  # the seq of the current round over the streams
        self.expect = [0] * streams  # per stream: the next seq due in order
        self.reordered = 0
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def send(self, n: int) -> None:
        """Send the next ``n`` messages of the round robin."""
        names, xs, count = self.names, self.xs, len(self.names)
        i, seq = self.cursor, self.seq
        send, more, pack, clock = self.pub.send, zmq.SNDMORE, self._pack, time.monotonic_ns
        for _ in range(n):
            send(b"sensors", more)
            send(pack({"stream": names[i], "seq": seq, "stamp_ns": clock(), "x": xs[i]}))
            i += 1
            if i == count:
                i, seq = 0, seq + 1
        self.cursor, self.seq = i, seq

    def receive(self, latencies: list[int]) -> tuple[int, int]:
        """Take every output already queued; returns (outputs, rejections)."""
        recv, noblock = self.sub.recv, zmq.NOBLOCK
        unpack, clock = msgpack.unpackb, time.monotonic_ns
        index, expect, append = self.index, self.expect, latencies.append
        outputs = rejections = 0
        while True:
            try:
                topic = recv(noblock)
            except zmq.Again:
                return outputs, rejections
            payload = recv()
            now = clock()
            body = unpack(payload)
            if topic != b"policy":  # diagnostics: a rejection answers a message too
                rejections += body.get("event") == "rejected"
                continue
            append(now - body["stamp_ns"])
            j = index[body["stream"]]
            seq = body["seq"]
            if seq < expect[j]:
                self.reordered += 1
            else:
                expect[j] = seq + 1
            outputs += 1

    def connect(self, timeout_s: float = 30.0) -> None:
        """Wait for the server's subscription, then until outputs flow (slow joiner)."""
        wait_until_served(self.pub, self.sub, timeout_s, lambda: self.send(1))
        while self.sub.poll(200):  # the outputs of those first messages
            self.sub.recv_multipart()
        self.expect = [self.seq + (i < self.cursor) for i in range(len(self.names))]

    def run(self, duration_s: float, stall_s: float = STALL_S) -> Phase:
        """Keep ``window`` messages in flight for ``duration_s``, then collect the rest
        (giving up on them after ``stall_s`` without any output: they count as lost)."""
        window, poll, clock = self.window, self.sub.poll, time.monotonic_ns
        latencies: list[int] = []
        sent = answered = received = rejected = 0
        wait_ns, stalled, reordered0 = 0, False, self.reordered
        cpu0, proc0 = time.thread_time(), time.process_time()
        start = last = clock()
        end = start + int(duration_s * 1e9)
        sending = True
        while True:
            if sending and clock() >= end:
                sending = False
            if sending:
                credit = window - (sent - answered)
                if credit > 0:
                    self.send(credit)
                    sent += credit
            elif sent == answered:
                break
            outputs, rejections = self.receive(latencies)
            if outputs or rejections:
                received += outputs
                rejected += rejections
                answered += outputs + rejections
                last = clock()
                continue
            t0 = clock()  # the window is full (or sending is over): wait for outputs
            if not poll(int(stall_s * 1000)):
                stalled = True
                log.warning("no output for %g s with %d messages in flight; giving up",
                            stall_s, sent - answered)
                break
            wait_ns += clock() - t0
        return Phase(len(self.names), window, sent, received, rejected,
                     self.reordered - reordered0, stalled, (last - start) / 1e9,
                     np.asarray(latencies, np.int64), time.thread_time() - cpu0,
                     time.process_time() - proc0, wait_ns / 1e9)

    def close(self) -> None:
        self.pub.close(0)
        self.sub.close(0)


# -- servers ----------------------------------------------------------------------


def runner_sets(kind: str, streams: int, settings: ThroughputSettings) -> list[str]:
    """The ``--set`` options of a runner kind for ``streams`` streams."""
    sets = []
    if kind == "runner-unbatched":
        sets.append("batching.max_batch=1")
    else:
        if settings.max_batch is not None:
            sets.append(f"batching.max_batch={settings.max_batch}")
        if settings.max_wait_us is not None:
            sets.append(f"batching.max_wait_us={settings.max_wait_us}")
    if streams > StateConfig().max_streams:  # else evictions would reset states
        sets.append(f"state.max_streams={streams}")
    return sets


@contextlib.contextmanager
def start_server(kind: str, ends: Endpoints, streams: int,
                 settings: ThroughputSettings) -> Iterator[ServerProcess]:
    s = settings
    runner = kind in RUNNERS
    with server_process("runner" if runner else kind, s.model, ends, threads=s.threads,
                        pin=s.pin, rt_priority=s.rt_priority, busy_poll_us=s.busy_poll_us,
                        runner_sets=runner_sets(kind, streams, s) if runner else ()
                        ) as server:
        yield server


def server_counters(server: ServerProcess, kind: str) -> dict[str, Any]:
    """CPU time, and for a runner its ``status`` counters (``batches`` when it has them)."""
    out: dict[str, Any] = {"usage": process_usage(server.proc.pid)}
    if kind in RUNNERS:
        try:
            status = control_request(server.ends.control, {"cmd": "status"}, timeout_s=5.0)
        except LstmStreamError as err:
            log.warning("no status from the runner: %s", err)
        else:
            out["stepped"] = status.get("stepped")
            out["batches"] = status.get("batches")
    return out


def _mean_batch(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """Steps per backend call over the measurement; None when the runner has no counter."""
    if before.get("batches") is None or after.get("batches") is None:
        return None
    calls = after["batches"] - before["batches"]
    return round((after["stepped"] - before["stepped"]) / calls, 2) if calls > 0 else None


def measure_throughput(kind: str, streams: int, transport: str, settings: ThroughputSettings,
                       n_features: int) -> dict[str, Any]:
    """One server at one stream count: start it, warm up, measure, read its counters."""
    window = settings.window or default_window(streams, settings.batch_limit)
    ends = endpoints(transport)
    ctx = zmq.Context()
    gen = ThroughputGenerator(ctx, ends, n_features, streams, window)
    try:
        with start_server(kind, ends, streams, settings) as server:
            gen.connect()
            gen.run(settings.warmup_s)  # discarded: first calls, allocations, caches
            before = server_counters(server, kind)
            phase = gen.run(settings.duration_s)
            after = server_counters(server, kind)
    finally:
        gen.close()
        ctx.destroy(0)
        if ends.directory is not None:
            shutil.rmtree(ends.directory, ignore_errors=True)
    out: dict[str, Any] = {"server": kind, "label": LABELS[kind], "transport": transport,
                           **phase.summary(), "startup_s": server.startup_s,
                           "realtime": server.rt, "server_cpu_percent": None,
                           "server_rss_mb": None, "mean_batch": _mean_batch(before, after)}
    ub, ua = before["usage"], after["usage"]
    if ub and ua:
        out["server_cpu_percent"] = round(100 * (ua["cpu_s"] - ub["cpu_s"])
                                          / max(phase.elapsed_s, 1e-9), 1)
        out["server_rss_mb"] = ua["rss_mb"]
    wait = out["generator"]["wait_percent"]
    out["limited_by"] = "generator" if wait < GENERATOR_BOUND_WAIT else "server"
    log.info("%s, %d streams, %s: %.0f steps/s, lost %d, reordered %d", kind, streams,
             transport, out["steps_per_s"], out["lost"], out["reordered"])
    return out


# -- floor (b') -------------------------------------------------------------------


def batched_run(contract: ModelContract, batch: int, runs: int, warmup: int,
                threads: int = 1) -> dict[str, Any]:
    """Floor (b'): the bare ``InferenceSession.run`` of ``batch`` streams, back to back.

    No server can step faster than this with batches of this size: it is the
    arithmetic plus onnxruntime's fixed cost per call, with nothing around it.
    """
    import onnxruntime as ort

    from lstm_stream.core.backends.onnxruntime import session_options

    sess = ort.InferenceSession(str(contract.path), sess_options=session_options(threads),
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    names = [s.input for s in contract.states]
    outs = ["y", *(s.output for s in contract.states)]
    feeds: dict[str, Any] = {"x": rng.normal(size=(batch, contract.n_features))
                             .astype(np.float32)}
    for s in contract.states:
        feeds[s.input] = np.zeros((s.layers, batch, s.hidden), np.float32)

    def call() -> None:
        result = sess.run(outs, feeds)
        for name, value in zip(names, result[1:], strict=True):
            feeds[name] = value

    samples = time_calls(call, runs, warmup)
    return {"batch": batch, "runs": runs, "run_us": summarize_ns(samples),
            "steps_per_s": round(batch * 1e9 / float(samples.mean()), 1)}


# -- the suite --------------------------------------------------------------------


def run_throughput(settings: ThroughputSettings,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Every server at every stream count and transport, floor (b'), the verdict."""
    progress = progress or NullProgress()
    contract = load_contract(settings.model)
    servers = [s for s in settings.servers if s != "naive-torch" or has_torch()]
    configs = [(t, n, s) for t in settings.transports for n in settings.streams
               for s in servers]
    batches = sorted({min(n, settings.batch_limit) for n in settings.streams})
    progress.start("throughput", total=len(batches) + len(configs))
    started = time.time()
    floor_b = []
    for batch in batches:
        floor_b.append(batched_run(contract, batch, settings.floor_b_runs,
                                   min(1000, settings.floor_b_runs), settings.threads))
        progress.advance(1, status=f"floor b' batch {batch}")
    rows = []
    for transport, streams, server in configs:
        rows.append(measure_throughput(server, streams, transport, settings,
                                       contract.n_features))
        progress.advance(1, status=f"{server} {streams} streams {transport}")
    progress.close()
    return {
        "suite": "throughput",
        "platform": platform_record(_settings_record(settings)),
        "model": model_record(settings.model, contract),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "floor_b": floor_b,
        "throughput": rows,
        "verdict": verdict(rows, floor_b, settings.batch_limit),
        "generator": generator_summary(rows),
    }


def _settings_record(s: ThroughputSettings) -> dict[str, Any]:
    return {"streams": list(s.streams), "duration_s": s.duration_s, "warmup_s": s.warmup_s,
            "window": s.window if s.window else "4 per stream, at least 2 x max_batch and 64",
            "transports": list(s.transports), "max_batch": s.batch_limit,
            "max_wait_us": s.max_wait_us if s.max_wait_us is not None
            else BatchingConfig().max_wait_us,
            "floor_b_runs": s.floor_b_runs, "threads": s.threads, "pin_runner": s.pin,
            "pin_load": s.pin_load, "rt_priority": s.rt_priority,
            "busy_poll_us": s.busy_poll_us}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def verdict(rows: list[dict[str, Any]], floor_b: list[dict[str, Any]],
            max_batch: int) -> list[dict[str, Any]]:
    """Per transport and stream count: the batched runner against the floors and the
    unbatched runner (what batching buys) and the naive onnxruntime server."""
    by_batch = {f["batch"]: f["steps_per_s"] for f in floor_b}
    rate = {(r["transport"], r["streams"], r["server"]): r["steps_per_s"] for r in rows}
    out = []
    for r in rows:
        if r["server"] != "runner":
            continue
        key = (r["transport"], r["streams"])
        floor_a = rate.get((*key, FLOOR_A))
        batch = min(r["streams"], max_batch)
        unbatched = rate.get((*key, "runner-unbatched"))
        naive = rate.get((*key, "naive-ort"))
        out.append({
            "transport": r["transport"], "streams": r["streams"],
            "runner_steps_per_s": r["steps_per_s"], "floor_a_steps_per_s": floor_a,
            "ratio_to_floor_a": _ratio(r["steps_per_s"], floor_a),
            "floor_b_batch": batch, "floor_b_steps_per_s": by_batch.get(batch),
            "ratio_to_floor_b": _ratio(r["steps_per_s"], by_batch.get(batch)),
            "unbatched_steps_per_s": unbatched,
            "batching_gain": _ratio(r["steps_per_s"], unbatched),
            "naive_ort_steps_per_s": naive, "ratio_to_naive_ort": _ratio(r["steps_per_s"],
                                                                           naive),
            "mean_batch": r["mean_batch"], "lost": r["lost"], "reordered": r["reordered"],
            "limited_by": r["limited_by"],
        })
    return out


def generator_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The most the generator pushed (normally against floor a'), what that cost it,
    and the rows it limited, so a reader can tell whether it limited any figure.

    Its CPU per message at that row, its busiest, is its cost with the most
    messages per wake-up; against slower servers it wakes up for fewer
    messages at a time and spends more per message, on CPU it has to spare.
    """
    if not rows:
        return {}
    top = max(rows, key=lambda r: r["steps_per_s"])
    g = top["generator"]
    return {
        "max_steps_per_s": top["steps_per_s"],
        "max_at": {k: top[k] for k in ("server", "streams", "transport")},
        "thread_cpu_percent": g["thread_cpu_percent"],
        "process_cpu_percent": g["process_cpu_percent"], "wait_percent": g["wait_percent"],
        "cpu_us_per_message": g["cpu_us_per_message"],
        "capacity_per_core_steps_per_s": g["messages_per_cpu_s"],
        "limited_rows": [f"{r['server']} {r['streams']} {r['transport']}" for r in rows
                         if r["limited_by"] == "generator"],
    }


# -- text and plot ----------------------------------------------------------------


def _rate(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "n/a"


def _ms(latency_us: dict[str, Any], keys: tuple[str, ...]) -> list[Any]:
    """Latencies at saturation are milliseconds (about window / rate): show them so."""
    return [round(latency_us[k] / 1e3, 2) if k in latency_us else "" for k in keys]


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def render_throughput(report: dict[str, Any]) -> str:
    """The throughput report as text: platform, per-server table, floors, verdict."""
    lat_cols = ("p50", "p90", "p99", "p99.9", "max")
    lines = render_platform(report, "lstm-stream bench --throughput")
    lines += [
        "",
        "floor b': bare batched InferenceSession.run in process (steps/s = batch / time "
        "per run)",
        render_table(["batch", "run p50 us", "run p99 us", "steps/s"],
                     [[f["batch"], f["run_us"]["p50"], f["run_us"]["p99"],
                       _rate(f["steps_per_s"])] for f in report["floor_b"]]),
        "",
        "throughput over ZeroMQ: steps/s, latency per message (ms, sensor sent -> output "
        "received, same clock) with window messages in flight",
        render_table(["streams", "server", "transport", "window", "steps/s",
                      *lat_cols, "sent", "lost", "reord", "cpu %", "batch", "gen cpu %",
                      "gen wait %", "limited by"],
                     [[r["streams"], r["label"], r["transport"], r["window"],
                       _rate(r["steps_per_s"]),
                       *_ms(r["latency_us"], lat_cols), r["sent"], r["lost"],
                       r["reordered"], r["server_cpu_percent"] or "",
                       r["mean_batch"] or "", r["generator"]["process_cpu_percent"],
                       r["generator"]["wait_percent"], r["limited_by"]]
                      for r in report["throughput"]]),
        "",
        "runner (batched) vs floor a' (receive + decode), floor b' (bare batched run), "
        "the unbatched runner and the naive onnxruntime server",
        render_table(["transport", "streams", "runner steps/s", "floor a'", "ratio",
                      "floor b' (batch)", "ratio", "max_batch 1", "batching gain",
                      "naive-ort", "ratio", "mean batch", "lost", "reord", "limited by"],
                     [[v["transport"], v["streams"], _rate(v["runner_steps_per_s"]),
                       _rate(v["floor_a_steps_per_s"]), _x(v["ratio_to_floor_a"]),
                       f"{_rate(v['floor_b_steps_per_s'])} ({v['floor_b_batch']})",
                       _x(v["ratio_to_floor_b"]), _rate(v["unbatched_steps_per_s"]),
                       _x(v["batching_gain"]), _rate(v["naive_ort_steps_per_s"]),
                       _x(v["ratio_to_naive_ort"]), v["mean_batch"] or "n/a", v["lost"],
                       v["reordered"], v["limited_by"]] for v in report["verdict"]]),
        "",
        "floor a': a Python server that only receives and msgpack-decodes each message and, so "
        "that it can be counted, answers it with the same output map as the echo server (no "
        "model, no state).",
        "cpu %: the server process (all its threads). batch: steps per backend call (runner "
        "status stepped / batches; empty when the runner does not report batches). gen cpu %: "
        "the generator process (its thread and ZeroMQ's I/O thread); gen wait %: time it "
        f"waited for outputs with its window full: below {GENERATOR_BOUND_WAIT:g} % the "
        "generator, not the server, set the pace ('limited by').",
        *_generator_lines(report["generator"]),
        *_target_lines(report["verdict"]),
    ]
    return "\n".join(lines)


def _generator_lines(g: dict[str, Any]) -> list[str]:
    if not g:
        return []
    at = g["max_at"]
    limited = ", ".join(g["limited_rows"]) or "none"
    return [f"load generator: pushed up to {_rate(g['max_steps_per_s'])} steps/s "
            f"({at['server']}, {at['streams']} streams, {at['transport']}), its thread "
            f"{g['thread_cpu_percent']} % busy and {g['wait_percent']} % waiting for outputs, "
            f"the whole process (with ZeroMQ's I/O thread) {g['process_cpu_percent']} % of a "
            f"core; its thread's {g['cpu_us_per_message']} us of CPU per message make about "
            f"{_rate(g['capacity_per_core_steps_per_s'])} messages/s on a core of its own. "
            f"Rows limited by the generator: {limited}."]


def _target_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 8's target: at least 100,000 steps/s with 100 streams on one runner."""
    return [f"target (>= 100,000 steps/s, 100 streams, one runner), {v['transport']}: "
            f"{_rate(v['runner_steps_per_s'])} steps/s -> "
            f"{'met' if v['runner_steps_per_s'] >= 100_000 else 'not met'}"
            for v in rows if v["streams"] == 100]


def plot_throughput(report: dict[str, Any], path: str | Path) -> None:
    """Steps/s against streams (log-log), one line per server, floor (b') dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    transports = sorted({r["transport"] for r in report["throughput"]})
    for transport in transports:
        for kind in KNOWN_SERVERS:
            rows = sorted((r for r in report["throughput"]
                           if r["server"] == kind and r["transport"] == transport),
                          key=lambda r: r["streams"])
            if not rows:
                continue
            label = LABELS[kind] + (f" ({transport})" if len(transports) > 1 else "")
            ax.plot([r["streams"] for r in rows], [r["steps_per_s"] for r in rows],
                    marker="o", label=label)
    streams = sorted({v["streams"] for v in report["verdict"]}
                     or {r["streams"] for r in report["throughput"]})
    by_batch = {f["batch"]: f["steps_per_s"] for f in report["floor_b"]}
    limit = report["platform"]["settings"]["max_batch"]
    ax.plot(streams, [by_batch.get(min(n, limit), np.nan) for n in streams], "k--",
            label="floor b': bare batched run in process, batch min(streams, max_batch)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("streams")
    ax.set_ylabel("steps per second")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the lines
    m = report["model"]
    ax.set_title(f"lstm-stream bench --throughput: {m['cell']} {m['layers']}x{m['hidden']}, "
                 f"{report['platform']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
