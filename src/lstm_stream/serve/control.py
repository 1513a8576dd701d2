"""The control requests a runner answers between messages: ``status``, ``streams``, ``reset``.

:class:`ControlRequests` is a mixin of :class:`~lstm_stream.serve.runner.Runner`:
it reads the runner's state and counters, never the hot path's, and builds the
replies that docs/protocol.md specifies.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zmq

from lstm_stream import __version__
from lstm_stream.core.backends import StepBackend
from lstm_stream.core.config.runner import RunnerConfig
from lstm_stream.core.model.contract import ModelContract
from lstm_stream.core.state.snapshot import RestoreResult, SnapshotWriter
from lstm_stream.core.state.store import StateStore
from lstm_stream.core.step.emit import EmitCounters
from lstm_stream.core.step.sources import SourceStepper
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.protocol import PROTOCOL_VERSION, ControlRequest, decode_control_request
from lstm_stream.core.wire.shard import Shard, shard_topic
from lstm_stream.serve.health import HealthTracker
from lstm_stream.serve.liveview import LiveView
from lstm_stream.serve.security.curve import ServerKeys

LATENCY_WINDOW = 4096  # latencies kept for the status percentiles
MAX_CONTROL_BYTES = 65536  # a larger control request is answered with an error


@dataclass
class Counters(EmitCounters):
    """What the runner has done since it started; reported by ``status``."""

    received: int = 0
    control_requests: int = 0
    control_errors: int = 0
    input_reconnects: int = 0  # input connections dropped by ZeroMQ and made again
    late: int = 0  # outputs published later than output.deadline_ms after their sensor time


class ControlRequests:
    """``status``, ``streams`` and ``reset`` over the runner's state (a mixin of Runner)."""

    # what the replies read, set by Runner.__init__
    config: RunnerConfig
    contract: ModelContract
    backend: StepBackend
    stepper: StreamStepper
    store: StateStore
    counters: Counters
    subscriptions: Counter[str]
    shard: Shard | None
    keys: ServerKeys | None
    restored: RestoreResult
    snapshots: SnapshotWriter | None
    pub: zmq.Socket[Any]
    sources: SourceStepper | None
    live: LiveView | None
    health: HealthTracker
    warmup_s: float
    _latencies: np.ndarray
    _started: float
    _control_resets: int
    _input_connected: bool

    @property
    def ready(self) -> bool:
        """Warmed up (before the sockets open) and the input connected, or bound."""
        return self._input_connected

    def input_topics(self) -> list[str]:
        """What the input socket subscribes to: the topics, or their shard's topics."""
        topics = self.config.input.topics
        if self.shard is None:
            return list(topics)
        return [shard_topic(t, self.shard.index, self.shard.count) for t in topics]

    def _read_subscriptions(self) -> None:
        while cast(int, self.pub.get(zmq.EVENTS)) & zmq.POLLIN:
            frame = self.pub.recv()
            if frame:
                topic = frame[1:].decode(errors="replace")
                self.subscriptions[topic] += 1 if frame[0] == 1 else -1
                if self.subscriptions[topic] <= 0:
                    del self.subscriptions[topic]

    def control_reply(self, request: bytes) -> dict[str, Any]:
        """Answer one control request; unknown, malformed or oversized ones get an error
        reply."""
        if len(request) > MAX_CONTROL_BYTES:
            return _error(f"request is {len(request)} bytes, more than the control limit of "
                          f"{MAX_CONTROL_BYTES} bytes; requests are small maps such as "
                          '{"cmd": "status"}')
        parsed = decode_control_request(request)
        if not isinstance(parsed, ControlRequest):
            return _error(parsed)
        if parsed.cmd == "status":
            return self.status()
        if parsed.cmd == "streams":
            return self._streams_reply()
        return self._reset_reply(parsed.stream)

    def _reset_reply(self, stream: str | None) -> dict[str, Any]:
        count = self.store.request_reset(stream)
        if stream is not None and count == 0:
            return _error(f"unknown stream {stream[:256]!r}; nothing was reset")
        self._control_resets += 1
        return {"ok": True, "reset": count}

    def _streams_reply(self) -> dict[str, Any]:
        now = time.monotonic_ns()
        return {"ok": True, "streams": [
            {"stream": s.name, "last_seq": s.last_seq, "last_stamp_ns": s.last_stamp_ns,
             "step": s.step, "idle_s": round((now - s.last_seen_ns) / 1e9, 3)}
            for s in self.store.streams()]}

    def status(self) -> dict[str, Any]:
        """Counters and latency percentiles, as the ``status`` request returns them."""
        self._read_subscriptions()  # fresh, not as of the last housekeeping
        c = self.counters
        n = min(c.stepped, LATENCY_WINDOW)
        latency: dict[str, Any] = {"window": n}
        if n:
            window = self._latencies if n == LATENCY_WINDOW else self._latencies[1:n + 1]
            for q in (50, 90, 99):
                latency[f"p{q}"] = int(np.percentile(window, q))
            latency["max"] = int(window.max())
        return {
            "ok": True, "version": __version__, "protocol": PROTOCOL_VERSION,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "model": {"path": str(self.contract.path), "sha256": self.contract.sha256,
                      "backend": self.backend.name, "features": self.contract.n_features,
                      "outputs": self.contract.n_outputs,
                      "extras": [e.name for e in self.contract.extras],
                      "dtype": self.contract.dtype, "fixed_batch": self.contract.fixed_batch},
            "received": c.received, "stepped": c.stepped, "published": c.published,
            "batches": self.stepper.calls,  # backend calls; stepped / batches = mean batch
            "topics": self.input_topics(), "shard": None if self.shard is None else str(self.shard),
            "rejected": dict(c.rejected), "resets": dict(c.resets),
            "streams": len(self.store), "max_streams": self.store.max_streams,
            "evicted": self.store.evicted, "expired": self.store.expired,
            "control_requests": c.control_requests, "control_errors": c.control_errors,
            "input_reconnects": c.input_reconnects,
            "subscriptions": dict(self.subscriptions),
            "latency_ns": latency,
            "snapshot": self._snapshot_status(),
            "curve": self.keys is not None,
            "ready": self.ready, "warmup_ms": round(self.warmup_s * 1e3, 3),
            "late": c.late, **self._sources_status(),
            "foxglove": None if self.live is None else self.live.status(),
        }

    def _sources_status(self) -> dict[str, Any]:
        """With input.sources: the health of every source and what freshness did."""
        if self.sources is None:
            return {}
        health = self.health_report(time.monotonic_ns(), advance=False)
        return {"sources": health["sources"], "waiting": self.sources.waiting,
                "stale": dict(self.sources.stale), "stale_skipped": self.sources.skipped}

    def health_report(self, now_ns: int, *, advance: bool = True) -> dict[str, Any]:
        """The health message (health.py): since the previous one unless ``advance``."""
        c = self.counters
        since = self.health.stepped_at_mark
        n = min(c.stepped - since, LATENCY_WINDOW)
        recent = self._latencies[np.arange(c.stepped - n + 1, c.stepped + 1) % LATENCY_WINDOW]
        return self.health.report(now_ns, stepped=c.stepped, rejected=sum(c.rejected.values()),
                                  ready=self.ready, streams=len(self.store),
                                  latencies_ns=recent, advance=advance)

    def _snapshot_status(self) -> dict[str, Any] | None:
        writer = self.snapshots
        if writer is None:
            return None
        return {"path": str(writer.path), "restored": self.restored.restored,
                "restore_note": self.restored.note, "written": writer.written,
                "failed": writer.failed, "last_error": writer.last_error,
                "last_write_ms": round(writer.last_write_s * 1e3, 3),
                "interval_s": self.config.state.snapshot_interval_s}



def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}
