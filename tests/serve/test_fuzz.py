"""Fuzzing: property tests of the decoders, and random frames against a live `serve`.

The live fuzz is tools/fuzz_serve.py bounded to a few thousand malformed
messages; the long run (100,000+) and its figures are in docs/reliability.md.
"""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_stream.core.wire.protocol import (
    CONTROL_COMMANDS,
    REJECTION_REASONS,
    ControlCommand,
    ControlRequest,
    Invalid,
    Rejection,
    SensorDecoder,
    SensorMessage,
    decode_control_request,
)

from helpers.support import REPO
from helpers.tools import fuzz_serve

Generator, run_fuzz = fuzz_serve().Generator, fuzz_serve().run_fuzz

MODEL = str(REPO / "models" / "random_lstm.onnx")
F = 16
NAMES = tuple(f"f{i:02d}" for i in range(F))

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
            | st.binary(max_size=80)
            | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=20)
                       | st.dictionaries(st.text(max_size=6) | st.integers(-99, 99), inner,
                                         max_size=6), max_leaves=40)
_keys = st.sampled_from(["stream", "seq", "stamp_ns", "x", "reset", "cmd", "other"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=6), st.binary(max_size=12))
def test_decoder_never_raises_and_accepts_only_valid_messages(body: dict[str, object],
                                                               topic: bytes) -> None:
    decoder = SensorDecoder(F, NAMES)
    got = decoder.decode([topic, msgpack.packb(body, use_bin_type=True)])
    if isinstance(got, SensorMessage):
        assert got.x.shape == (1, F) and got.x.dtype == np.float32
        assert np.isfinite(got.x).all()
        assert 0 <= got.seq < 2**63 and isinstance(got.reset, bool)
        assert 1 <= len(got.stream.encode()) <= 256
        assert got.stamp_ns is None or 0 <= got.stamp_ns < 2**63
    else:
        assert isinstance(got, Rejection) and got.reason in REJECTION_REASONS and got.detail


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_decoder_survives_any_frames(frames: list[bytes]) -> None:
    got = SensorDecoder(F, NAMES, max_message_bytes=256).decode(frames)
    assert isinstance(got, SensorMessage | Rejection)
    if isinstance(got, Rejection):
        assert got.reason in REJECTION_REASONS


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**31 - 1), st.binary(max_size=64))
def test_generated_malformed_messages_are_all_rejected(seed: int, noise: bytes) -> None:
    """Every malformed message of the live fuzzer is rejected by the decoder, or
    (stale seq) by the state store; its expected reason is the decoder's."""
    gen = Generator(seed)
    decoder = SensorDecoder(F, NAMES)
    for _ in range(20):
        category, frames, reason = gen.malformed()
        got = decoder.decode(frames)
        if category == "stale seq":
            continue  # well-formed: the state store rejects it (tests/core/state/test_state.py)
        assert isinstance(got, Rejection), (category, frames[:1])
        assert reason is None or got.reason == reason, (category, got)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.builds(lambda v: msgpack.packb(v, use_bin_type=True), _values),
                 st.builds(lambda d: msgpack.packb(d, use_bin_type=True),
                           st.dictionaries(_keys, _values, max_size=4))))
def test_control_parser_never_raises(raw: bytes) -> None:
    got = decode_control_request(raw)
    if isinstance(got, ControlRequest):
        assert got.cmd in CONTROL_COMMANDS
        assert got.stream is None or isinstance(got.stream, str)
        body = msgpack.unpackb(raw, raw=False)
        # a reset of everything only when it was asked for without any 'stream' key
        if got.cmd == "reset" and got.stream is None:
            assert "stream" not in body
    else:
        assert isinstance(got, Invalid) and got.detail and got.reason in REJECTION_REASONS


def test_control_parser_shapes() -> None:
    def packed(v: object) -> bytes:
        return msgpack.packb(v, use_bin_type=True)

    assert decode_control_request(packed({"cmd": "reset"})) == \
        ControlRequest(ControlCommand.RESET)
    assert decode_control_request(packed({"cmd": "reset", "stream": "a"})) == \
        ControlRequest(ControlCommand.RESET, "a")
    nil = decode_control_request(packed({"cmd": "reset", "stream": None}))
    assert isinstance(nil, Invalid) and "'stream' must be a string" in nil.detail
    long = decode_control_request(packed({"cmd": "x" * 1000}))
    assert isinstance(long, Invalid) and "unknown cmd" in long.detail
    assert len(long.detail) < 200


def test_live_runner_survives_fuzzing_and_valid_outputs_are_bit_identical() -> None:
    report = run_fuzz(MODEL, 4000, seed=7, batch=400)
    summary = report.as_dict()
    assert report.hang is None and report.crashed is None, summary
    assert report.mismatched_outputs == [], report.mismatched_outputs[:3]
    assert report.wrong_reasons == [], report.wrong_reasons[:5]
    assert report.valid > 500 and report.malformed == 4000
    assert sum(report.rejected.values()) == 4000
    assert report.counters_agree, (report.status.get("rejected"), dict(report.rejected))
    assert report.control > 0 and report.control_errors == report.control
    # every kind of garbage was sent; rejections fell into many reasons
    assert len(report.by_category) >= len(Generator(0).cases)
    assert len(report.rejected) >= 9
    assert report.rss_mb_end - report.rss_mb_start < 64  # memory bounded, not growing
