"""Batch messages (protocol v1.1), with a real onnxruntime session: every row is stepped
exactly as a single message with its values would be, and a bad row alone is refused."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from lstm_stream.core.backends import create_backend
from lstm_stream.core.batch import BatchMessage, decode_batch_output, encode_sensor_batch
from lstm_stream.core.contract import ModelContract, load_contract
from lstm_stream.core.emit import Emitter
from lstm_stream.core.protocol import Rejection, encode_sensor
from lstm_stream.core.stepper import BatchStepped, Stepped, StreamStepper

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


def test_batch_outputs_decode_to_the_rows(contract: ModelContract) -> None:
    class Keep:
        def __init__(self) -> None:
            self.payloads: list[bytes] = []

        def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
            self.payloads.append(payload)

        def diagnostic(self, payload: bytes, t_ns: int) -> None:
            self.payloads.append(payload)

        def message(self, topic: str, payload: bytes, t_ns: int) -> None:
            pass

    s, sink = stepper(contract), Keep()
    x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    x[1, 0] = np.inf
    got = s.step([b"sensors", encode_sensor_batch(["a", "b", "c"], [0, 0, 0], x)], 0)
    assert isinstance(got, BatchStepped)
    assert Emitter(s, sink).output_batch(got, 7, 0) == 2
    out, rejected = (msgpack.unpackb(p) for p in sink.payloads)
    assert out["streams"] == ["a", "c"] and out["step"] == [1, 1] and out["latency_ns"] == 7
    y = decode_batch_output(out, contract.n_outputs)
    rows = [r for r in got.results if isinstance(r, Stepped)]
    assert np.array_equal(y, np.concatenate([r.y[:, :contract.n_outputs] for r in rows]))
    assert rejected["reason"] == "non_finite" and rejected["stream"] == "b"
