"""The runner's sink: outputs and diagnostics as ZeroMQ messages on its XPUB socket."""

from __future__ import annotations

from typing import Any

import zmq


class ZmqSink:
    """Sends each payload as ``[topic, payload]``: outputs on the output topic,
    rejections and events on the diagnostics topic."""

    def __init__(self, pub: zmq.Socket[Any], output_topic: str, diagnostics_topic: str) -> None:
        self._send = pub.send
        self._send_multipart = pub.send_multipart
        self._out_topic = output_topic.encode()
        self._diag_topic = diagnostics_topic.encode()

    def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
        send = self._send  # two sends: a third of send_multipart's cost in pyzmq
        send(self._out_topic, zmq.SNDMORE)
        send(payload)

    def diagnostic(self, payload: bytes, t_ns: int) -> None:
        self._send_multipart((self._diag_topic, payload))

    def message(self, topic: str, payload: bytes, t_ns: int) -> None:
        self._send_multipart((topic.encode(), payload))
