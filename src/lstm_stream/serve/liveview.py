"""``serve --foxglove PORT``: a live view of the runner in Foxglove (the ``[viz]`` extra).

A Foxglove WebSocket server (the official ``foxglove-sdk``, protocol
``foxglove.websocket.v1``) publishes the runner's inputs, outputs, diagnostics
and health, one channel per topic with a JSON schema (logs/foxglove.py's
layout: ``outputs`` by name, ``reset_event``, ``stale_count``). It runs beside
the hot path, never on it: the runner only appends ``(topic, payload, time)``
to a bounded queue (a full queue drops the frame and counts it, so a slow or
absent viewer costs the runner nothing but that append); a thread of its own
decodes, converts and hands the messages to the SDK, which sends them to each
connected client from its own threads and drops what a slow client cannot take.
That thread publishes at most ``viz.max_rate_hz`` messages per topic (a viewer
draws at screen rate, not at 1 kHz; the rest are counted as thinned) and yields
the GIL after each message, so that the runner's thread never waits behind a
batch of JSON conversions. It binds to loopback unless told otherwise.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from lstm_stream.core.errors import LstmStreamError
from lstm_stream.core.step.emit import Sink
from lstm_stream.core.wire.json_form import SCHEMAS, convert

INSTALL_HINT = "pip install 'lstm-stream[viz]'"
MAX_QUEUE = 10_000  # frames waiting for the live-view thread; more are dropped and counted
IDLE_S = 0.002  # the thread's nap when nothing is queued


class LiveView:
    """The queue the runner feeds and the thread that publishes it to Foxglove."""

    def __init__(self, port: int, host: str = "127.0.0.1",
                 output_names: Sequence[str] | None = None, max_rate_hz: float = 50.0) -> None:
        try:
            self._foxglove = importlib.import_module("foxglove")
        except ModuleNotFoundError as err:
            raise LstmStreamError(f"serve --foxglove needs the 'foxglove-sdk' package: "
                                  f"`{INSTALL_HINT}`.") from err
        try:
            self._server = self._foxglove.start_server(name="lstm-stream", host=host,
                                                       port=port)
        except Exception as err:  # the SDK raises its own errors for a port in use
            raise LstmStreamError(f"Could not start the Foxglove server on {host}:{port}: "
                                  f"{err}. Pick another --foxglove port.") from err
        self.port = int(self._server.port)
        self.host = host
        self._names = list(output_names) if output_names else None
        self._channels: dict[str, Any] = {}
        self._queue: deque[tuple[str, bytes, int]] = deque()
        self.dropped = 0  # frames the runner offered while the queue was full
        self.thinned = 0  # frames above max_rate_hz on their topic, not published
        self.published = 0
        self._period_ns = int(1e9 / max_rate_hz) if max_rate_hz > 0 else 0
        self._last: dict[str, int] = {}  # topic -> time of its last published frame
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foxglove", daemon=True)
        self._thread.start()

    def offer(self, topic: str, payload: bytes) -> None:
        """The runner's one call per frame: queue it, or count it dropped."""
        queue = self._queue
        if len(queue) < MAX_QUEUE:
            queue.append((topic, payload, time.time_ns()))
        else:
            self.dropped += 1

    def status(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "published": self.published,
                "dropped": self.dropped, "thinned": self.thinned, "queued": len(self._queue),
                "channels": sorted(self._channels)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.stop()

    def _run(self) -> None:
        queue, unpack = self._queue, msgpack.unpackb
        while not self._stop.is_set():
            if not queue:
                time.sleep(IDLE_S)
                continue
            topic, payload, t = queue.popleft()
            if self._period_ns and t - self._last.get(topic, 0) < self._period_ns:
                self.thinned += 1
                continue
            self._last[topic] = t
            try:
                body = unpack(payload, raw=False, strict_map_key=False)
            except Exception:  # an input the runner rejects: nothing to show
                continue
            if not isinstance(body, dict):
                continue
            kind, plain = convert(body, self._names)
            self._channel(topic, kind).log(json.dumps(plain, allow_nan=False), log_time=t)
            self.published += 1
            time.sleep(0)  # let the runner's thread have the GIL between messages

    def _channel(self, topic: str, kind: str) -> Any:
        channel = self._channels.get(topic)
        if channel is None:
            fox = self._foxglove
            schema = fox.Schema(name=kind, encoding="jsonschema",
                                data=json.dumps(SCHEMAS[kind]).encode())
            channel = self._channels[topic] = fox.Channel(topic, schema=schema,
                                                          message_encoding="json")
        return channel


def tee_input(step: Callable[[list[bytes], int], Any], live: LiveView
              ) -> Callable[[list[bytes], int], Any]:
    """``step`` with every input message also offered to the live view, by its topic."""
    offer = live.offer

    def step_and_show(frames: list[bytes], t_ns: int) -> Any:
        if len(frames) == 2:
            offer(frames[0].decode(errors="replace"), frames[1])
        return step(frames, t_ns)

    return step_and_show


class TeeSink:
    """The runner's ZeroMQ sink, with every payload also offered to the live view."""

    def __init__(self, sink: Sink, live: LiveView, output_topic: str,
                 diagnostics_topic: str) -> None:
        self._sink, self._live = sink, live
        self._out, self._diag = output_topic, diagnostics_topic

    def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
        self._sink.output(payload, t_ns, stamp_ns)
        self._live.offer(self._out, payload)

    def diagnostic(self, payload: bytes, t_ns: int) -> None:
        self._sink.diagnostic(payload, t_ns)
        self._live.offer(self._diag, payload)

    def message(self, topic: str, payload: bytes, t_ns: int) -> None:
        self._sink.message(topic, payload, t_ns)
        self._live.offer(topic, payload)
