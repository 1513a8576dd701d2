"""The serve loop: sockets, polling, control requests and counters; no maths.

The path of one sensor message (the hot path) is :meth:`Runner.handle`:
decode and validate -> admit against the stream's state -> one backend step ->
commit the new state -> encode and publish. Nothing on it logs, reads config or
allocates state arrays. Everything else (control requests, subscription
tracking, idle expiry) runs between messages.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, cast

import msgpack
import numpy as np
import zmq

from lstm_stream import __version__
from lstm_stream.backends import StepBackend, create_backend
from lstm_stream.config import RunnerConfig
from lstm_stream.contract import ModelContract, load_contract
from lstm_stream.protocol import PROTOCOL_VERSION, Rejection, encode_output
from lstm_stream.stepper import StreamStepper

log = logging.getLogger(__name__)

LATENCY_WINDOW = 4096  # latencies kept for the status percentiles
HOUSEKEEPING_S = 0.1  # idle expiry and signal checks at least this often
MAX_BURST = 256  # messages handled before control requests get a turn
MAX_CONTROL_BYTES = 65536


@dataclass
class Counters:
    """What the runner has done since it started; reported by ``status``."""

    received: int = 0
    stepped: int = 0
    published: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    resets: Counter[str] = field(default_factory=Counter)
    control_requests: int = 0
    control_errors: int = 0


class Runner:
    """One model, one input SUB, one output XPUB, one control ROUTER."""

    def __init__(self, config: RunnerConfig, *, context: zmq.Context[Any] | None = None,
                 contract: ModelContract | None = None,
                 backend: StepBackend | None = None) -> None:
        self.config = config
        self.contract = contract or load_contract(config.model.path)
        self.backend = backend or create_backend(config.model.backend, self.contract,
                                                 threads=config.model.threads)
        self.stepper = StreamStepper(self.contract, self.backend,
                                     max_streams=config.state.max_streams,
                                     idle_timeout_s=config.state.idle_timeout_s,
                                     max_gap=config.state.max_gap,
                                     max_message_bytes=config.input.max_message_bytes)
        self.store = self.stepper.store
        self.counters = Counters()
        self.subscriptions: Counter[str] = Counter()
        self._latencies = np.zeros(LATENCY_WINDOW, np.int64)
        self._packer = msgpack.Packer(use_bin_type=True)
        self._out_topic = config.output.topic.encode()
        self._diag_topic = config.output.diagnostics_topic.encode()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._own_context = context is None
        self.context = context or zmq.Context()
        self._open_sockets()

    # -- sockets -------------------------------------------------------------

    def _open_sockets(self) -> None:
        cfg = self.config
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, cfg.input.rcvhwm)
        self.sub.setsockopt(zmq.MAXMSGSIZE, cfg.input.zmq_max_message_bytes)
        self.sub.setsockopt(zmq.LINGER, 0)
        for topic in cfg.input.topics:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.pub = self.context.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, cfg.output.sndhwm)
        self.pub.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscription
        self.pub.setsockopt(zmq.LINGER, 0)
        self.control = self.context.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
        try:
            _attach(self.sub, cfg.input.endpoint, cfg.input.bind, "input")
            _attach(self.pub, cfg.output.endpoint, cfg.output.bind, "output")
            _attach(self.control, cfg.control.endpoint, cfg.control.bind, "control")
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        for sock in (self.sub, self.pub, self.control):
            sock.close(linger=0)
        if self._own_context:
            self.context.term()

    # -- the loop ------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to return (thread-safe; also what SIGINT/SIGTERM do)."""
        self._stop.set()

    def run(self) -> None:
        """Serve until :meth:`stop` or SIGINT/SIGTERM."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        timeout_ms = int(HOUSEKEEPING_S * 1000)
        next_housekeeping = time.monotonic_ns()
        # Busy polling: after a message, keep polling without sleeping for this long.
        # A core that never sleeps keeps its caches and clock warm, which more than
        # halves the step time of a small model (docs/benchmarks.md), at the cost
        # of that core.
        busy_ns = self.config.input.busy_poll_us * 1000
        spin_until = 0
        log.info("ready: input %s, output %s, control %s, model %s (%s)",
                 self.config.input.endpoint, self.config.output.endpoint,
                 self.config.control.endpoint, self.contract.path, self.backend.name)
        while not self._stop.is_set():
            spinning = busy_ns and time.monotonic_ns() < spin_until
            events = dict(poller.poll(0 if spinning else timeout_ms))
            if self.sub in events:
                self._drain_input()
                if busy_ns:
                    spin_until = time.monotonic_ns() + busy_ns
            if self.control in events:
                self._serve_control()
            if self.pub in events:
                self._read_subscriptions()
            now = time.monotonic_ns()
            if now >= next_housekeeping:
                self._housekeeping(now)
                next_housekeeping = now + int(HOUSEKEEPING_S * 1e9)
        log.info("stopping: %d received, %d stepped, %d rejected",
                 self.counters.received, self.counters.stepped,
                 sum(self.counters.rejected.values()))

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _drain_input(self) -> None:
        sub, handle, clock = self.sub, self.handle, time.monotonic_ns
        for _ in range(MAX_BURST):
            if not cast(int, sub.get(zmq.EVENTS)) & zmq.POLLIN:
                return
            frames = sub.recv_multipart()
            handle(frames, clock())

    # -- the hot path --------------------------------------------------------

    def handle(self, frames: list[bytes], t_recv_ns: int) -> None:
        """Step one message received at ``t_recv_ns`` (monotonic clock) and publish
        its output, or its rejection on the diagnostics topic."""
        counters = self.counters
        counters.received += 1
        result = self.stepper.step(frames, t_recv_ns)
        if type(result) is Rejection:
            self._reject(result)
            return
        assert not isinstance(result, Rejection)  # for mypy; free at run time
        if result.reset is not None:
            counters.resets[result.reset] += 1
        counters.stepped += 1
        latency = time.monotonic_ns() - t_recv_ns
        payload = encode_output(self._packer, result.msg, result.y[0].tolist(), result.step,
                                result.reset, result.gap, latency)
        self.pub.send_multipart((self._out_topic, payload))
        counters.published += 1
        self._latencies[counters.stepped % LATENCY_WINDOW] = latency

    def _reject(self, rejection: Rejection) -> None:
        self.counters.rejected[rejection.reason] += 1
        self._publish_diagnostic(rejection.to_wire())

    def _publish_diagnostic(self, event: dict[str, Any]) -> None:
        self.pub.send_multipart((self._diag_topic, self._packer.pack(event)))

    # -- between messages ----------------------------------------------------

    def _housekeeping(self, now_ns: int) -> None:
        for stream in self.store.expire(now_ns):
            self._publish_diagnostic({
                "event": "stream_expired", "stream": stream.name, "last_seq": stream.last_seq,
                "idle_s": round((now_ns - stream.last_seen_ns) / 1e9, 3)})

    def _read_subscriptions(self) -> None:
        while cast(int, self.pub.get(zmq.EVENTS)) & zmq.POLLIN:
            frame = self.pub.recv()
            if frame:
                topic = frame[1:].decode(errors="replace")
                self.subscriptions[topic] += 1 if frame[0] == 1 else -1
                if self.subscriptions[topic] <= 0:
                    del self.subscriptions[topic]

    def _serve_control(self) -> None:
        while cast(int, self.control.get(zmq.EVENTS)) & zmq.POLLIN:
            frames = self.control.recv_multipart()
            self.counters.control_requests += 1
            # REQ clients send [identity, b"", request]; DEALER clients [identity, request].
            envelope, request = frames[:-1], frames[-1]
            if len(frames) < 2:
                envelope, request = frames, b""
            reply = self.control_reply(request)
            if not reply.get("ok"):
                self.counters.control_errors += 1
            self.control.send_multipart([*envelope, self._packer.pack(reply)])

    def control_reply(self, request: bytes) -> dict[str, Any]:
        """Answer one control request; unknown or malformed ones get an error reply."""
        try:
            body = msgpack.unpackb(request, raw=False)
        except Exception as err:
            return _error(f"request is not msgpack ({type(err).__name__}); send a map such "
                          "as {\"cmd\": \"status\"}")
        if not isinstance(body, dict) or not isinstance(body.get("cmd"), str):
            return _error("request must be a map with a string 'cmd': status, streams or reset")
        cmd = body["cmd"]
        if cmd == "status":
            return self.status()
        if cmd == "streams":
            return self._streams_reply()
        if cmd == "reset":
            return self._reset_reply(body.get("stream"))
        return _error(f"unknown cmd {cmd[:64]!r}; known: status, streams, reset")

    def _reset_reply(self, stream: Any) -> dict[str, Any]:
        if stream is not None and not isinstance(stream, str):
            return _error("'stream' must be a string, or absent to reset every stream")
        count = self.store.request_reset(stream)
        if stream is not None and count == 0:
            return _error(f"unknown stream {stream[:256]!r}; nothing was reset")
        return {"ok": True, "reset": count}

    def _streams_reply(self) -> dict[str, Any]:
        now = time.monotonic_ns()
        return {"ok": True, "streams": [
            {"stream": s.name, "last_seq": s.last_seq, "last_stamp_ns": s.last_stamp_ns,
             "step": s.step, "idle_s": round((now - s.last_seen_ns) / 1e9, 3)}
            for s in self.store.streams()]}

    def status(self) -> dict[str, Any]:
        """Counters and latency percentiles, as the ``status`` request returns them."""
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
                      "outputs": self.contract.n_outputs},
            "received": c.received, "stepped": c.stepped, "published": c.published,
            "rejected": dict(c.rejected), "resets": dict(c.resets),
            "streams": len(self.store), "max_streams": self.store.max_streams,
            "evicted": self.store.evicted, "expired": self.store.expired,
            "control_requests": c.control_requests,
            "subscriptions": dict(self.subscriptions),
            "latency_ns": latency,
        }


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _attach(sock: zmq.Socket[Any], endpoint: str, bind: bool, what: str) -> None:
    from lstm_stream.errors import LstmStreamError

    try:
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError as err:
        verb = "bind" if bind else "connect"
        raise LstmStreamError(
            f"Could not {verb} the {what} socket to {endpoint!r}: {err}. "
            + ("Is another process using that address? Pick another with "
               f"--{what}." if bind else "Check the endpoint.")) from err
