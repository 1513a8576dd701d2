"""The control requests a runner answers between messages: ``status``, ``streams``, ``reset``.

:class:`ControlService` is given what it reads (the served model, the stepper, the
counters, the latencies, health, subscriptions) by the runner, never the hot
path's own variables, and builds the replies that docs/protocol.md specifies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lstm_stream import __version__
from lstm_stream.core.backends import StepBackend
from lstm_stream.core.model.contract import ModelContract
from lstm_stream.core.state.snapshot import RestoreResult, SnapshotWriter
from lstm_stream.core.step.emit import EmitCounters
from lstm_stream.core.step.latency import LatencyWindow
from lstm_stream.core.step.sources import SourceStepper
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.protocol import (
    PROTOCOL_VERSION,
    ControlCommand,
    ControlRequest,
    decode_control_request,
)
from lstm_stream.core.wire.shard import Shard
from lstm_stream.serve.health import HealthTracker
from lstm_stream.serve.liveview import LiveView
from lstm_stream.serve.sockets import Subscriptions

MAX_CONTROL_BYTES = 65536  # a larger control request is answered with an error


@dataclass
class Counters(EmitCounters):
    """What the runner has done since it started; reported by ``status``."""

    received: int = 0
    control_requests: int = 0
    control_errors: int = 0
    input_reconnects: int = 0  # input connections dropped by ZeroMQ and made again


@dataclass(frozen=True)
class ServedModel:
    """What the runner serves, as ``status`` reports it: fixed once the runner started."""

    contract: ModelContract
    backend: StepBackend
    topics: list[str]  # what the input subscribes to
    shard: Shard | None
    warmup_s: float
    curve: bool  # CURVE on the control (and data) sockets
    snapshot_interval_s: float


class ControlService:
    """``status``, ``streams`` and ``reset``, answered from what the runner hands it."""

    def __init__(self, served: ServedModel, stepper: StreamStepper, counters: Counters,
                 latencies: LatencyWindow, health: HealthTracker,
                 subscriptions: Subscriptions, ready: Callable[[], bool], *,
                 sources: SourceStepper | None = None, live: LiveView | None = None,
                 restored: RestoreResult | None = None,
                 snapshots: SnapshotWriter | None = None) -> None:
        self.served = served
        self.stepper = stepper
        self.store = stepper.store
        self.counters = counters
        self.latencies = latencies
        self.health = health
        self.subscriptions = subscriptions
        self.ready = ready
        self.sources = sources
        self.live = live
        self.restored = restored or RestoreResult()
        self.snapshots = snapshots
        self.resets = 0  # control resets answered: the state changed between messages
        self._started = time.monotonic()

    def reply(self, request: bytes) -> dict[str, Any]:
        """Answer one control request; unknown, malformed or oversized ones get an error
        reply."""
        if len(request) > MAX_CONTROL_BYTES:
            return _error(f"request is {len(request)} bytes, more than the control limit of "
                          f"{MAX_CONTROL_BYTES} bytes; requests are small maps such as "
                          '{"cmd": "status"}')
        parsed = decode_control_request(request)
        if not isinstance(parsed, ControlRequest):
            return _error(parsed.detail)
        if parsed.cmd == ControlCommand.STATUS:
            return self.status()
        if parsed.cmd == ControlCommand.STREAMS:
            return self._streams_reply()
        return self._reset_reply(parsed.stream)

    def _reset_reply(self, stream: str | None) -> dict[str, Any]:
        count = self.store.request_reset(stream)
        if stream is not None and count == 0:
            return _error(f"unknown stream {stream[:256]!r}; nothing was reset")
        self.resets += 1
        return {"ok": True, "reset": count}

    def _streams_reply(self) -> dict[str, Any]:
        now = time.monotonic_ns()
        return {"ok": True, "streams": [
            {"stream": s.name, "last_seq": s.last_seq, "last_stamp_ns": s.last_stamp_ns,
             "step": s.step, "idle_s": round((now - s.last_seen_ns) / 1e9, 3)}
            for s in self.store.streams()]}

    def status(self) -> dict[str, Any]:
        """Counters and latency percentiles, as the ``status`` request returns them."""
        self.subscriptions.read()  # fresh, not as of the last housekeeping
        c, served, contract = self.counters, self.served, self.served.contract
        return {
            "ok": True, "version": __version__, "protocol": PROTOCOL_VERSION,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "model": {"path": str(contract.path), "sha256": contract.sha256,
                      "backend": served.backend.name, "features": contract.n_features,
                      "outputs": contract.n_outputs,
                      "extras": [e.name for e in contract.extras],
                      "dtype": contract.dtype, "fixed_batch": contract.fixed_batch},
            "received": c.received, "stepped": c.stepped, "published": c.published,
            "batches": self.stepper.calls,  # backend calls; stepped / batches = mean batch
            "topics": served.topics, "shard": None if served.shard is None else str(served.shard),
            "rejected": dict(c.rejected), "resets": dict(c.resets),
            "streams": len(self.store), "max_streams": self.store.max_streams,
            "evicted": self.store.evicted, "expired": self.store.expired,
            "control_requests": c.control_requests, "control_errors": c.control_errors,
            "input_reconnects": c.input_reconnects,
            "subscriptions": dict(self.subscriptions.topics),
            "latency_ns": self.latencies.percentiles(),
            "snapshot": self._snapshot_status(),
            "curve": served.curve,
            "ready": self.ready(), "warmup_ms": round(served.warmup_s * 1e3, 3),
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
        return self.health.report(now_ns, ready=self.ready(), streams=len(self.store),
                                  advance=advance)

    def _snapshot_status(self) -> dict[str, Any] | None:
        writer = self.snapshots
        if writer is None:
            return None
        return {"path": str(writer.path), "restored": self.restored.restored,
                "restore_note": self.restored.note, "written": writer.written,
                "failed": writer.failed, "last_error": writer.last_error,
                "last_write_ms": round(writer.last_write_s * 1e3, 3),
                "interval_s": self.served.snapshot_interval_s}


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}
