"""Wire protocol v1: sensor messages in, policy outputs and diagnostics out.

Every message is a two-frame ZeroMQ multipart ``[topic, payload]`` whose
payload is a msgpack map. The full specification, written for implementers in
other languages, is docs/protocol.md; this module is its executable form.

Decoding never raises on bad input: it returns a :class:`Rejection` that says
which rule was broken, so that the runner can count it, report it and carry on
with its state untouched.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, final

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
MAX_STREAM_NAME_BYTES = 256
MAX_SEQ = (1 << 63) - 1  # the limit of seq and stamp_ns: msgpack's largest signed integer
# A UTF-8 character is at most 4 bytes, so a name of at most this many characters is
# within MAX_STREAM_NAME_BYTES without encoding it: the quick checks stop here, and
# check_stream encodes only longer names.
SHORT_STREAM_NAME = MAX_STREAM_NAME_BYTES // 4


class RejectReason(StrEnum):
    """Why a message was not stepped: short, stable codes (counted in status, sent on
    diagnostics). Members are strings: on the wire and in JSON they are their values."""

    FRAMES = "frames"  # not exactly two frames
    TOPIC = "topic"  # topic frame is not UTF-8
    OVERSIZED = "oversized"  # payload larger than input.max_message_bytes
    NOT_MSGPACK = "not_msgpack"  # payload does not decode as one msgpack object
    NOT_MAP = "not_map"  # payload is msgpack but not a map with string keys
    MISSING_KEY = "missing_key"  # a required key is absent
    BAD_TYPE = "bad_type"  # a key has the wrong type
    BAD_VALUE = "bad_value"  # right type, value out of range
    WRONG_LENGTH = "wrong_length"  # x does not have the model's number of features
    NON_FINITE = "non_finite"  # x holds NaN or +-Inf
    STALE_SEQ = "stale_seq"  # seq not greater than the stream's last stepped seq
    STEP_FAILED = "step_failed"  # the backend raised while stepping
    WRONG_SHARD = "wrong_shard"  # the stream belongs to another runner's shard (shard.py)
    BAD_OUTPUT = "bad_output"  # the model returned NaN or Inf; nothing published or committed
    UNKNOWN_TOPIC = "unknown_topic"  # with [[input.sources]]: a topic that is no source
    DUPLICATE_STREAM = "duplicate_stream"  # a batch message names a stream twice (batch.py)


class EventKind(StrEnum):
    """The ``event`` of a diagnostics message (docs/protocol.md); on the wire, its value."""

    REJECTED = "rejected"  # a message was not stepped (Rejection.to_wire)
    STREAM_EXPIRED = "stream_expired"  # a stream idle past state.idle_timeout_s was forgotten
    WAITING = "waiting"  # with sources: a trigger came before every source was seen
    STALE_SKIPPED = "stale_skipped"  # freshness.stale = "skip" left a step out


REJECTION_REASONS = tuple(RejectReason)


class Invalid(NamedTuple):
    """Why a value of a message cannot be used: the reason's code and what was wrong."""

    reason: RejectReason
    detail: str


_NUMBER = (int, float)

# The finiteness check below multiplies by zero, which numpy reports for NaN/Inf
# input: that input is rejected with its own reason, the warning is noise.
warnings.filterwarnings("ignore", "invalid value encountered in dot", RuntimeWarning,
                        module=__name__)


@dataclass(slots=True)
class SensorMessage:
    """A decoded, validated sensor message: safe to step."""

    topic: str
    stream: str
    seq: int
    stamp_ns: int | None
    x: np.ndarray  # float32, shape (1, features), C-contiguous
    reset: bool


@final  # so that `type(x) is Rejection` narrows, the hot path's cheaper isinstance
@dataclass(slots=True)
class Rejection:
    """Why a message was not stepped; ``stream`` and ``seq`` when they could be read."""

    reason: RejectReason
    detail: str
    topic: str | None = None
    stream: str | None = None
    seq: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"event": EventKind.REJECTED, "reason": self.reason, "detail": self.detail,
                "topic": self.topic, "stream": self.stream, "seq": self.seq}


