"""Wire protocol v1: decoding, validation and encoding (docs/protocol.md)."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_stream.core.wire import protocol as p
from lstm_stream.core.wire.protocol import Rejection, SensorDecoder, SensorMessage, encode_sensor
from lstm_stream.core.wire.protocol import RejectReason as Reason

F = 4
NAMES = ("a", "b", "c", "d")


@pytest.fixture
def decoder() -> SensorDecoder:
    return SensorDecoder(F, NAMES, max_message_bytes=1024)


def frames(body: object, topic: bytes = b"sensors") -> list[bytes]:
    return [topic, msgpack.packb(body, use_bin_type=True)]


def test_bin_features_decode_to_float32_row(decoder: SensorDecoder) -> None:
    x = np.array([1.5, -2.0, 3.25, 0.0], np.float32)
    msg = decoder.decode([b"sensors", encode_sensor(7, x, stream="car1", stamp_ns=123)])
    assert isinstance(msg, SensorMessage)
    assert (msg.stream, msg.seq, msg.stamp_ns, msg.reset) == ("car1", 7, 123, False)
    assert msg.x.dtype == np.float32 and msg.x.shape == (1, F)
    np.testing.assert_array_equal(msg.x[0], x)


def test_array_features_and_stream_defaults_to_topic(decoder: SensorDecoder) -> None:
    msg = decoder.decode(frames({"seq": 0, "x": [1, 2.5, -3, 4]}, topic=b"sensors/left"))
    assert isinstance(msg, SensorMessage)
    assert msg.stream == "sensors/left" and msg.stamp_ns is None
    np.testing.assert_array_equal(msg.x[0], [1, 2.5, -3, 4])


def test_named_features_are_ordered_by_the_model(decoder: SensorDecoder) -> None:
    msg = decoder.decode(frames({"seq": 1, "x": {"d": 4.0, "b": 2.0, "a": 1.0, "c": 3.0}}))
    assert isinstance(msg, SensorMessage)
    np.testing.assert_array_equal(msg.x[0], [1, 2, 3, 4])


def test_reset_flag(decoder: SensorDecoder) -> None:
    msg = decoder.decode([b"s", encode_sensor(3, [0.0] * F, reset=True)])
    assert isinstance(msg, SensorMessage) and msg.reset


BAD = [
    ("frames", [b"sensors"], Reason.FRAMES, "2 frames"),
    ("three frames", [b"sensors", b"", b""], Reason.FRAMES, "got 3"),
    ("topic", [b"\xff\xfe", msgpack.packb({"seq": 1, "x": [0] * F})], Reason.TOPIC, "UTF-8"),
    ("garbage", [b"sensors", b"\xc1\xc1\xc1"], Reason.NOT_MSGPACK, "msgpack"),
    ("truncated", [b"sensors", msgpack.packb({"seq": 1, "x": [0.0] * F})[:-3]],
     Reason.NOT_MSGPACK, "msgpack"),
    ("trailing bytes", [b"sensors", msgpack.packb({"seq": 1}) + b"\x00"], Reason.NOT_MSGPACK, ""),
    ("array payload", frames([1, 2, 3]), Reason.NOT_MAP, "got array"),
    ("no seq", frames({"x": [0] * F}), Reason.MISSING_KEY, "'seq'"),
    ("no x", frames({"seq": 1}), Reason.MISSING_KEY, "'x'"),
    ("seq str", frames({"seq": "1", "x": [0] * F}), Reason.BAD_TYPE, "'seq' must be an integer"),
    ("seq float", frames({"seq": 1.0, "x": [0] * F}), Reason.BAD_TYPE, "'seq'"),
    ("seq bool", frames({"seq": True, "x": [0] * F}), Reason.BAD_TYPE, "'seq'"),
    ("seq negative", frames({"seq": -1, "x": [0] * F}), Reason.BAD_VALUE, "'seq'"),
    ("stream int", frames({"stream": 5, "seq": 1, "x": [0] * F}), Reason.BAD_TYPE, "'stream'"),
    ("stream empty", frames({"stream": "", "seq": 1, "x": [0] * F}), Reason.BAD_VALUE, "'stream'"),
    ("stream huge", frames({"stream": "é" * 200, "seq": 1, "x": [0] * F}), Reason.BAD_VALUE, "256"),
    ("stamp str", frames({"seq": 1, "stamp_ns": "now", "x": [0] * F}), Reason.BAD_TYPE, "stamp_ns"),
    ("stamp negative", frames({"seq": 1, "stamp_ns": -5, "x": [0] * F}), Reason.BAD_VALUE, "stamp"),
    ("reset str", frames({"seq": 1, "reset": "yes", "x": [0] * F}), Reason.BAD_TYPE, "'reset'"),
    ("x short", frames({"seq": 1, "x": [0] * (F - 1)}), Reason.WRONG_LENGTH, "has 3 values"),
    ("x bin short", frames({"seq": 1, "x": b"\x00" * 12}), Reason.WRONG_LENGTH, "12 bytes"),
    ("x float64", frames({"seq": 1, "x": np.zeros(F).tobytes()}), Reason.WRONG_LENGTH, "32 bytes"),
    ("x strings", frames({"seq": 1, "x": ["1", 2, 3, 4]}), Reason.BAD_TYPE, "only numbers"),
    ("x nested", frames({"seq": 1, "x": [[1], 2, 3, 4]}), Reason.BAD_TYPE, "only numbers"),
    ("x nil", frames({"seq": 1, "x": None}), Reason.BAD_TYPE, "'x' must be bin"),
    ("x nan", frames({"seq": 1, "x": [0, math.nan, 0, 0]}), Reason.NON_FINITE, "index 1"),
    ("x inf bin", frames({"seq": 1, "x": np.array([0, 0, 0, np.inf], "<f4").tobytes()}),
     Reason.NON_FINITE, "index 3"),
    ("x overflow", frames({"seq": 1, "x": [1e300, 0, 0, 0]}), Reason.NON_FINITE, "index 0"),
    ("named missing", frames({"seq": 1, "x": {"a": 1, "b": 2, "c": 3, "e": 4}}),
     Reason.MISSING_KEY, "'d'"),
    ("named short", frames({"seq": 1, "x": {"a": 1}}), Reason.WRONG_LENGTH, "missing"),
    ("oversized", frames({"seq": 1, "x": [0] * F, "pad": b"\x00" * 2000}), Reason.OVERSIZED,
     "1024"),
]


@pytest.mark.parametrize(("case", "message", "reason", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_with_reason(decoder: SensorDecoder, case: str,
                                           message: list[bytes], reason: str,
                                           match: str) -> None:
    got = decoder.decode(message)
    assert isinstance(got, Rejection), case
    assert got.reason == reason
    assert match in got.detail
    assert got.reason in p.REJECTION_REASONS


def test_rejection_names_stream_and_seq_when_readable(decoder: SensorDecoder) -> None:
    got = decoder.decode(frames({"stream": "car7", "seq": 9, "x": [0] * 2}))
    assert isinstance(got, Rejection)
    assert (got.stream, got.seq, got.topic) == ("car7", 9, "sensors")
    wire = got.to_wire()
    assert wire["event"] == "rejected" and wire["reason"] == Reason.WRONG_LENGTH


def test_named_features_need_feature_names() -> None:
    got = SensorDecoder(2).decode(frames({"seq": 1, "x": {"a": 1, "b": 2}}))
    assert isinstance(got, Rejection) and "feature_names" in got.detail


def test_deeply_nested_payload_is_rejected_not_crashing(decoder: SensorDecoder) -> None:
    payload = b"\x91" * 100_000 + b"\xc0"  # 100k nested one-element arrays
    got = decoder.decode([b"sensors", payload[:1000]])
    assert isinstance(got, Rejection)
    big = SensorDecoder(F, max_message_bytes=1 << 20).decode([b"sensors", payload])
    assert isinstance(big, Rejection)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_random_frames_never_raise(message: list[bytes]) -> None:
    got = SensorDecoder(F, NAMES).decode(message)
    assert isinstance(got, SensorMessage | Rejection)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                   max_size=5),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["stream", "seq", "stamp_ns", "x", "reset", "other"]),
                       _values, max_size=6))
def test_random_maps_never_raise_and_accepted_ones_are_valid(body: dict[str, object]) -> None:
    got = SensorDecoder(F, NAMES).decode(frames(body))
    if isinstance(got, SensorMessage):
        assert got.x.shape == (1, F) and np.isfinite(got.x).all()
        assert isinstance(got.seq, int) and got.seq >= 0
    else:
        assert got.reason in p.REJECTION_REASONS


def test_output_encoding_round_trips() -> None:
    packer = msgpack.Packer(use_bin_type=True)
    msg = SensorMessage("sensors", "car1", 5, 99, np.zeros((1, F), np.float32), False)
    body = p.decode_payload(p.encode_output(packer, msg, [0.5, -1.0], 3, "gap", 2, 1234))
    assert body == {"stream": "car1", "seq": 5, "stamp_ns": 99, "y": [0.5, -1.0], "step": 3,
                    "reset": "gap", "gap": 2, "latency_ns": 1234}


@pytest.mark.parametrize(("payload", "says"), [
    (b"\xc1", "not valid msgpack (such as the reserved type code 0xc1) (FormatError)"),
    (b"\x91" * 3000 + b"\x00", "nested deeper than the decoder allows (StackError)"),
    (b"\x81\xa3seq", "ends inside an object (truncated)"),
    (b"\x01\x02", "trailing bytes after the first) (ExtraData)"),
    (b"", "the payload is empty"),
])
def test_a_payload_that_is_not_msgpack_always_says_what_was_wrong(payload: bytes,
                                                                 says: str) -> None:
    got = SensorDecoder(F, NAMES, max_message_bytes=65536).decode([b"sensors", payload])
    assert isinstance(got, Rejection) and got.reason == Reason.NOT_MSGPACK
    assert says in got.detail
    assert not got.detail.rstrip().endswith(":")  # never a detail that trails off


def test_values_beyond_float32_are_out_of_range_not_nan(decoder: SensorDecoder) -> None:
    got = decoder.decode(frames({"seq": 0, "x": [0.0, 1e300, 0.0, 0.0]}))
    assert isinstance(got, Rejection) and got.reason == Reason.NON_FINITE
    assert "value 1e+300 at index 1 is out of float32 range" in got.detail
    got = decoder.decode(frames({"seq": 0, "x": {"a": 0, "b": 0, "c": -1e39, "d": 0}}))
    assert isinstance(got, Rejection) and "value -1e+39 at index 2 is out of float32" in (
        got.detail)
    got = decoder.decode(frames({"seq": 0, "x": [0.0, math.inf, 0.0, 0.0]}))
    assert isinstance(got, Rejection) and "holds NaN or Inf (first at index 1)" in got.detail


def test_a_valid_long_name_passes_the_exact_check(decoder: SensorDecoder) -> None:
    # past the quick test's SHORT_STREAM_NAME characters, within the byte limit
    name = "é" * 128  # 256 UTF-8 bytes
    got = decoder.decode(frames({"stream": name, "seq": 1, "x": [0] * F}))
    assert isinstance(got, SensorMessage) and got.stream == name


def test_diagnostics_events_are_their_wire_values() -> None:
    assert [str(e) for e in p.EventKind] == ["rejected", "stream_expired", "waiting",
                                             "stale_skipped"]
    wire = Rejection(Reason.BAD_VALUE, "why").to_wire()
    assert msgpack.unpackb(msgpack.packb(wire))["event"] == "rejected"


def control(body: object) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize(("raw", "reason", "reply"), [
    (b"\xc1", Reason.NOT_MSGPACK,
     'request is not msgpack (FormatError); send a map such as {"cmd": "status"}'),
    (control([1]), Reason.NOT_MAP,
     "request must be a map with a string 'cmd': status, streams or reset"),
    (control({}), Reason.MISSING_KEY,
     "request must be a map with a string 'cmd': status, streams or reset"),
    (control({"cmd": 3}), Reason.BAD_TYPE,
     "request must be a map with a string 'cmd': status, streams or reset"),
    (control({"cmd": "stop"}), Reason.BAD_VALUE,
     "unknown cmd 'stop'; known: status, streams, reset"),
    (control({"cmd": "reset", "stream": None}), Reason.BAD_TYPE,
     "'stream' must be a string, or absent to reset every stream"),
], ids=["garbage", "array", "no cmd", "cmd int", "unknown cmd", "reset nil stream"])
def test_a_malformed_control_request_says_why(raw: bytes, reason: p.RejectReason,
                                              reply: str) -> None:
    got = p.decode_control_request(raw)
    assert got == p.Invalid(reason, reply)  # detail: the text of the error reply


@pytest.mark.parametrize("command", list(p.ControlCommand))
def test_control_commands_decode_to_their_enum(command: p.ControlCommand) -> None:
    got = p.decode_control_request(control({"cmd": command.value}))
    assert isinstance(got, p.ControlRequest) and got.cmd is command and got.stream is None
    assert p.CONTROL_COMMANDS == ("status", "streams", "reset")
