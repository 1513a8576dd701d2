"""``lstm-stream bench``: step latencies, end-to-end runs, floors and the verdict.

Rendering (text, plot, raw arrays) is in report.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_stream.bench.e2e import measure
from lstm_stream.bench.platform import platform_record
from lstm_stream.bench.results import BenchReport, config_name, model_record, rate_label
from lstm_stream.bench.startup import startup_suite
from lstm_stream.bench.step import RUNNER_PATH, has_torch, step_suite
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.progress import NullProgress, Progress

FLOOR_A = "echo"  # bare ZeroMQ echo: receive, decode, encode, send
FLOOR_B = "floor b: bare InferenceSession.run"


@dataclass
class BenchSettings:
    model: str = "models/random_lstm.onnx"
    rates: tuple[float, ...] = (100.0, 1000.0, 0.0)  # 0: closed loop, as fast as possible
    duration_s: float = 10.0
    transports: tuple[str, ...] = ("tcp",)
    servers: tuple[str, ...] = ("echo", "runner", "naive-ort", "naive-torch")
    steps: int = 20000
    warmup: int = 1000
    batches: tuple[int, ...] = (1, 8, 64)
    threads: int = 1
    pin: int | None = None
    pin_load: int | None = None
    rt_priority: int | None = None
    busy_poll_us: int = 0
    closed_loop_count: int = 5000
    startup_steady: int = 300  # steady messages after the first ten (startup.py); 0 = skip
    extra: dict[str, Any] = field(default_factory=dict)


def run_bench(settings: BenchSettings, progress: Progress | None = None) -> BenchReport:
    """Run every measurement; returns the report (raw latencies under ``raw``)."""
    progress = progress or NullProgress()
    contract = load_contract(settings.model)
    servers = [s for s in settings.servers if s != "naive-torch" or has_torch()]
    configs = [(t, s, r) for t in settings.transports for r in settings.rates for s in servers]
    progress.start("bench", total=1 + len(configs) + (1 if settings.startup_steady else 0))
    started = time.time()
    steps = step_suite(contract, steps=settings.steps, warmup=settings.warmup,
                       batches=settings.batches, threads=settings.threads)
    progress.advance(1, status="step latency done")
    e2e: list[dict[str, Any]] = []
    raw: dict[str, np.ndarray] = {}
    for transport, server, rate in configs:
        result = measure(server, settings.model, contract.n_features, rate_hz=rate,
                         duration_s=settings.duration_s, transport=transport,
                         threads=settings.threads, pin=settings.pin,
                         pin_load=settings.pin_load, rt_priority=settings.rt_priority,
                         busy_poll_us=settings.busy_poll_us,
                         closed_loop_count=settings.closed_loop_count)
        raw[config_name(result)] = result.pop("_raw_latency_ns")
        e2e.append(result)
        progress.advance(1, status=f"{server} {transport} {rate_label(rate)}")
    startup: dict[str, Any] = {}
    if settings.startup_steady:
        startup = startup_suite(contract, steady=settings.startup_steady)
        progress.advance(1, status="first messages after start")
    progress.close()
    return BenchReport(
        platform=platform_record({
            "rates_hz": list(settings.rates), "duration_s": settings.duration_s,
            "transports": list(settings.transports), "steps": settings.steps,
            "warmup": settings.warmup, "threads": settings.threads, "pin_runner": settings.pin,
            "pin_load": settings.pin_load, "rt_priority": settings.rt_priority,
            "busy_poll_us": settings.busy_poll_us}),
        model=model_record(settings.model, contract),
        started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        step=steps, e2e=e2e, verdict=verdict(steps, e2e), raw=raw, startup=startup)


def verdict(steps: dict[str, Any], e2e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runner against the floors (a: echo, b: bare run) at each transport and rate."""
    bare = steps.get(FLOOR_B, {})
    rows = []
    for run in e2e:
        if run["server"] != "runner":
            continue
        echo = next((r for r in e2e if r["server"] == FLOOR_A
                     and r["transport"] == run["transport"] and r["rate_hz"] == run["rate_hz"]),
                    None)
        row: dict[str, Any] = {"transport": run["transport"], "rate": rate_label(run["rate_hz"]),
                               "lost": run["lost"], "startup_s": run["startup_s"],
                               "server_rss_mb": run.get("server_rss_mb")}
        lat = run["latency_us"]
        if echo is not None and bare and lat.get("count"):
            for q in ("p50", "p99"):
                floor = echo["latency_us"][q] + bare[q]
                row[f"{q}_runner_us"] = lat[q]
                row[f"{q}_floors_us"] = round(floor, 2)
                row[f"{q}_ratio"] = round(lat[q] / floor, 3)
        inside = run["in_server_us"]
        if bare and inside.get("count"):
            row["in_server_p50_us"] = inside["p50"]
        path = steps.get(RUNNER_PATH, {})
        if bare and path:
            row["overhead_p50_us"] = round(path["p50"] - bare["p50"], 2)
        rows.append(row)
    return rows
