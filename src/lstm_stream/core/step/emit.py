"""The one place where a step's outcome becomes messages: count, stamp, encode, sink.

A live runner and an offline evaluation publish the same things (policy
outputs, batch outputs, rejections, diagnostic events, ``stream_expired``)
with the same counters; only where the bytes go and which clock stamps them
differ. :meth:`Emitter.emit` sorts an outcome (results.py) by kind, and
nobody else does: the runner hands it what the stepper yields, eval the same.
A :class:`Sink` takes the encoded payloads: the runner's ZeroMQ sink
(serve/sink.py) sends them on its XPUB socket, eval's MCAP sinks (logs/sink.py,
evaluate/json_output.py) write them to its output log.

Live, the emitter measures each output's ``latency_ns`` on the monotonic clock,
adds ``late`` past ``output.deadline_ms`` and keeps the latencies for
``status``; offline ``latency_ns`` is 0 and nothing is late. Eval also asks for
counts per stream and hears of every step through a :class:`StepListener`
(its scores and order keys).

On the hot path this is two method calls and one sink call per message: the
payload is encoded once, the sink's bound methods are looked up once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import numpy as np

from lstm_stream.core.model.contract import ModelContract
from lstm_stream.core.state.store import StateStore, Stream
from lstm_stream.core.step.latency import LatencyWindow
from lstm_stream.core.step.results import BatchStepped, Outcome, SteadyRows, Stepped
from lstm_stream.core.wire.batch_message import encode_batch_columns
from lstm_stream.core.wire.protocol import EventKind, Rejection, encode_output


class Sink(Protocol):
    """Where encoded outputs and diagnostics go; ``t_ns`` is the clock of the message
    (receive time in serve, log time in eval)."""

    def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
        """One policy output; ``stamp_ns``: its sensor time, when the message had one."""

    def diagnostic(self, payload: bytes, t_ns: int) -> None: ...

    def message(self, topic: str, payload: bytes, t_ns: int) -> None:
        """Anything else, on its own topic (the health topic)."""


class StepListener(Protocol):
    """Told of every step and rejection after its message is emitted (eval's scores)."""

    def stepped(self, result: Stepped, t_ns: int) -> None: ...

    def stepped_rows(self, rows: SteadyRows, t_ns: int) -> None: ...

    def rejected(self, rejection: Rejection, t_ns: int) -> None: ...


@dataclass
class StreamCounts:
    """One stream's share of the counters (kept when the emitter is asked to)."""

    stepped: int = 0
    rejected: int = 0
    resets: Counter[str] = field(default_factory=Counter)  # by reason
    rejections: Counter[str] = field(default_factory=Counter)  # by reason


@dataclass
class EmitCounters:
    """What was emitted: the counts ``status`` reports and eval's result carries."""

    stepped: int = 0
    published: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    resets: Counter[str] = field(default_factory=Counter)  # by reason
    expired: int = 0  # stream_expired events
    late: int = 0  # outputs (rows) published later than the deadline after their sensor time
    examples: dict[str, str] = field(default_factory=dict)  # the first detail per reason
    streams: dict[str, StreamCounts] | None = None  # per stream, when asked for (eval)


@dataclass(frozen=True)
class LiveClock:
    """How a live runner stamps outputs: latency on ``monotonic`` since the receive time,
    and ``late`` when the sensor time (``wall``, else the latency) is past ``deadline_ns``
    (0: no deadline)."""

    deadline_ns: int = 0
    monotonic: Callable[[], int] = time.monotonic_ns
    wall: Callable[[], int] = time.time_ns


class Emitter:
    """Counts, stamps and encodes the outcomes of a model's steps into a sink."""

    def __init__(self, contract: ModelContract, sink: Sink,
                 counters: EmitCounters | None = None, *, clock: LiveClock | None = None,
                 latencies: LatencyWindow | None = None, listener: StepListener | None = None,
                 per_stream: bool = False) -> None:
        self.counters = counters if counters is not None else EmitCounters()
        if per_stream and self.counters.streams is None:
            self.counters.streams = {}
        self._streams = self.counters.streams
        self._output = sink.output
        self._diagnostic = sink.diagnostic
        self._sink = sink
        self._packer = msgpack.Packer(use_bin_type=True)
        self._n_outputs = contract.n_outputs
        self._extras: list[tuple[str, slice]] = []  # columns of y after the policy output
        start = contract.n_outputs
        for extra in contract.extras:
            self._extras.append((extra.name, slice(start, start + extra.width)))
            start += extra.width
        self._clock = clock.monotonic if clock is not None else None
        self._wall = clock.wall if clock is not None else time.time_ns
        self._deadline_ns = clock.deadline_ns if clock is not None else 0
        self.latencies = latencies
        self._listener = listener

    def emit(self, outcome: Outcome, t_ns: int) -> bool:
        """Publish what ``outcome`` of a message received (or logged) at ``t_ns`` says;
        returns whether any message was written."""
        kind = type(outcome)
        if kind is Stepped:
            self.output(outcome, t_ns)  # type: ignore[arg-type]
        elif kind is Rejection:
            self.rejection(outcome, t_ns)  # type: ignore[arg-type]
        elif kind is BatchStepped:
            self.output_batch(outcome, t_ns)  # type: ignore[arg-type]
        elif outcome.event is not None:  # type: ignore[union-attr]  # NoOutput
            self.event(outcome.event, t_ns)  # type: ignore[union-attr]
        else:  # a source's value kept, a trigger waiting: nothing to say
            return False
        return True

    def output(self, result: Stepped, t_ns: int) -> None:
        """One policy output."""
        latency = self._clock() - t_ns if self._clock is not None else 0
        counters = self.counters
        if result.reset is not None:
            counters.resets[result.reset] += 1
        counters.stepped += 1
        msg = result.msg
        more = result.info
        if self._deadline_ns and self._late(msg.stamp_ns, latency):
            more = {**more, "late": True} if more else {"late": True}
            counters.late += 1
        row = result.y[0]
        if self._extras:
            y = row[:self._n_outputs].tolist()
            extra = {name: row[where].tolist() for name, where in self._extras}
        else:
            y, extra = row.tolist(), None
        self._output(encode_output(self._packer, msg, y, result.step, result.reset,
                                   result.gap, latency, extra, more), t_ns, msg.stamp_ns)
        counters.published += 1
        if self.latencies is not None:
            self.latencies.add(latency)
        if self._streams is not None:
            self._count_step(msg.stream, result.reset)
        if self._listener is not None:
            self._listener.stepped(result, t_ns)

    def output_batch(self, batch: BatchStepped, t_ns: int) -> int:
        """A batch message's outputs as one message (its stepped rows), then one rejection
        per refused row; returns the rows stepped."""
        latency = self._clock() - t_ns if self._clock is not None else 0
        if batch.steady is not None:  # every row stepped, none reset: from the columns
            self._steady_batch(batch.steady, latency, t_ns)
            return len(batch.steady.steps)
        rows = [r for r in batch.results if isinstance(r, Stepped)]
        if rows:
            counters = self.counters
            for r in rows:
                if r.reset is not None:
                    counters.resets[r.reset] += 1
                if self._streams is not None:
                    self._count_step(r.msg.stream, r.reset)
            y = np.concatenate([r.y for r in rows])
            self._batch_message(
                [r.msg.stream for r in rows], [r.msg.seq for r in rows],
                [r.msg.stamp_ns for r in rows], y, [r.step for r in rows],
                [r.reset for r in rows], [r.gap for r in rows], latency, t_ns)
            if self._listener is not None:
                for r in rows:
                    self._listener.stepped(r, t_ns)
        for refused in batch.results:
            if type(refused) is Rejection:
                self.rejection(refused, t_ns)
        return len(rows)

    def _steady_batch(self, steady: SteadyRows, latency: int, t_ns: int) -> None:
        cols, n = steady.columns, len(steady.steps)
        self._batch_message(cols.streams, cols.seqs, cols.stamps, steady.y, steady.steps,
                            [None] * n, steady.gaps, latency, t_ns)
        if self._streams is not None:
            for name in cols.streams:
                self._count_step(name, None)
        if self._listener is not None:
            self._listener.stepped_rows(steady, t_ns)

    def _batch_message(self, streams: list[str], seqs: list[int], stamps: list[int | None],
                       y: np.ndarray, steps: list[int], resets: list[Any], gaps: list[int],
                       latency: int, t_ns: int) -> None:
        """One batch output of ``len(streams)`` stepped rows; ``y`` (rows, all outputs)."""
        counters, n = self.counters, len(streams)
        more = None
        if self._deadline_ns:
            late = [self._late(stamp, latency) for stamp in stamps]
            if any(late):
                more = {"late": late}
                counters.late += sum(late)
        extra = {name: y[:, where] for name, where in self._extras} or None
        self._output(encode_batch_columns(self._packer, streams, seqs, stamps,
                                          y[:, :self._n_outputs], steps, resets, gaps,
                                          latency, extra, more), t_ns, None)
        counters.stepped += n
        counters.published += 1
        if self.latencies is not None:  # every row waited as long as its message
            self.latencies.add_many(latency, n)

    def _late(self, stamp_ns: int | None, latency_ns: int) -> bool:
        """Past the deadline: since the sensor time (wall clock), else since receipt."""
        return (self._wall() - stamp_ns if stamp_ns is not None
                else latency_ns) > self._deadline_ns

    def _stream_counts(self, stream: str) -> StreamCounts:
        assert self._streams is not None
        counts = self._streams.get(stream)
        if counts is None:
            counts = self._streams[stream] = StreamCounts()
        return counts

    def _count_step(self, stream: str, reset: str | None) -> None:
        counts = self._stream_counts(stream)
        counts.stepped += 1
        if reset is not None:
            counts.resets[reset] += 1

    def rejection(self, rejection: Rejection, t_ns: int) -> None:
        """One rejected message, on the diagnostics topic."""
        counters = self.counters
        counters.rejected[rejection.reason] += 1
        counters.examples.setdefault(rejection.reason, rejection.detail)
        self._diagnostic(self._packer.pack(rejection.to_wire()), t_ns)
        if self._streams is not None and rejection.stream is not None:
            counts = self._stream_counts(rejection.stream)
            counts.rejected += 1
            counts.rejections[rejection.reason] += 1
        if self._listener is not None:
            self._listener.rejected(rejection, t_ns)

    def event(self, event: dict[str, Any], t_ns: int) -> None:
        """Any other diagnostic event (a map with an ``event`` key)."""
        self._diagnostic(self._packer.pack(event), t_ns)

    def topic_message(self, topic: str, body: dict[str, Any], t_ns: int) -> None:
        """A map on a topic of its own (health)."""
        self._sink.message(topic, self._packer.pack(body), t_ns)

    def expire(self, store: StateStore, now_ns: int) -> list[Stream]:
        """Forget the streams idle past the store's timeout, each with its event."""
        expired = store.expire(now_ns)
        for stream in expired:
            self.event({"event": EventKind.STREAM_EXPIRED, "stream": stream.name,
                        "last_seq": stream.last_seq,
                        "idle_s": round((now_ns - stream.last_seen_ns) / 1e9, 3)}, now_ns)
        self.counters.expired += len(expired)
        return expired
