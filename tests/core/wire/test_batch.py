"""Batch messages (protocol v1.1), with a real onnxruntime session: every row is stepped
exactly as a single message with its values would be, and a bad row alone is refused."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from lstm_stream.core.backends import create_backend
from lstm_stream.core.model.contract import ModelContract, load_contract
from lstm_stream.core.step.emit import Emitter, LiveClock
from lstm_stream.core.step.results import BatchStepped, Stepped
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.batch_message import (
    BatchMessage,
    MessageDecoder,
    decode_batch_output,
    encode_sensor_batch,
)
from lstm_stream.core.wire.protocol import Rejection, encode_sensor

from helpers.support import REPO

MODEL = REPO / "models" / "random_lstm.onnx"


@pytest.fixture(scope="module")
def contract() -> ModelContract:
    return load_contract(MODEL)


def stepper(contract: ModelContract) -> StreamStepper:
    return StreamStepper(contract, create_backend("onnxruntime", contract), max_gap=2)


def test_a_batch_message_equals_its_rows_sent_one_by_one(contract: ModelContract) -> None:
    rng = np.random.default_rng(0)
    batched, single = stepper(contract), stepper(contract)
    names = [f"car{i}" for i in range(40)]
    seqs = [0] * 40
    for tick in range(6):
        x = rng.normal(size=(40, 16)).astype(np.float32)
        resets = [tick == 3 and i % 7 == 0 for i in range(40)]
        if tick == 4:
            x[5, 2] = np.nan  # one bad row
            seqs[9] -= 1  # a stale seq
        if tick == 5:
            seqs[11] += 4  # a gap past max_gap: that stream resets
        got = batched.step([b"sensors", encode_sensor_batch(names, seqs, x, resets=resets)], tick)
        assert isinstance(got, BatchStepped) and len(got.results) == 40
        for i, name in enumerate(names):
            want = single.step([b"sensors", encode_sensor(seqs[i], x[i], stream=name,
                                                          reset=resets[i])], tick)
            row = got.results[i]
            assert type(row) is type(want), (tick, i)
            if isinstance(want, Stepped):
                assert isinstance(row, Stepped)
                assert np.array_equal(row.y, want.y)
                assert (row.step, row.reset, row.gap) == (want.step, want.reset, want.gap)
            else:
                assert isinstance(row, Rejection) and row.reason == want.reason
        seqs = [s + 1 for s in seqs]
    assert batched.calls < single.calls / 10  # the rows shared backend calls


def test_bad_rows_are_refused_alone(contract: ModelContract) -> None:
    s = stepper(contract)
    x = np.zeros((4, 16), np.float32)
    body = {"streams": ["a", "b", "a", ""], "seq": [0, 0, 1, 0],
            "x": x.astype("<f4").tobytes()}
    got = s.step([b"sensors", msgpack.packb(body)], 0)
    assert isinstance(got, BatchStepped)
    a, b, again, empty = got.results
    assert isinstance(a, Stepped) and isinstance(b, Stepped)
    assert isinstance(again, Rejection) and again.reason == "duplicate_stream"
    assert "appears more than once" in again.detail and again.stream == "a"
    assert isinstance(empty, Rejection) and empty.reason == "bad_value"
    assert s.store.get("a") is not None and s.store.get("a").last_seq == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(("body", "reason", "words"), [
    ({"streams": [], "seq": [], "x": b""}, "bad_type", "non-empty array"),
    ({"streams": ["a", "b"], "seq": [0], "x": b"\0" * 128}, "wrong_length", "array of 2"),
    ({"streams": ["a", "b"], "seq": [0, 0], "x": b"\0" * 64}, "wrong_length", "128 bytes"),
    ({"streams": ["a"], "seq": [0]}, "missing_key", "'x' is required"),
    ({"streams": ["a"], "seq": [0], "x": [[1.0] * 15]}, "wrong_length", "1 arrays of 16"),
])
def test_a_batch_message_that_cannot_be_split_into_rows_is_refused_whole(
        contract: ModelContract, body: dict[str, object], reason: str, words: str) -> None:
    got = stepper(contract).step([b"sensors", msgpack.packb(body)], 0)
    assert isinstance(got, Rejection) and got.reason == reason and words in got.detail


def test_the_decoder_reads_arrays_of_numbers_too(contract: ModelContract) -> None:
    s = stepper(contract)
    msg = s.decoder.decode([b"sensors", msgpack.packb(
        {"streams": ["a", "b"], "seq": [3, 4], "stamp_ns": [10, None],
         "x": [[0.5] * 16, [1.0] * 16]})])
    assert isinstance(msg, BatchMessage)
    rows = msg.rows
    assert [(r.stream, r.seq, r.stamp_ns) for r in rows] == [("a", 3, 10), ("b", 4, None)]  # type: ignore[union-attr]


class Payloads:
    """A sink that keeps the encoded outputs."""

    def __init__(self) -> None:
        self.outputs: list[bytes] = []

    def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
        self.outputs.append(payload)

    def diagnostic(self, payload: bytes, t_ns: int) -> None:
        self.outputs.append(payload)

    def message(self, topic: str, payload: bytes, t_ns: int) -> None:
        pass


def test_batch_outputs_decode_to_the_rows(contract: ModelContract) -> None:
    s, sink = stepper(contract), Payloads()
    x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    x[1, 0] = np.inf
    got = s.step([b"sensors", encode_sensor_batch(["a", "b", "c"], [0, 0, 0], x)], 0)
    assert isinstance(got, BatchStepped)
    assert Emitter(s.contract, sink, clock=LiveClock(monotonic=lambda: 7)).output_batch(got, 0) == 2
    out, rejected = (msgpack.unpackb(p) for p in sink.outputs)
    assert out["streams"] == ["a", "c"] and out["step"] == [1, 1] and out["latency_ns"] == 7
    y = decode_batch_output(out, contract.n_outputs)
    rows = [r for r in got.results if isinstance(r, Stepped)]
    assert np.array_equal(y, np.concatenate([r.y[:, :contract.n_outputs] for r in rows]))
    assert rejected["reason"] == "non_finite" and rejected["stream"] == "b"


def row_by_row(message: BatchMessage) -> BatchMessage:
    """The same message with its rows as objects: StreamStepper's general path."""
    return BatchMessage(message.topic, message.rows)


