"""Clients of a runner: its control socket, and the vehicle-stack side of the wire.

Used by the CLI (``lstm-stream control``, ``lstm-stream demo``), by tests and by
Python vehicle stacks.
"""

from __future__ import annotations

import time
from typing import Any, cast

import msgpack
import numpy as np
import zmq

from lstm_stream.core.errors import LstmStreamError
from lstm_stream.core.wire.batch_message import encode_sensor_batch
from lstm_stream.serve.security.curve import ClientKeys


class ControlError(LstmStreamError):
    """The runner did not answer a control request, or answered with an error."""


def control_request(endpoint: str, request: dict[str, Any], *, timeout_s: float = 2.0,
                    context: zmq.Context[Any] | None = None,
                    curve: ClientKeys | None = None) -> dict[str, Any]:
    """Send one request to a runner's control socket and return its reply map.

    Raises ControlError when no reply comes within ``timeout_s`` (which is also
    what a runner with CURVE does to a client whose key it does not allow). An
    error reply (``ok: false``) is returned as it is, for the caller to show.
    ``curve``: this client's keys for a runner with CURVE; when None, the key
    files named by LSTM_STREAM_CLIENT_KEY and LSTM_STREAM_SERVER_KEY are used if
    set (docs/security.md).
    """
    keys = curve if curve is not None else ClientKeys.from_env()
    ctx = context or zmq.Context.instance()
    with ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.secure(sock)
        sock.connect(endpoint)
        sock.send(msgpack.packb(request, use_bin_type=True))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise ControlError(f"No reply from the runner's control socket at {endpoint!r} "
                               f"within {timeout_s:g} s. Is `lstm-stream serve` running "
                               "with that --control endpoint?")
        reply = msgpack.unpackb(sock.recv(), raw=False)
    if not isinstance(reply, dict):
        raise ControlError(f"The control socket at {endpoint!r} sent a reply that is not a map.")
    return reply


class VehicleStack:
    """The vehicle-stack side of the wire, for Python stacks, tools and tests.

    Publishes sensor messages on a bound XPUB socket (so it can see the runner
    subscribe instead of guessing with a sleep: the ZeroMQ slow-joiner problem)
    and receives the runner's outputs and diagnostics on a SUB socket.
    ``curve``: this stack's keys, for a runner with ``security.secure_data``.
    """

    def __init__(self, context: zmq.Context[Any] | None = None,
                 sensors_endpoint: str = "tcp://127.0.0.1:*", *,
                 curve: ClientKeys | None = None, sndhwm: int = 0) -> None:
        self.context = context or zmq.Context.instance()
        self.curve = curve
        self.pub = self.context.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, sndhwm)
        # Pass on every subscription, also a duplicate: a runner restarting before the
        # old connection is torn down must still be seen subscribing (wait_subscribed).
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        if curve is not None:
            curve.secure(self.pub)
        self.pub.bind(sensors_endpoint)
        self.sensors_endpoint: str = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        if curve is not None:
            curve.secure(self.sub)
        self.control_endpoint: str | None = None

    def wait_subscribed(self, topic: bytes = b"sensors", timeout_s: float = 10.0) -> None:
        """Block until a runner has subscribed to ``topic`` on the sensor socket."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pub.poll(100, zmq.POLLIN) and self.pub.recv() == b"\x01" + topic:
                return
        raise ControlError(f"No runner subscribed to {topic!r} on {self.sensors_endpoint} "
                           f"within {timeout_s:g} s. Is it started with --input "
                           f"{self.sensors_endpoint}?")

    def connect_outputs(self, output_endpoint: str, control_endpoint: str,
                        timeout_s: float = 10.0) -> None:
        """Connect to a runner's outputs and wait until the runner has seen the subscription."""
        self.sub.connect(output_endpoint)
        self.control_endpoint = control_endpoint
        self.wait_runner_sees_us(control_endpoint, timeout_s)

    def bind_outputs(self, endpoint: str = "tcp://127.0.0.1:*") -> str:
        """Bind the output SUB socket, for runners started with ``--output-connect``
        (several sharded runners publishing to one endpoint); returns the endpoint."""
        self.sub.bind(endpoint)
        return cast(str, self.sub.getsockopt_string(zmq.LAST_ENDPOINT))

    def wait_runner_sees_us(self, control_endpoint: str, timeout_s: float = 10.0) -> None:
        """Wait until the runner at ``control_endpoint`` has our output subscription."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # A bound SUB attaches a new peer, and sends it our subscription, only when
            # this thread uses the socket: libzmq runs socket commands in its owner thread.
            self.sub.poll(0)
            reply = control_request(control_endpoint, {"cmd": "status"}, context=self.context,
                                    curve=self.curve)
            if reply.get("subscriptions"):
                return
            time.sleep(0.02)
        raise ControlError(f"The runner with control socket {control_endpoint} did not see "
                           f"our subscription within {timeout_s:g} s.")

    def send(self, payload: bytes, topic: bytes = b"sensors") -> None:
        self.pub.send_multipart([topic, payload])

    def send_batch(self, streams: list[str], seqs: list[int], x: np.ndarray, *,
                   stamps: list[int | None] | None = None, resets: list[bool] | None = None,
                   topic: bytes = b"sensors") -> None:
        """One batch message (protocol v1.1): row ``i`` of ``x`` (streams, features) is
        the reading of ``streams[i]``; the runner answers with one output message."""
        self.pub.send_multipart([topic, encode_sensor_batch(streams, seqs, x, stamps=stamps,
                                                            resets=resets)])

    def send_frames(self, frames: list[bytes]) -> None:
        self.pub.send_multipart(frames)

    def receive(self, count: int, timeout_s: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
        """The next ``count`` messages from the runner, as (topic, payload map)."""
        out: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sub.poll(int(left * 1000) + 1, zmq.POLLIN):
                raise ControlError(f"Received {len(out)} of {count} messages from the runner "
                                   f"within {timeout_s:g} s.")
            topic, payload = self.sub.recv_multipart()
            out.append((topic.decode(errors="replace"), msgpack.unpackb(payload, raw=False)))
        return out

    def close(self) -> None:
        self.pub.close(linger=0)
        self.sub.close(linger=0)

    def __enter__(self) -> VehicleStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
