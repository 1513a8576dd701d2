"""The emit half of a step, written once: count, encode and hand bytes to a sink.

A live runner and an offline evaluation publish the same things (policy
outputs, rejections, ``stream_expired`` events) with the same counters; only
where the bytes go differs. :class:`Emitter` does the counting and encoding;
a :class:`Sink` takes the encoded payloads: the runner's ZeroMQ sink
(serve/sink.py) sends them on its XPUB socket, eval's MCAP sink
(logs/sink.py) writes them to its output log. So what ``serve`` publishes and
what ``eval`` writes cannot drift apart.

On the hot path this is one method call and one sink call per message: the
payload is encoded once, the sink's bound methods are looked up once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import numpy as np

from lstm_stream.core.state.store import StateStore, Stream
from lstm_stream.core.step.stepper import BatchStepped, SteadyRows, Stepped, StreamStepper
from lstm_stream.core.wire.batch_message import encode_batch_columns, encode_batch_output
from lstm_stream.core.wire.protocol import Rejection, encode_output

STREAM_EXPIRED = "stream_expired"  # the diagnostic event of a stream forgotten when idle


class Sink(Protocol):
    """Where encoded outputs and diagnostics go; ``t_ns`` is the clock of the message
    (receive time in serve, log time in eval)."""

    def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
        """One policy output; ``stamp_ns``: its sensor time, when the message had one."""

    def diagnostic(self, payload: bytes, t_ns: int) -> None: ...

    def message(self, topic: str, payload: bytes, t_ns: int) -> None:
        """Anything else, on its own topic (the health topic)."""


@dataclass
class EmitCounters:
    """What was emitted: the counts ``status`` reports and eval's result carries."""

    stepped: int = 0
    published: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    resets: Counter[str] = field(default_factory=Counter)  # by reason
    expired: int = 0  # stream_expired events


class Emitter:
    """Counts and encodes the results of a :class:`StreamStepper` into a sink."""

    def __init__(self, stepper: StreamStepper, sink: Sink,
                 counters: EmitCounters | None = None) -> None:
        self.counters = counters if counters is not None else EmitCounters()
        self._values = stepper.values
        self._output = sink.output
        self._diagnostic = sink.diagnostic
        self._sink = sink
        self._packer = msgpack.Packer(use_bin_type=True)
        self._n_outputs = stepper.contract.n_outputs
        self._extras = stepper.extras  # (name, columns of y) of the model's extra outputs

    def output(self, result: Stepped, latency_ns: int, t_ns: int) -> None:
        """One policy output; ``latency_ns`` is what goes on the wire (0 offline)."""
        counters = self.counters
        if result.reset is not None:
            counters.resets[result.reset] += 1
        counters.stepped += 1
        y, extra = self._values(result)
        msg = result.msg
        self._output(encode_output(self._packer, msg, y, result.step, result.reset,
                                   result.gap, latency_ns, extra, result.info), t_ns, msg.stamp_ns)
        counters.published += 1

    def output_batch(self, batch: BatchStepped, latency_ns: int, t_ns: int) -> int:
        """A batch message's outputs as one message (its stepped rows), then one rejection
        per refused row; returns the rows stepped."""
        if batch.steady is not None:  # every row stepped, none reset: from the columns
            return self._steady_batch(batch.steady, latency_ns, t_ns)
        rows = [r for r in batch.results if isinstance(r, Stepped)]
        if rows:
            counters = self.counters
            for r in rows:
                if r.reset is not None:
                    counters.resets[r.reset] += 1
            counters.stepped += len(rows)
            y = np.concatenate([r.y for r in rows])
            extra = {name: y[:, cols] for name, cols in self._extras} or None
            self._output(encode_batch_output(self._packer, rows, y[:, :self._n_outputs],
                                             latency_ns, extra), t_ns, None)
            counters.published += 1
        for refused in batch.results:
            if isinstance(refused, Rejection):
                self.rejection(refused, t_ns)
        return len(rows)

    def _steady_batch(self, steady: SteadyRows, latency_ns: int, t_ns: int) -> int:
        cols, y, n = steady.columns, steady.y, len(steady.steps)
        extra = {name: y[:, where] for name, where in self._extras} or None
        self._output(encode_batch_columns(self._packer, cols.streams, cols.seqs, cols.stamps,
                                          y[:, :self._n_outputs], steady.steps, [None] * n,
                                          steady.gaps, latency_ns, extra), t_ns, None)
        self.counters.stepped += n
        self.counters.published += 1
        return n

    def rejection(self, rejection: Rejection, t_ns: int) -> None:
        """One rejected message, on the diagnostics topic."""
        self.counters.rejected[rejection.reason] += 1
        self._diagnostic(self._packer.pack(rejection.to_wire()), t_ns)

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
            self.event({"event": STREAM_EXPIRED, "stream": stream.name,
                        "last_seq": stream.last_seq,
                        "idle_s": round((now_ns - stream.last_seen_ns) / 1e9, 3)}, now_ns)
        self.counters.expired += len(expired)
        return expired
