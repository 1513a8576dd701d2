"""Batch messages through a live `lstm-stream serve`: the same readings sent one by one
give the same outputs, rejected rows and resets included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from lstm_stream.core.wire.batch_message import decode_batch_output
from lstm_stream.core.wire.protocol import encode_sensor

from helpers.support import REPO, Served, VehicleStack, serve_process

MODEL = REPO / "models" / "random_lstm.onnx"
STREAMS = 100


@pytest.fixture
def stack(ctx: zmq.Context[Any]) -> Iterator[VehicleStack]:
    vs = VehicleStack(ctx)
    yield vs
    vs.close()


@pytest.fixture
def runner(stack: VehicleStack) -> Iterator[Served]:
    with serve_process(MODEL, stack.sensors_endpoint) as served:
        stack.wait_subscribed()
        stack.connect_outputs(served.output, served.control)
        yield served


def test_batch_messages_equal_the_same_readings_one_by_one(stack: VehicleStack,
                                                           runner: Served) -> None:
    rng = np.random.default_rng(3)
    batch_names = [f"farm/{i}" for i in range(STREAMS)]
    single_names = [f"solo/{i}" for i in range(STREAMS)]
    seqs = [0] * STREAMS
    for tick in range(5):
        x = rng.normal(size=(STREAMS, 16)).astype(np.float32)
        resets = [tick == 2 and i % 10 == 0 for i in range(STREAMS)]
        sent = list(seqs)
        if tick == 3:
            x[17, 4] = np.nan  # refused alone, in both forms
            sent[23] -= 2  # a stale seq
        stack.send_batch(batch_names, sent, x, resets=resets)
        ((topic, batch_out), *rejected) = stack.receive(1 + 2 * (tick == 3))
        assert topic == "policy"
        for i in range(STREAMS):
            stack.send(encode_sensor(sent[i], x[i], stream=single_names[i], reset=resets[i]))
        singles = stack.receive(STREAMS)
        outputs = {o["stream"]: o for t, o in singles if t == "policy"}
        refused = {o["stream"]: o["reason"] for t, o in singles if t == "diagnostics"}
        want_rows = [i for i in range(STREAMS) if single_names[i] in outputs]
        assert batch_out["streams"] == [batch_names[i] for i in want_rows]
        y = decode_batch_output(batch_out, 2)
        for row, i in enumerate(want_rows):
            one = outputs[single_names[i]]
            np.testing.assert_allclose(y[row], one["y"], atol=1e-6, rtol=1e-6)
            assert (batch_out["seq"][row], batch_out["step"][row], batch_out["reset"][row],
                    batch_out["gap"][row]) == (one["seq"], one["step"], one["reset"], one["gap"])
        assert {o["stream"].replace("farm", "solo"): o["reason"] for _, o in rejected} == refused
        if tick == 3:
            assert refused == {"solo/17": "non_finite", "solo/23": "stale_seq"}
        seqs = [s + 1 for s in seqs]