def test_the_steady_path_writes_what_the_row_by_row_path_writes(
        contract: ModelContract) -> None:
    # two steppers fed the same ticks; one may take the steady path, the other never can
    rng = np.random.default_rng(3)
    fast, slow = stepper(contract), stepper(contract)
    fast_out, slow_out = Payloads(), Payloads()
    names = [f"car{i}" for i in range(30)]
    took = []
    for tick in range(8):
        seqs = [tick + (2 if tick >= 5 and i == 4 else 0) for i in range(30)]  # car4: gap 2
        x = rng.normal(size=(30, 16)).astype(np.float32)
        payload = encode_sensor_batch(names, seqs, x, stamps=[1000 * tick + i for i in range(30)])
        msg = fast.decoder.decode([b"sensors", payload])
        assert isinstance(msg, BatchMessage)
        got = fast.step_batch(msg, tick * 1000)
        want = slow.step_batch(row_by_row(msg), tick * 1000)
        took.append(got.steady is not None)
        assert want.steady is None
        Emitter(fast.contract, fast_out).output_batch(got, tick)
        Emitter(slow.contract, slow_out).output_batch(want, tick)
        assert fast_out.outputs[-1] == slow_out.outputs[-1], tick  # byte for byte
        for stream in slow.store.streams():
            mine = fast.store.get(stream.name)
            assert mine is not None
            assert (mine.last_seq, mine.last_stamp_ns, mine.step, mine.last_seen_ns) == (
                stream.last_seq, stream.last_stamp_ns, stream.step, stream.last_seen_ns)
            for a, b in zip(mine.states, stream.states, strict=True):
                assert np.array_equal(a, b)
        assert [s.name for s in fast.store.streams()] == [s.name for s in slow.store.streams()]
    # the first tick creates the streams (row by row); the rest are steady, the gap of
    # 2 at tick 5 within max_gap (2) included
    assert took == [False] + [True] * 7
    gaps = msgpack.unpackb(fast_out.outputs[5])["gap"]
    assert gaps[4] == 2 and sum(gaps) == 2


