"""The first messages after start: what a runner's first steps cost against its steady state.

A fresh ``serve`` (warm-up on, then off, in the same run) gets ``first`` messages
at ``rate_hz`` right after it is ready, then ``steady`` more; each output's
``latency_ns`` (receive to publish inside the runner) is recorded, so that
ZeroMQ's own connection set-up does not count. The figure is the mean of the
first messages over the p50 of the steady ones: 1.0 means the first message
costs what every later one does.

Batched steps pay onnxruntime's first-call cost once per batch size: a runner
under a burst meets sizes one by one. :func:`first_batches` times, in process,
the first call at each size and the median of the calls after it, on a fresh
backend with and without the runner's warm-up.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import zmq

from lstm_stream.bench.e2e import endpoints, server_process
from lstm_stream.bench.stats import summarize_ns
from lstm_stream.core.backends import BackendName, create_backend
from lstm_stream.core.model.contract import ModelContract
from lstm_stream.core.step.stepper import warm_up
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.serve.client import VehicleStack


def first_messages(model: str, n_features: int, *, warmup: bool, first: int = 10,
                   steady: int = 300, rate_hz: float = 100.0) -> dict[str, Any]:
    """One runner start: the in-runner latency of its first and of its steady messages."""
    ends = endpoints("tcp")
    ctx = zmq.Context()
    stack = VehicleStack(ctx, ends.input)
    x = np.random.default_rng(0).normal(size=n_features).astype(np.float32)
    latencies = []
    try:
        with server_process("runner", model, ends,
                            runner_sets=[f"model.warmup={str(warmup).lower()}"]) as server:
            stack.wait_subscribed()
            stack.connect_outputs(ends.output, ends.control)
            period = 1.0 / rate_hz
            start = time.monotonic()
            for seq in range(first + steady):
                stack.send(encode_sensor(seq, x, stream="start-up"))
                ((_, out),) = stack.receive(1)
                latencies.append(int(out["latency_ns"]))
                time.sleep(max(0.0, start + (seq + 1) * period - time.monotonic()))
    finally:
        stack.close()
        ctx.destroy(0)
    lat = np.asarray(latencies, np.int64)
    head, rest = lat[:first], lat[first:]
    steady_p50 = float(np.percentile(rest, 50)) / 1e3
    return {"warmup": warmup, "startup_s": server.startup_s,
            "first_us": [round(v / 1e3, 1) for v in head.tolist()],
            "first_mean_us": round(float(head.mean()) / 1e3, 1),
            "first_max_us": round(float(head.max()) / 1e3, 1),
            "steady_us": summarize_ns(rest), "steady_p50_us": round(steady_p50, 1),
            "first_over_steady": round(float(head.mean()) / 1e3 / steady_p50, 2)}


BATCHES = (2, 8, 32, 64)


def first_batches(contract: ModelContract, *, warmup: bool, max_batch: int = 64,
                  calls: int = 20) -> dict[str, Any]:
    """The first ``backend.step`` at each batch size against the median of the next
    ``calls``, on a fresh onnxruntime backend (warmed up as the runner does, or not)."""
    backend = create_backend(BackendName.ONNXRUNTIME, contract)
    if warmup:
        warm_up(backend, contract, max_batch)
    rows = []
    for batch in (b for b in BATCHES if b <= max_batch):
        x = np.zeros((batch, contract.n_features), np.float32)
        states = [np.zeros((s.layers, batch, s.hidden), np.float32) for s in contract.states]
        times = []
        for _ in range(calls + 1):
            t0 = time.perf_counter_ns()
            backend.step(x, states)
            times.append(time.perf_counter_ns() - t0)
        later = float(np.median(times[1:])) / 1e3
        rows.append({"batch": batch, "first_us": round(times[0] / 1e3, 1),
                     "later_p50_us": round(later, 1), "ratio": round(times[0] / 1e3 / later, 2)})
    return {"warmup": warmup, "batches": rows}


def startup_suite(contract: ModelContract, *, steady: int = 300) -> dict[str, Any]:
    """Warm-up off, then on: a runner's first ten messages against its steady p50, and
    the first batched call at each size against the later ones."""
    model = str(contract.path)
    return {"messages": [first_messages(model, contract.n_features, warmup=w, steady=steady)
                         for w in (False, True)],
            "batches": [first_batches(contract, warmup=w) for w in (False, True)]}
