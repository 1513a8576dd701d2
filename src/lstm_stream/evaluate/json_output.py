"""``eval --encoding json``: an output file that Foxglove opens and plots with no setup.

:class:`JsonSink` is the sink eval's emitter writes to instead of the msgpack
one: every output and diagnostic becomes a JSON message on a channel with a JSON
schema (core/wire/json_form.py: ``outputs`` by the model's output names,
``reset_event`` and ``stale_count`` as numbers). With ``--target-topic`` the
log's targets, read once in the same pass, are written into the same file on
their own topic with ``outputs`` by the same names, so one Plot panel overlays
``/policy.outputs.steer`` and ``/<target topic>.outputs.steer`` on the drive's
timeline. A bag's targets (``--target-field``) become ``{"stream", "seq",
"stamp_ns", "y"}`` first.

Messages are held until :meth:`JsonSink.drain`, which eval calls after each
batch of steps, and written in log time order (a step's outputs at the time of
its message, targets after the outputs of the same time), as an export of the
msgpack file would order them.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from lstm_stream.core.model.contract import ModelContract
from lstm_stream.core.wire.json_form import SCHEMAS, convert
from lstm_stream.logs.writer import LogWriter


def output_labels(contract: ModelContract) -> list[str]:
    """A name per output of y: the model's output names, else y0, y1, ..."""
    return list(contract.output_names or (f"y{k}" for k in range(contract.n_outputs)))


class JsonSink:
    """Writes the emitter's payloads, and the log's targets, as Foxglove JSON."""

    def __init__(self, writer: LogWriter, output_topic: str, diagnostics_topic: str,
                 output_names: list[str], *, target_key: str = "y",
                 bag_targets: bool = False) -> None:
        self._writer = writer
        self._out_topic = output_topic
        self._diag_topic = diagnostics_topic
        self._names = output_names
        self._target_key = target_key
        self._bag_targets = bag_targets  # targets are a bag's fields: {"x": {name: value}}
        # (log time, order, topic, body, publish time): written sorted by drain()
        self._held: list[tuple[int, int, str, dict[str, Any], int]] = []
        self.written = 0

    def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
        self._hold(self._out_topic, payload, t_ns, t_ns if stamp_ns is None else stamp_ns)

    def diagnostic(self, payload: bytes, t_ns: int) -> None:
        self._hold(self._diag_topic, payload, t_ns, t_ns)

    def message(self, topic: str, payload: bytes, t_ns: int) -> None:
        self._hold(topic, payload, t_ns, t_ns)

    def target(self, topic: str, data: bytes, log_time_ns: int, publish_time_ns: int) -> None:
        """One target message of the log, with ``outputs`` by the model's output names."""
        try:
            body = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:  # unusable targets were counted by scoring; not invented
            return
        if not isinstance(body, dict):
            return
        if self._bag_targets:
            try:
                body = {"stream": body["stream"], "seq": body["seq"],
                        "stamp_ns": body["stamp_ns"],
                        "y": [body["x"][n] for n in self._names]}
            except (KeyError, TypeError):
                return
        elif self._target_key != "y":  # the conversion adds outputs by name from y
            values = body.get(self._target_key)
            if isinstance(values, list) and len(values) == len(self._names):
                body["outputs"] = dict(zip(self._names, values, strict=True))
        self._held.append((log_time_ns, 1, topic, body, publish_time_ns))

    def drain(self) -> None:
        """Write what is held, in log time order."""
        held, self._held = self._held, []
        held.sort(key=lambda m: (m[0], m[1]))
        channel, write, names = self._writer.channel, self._writer.write, self._names
        for log_time, _, topic, body, publish_time in held:
            schema, plain = convert(body, names)
            channel(topic, "json", schema=(schema, "jsonschema",
                                           json.dumps(SCHEMAS[schema]).encode()))
            write(topic, json.dumps(plain, allow_nan=False).encode(), log_time, publish_time)
        self.written += len(held)

    def _hold(self, topic: str, payload: bytes, t_ns: int, publish_ns: int) -> None:
        self._held.append((t_ns, 0, topic, msgpack.unpackb(payload, raw=False), publish_ns))
