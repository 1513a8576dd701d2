"""Logs that Foxglove opens and plots with no setup: JSON messages with a JSON schema
per channel (``lstm-stream log export --foxglove``).

lstm-stream's own logs are msgpack, which Foxglove does not decode. The export
rewrites every message as JSON (``message_encoding = "json"``) on a channel with
a ``jsonschema`` schema, converting what JSON cannot hold: ``bin`` features and
batch outputs become arrays of numbers. It adds the fields a plot panel wants as
numbers: ``outputs`` ({output name: value}, from the model's output names),
``reset_event`` (1 on a step whose state was reset, else 0) and ``stale_count``
(how many sources were stale). Message log times are kept, so Foxglove's
timeline is the recording's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.logs import format as fmt
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.writer import LogWriter

NUMBER_ARRAY = {"type": "array", "items": {"type": "number"}}
_OPTIONAL_STRING = {"type": ["string", "null"]}
_OPTIONAL_INT = {"type": ["integer", "null"]}

# One schema per kind of channel; permissive where the wire allows more keys.
SCHEMAS: dict[str, dict[str, Any]] = {
    "lstm_stream.PolicyOutput": {
        "type": "object", "required": ["stream", "seq", "y", "step", "reset", "gap"],
        "properties": {
            "stream": {"type": "string"}, "seq": {"type": "integer"},
            "stamp_ns": _OPTIONAL_INT, "y": NUMBER_ARRAY, "step": {"type": "integer"},
            "reset": _OPTIONAL_STRING, "gap": {"type": "integer"},
            "latency_ns": {"type": "integer"},
            "outputs": {"type": "object", "additionalProperties": {"type": "number"}},
            "stale": {"type": ["array", "null"], "items": {"type": "string"}},
            "stale_count": {"type": "integer"}, "reset_event": {"type": "integer"},
            "late": {"type": "boolean"}}},
    "lstm_stream.BatchOutput": {
        "type": "object", "required": ["streams", "seq", "y"],
        "properties": {"streams": {"type": "array", "items": {"type": "string"}},
                       "seq": {"type": "array", "items": {"type": "integer"}},
                       "y": {"type": "array", "items": NUMBER_ARRAY}}},
    "lstm_stream.Diagnostic": {
        "type": "object", "required": ["event"],
        "properties": {"event": {"type": "string"}, "reason": _OPTIONAL_STRING,
                       "detail": _OPTIONAL_STRING, "stream": _OPTIONAL_STRING,
                       "seq": _OPTIONAL_INT}},
    "lstm_stream.Message": {  # sensor readings, targets, anything else that is a map
        "type": "object",
        "properties": {"stream": {"type": "string"}, "seq": {"type": "integer"},
                       "stamp_ns": _OPTIONAL_INT,
                       "x": {"type": ["array", "object"]}, "y": NUMBER_ARRAY,
                       "outputs": {"type": "object",
                                   "additionalProperties": {"type": "number"}}}},
}


def export_foxglove(source: str | Path, target: str | Path, *,
                    output_names: Sequence[str] | None = None,
                    progress: Progress | None = None) -> int:
    """Write ``source`` (an lstm-stream log) as a Foxglove-readable MCAP file at
    ``target``; returns the messages written."""
    progress = progress or NullProgress()
    reader = LogReader(source)
    reader.require_msgpack(reader.topics())
    progress.start(f"export {Path(source).name}", reader.message_count())
    names = list(output_names) if output_names else None
    written = 0
    meta = {fmt.KIND: "foxglove export", "source": Path(source).name}
    with LogWriter(target, metadata=meta) as writer:
        for msg in reader.messages():
            try:
                body = msgpack.unpackb(msg.data, raw=False, strict_map_key=False)
            except Exception:  # a payload recorded as it came: skipped, not invented
                continue
            if not isinstance(body, dict):
                continue
            kind, plain = _convert(body, names)
            writer.channel(msg.topic, "json", schema=(kind, "jsonschema",
                                                      json.dumps(SCHEMAS[kind]).encode()))
            writer.write(msg.topic, json.dumps(plain, allow_nan=False).encode(), msg.log_time_ns,
                         msg.publish_time_ns)
            written += 1
            if written % 1024 == 0:
                progress.advance(1024)
    progress.close()
    return written


def _convert(body: dict[Any, Any], names: list[str] | None) -> tuple[str, dict[str, Any]]:
    """(schema name, the message as JSON-able data)."""
    plain = {str(k): _jsonable(v) for k, v in body.items()}
    if "event" in plain:
        return "lstm_stream.Diagnostic", plain
    if "streams" in plain and isinstance(body.get("y"), bytes):
        rows = len(plain["streams"])
        plain["y"] = np.frombuffer(body["y"], "<f4").reshape(rows, -1).tolist() if rows else []
        return "lstm_stream.BatchOutput", plain
    y = plain.get("y")
    if isinstance(y, list) and names and len(names) == len(y):
        plain["outputs"] = dict(zip(names, y, strict=True))
    if "step" in plain and "y" in plain:  # a policy output
        plain["reset_event"] = int(plain.get("reset") is not None)
        plain["stale_count"] = len(plain.get("stale") or [])
        return "lstm_stream.PolicyOutput", plain
    return "lstm_stream.Message", plain


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):  # features and batch outputs: little-endian float32
        if len(value) % 4 == 0:
            return [float(v) if np.isfinite(v) else None for v in np.frombuffer(value, "<f4")]
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN; such values were rejected on the wire anyway
    return value
