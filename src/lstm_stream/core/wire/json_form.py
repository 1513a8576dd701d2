"""Wire messages as JSON with a JSON schema per kind: what Foxglove decodes and plots.

Used by ``log export --foxglove`` (logs/foxglove.py) and ``serve --foxglove``
(serve/liveview.py): ``bin`` features and batch outputs become arrays of numbers,
and the fields a plot panel wants are added as numbers: ``outputs`` ({output
name: value}), ``reset_event`` (1 on a step whose state was reset, else 0) and
``stale_count`` (how many sources were stale).
"""

from __future__ import annotations

from typing import Any

import numpy as np

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


def convert(body: dict[Any, Any], names: list[str] | None) -> tuple[str, dict[str, Any]]:
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