def check_stream(value: Any, key: str = "'stream'") -> str | Invalid:
    """A stream name (a string of 1 to MAX_STREAM_NAME_BYTES UTF-8 bytes), or why not;
    ``key`` names the value in the detail (``'streams'[3]`` for a batch row)."""
    if type(value) is not str:
        return Invalid(RejectReason.BAD_TYPE, f"{key} must be a string, got {_kind(value)}")
    if not value or (len(value) > SHORT_STREAM_NAME
                     and len(value.encode()) > MAX_STREAM_NAME_BYTES):
        return Invalid(RejectReason.BAD_VALUE,
                       f"{key} must be 1 to {MAX_STREAM_NAME_BYTES} UTF-8 bytes long")
    return value


def check_seq(value: Any, key: str = "'seq'") -> int | Invalid:
    """A seq (an integer from 0 to MAX_SEQ; None: absent), or why not."""
    if value is None:
        return Invalid(RejectReason.MISSING_KEY,
                       f"{key} is required (an integer that increases by one "
                       "per message of the stream)")
    if type(value) is not int:  # not isinstance: True is an int to Python, not on the wire
        return Invalid(RejectReason.BAD_TYPE, f"{key} must be an integer, got {_kind(value)}")
    if not 0 <= value <= MAX_SEQ:
        return Invalid(RejectReason.BAD_VALUE, f"{key} must be between 0 and 2**63-1, got {value}")
    return value


def check_stamp(value: Any, key: str = "'stamp_ns'") -> int | Invalid | None:
    """A sensor time in nanoseconds (0 to MAX_SEQ, or None: not given), or why not."""
    if value is None:
        return None
    if type(value) is not int:
        return Invalid(RejectReason.BAD_TYPE,
                       f"{key} must be an integer (nanoseconds), got {_kind(value)}")
    if not 0 <= value <= MAX_SEQ:
        return Invalid(RejectReason.BAD_VALUE, f"{key} must be between 0 and 2**63-1, got {value}")
    return value


def check_reset(value: Any, key: str = "'reset'") -> bool | Invalid:
    """A reset flag (a msgpack bool, not 0 or 1), or why not."""
    if type(value) is not bool:
        return Invalid(RejectReason.BAD_TYPE, f"{key} must be true or false, got {_kind(value)}")
    return value


def check_reading(topic: str, stream: Any, seq: Any, stamp: Any, reset: Any,
                  row: int | None = None) -> Rejection | None:
    """Why a reading's ``stream``, ``seq``, ``stamp_ns`` or ``reset`` cannot be used, or None.

    The one statement of these rules, for a single message and for row ``row`` of a
    batch message (whose details name the key as ``'seq'[3]``): a value gets the same
    reason either way. The rejection carries the stream and seq when they are valid.
    """
    # the common case in one expression, what the checks below would all pass: no
    # call per key on the hot path (batch_message._clean_columns is its column form)
    if (type(stream) is str and 0 < len(stream) <= SHORT_STREAM_NAME
            and type(seq) is int and 0 <= seq <= MAX_SEQ and type(reset) is bool
            and (stamp is None or (type(stamp) is int and 0 <= stamp <= MAX_SEQ))):
        return None
    at = "" if row is None else f"[{row}]"
    name = check_stream(stream, "'stream'" if row is None else f"'streams'{at}")
    if isinstance(name, Invalid):
        return Rejection(name.reason, name.detail, topic)
    number = check_seq(seq, f"'seq'{at}")
    if isinstance(number, Invalid):
        return Rejection(number.reason, number.detail, topic, name)
    for bad in (check_stamp(stamp, f"'stamp_ns'{at}"), check_reset(reset, f"'reset'{at}")):
        if isinstance(bad, Invalid):
            return Rejection(bad.reason, bad.detail, topic, name, number)
    return None