@pytest.mark.parametrize("case", ["new stream", "reset", "stale seq", "gap past max_gap",
                                  "idle", "control reset", "long name", "stamp missing",
                                  "nan"])
def test_the_steady_path_declines_what_needs_admission_row_by_row(
        contract: ModelContract, case: str) -> None:
    s = stepper(contract)
    long_name = "v" * 100  # 100 bytes: valid, but past the columns' quick bound
    names = ["a", "b", long_name if case == "long name" else "c"]
    x = np.zeros((3, 16), np.float32)
    first = s.step([b"sensors", encode_sensor_batch(names, [0, 0, 0], x,
                                                    stamps=[1, 2, 3])], 0)
    assert isinstance(first, BatchStepped) and first.steady is None  # every stream is new
    seqs, resets, now = [1, 1, 1], None, 1000
    stamps: list[int | None] = [4, 5, 6]
    if case == "new stream":
        names = ["a", "b", "d"]
    elif case == "reset":
        resets = [False, True, False]
    elif case == "stale seq":
        seqs = [1, 0, 1]
    elif case == "gap past max_gap":
        seqs = [1, 4, 1]  # 2 missed is the limit
    elif case == "idle":
        now = int(6e9)  # past the default 5 s idle timeout
    elif case == "control reset":
        s.store.request_reset("b")
    elif case == "stamp missing":
        stamps = [4, None, 6]
    elif case == "nan":
        x[1, 3] = np.nan
    got = s.step([b"sensors", encode_sensor_batch(names, seqs, x, stamps=stamps,
                                                  resets=resets)], now)
    assert isinstance(got, BatchStepped) and got.steady is None
    # the next message of streams that stepped, with ordinary rows, is steady again
    # (a long name never is: its length is checked row by row)
    again = ["a", "c"] if case != "long name" else ["a", long_name]
    plain = s.step([b"sensors", encode_sensor_batch(again, [2, 2], np.zeros((2, 16)),
                                                    stamps=[7, 8])], now + 1)
    assert isinstance(plain, BatchStepped)
    assert (plain.steady is not None) == (case != "long name")
    assert all(isinstance(r, Stepped) for r in plain.results)


GOOD = {"stream": "car1", "seq": 3, "stamp_ns": 10, "reset": False}
BAD_KEYS = [
    ("stream", 5, "bad_type"), ("stream", None, "bad_type"), ("stream", "", "bad_value"),
    ("stream", "é" * 200, "bad_value"),
    ("seq", "1", "bad_type"), ("seq", 1.0, "bad_type"), ("seq", True, "bad_type"),
    ("seq", -1, "bad_value"), ("seq", 2**63, "bad_value"), ("seq", None, "missing_key"),
    ("stamp_ns", "now", "bad_type"), ("stamp_ns", 1.5, "bad_type"),
    ("stamp_ns", -5, "bad_value"),
    ("reset", "yes", "bad_type"), ("reset", 1, "bad_type"), ("reset", None, "bad_type"),
]


@pytest.mark.parametrize(("key", "value", "reason"), BAD_KEYS,
                         ids=[f"{k} {v!r}"[:24] for k, v, _ in BAD_KEYS])
def test_a_bad_value_gets_the_same_rejection_alone_and_in_a_batch_row(
        key: str, value: object, reason: str) -> None:
    decoder = MessageDecoder(4)
    reading = {**GOOD, key: value}
    single = decoder.decode([b"sensors", msgpack.packb({**reading, "x": [0.0] * 4})])
    first = {"stream": "car0", "seq": 0, "stamp_ns": 0, "reset": False}  # a valid row
    columns = {"streams" if k == "stream" else k: [first[k], v] for k, v in reading.items()}
    batch = decoder.decode([b"sensors", msgpack.packb({**columns, "x": [[0.0] * 4] * 2})])
    assert isinstance(single, Rejection) and single.reason == reason
    assert isinstance(batch, BatchMessage)
    ok, row = batch.rows
    assert not isinstance(ok, Rejection)
    assert isinstance(row, Rejection)
    assert (row.reason, row.stream, row.seq) == (single.reason, single.stream, single.seq)
    # the same words, the key named as the batch's column and row
    named = f"'{'streams' if key == 'stream' else key}'[1]"
    assert row.detail == single.detail.replace(f"'{key}'", named, 1)
