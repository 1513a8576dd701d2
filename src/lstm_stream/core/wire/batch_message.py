"""Batch messages (protocol v1.1): the readings of many streams in one message.

A simulation farm steps hundreds of vehicles per tick; one ZeroMQ message per
vehicle costs more Python than the model does. A batch message carries them all:

    {"streams": ["car0", "car1", ...], "seq": [7, 7, ...], "stamp_ns": [...] (optional),
     "x": bin of B x F little-endian float32 (or B arrays of F numbers),
     "reset": [false, true, ...] (optional)}

on the same topic as single readings. Each row is decoded, admitted, stepped and
committed exactly as a single message with its values would be: a bad row (NaN,
a stale seq, a bad name, a stream named twice) is rejected alone and changes
nothing. The runner answers with one output message of the same shape
(:func:`encode_batch_columns`): ``y`` a bin of B' x outputs float32 for the B'
rows that were stepped, ``step``, ``reset`` and ``gap`` as arrays, and one
rejection per refused row on the diagnostics topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from lstm_stream.core.wire.protocol import (
    MAX_SEQ,
    SHORT_STREAM_NAME,
    Rejection,
    RejectReason,
    SensorDecoder,
    SensorMessage,
    check_reading,
)

_NUMBER = (int, float)


@dataclass(slots=True)
class BatchColumns:
    """The rows of a batch message none of whose rows is refused by decoding and none
    resets: its columns as they came, for the stepper's steady path (stepper.py)."""

    streams: list[str]  # distinct, valid names
    seqs: list[int]
    stamps: list[int | None]
    x: np.ndarray  # (rows, features) float32, finite

    def as_rows(self, topic: str) -> list[SensorMessage | Rejection]:
        x = self.x
        return [SensorMessage(topic, stream, seq, stamp, x[i:i + 1], False)
                for i, (stream, seq, stamp) in enumerate(zip(self.streams, self.seqs,
                                                             self.stamps, strict=True))]


@dataclass(slots=True)
class BatchMessage:
    """A decoded batch message: per row a reading to step, or why that row is refused.

    When no row is refused and none resets, ``columns`` holds them as columns and the
    per-row objects are only built when asked for (``rows``)."""

    topic: str
    given_rows: list[SensorMessage | Rejection] | None
    columns: BatchColumns | None = None

    @property
    def rows(self) -> list[SensorMessage | Rejection]:
        if self.given_rows is None:
            assert self.columns is not None
            self.given_rows = self.columns.as_rows(self.topic)
        return self.given_rows


class MessageDecoder:
    """Decodes single readings and batch messages (a map with ``streams``) for a model
    with ``n_features`` inputs; the envelope and single readings are its SensorDecoder's."""

    def __init__(self, n_features: int, feature_names: tuple[str, ...] | None = None,
                 max_message_bytes: int = 65536) -> None:
        self.single = SensorDecoder(n_features, feature_names, max_message_bytes)
        self.n_features = n_features
        self._x_bytes = 4 * n_features

    def decode(self, frames: list[bytes]) -> SensorMessage | BatchMessage | Rejection:
        """Validate one multipart message; never raises on any input."""
        got = self.single.unpack(frames)
        if type(got) is Rejection:  # as SensorDecoder.decode: the cheaper test
            return got
        topic, body = got
        if "streams" in body:
            return self._decode_batch(topic, body)
        return self.single.decode_map(topic, body)

    def _decode_batch(self, topic: str, body: dict[Any, Any]) -> BatchMessage | Rejection:
        streams = body["streams"]
        if type(streams) is not list or not streams:
            return Rejection(RejectReason.BAD_TYPE,
                             "'streams' must be a non-empty array of stream names "
                             "(a batch message, docs/protocol.md)", topic)
        n = len(streams)
        columns = {}
        for key, default in (("seq", None), ("stamp_ns", [None] * n), ("reset", [False] * n)):
            value = body.get(key, default)
            if value is None:
                return Rejection(RejectReason.MISSING_KEY,
                                 f"'{key}' is required: an array of {n} integers, "
                                 "one per stream", topic)
            if type(value) is not list or len(value) != n:
                return Rejection(RejectReason.WRONG_LENGTH,
                                 f"'{key}' must be an array of {n} values, one "
                                 f"per stream in 'streams'", topic)
            columns[key] = value
        if "x" not in body:
            return Rejection(RejectReason.MISSING_KEY,
                             "'x' is required: a bin of streams x features "
                             "float32", topic)
        x = self._batch_features(body["x"], n)
        if isinstance(x, Rejection):
            x.topic = topic
            return x
        clean = _clean_columns(streams, columns["seq"], columns["stamp_ns"], columns["reset"], x)
        if clean is not None:
            return BatchMessage(topic, None, clean)
        finite = np.isfinite(x).all(axis=1)
        rows: list[SensorMessage | Rejection] = []
        seen: set[str] = set()
        for i, (stream, seq, stamp, reset) in enumerate(zip(
                streams, columns["seq"], columns["stamp_ns"], columns["reset"], strict=True)):
            refused = check_reading(topic, stream, seq, stamp, reset, i)  # as a single message
            if refused is not None:
                rows.append(refused)
                continue
            if stream in seen:
                rows.append(Rejection(RejectReason.DUPLICATE_STREAM,
                                      f"stream {stream[:256]!r} appears more "
                                      f"than once in this batch message (row {i}); send its "
                                      "next reading in the next message", topic, stream, seq))
                continue
            seen.add(stream)
            if not finite[i]:
                bad = int(np.flatnonzero(~np.isfinite(x[i]))[0])
                rows.append(Rejection(RejectReason.NON_FINITE,
                                      f"'x' row {i} holds NaN or Inf (first at "
                                      f"index {bad})", topic, stream, seq))
                continue
            rows.append(SensorMessage(topic, stream, seq, stamp, x[i:i + 1], reset))
        return BatchMessage(topic, rows)

    def _batch_features(self, value: Any, n: int) -> np.ndarray | Rejection:
        """``x`` of a batch message as float32 (n, features), or why the whole message
        cannot be used (its rows cannot be told apart)."""
        f = self.n_features
        if type(value) is bytes:
            if len(value) != n * self._x_bytes:
                return Rejection(RejectReason.WRONG_LENGTH,
                                 f"'x' is {len(value)} bytes; {n} streams x {f} "
                                 f"float32 features are {n * self._x_bytes} bytes")
            return np.ndarray((n, f), "<f4", value)  # a read-only view, no copy
        if type(value) is list:
            if len(value) != n or any(type(r) is not list or len(r) != f for r in value):
                return Rejection(RejectReason.WRONG_LENGTH,
                                 f"'x' must be {n} arrays of {f} numbers, one "
                                 "per stream")
            if any(type(v) not in _NUMBER for r in value for v in r):
                return Rejection(RejectReason.BAD_TYPE, "'x' must hold only numbers")
            with np.errstate(over="ignore"):  # beyond float32: inf, rejected per row
                return np.array(value, dtype=np.float32).reshape(n, f)
        return Rejection(RejectReason.BAD_TYPE,
                         "'x' of a batch message must be a bin of streams x features "
                         "float32 or an array of arrays of numbers")