class SensorDecoder:
    """Decodes ``[topic, payload]`` frames for a model with ``n_features`` inputs."""

    def __init__(self, n_features: int, feature_names: tuple[str, ...] | None = None,
                 max_message_bytes: int = 65536, *, subject: str = "the model",
                 default_stream: str | None = None) -> None:
        self.n_features = n_features
        self.subject = subject  # who takes the features, in messages: "source 'imu'"
        self.default_stream = default_stream  # a message's stream without 'stream'; None: topic
        self.feature_names = feature_names
        self.max_message_bytes = max_message_bytes
        self._x_bytes = 4 * n_features
        self._zeros = np.zeros(n_features, np.float32)

    def decode(self, frames: list[bytes]) -> SensorMessage | Rejection:
        """Validate one multipart message; never raises on any input."""
        got = self.unpack(frames)
        # type() and two names, not isinstance and *got: about 100 ns less a message
        if type(got) is Rejection:
            return got
        topic, body = got
        return self.decode_map(topic, body)

    def unpack(self, frames: list[bytes]) -> tuple[str, dict[Any, Any]] | Rejection:
        """The topic and the payload's map, or why the message has none (frames, topic,
        size, msgpack): what every message is checked for before its keys are read."""
        if len(frames) != 2:
            return Rejection(RejectReason.FRAMES,
                             f"expected 2 frames [topic, payload], got {len(frames)}")
        raw_topic, payload = frames
        try:
            topic = raw_topic.decode()
        except UnicodeDecodeError:
            return Rejection(RejectReason.TOPIC, "topic frame is not valid UTF-8")
        if len(payload) > self.max_message_bytes:
            return Rejection(RejectReason.OVERSIZED,
                             f"payload is {len(payload)} bytes, more than the "
                             f"limit of {self.max_message_bytes} (input.max_message_bytes)",
                             topic)
        try:
            body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception as err:  # msgpack raises many types for bad bytes
            what = _msgpack_error(err) if payload else "the payload is empty"
            return Rejection(RejectReason.NOT_MSGPACK,
                             f"payload is not one msgpack object: {what}"[:300],
                             topic)
        if type(body) is not dict:
            return Rejection(RejectReason.NOT_MAP, f"payload must be a msgpack map, got "
                             f"{_kind(body)}", topic)
        return topic, body

    def decode_map(self, topic: str, body: dict[Any, Any]) -> SensorMessage | Rejection:
        """One reading from a payload's map (what :meth:`unpack` returns)."""
        stream = body.get("stream", self.default_stream or topic)
        seq = body.get("seq")
        stamp = body.get("stamp_ns")
        reset = body.get("reset", False)
        # check_reading's quick test, inline: calling it for every message costs about
        # 30 ns (1.5% of decoding one); it is called only for a message that fails here
        if not (type(stream) is str and 0 < len(stream) <= SHORT_STREAM_NAME
                and type(seq) is int and 0 <= seq <= MAX_SEQ and type(reset) is bool
                and (stamp is None or (type(stamp) is int and 0 <= stamp <= MAX_SEQ))):
            bad = check_reading(topic, stream, seq, stamp, reset)
            if bad is not None:
                return bad
        if "x" not in body:
            return Rejection(RejectReason.MISSING_KEY, "'x' (the feature vector) is required",
                             topic, stream, seq)
        x = self._features(body["x"])
        if type(x) is Invalid:
            return Rejection(x.reason, x.detail, topic, stream, seq)
        return SensorMessage(topic, stream, seq, stamp, x, reset)  # type: ignore[arg-type]

    def _features(self, value: Any) -> np.ndarray | Invalid:
        """The feature vector as float32 (1, n), or why it is invalid."""
        n = self.n_features
        kind = type(value)
        if kind is bytes:
            if len(value) != self._x_bytes:
                return Invalid(RejectReason.WRONG_LENGTH,
                               f"'x' is {len(value)} bytes; {self.subject} takes "
                               f"{n} float32 features = {self._x_bytes} bytes")
            x = np.ndarray((1, n), "<f4", value)  # a read-only view, no copy
            # x . 0 is 0 when every value is finite and NaN otherwise (inf * 0 = NaN):
            # one small call, a third of the cost of isfinite(x).all()
            if x.dot(self._zeros)[0] != 0.0:
                return _non_finite(x, [])
        elif kind is list:
            if len(value) != n:
                return Invalid(RejectReason.WRONG_LENGTH,
                               f"'x' has {len(value)} values; {self.subject} takes {n}")
            for v in value:
                if type(v) not in _NUMBER:
                    return Invalid(RejectReason.BAD_TYPE,
                                   f"'x' must hold only numbers, found {_kind(v)}")
            with np.errstate(over="ignore"):  # beyond float32 range: inf, rejected next
                x = np.array(value, dtype=np.float32).reshape(1, n)
            if x.dot(self._zeros)[0] != 0.0:  # as for bin, above
                return _non_finite(x, value)
        elif kind is dict:
            got = self._named_features(value)
            if type(got) is Invalid:
                return got
            x = got  # type: ignore[assignment]
            if x.dot(self._zeros)[0] != 0.0:  # as for bin, above
                return _non_finite(x, [value[k] for k in self.feature_names or ()])
        else:
            return Invalid(RejectReason.BAD_TYPE,
                           "'x' must be bin (little-endian float32), an array of "
                           f"numbers or a map of feature names, got {_kind(value)}")
        return x

    def _named_features(self, value: dict[Any, Any]) -> np.ndarray | Invalid:
        names = self.feature_names
        if names is None:
            return Invalid(RejectReason.BAD_TYPE,
                           "'x' is a map of named features but the model declares "
                           "no feature_names; send an array or bin instead")
        if len(value) != len(names):
            missing = [k for k in names if k not in value]
            extra = [str(k) for k in value if k not in names]
            return Invalid(RejectReason.WRONG_LENGTH, f"'x' names {len(value)} features, the model "
                           f"takes {len(names)} (missing {missing[:5]}, unknown {extra[:5]})")
        out = np.empty((1, len(names)), dtype=np.float32)
        for i, name in enumerate(names):
            v = value.get(name)
            if v is None:
                return Invalid(RejectReason.MISSING_KEY, f"'x' lacks feature {name!r}")
            if type(v) not in _NUMBER:
                return Invalid(RejectReason.BAD_TYPE,
                               f"feature {name!r} must be a number, got {_kind(v)}")
            with np.errstate(over="ignore"):
                out[0, i] = v
        return out


