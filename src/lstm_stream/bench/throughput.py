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
from typing import Any

import numpy as np
import onnxruntime as ort
import zmq

from lstm_stream.bench.e2e import (
    Endpoints,
    ServerProcess,
    endpoints,
    process_usage,
    server_process,
)
from lstm_stream.bench.load import BatchMessageGenerator, ThroughputGenerator, default_window
from lstm_stream.bench.platform import platform_record
from lstm_stream.bench.results import ThroughputReport, model_record
from lstm_stream.bench.stats import summarize_ns
from lstm_stream.bench.step import has_torch, time_calls
from lstm_stream.core.backends.onnxruntime import session_options
from lstm_stream.core.config.runner import BatchingConfig, StateConfig
from lstm_stream.core.errors import LstmStreamError
from lstm_stream.core.model.contract import ModelContract, load_contract
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.serve.client import control_request

log = logging.getLogger(__name__)

FLOOR_A = "decode"
BATCH_MESSAGES = "runner-batch-messages"  # the batched runner, fed one batch message a tick
RUNNERS = ("runner-unbatched", "runner", BATCH_MESSAGES)
SERVERS = ("decode", *RUNNERS, "naive-ort", "naive-torch")
KNOWN_SERVERS = (*SERVERS, "echo")
LABELS = {
    "decode": "floor a': receive + decode",
    "echo": "echo (floor a of the latency suite)",
    "runner-unbatched": "runner, max_batch 1",
    "runner": "runner, batched",
    BATCH_MESSAGES: "runner, batch messages (one per tick)",
    "naive-ort": "naive onnxruntime server",
    "naive-torch": "naive torch server",
}
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
    kind_of_load = BatchMessageGenerator if kind == BATCH_MESSAGES else ThroughputGenerator
    gen = kind_of_load(ctx, ends, n_features, streams, window)
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
                   progress: Progress | None = None) -> ThroughputReport:
    """Every server at every stream count and transport, floor (b'), the verdict."""
    progress = progress or NullProgress()
    contract = load_contract(settings.model)
    servers = [s for s in settings.servers if s != "naive-torch" or has_torch()]
    configs = [(t, n, s) for t in settings.transports for n in settings.streams
               for s in servers]
    batches = sorted({min(n, settings.batch_limit) for n in settings.streams}
                     # a batch message of n streams is one call of n rows
                     | (set(settings.streams) if BATCH_MESSAGES in servers else set()))
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
    return ThroughputReport(
        platform=platform_record(_settings_record(settings)),
        model=model_record(settings.model, contract),
        started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        floor_b=floor_b, throughput=rows, verdict=verdict(rows, floor_b, settings.batch_limit),
        generator=generator_summary(rows), batch_messages=batch_message_verdict(rows, floor_b))


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


def batch_message_verdict(rows: list[dict[str, Any]],
                          floor_b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per transport and stream count: batch messages (one message per tick carrying
    every stream) against the bare batched run of the same batch, and against the
    runner fed one message per stream (issue 16's goal: >= 0.5x the bare run)."""
    by_batch = {f["batch"]: f["steps_per_s"] for f in floor_b}
    rate = {(r["transport"], r["streams"], r["server"]): r["steps_per_s"] for r in rows}
    out = []
    for r in rows:
        if r["server"] != BATCH_MESSAGES:
            continue
        floor = by_batch.get(r["streams"])
        single = rate.get((r["transport"], r["streams"], "runner"))
        out.append({"transport": r["transport"], "streams": r["streams"],
                    "steps_per_s": r["steps_per_s"], "floor_b_batch": r["streams"],
                    "floor_b_steps_per_s": floor, "ratio_to_floor_b": _ratio(r["steps_per_s"],
                                                                              floor),
                    "runner_steps_per_s": single, "gain": _ratio(r["steps_per_s"], single),
                    "lost": r["lost"], "reordered": r["reordered"],
                    "limited_by": r["limited_by"]})
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
