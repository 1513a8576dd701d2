"""``output.deadline_ms`` on a live `lstm-stream serve` with batching on: outputs stepped
in a backend call with others, and the rows of batch messages, are flagged ``late`` and
counted, as single ones are (they all go through the emitter's one publish path)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.serve.client import control_request

from helpers.support import REPO, Served, VehicleStack, serve_process

MODEL = REPO / "models" / "random_lstm.onnx"
STREAMS = 20


@pytest.fixture(scope="module")
def module_ctx() -> Iterator[zmq.Context[Any]]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture(scope="module")
def stack(module_ctx: zmq.Context[Any]) -> Iterator[VehicleStack]:
    vs = VehicleStack(module_ctx)
    yield vs
    vs.close()


@pytest.fixture(scope="module")
def runner(stack: VehicleStack) -> Iterator[Served]:
    # batching on (max_batch 64, the default); the first message of a drain waits 5 ms
    # for company, so that a burst is stepped in batches
    with serve_process(MODEL, stack.sensors_endpoint, "--set", "output.deadline_ms=50",
                       "--set", "batching.max_wait_us=5000") as served:
        stack.wait_subscribed()
        stack.connect_outputs(served.output, served.control)
        yield served


def _status(served: Served) -> dict[str, Any]:
    return control_request(served.control, {"cmd": "status"})


def test_batched_outputs_of_old_messages_are_all_late_and_counted(
        stack: VehicleStack, runner: Served) -> None:
    before = _status(runner)
    past = time.time_ns() - 2_000_000_000  # stamped two seconds ago: past any 50 ms deadline
    x = np.linspace(-1, 1, 16, dtype=np.float32)
    for seq in range(5):
        for i in range(STREAMS):
            stack.send(encode_sensor(seq, x, stream=f"old/{i}", stamp_ns=past + seq))
    outputs = stack.receive(5 * STREAMS)
    assert [t for t, _ in outputs] == ["policy"] * (5 * STREAMS)
    assert all(o.get("late") is True for _, o in outputs)
    after = _status(runner)
    stepped = after["stepped"] - before["stepped"]
    assert stepped == 5 * STREAMS
    assert after["late"] - before["late"] == stepped
    assert after["batches"] - before["batches"] < stepped  # they were stepped in batches


def test_fresh_messages_stepped_in_batches_are_not_late(stack: VehicleStack,
                                                        runner: Served) -> None:
    before = _status(runner)
    x = np.zeros(16, np.float32)
    for i in range(STREAMS):
        stack.send(encode_sensor(0, x, stream=f"fresh/{i}", stamp_ns=time.time_ns()))
    outputs = stack.receive(STREAMS)
    assert all("late" not in o for _, o in outputs)
    assert _status(runner)["late"] == before["late"]


def test_every_row_of_an_old_batch_message_is_late_and_counted(stack: VehicleStack,
                                                               runner: Served) -> None:
    before = _status(runner)
    names = [f"farm/{i}" for i in range(STREAMS)]
    x = np.random.default_rng(0).normal(size=(STREAMS, 16)).astype(np.float32)
    now = time.time_ns()
    for tick in range(3):  # tick 0 creates the streams (row by row), then the steady path
        stamps: list[int | None] = [now - 2_000_000_000 + tick] * STREAMS
        stamps[5] = time.time_ns() + 10_000_000_000  # one row stamped ahead: not late
        stack.send_batch(names, [tick] * STREAMS, x, stamps=stamps)
        ((topic, out),) = stack.receive(1)
        assert topic == "policy" and out["streams"] == names
        assert out["late"] == [i != 5 for i in range(STREAMS)]
    assert _status(runner)["late"] - before["late"] == 3 * (STREAMS - 1)