class ControlCommand(StrEnum):
    """The ``cmd`` of a control request (docs/protocol.md, Control); on the wire, its value."""

    STATUS = "status"  # counters, latency percentiles, model and snapshot state
    STREAMS = "streams"  # every stream's last seq, stamp, step and idle time
    RESET = "reset"  # reset one stream (``stream``) or, without that key, every stream


CONTROL_COMMANDS = tuple(ControlCommand)
_COMMANDS = {command.value: command for command in ControlCommand}


@dataclass(slots=True, frozen=True)
class ControlRequest:
    """A decoded control request: ``cmd`` and, for ``reset``, one stream or all (None)."""

    cmd: ControlCommand
    stream: str | None = None


def decode_control_request(raw: bytes) -> ControlRequest | Invalid:
    """Parse one control request, or say why it is malformed (``detail``: the reply).

    Never raises. ``{"cmd": "reset"}`` without a ``stream`` key resets every
    stream; an explicit nil ``stream`` is an error, not "all".
    """
    try:
        body = msgpack.unpackb(raw, raw=False)
    except Exception as err:  # msgpack raises many types for bad bytes
        return Invalid(RejectReason.NOT_MSGPACK,
                       f"request is not msgpack ({type(err).__name__}); send a "
                       'map such as {"cmd": "status"}')
    if type(body) is not dict or type(body.get("cmd")) is not str:
        why = (RejectReason.NOT_MAP if type(body) is not dict
               else RejectReason.BAD_TYPE if "cmd" in body else RejectReason.MISSING_KEY)
        return Invalid(why, "request must be a map with a string 'cmd': status, streams or reset")
    cmd: str = body["cmd"]
    command = _COMMANDS.get(cmd)
    if command is None:
        return Invalid(RejectReason.BAD_VALUE,
                       f"unknown cmd {cmd[:64]!r}; known: status, streams, reset")
    if command is not ControlCommand.RESET or "stream" not in body:
        return ControlRequest(command)
    stream = body["stream"]
    if type(stream) is not str:
        return Invalid(RejectReason.BAD_TYPE,
                       "'stream' must be a string, or absent to reset every stream")
    return ControlRequest(command, stream)


