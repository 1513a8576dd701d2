"""The health topic: every input's measured rate and age, and the runner's own figures.

Published between messages, every ``1 / health.rate_hz`` seconds, on
``health.topic`` (``status`` shows the same). A source is ``alive`` by
openpilot's rule: its rate over the last period within 0.8-1.2x of the expected
``rate_hz`` (not checked when that is 0), and its last message younger than its
``max_age_ms``; the rate is measured over the source's last 32 messages (a
10 Hz source gives too few in one health period to tell 8 Hz from 12). The
runner's figures (steps/s, latency percentiles, rejections,
stale steps) cover the period since the previous health message.

Health messages are encoded only while some subscriber asked for the health
topic by name (a subscription to every topic, the empty prefix, does not count),
so a vehicle stack that listens to everything sees no new messages unasked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_stream.core.step.emit import EmitCounters
from lstm_stream.core.step.latency import LatencyWindow
from lstm_stream.core.step.sources import Source, SourceStepper

ALIVE_RATE = (0.8, 1.2)  # measured / expected rate within this: alive (openpilot's SubMaster)


@dataclass
class _Mark:
    """The counters at the previous health message."""

    t_ns: int
    stepped: int = 0
    rejected: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    stale: dict[str, int] = field(default_factory=dict)


class HealthTracker:
    """Turns the runner's counters into per-period health reports."""

    def __init__(self, sources: SourceStepper | None, counters: EmitCounters,
                 latencies: LatencyWindow, now_ns: int) -> None:
        self.sources = sources
        self.counters = counters
        self.latencies = latencies
        self._mark = _Mark(now_ns, messages=self._messages(), stale=self._stale())

    def report(self, now_ns: int, *, ready: bool, streams: int,
               advance: bool = True) -> dict[str, Any]:
        """The health message at ``now_ns`` (monotonic), over the period since the previous
        one; ``advance=False`` (``status``) leaves the period open."""
        mark = self._mark
        stepped, rejected = self.counters.stepped, sum(self.counters.rejected.values())
        latencies_ns = self.latencies.last(stepped - mark.stepped)
        elapsed_s = max((now_ns - mark.t_ns) / 1e9, 1e-9)
        messages, stale = self._messages(), self._stale()
        latency: dict[str, int] = {}
        if latencies_ns.size:
            latency = {"p50": int(np.percentile(latencies_ns, 50)),
                       "p99": int(np.percentile(latencies_ns, 99))}
        body: dict[str, Any] = {
            "stamp_ns": time.time_ns(), "ready": ready, "streams": streams,
            "period_s": round(elapsed_s, 3),
            "steps_per_s": round((stepped - mark.stepped) / elapsed_s, 1),
            "latency_ns": latency, "rejected": rejected - mark.rejected,
            "stale": {t: n - mark.stale.get(t, 0) for t, n in stale.items()},
            "sources": self._sources(now_ns),
        }
        if advance:
            self._mark = _Mark(now_ns, stepped, rejected, messages, stale)
        return body

    def _sources(self, now_ns: int) -> dict[str, dict[str, Any]]:
        if self.sources is None:
            return {}
        out = {}
        for source in self.sources.sources:
            rate = self.sources.rate_hz(source.topic)
            last = self.sources.last_recv_ns[source.topic]
            age_ms = None if last is None else round((now_ns - last) / 1e6, 3)
            out[source.topic] = {"rate_hz": None if rate is None else round(rate, 2),
                                 "expected_hz": source.rate_hz, "age_ms": age_ms,
                                 "max_age_ms": source.max_age_ns / 1e6,
                                 "messages": self.sources.messages[source.topic],
                                 "alive": alive(source, rate, age_ms)}
        return out

    def _messages(self) -> dict[str, int]:
        return dict(self.sources.messages) if self.sources is not None else {}

    def _stale(self) -> dict[str, int]:
        return dict(self.sources.stale) if self.sources is not None else {}


def alive(source: Source, rate_hz: float | None, age_ms: float | None) -> bool:
    """openpilot's rule: rate within 0.8-1.2x of expected (when one is given) and the last
    message younger than ``max_age_ms``."""
    if age_ms is None or age_ms * 1e6 > source.max_age_ns:
        return False
    if source.rate_hz <= 0:
        return True
    if rate_hz is None:
        return False
    low, high = ALIVE_RATE
    return low * source.rate_hz <= rate_hz <= high * source.rate_hz
