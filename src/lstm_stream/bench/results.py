"""What the benchmarks measured, as types; plain JSON only at the edge (``to_json``).

The measurements inside (latency summaries, rows of a table) are the dicts that
``stats.summarize_ns`` and the suites build; the reports that hold them are
dataclasses, so the renderers and the CLI name what they read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from lstm_stream.core.model.contract import ModelContract


@dataclass
class ReportHeader:
    """What heads every report: the machine and settings, the model, when it ran."""

    platform: dict[str, Any]  # platform.platform_record
    model: dict[str, Any]  # model_record
    started: str  # local time, ISO 8601


@dataclass
class BenchReport(ReportHeader):
    """``lstm-stream bench``: step latencies, end-to-end runs and the verdict."""

    step: dict[str, dict[str, Any]]  # name -> latency summary (us)
    e2e: list[dict[str, Any]]  # one run per server, transport and rate
    verdict: list[dict[str, Any]]  # the runner against the floors
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # config name -> latencies (ns)
    startup: dict[str, Any] = field(default_factory=dict)  # startup.py: warm-up off and on

    def to_json(self) -> dict[str, Any]:
        """The report as ``--json`` writes it (without the raw latencies)."""
        return {"platform": self.platform, "model": self.model, "started": self.started,
                "step": self.step, "e2e": self.e2e, "verdict": self.verdict,
                "startup": self.startup}


@dataclass
class ThroughputReport(ReportHeader):
    """``lstm-stream bench --throughput``: floor (b'), every server's row, the verdict."""

    floor_b: list[dict[str, Any]]
    throughput: list[dict[str, Any]]
    verdict: list[dict[str, Any]]
    generator: dict[str, Any]  # what the load generator pushed and what it cost
    batch_messages: list[dict[str, Any]] = field(default_factory=list)  # protocol v1.1

    def to_json(self) -> dict[str, Any]:
        return {"suite": "throughput", "platform": self.platform, "model": self.model,
                "started": self.started, "floor_b": self.floor_b,
                "throughput": self.throughput, "verdict": self.verdict,
                "generator": self.generator, "batch_messages": self.batch_messages}


@dataclass
class EvalBenchReport(ReportHeader):
    """``lstm-stream bench --eval``: offline evaluation against reading the log."""

    log: str
    messages: int
    rows: list[dict[str, Any]]  # name, messages, seconds, steps_per_s, ratio_to_floor
    workers_2_over_1: float  # one log's streams split over two workers
    logs_workers_2_over_1: float = 0.0  # several logs, a log a worker at a time
    bound_steps_per_s: float = 0.0  # read + decode, then the model: nothing else
    parts_us: dict[str, float] = field(default_factory=dict)  # batched eval's work, per message
    two_processes_over_one: float = 0.0  # the floor's work in two processes at once / alone

    def to_json(self) -> dict[str, Any]:
        return {"suite": "eval", "platform": self.platform, "model": self.model,
                "started": self.started, "log": self.log, "messages": self.messages,
                "rows": self.rows, "workers_2_over_1": self.workers_2_over_1,
                "logs_workers_2_over_1": self.logs_workers_2_over_1,
                "bound_steps_per_s": self.bound_steps_per_s, "parts_us": self.parts_us,
                "two_processes_over_one": self.two_processes_over_one}


@dataclass
class LiveViewReport(ReportHeader):
    """``lstm-stream bench --liveview``: the runner with and without the Foxglove live view."""

    rate_hz: float
    duration_s: float
    runs: list[dict[str, Any]]  # round, live, p50, p99, sent, lost (+ viewer and view counts)
    medians: dict[str, float]  # plain_/live_ p50_us, p99_us, and p50_ratio, p99_ratio

    def to_json(self) -> dict[str, Any]:
        return {"suite": "liveview", "platform": self.platform, "model": self.model,
                "started": self.started, "rate_hz": self.rate_hz,
                "duration_s": self.duration_s, "runs": self.runs, "medians": self.medians}


def model_record(path: str, contract: ModelContract) -> dict[str, Any]:
    """The model's identity and shape, as every report records it."""
    state = contract.states[0]
    return {"path": path, "sha256": contract.sha256, "cell": contract.cell,
            "layers": state.layers, "hidden": state.hidden, "features": contract.n_features,
            "outputs": contract.n_outputs,
            "sensor_payload_bytes": sensor_payload_bytes(contract.n_features)}


def sensor_payload_bytes(n_features: int) -> int:
    body = {"stream": "bench/0", "seq": 1_000_000, "stamp_ns": time.monotonic_ns(),
            "x": b"\x00" * 4 * n_features}
    return len(msgpack.packb(body))


def rate_label(rate: float) -> str:
    return f"{rate:g} Hz" if rate > 0 else "max (closed loop)"


def config_name(result: dict[str, Any]) -> str:
    return f"{result['server']} {result['transport']} {rate_label(result['rate_hz'])}"