# What msgpack's exceptions mean when they come without a message of their own.
_MSGPACK_ERRORS = {
    "FormatError": "a byte that is not valid msgpack (such as the reserved type code 0xc1)",
    "StackError": "nested deeper than the decoder allows",
    "ExtraData": "more than one msgpack object (trailing bytes after the first)",
    "OutOfData": "the payload ends inside an object (truncated)",
}


def _msgpack_error(err: Exception) -> str:
    """A description of a msgpack decoding error that always says what was wrong."""
    name = type(err).__name__
    known = _MSGPACK_ERRORS.get(name)
    text = str(err).strip()
    if name == "ExtraData" or not text:
        return f"{known or 'no detail given by the decoder'} ({name})"
    if "incomplete input" in text:
        return f"{_MSGPACK_ERRORS['OutOfData']} ({name}: {text})"
    return f"{name}: {text}"


def _non_finite(x: np.ndarray, given: list[Any]) -> Invalid:
    """Why it is invalid, for a feature vector with a non-finite float32 value."""
    bad = int(np.flatnonzero(~np.isfinite(x))[0])
    value = given[bad] if bad < len(given) else None
    if isinstance(value, _NUMBER) and math.isfinite(value):
        return Invalid(RejectReason.NON_FINITE,
                       f"'x' value {value!r} at index {bad} is out of float32 "
                       "range (|x| <= 3.4e38); scale the feature or send it in range")
    return Invalid(RejectReason.NON_FINITE, f"'x' holds NaN or Inf (first at index {bad})")


def _kind(value: Any) -> str:
    """A short, safe description of a value's type for an error message."""
    name = type(value).__name__
    names = {"NoneType": "nil", "dict": "map", "list": "array", "bytes": "bin", "str": "str",
             "float": "float", "int": "int", "bool": "bool", "ExtType": "ext"}
    return names.get(name, name)


def encode_output(packer: msgpack.Packer, msg: SensorMessage, y: list[float], step: int,
                  reset: str | None, gap: int, latency_ns: int,
                  extra: dict[str, list[float]] | None = None,
                  more: dict[str, Any] | None = None) -> bytes:
    """Encode one policy output (keys in the order docs/protocol.md lists them); ``extra``
    holds the model's extra outputs by name, for models that have any; ``more`` the
    keys of multi-source runners and deadlines (``stale``, ``age_ms``, ``late``)."""
    body = {"stream": msg.stream, "seq": msg.seq, "stamp_ns": msg.stamp_ns, "y": y,
            "step": step, "reset": reset, "gap": gap, "latency_ns": latency_ns}
    if extra is not None:
        body["extra"] = extra
    if more is not None:
        body.update(more)
    out: bytes = packer.pack(body)
    return out


def encode_sensor(seq: int, x: np.ndarray | list[float], *, stream: str | None = None,
                  stamp_ns: int | None = None, reset: bool = False) -> bytes:
    """Encode a sensor message payload; what a Python vehicle stack or test sends."""
    body: dict[str, Any] = {"seq": seq}
    if stream is not None:
        body["stream"] = stream
    if stamp_ns is not None:
        body["stamp_ns"] = stamp_ns
    if isinstance(x, np.ndarray):
        body["x"] = np.ascontiguousarray(x, dtype="<f4").tobytes()
    else:
        body["x"] = list(x)
    if reset:
        body["reset"] = True
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Decode an output, diagnostics or control payload (a msgpack map)."""
    body = msgpack.unpackb(payload, raw=False)
    if not isinstance(body, dict):
        raise ValueError(f"expected a msgpack map, got {_kind(body)}")
    return body