def _clean_columns(streams: list[Any], seqs: list[Any], stamps: list[Any], resets: list[Any],
                   x: np.ndarray) -> BatchColumns | None:
    """The columns when every row is valid (what ``check_reading``, the duplicate and the
    finite checks would each pass) and none resets; None sends the message row by row.

    check_reading's quick test over whole columns (set, min, max): the same limits,
    a few C loops instead of a Python loop over the rows."""
    if set(map(type, streams)) != {str} or len(set(streams)) != len(streams):
        return None
    # longer names may still be valid: they get check_stream's exact test, row by row
    if not 0 < min(map(len, streams)) <= max(map(len, streams)) <= SHORT_STREAM_NAME:
        return None
    if set(map(type, seqs)) != {int} or min(seqs) < 0 or max(seqs) > MAX_SEQ:
        return None
    kinds = set(map(type, stamps))
    if kinds != {type(None)} and (kinds != {int} or min(stamps) < 0 or max(stamps) > MAX_SEQ):
        return None
    if set(map(type, resets)) != {bool} or any(resets) or not np.isfinite(x).all():
        return None
    return BatchColumns(streams, seqs, stamps, x)


def encode_sensor_batch(streams: list[str], seqs: list[int], x: np.ndarray, *,
                        stamps: list[int | None] | None = None,
                        resets: list[bool] | None = None) -> bytes:
    """Encode a batch message: ``x`` is (streams, features); what a simulation farm sends."""
    body: dict[str, Any] = {"streams": list(streams), "seq": list(seqs),
                            "x": np.ascontiguousarray(x, dtype="<f4").tobytes()}
    if stamps is not None:
        body["stamp_ns"] = list(stamps)
    if resets is not None:
        body["reset"] = list(resets)
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def encode_batch_columns(packer: msgpack.Packer, streams: list[str], seqs: list[int],
                         stamps: list[int | None], y: np.ndarray, steps: list[int],
                         resets: list[str | None], gaps: list[int], latency_ns: int,
                         extra: dict[str, np.ndarray] | None = None,
                         more: dict[str, Any] | None = None) -> bytes:
    """A batch output of the stepped rows, as columns: ``y`` (rows, outputs); ``extra``
    the model's extra outputs by name; ``more`` keys such as ``late`` (a bool per row)."""
    body: dict[str, Any] = {
        "streams": streams, "seq": seqs, "stamp_ns": stamps,
        "y": np.ascontiguousarray(y, dtype="<f4").tobytes(),
        "step": steps, "reset": resets, "gap": gaps, "latency_ns": latency_ns}
    if extra is not None:
        body["extra"] = {name: np.ascontiguousarray(v, dtype="<f4").tobytes()
                         for name, v in extra.items()}
    if more is not None:
        body.update(more)
    out: bytes = packer.pack(body)
    return out


def decode_batch_output(body: dict[str, Any], n_outputs: int) -> np.ndarray:
    """``y`` of a batch output as float32 (streams, outputs)."""
    return np.frombuffer(body["y"], "<f4").reshape(len(body["streams"]), n_outputs)
