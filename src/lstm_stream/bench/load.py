"""The throughput suite's load generator: round-robin streams, a window of messages in flight.

One thread sends and receives; it measures its own cost (CPU per message, time
waiting for outputs) so that a reader can tell whether a figure was limited by
the server or by the generator.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import zmq

from lstm_stream.bench.e2e import Endpoints, generator_sockets, wait_until_served
from lstm_stream.bench.stats import summarize_ns

log = logging.getLogger(__name__)

# Every server's input and output high-water marks are 10,000 messages (the runner's
# defaults, servers.py): a window up to that can never make ZeroMQ drop a message.
MAX_WINDOW = 10_000
STALL_S = 5.0  # no output for this long with messages in flight: the server is stuck


def default_window(streams: int, max_batch: int) -> int:
    """Messages in flight: 4 per stream, at least two full batches and at least 64.

    Several messages per stream keep a message of every stream waiting at the
    runner, so its batches can fill (two batches: one waiting while the other
    is stepped); the floor of 64 keeps a single stream's pipeline full across
    the ZeroMQ round trip through both I/O threads (hundreds of microseconds
    under load), which a fast server answers many messages within.
    """
    return min(MAX_WINDOW, max(64, 2 * max_batch, 4 * streams))


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

    def send(self, n: int) -> int:
        """Send the next ``n`` messages of the round robin; returns how many it sent."""
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
        return n

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
                    sent += self.send(credit)
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



class BatchMessageGenerator(ThroughputGenerator):
    """Like :class:`ThroughputGenerator`, but every message is a batch message (protocol
    v1.1) with the next reading of every stream, as a simulation farm sends a tick;
    ``window`` and the counts are in rows (steps), so the figures compare."""

    def __init__(self, ctx: zmq.Context[Any], ends: Endpoints, n_features: int,
                 streams: int, window: int) -> None:
        super().__init__(ctx, ends, n_features, streams, max(window, 2 * streams))
        self._x = b"".join(self.xs)

    def send(self, n: int) -> int:
        """Send whole ticks (one message of every stream) while ``n`` rows of credit last."""
        count = len(self.names)
        ticks = n // count
        send, more, pack, clock = self.pub.send, zmq.SNDMORE, self._pack, time.monotonic_ns
        for _ in range(ticks):
            stamp = clock()
            send(b"sensors", more)
            send(pack({"streams": self.names, "seq": [self.seq] * count,
                       "stamp_ns": [stamp] * count, "x": self._x}))
            self.seq += 1
        return ticks * count

    def receive(self, latencies: list[int]) -> tuple[int, int]:
        """Take every output already queued; returns (rows stepped, rows rejected)."""
        recv, noblock = self.sub.recv, zmq.NOBLOCK
        unpack, clock = msgpack.unpackb, time.monotonic_ns
        index, expect = self.index, self.expect
        outputs = rejections = 0
        while True:
            try:
                topic = recv(noblock)
            except zmq.Again:
                return outputs, rejections
            body = unpack(recv())
            now = clock()
            if topic != b"policy":
                rejections += body.get("event") == "rejected"
                continue
            rows = len(body["streams"])
            latencies.extend([now - body["stamp_ns"][0]] * rows)
            for name, seq in zip(body["streams"], body["seq"], strict=True):
                j = index[name]
                if seq < expect[j]:
                    self.reordered += 1
                else:
                    expect[j] = seq + 1
            outputs += rows

    def connect(self, timeout_s: float = 30.0) -> None:
        """Wait for the server's subscription, then until outputs flow (slow joiner)."""
        wait_until_served(self.pub, self.sub, timeout_s,
                          lambda: self.send(len(self.names)))
        while self.sub.poll(200):
            self.sub.recv_multipart()
        self.expect = [self.seq] * len(self.names)

# -- servers ----------------------------------------------------------------------
