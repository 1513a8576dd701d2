"""Emitter: what serve publishes and eval writes, counted and encoded once.

A real stepper with a real onnxruntime session feeds the emitter; the sink is a
list (the simplest sink there is: the emitter, not the sink, is under test).
"""

from __future__ import annotations

import msgpack
import numpy as np

from lstm_stream.core.backends import create_backend
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.step.emit import Emitter, LiveClock
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.protocol import encode_sensor

from helpers.support import REPO

MODEL = REPO / "models" / "random_lstm.onnx"
SEC = 1_000_000_000


class ListSink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict, int]] = []

    def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
        self.messages.append(("output", msgpack.unpackb(payload), t_ns))

    def diagnostic(self, payload: bytes, t_ns: int) -> None:
        self.messages.append(("diagnostic", msgpack.unpackb(payload), t_ns))


def test_outputs_rejections_and_expiries_are_counted_and_encoded_as_on_the_wire() -> None:
    contract = load_contract(MODEL)
    stepper = StreamStepper(contract, create_backend("onnxruntime", contract),
                            idle_timeout_s=1.0)
    sink = ListSink()
    now = [0]  # the runner's monotonic clock, 123 ns after each receive time below
    emitter = Emitter(contract, sink, clock=LiveClock(monotonic=lambda: now[0]))
    x = np.linspace(-1, 1, contract.n_features, dtype=np.float32)
    sent = [encode_sensor(0, x, stream="a"), encode_sensor(0, x, stream="b"),
            encode_sensor(0, x, stream="a"),  # stale seq: rejected
            encode_sensor(1, x, stream="a")]
    for k, payload in enumerate(sent):
        now[0] = k + 123
        assert emitter.emit(stepper.step([b"sensors", payload], k), k)
    expired = emitter.expire(stepper.store, 10 * SEC)

    kinds = [(kind, body.get("stream"), t) for kind, body, t in sink.messages]
    assert kinds == [("output", "a", 0), ("output", "b", 1), ("diagnostic", "a", 2),
                     ("output", "a", 3), ("diagnostic", "b", 10 * SEC),  # least recent first
                     ("diagnostic", "a", 10 * SEC)]
    first = sink.messages[0][1]
    assert first["seq"] == 0 and first["step"] == 1 and first["reset"] == "new_stream"
    assert first["latency_ns"] == 123 and len(first["y"]) == contract.n_outputs
    assert sink.messages[2][1]["reason"] == "stale_seq"
    assert sink.messages[5][1]["event"] == "stream_expired" and sink.messages[5][1]["last_seq"] == 1
    assert sorted(s.name for s in expired) == ["a", "b"]
    c = emitter.counters
    assert (c.stepped, c.published, c.expired) == (3, 3, 2)
    assert c.rejected == {"stale_seq": 1} and c.resets == {"new_stream": 2}
