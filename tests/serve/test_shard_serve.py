"""Several `serve` processes behind one vehicle-stack endpoint, streams sharded by topic.

Real runner subprocesses, real sockets: the stack binds one sensor PUB and one
output SUB; every runner connects to both and subscribes to its shard's topic.
The shard functions themselves are tested in tests/core/wire/test_shard.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np
import pytest
import zmq

from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.core.wire.shard import shard_of, shard_topic, topic_for
from lstm_stream.serve.client import control_request

from helpers.support import REPO, Reference, Served, VehicleStack, serve_process

MODEL = REPO / "models" / "random_lstm.onnx"


def test_bad_shard_argument_is_a_usage_error() -> None:
    for bad, words in (("2", "INDEX/COUNT"), ("3/2", "sharding.index")):
        proc = subprocess.run([sys.executable, "-m", "lstm_stream", "serve", str(MODEL),
                               "--shard", bad], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and words in proc.stderr, proc.stderr


@pytest.fixture
def farm(ctx: zmq.Context[Any]) -> Iterator[tuple[VehicleStack, list[Served]]]:
    stack = VehicleStack(ctx)
    outputs = stack.bind_outputs()
    with ExitStack() as running:
        runners = [running.enter_context(serve_process(
            MODEL, stack.sensors_endpoint, "--shard", f"{i}/2", "--output-connect",
            output=outputs)) for i in range(2)]
        for i, runner in enumerate(runners):
            stack.wait_subscribed(shard_topic("sensors", i, 2).encode())
            stack.wait_runner_sees_us(runner.control)
        yield stack, runners
    stack.close()


def test_two_runners_share_the_streams_exactly_once_and_in_order(
        farm: tuple[VehicleStack, list[Served]]) -> None:
    stack, runners = farm
    ref = Reference(MODEL)
    rng = np.random.default_rng(3)
    names = [f"sim-{i}" for i in range(20)]
    expected: dict[str, list[tuple[int, list[float]]]] = {n: [] for n in names}
    for seq in range(15):
        for name in rng.permutation(names):
            x = rng.normal(size=16).astype(np.float32)
            stack.send(encode_sensor(seq, x, stream=name),
                       topic_for("sensors", name, 2).encode())
            expected[name].append((seq, ref.step(name, x).tolist()))
    got: dict[str, list[tuple[int, list[float]]]] = {n: [] for n in names}
    for topic, out in stack.receive(20 * 15, timeout_s=30):
        assert topic == "policy"
        got[out["stream"]].append((out["seq"], out["y"]))
    for name in names:
        assert [s for s, _ in got[name]] == list(range(15))  # each once, in order
        np.testing.assert_allclose([y for _, y in got[name]], [y for _, y in expected[name]],
                                   atol=1e-5)
    for i, runner in enumerate(runners):
        status = control_request(runner.control, {"cmd": "streams"})
        served = {s["stream"] for s in status["streams"]}
        assert served == {n for n in names if shard_of(n, 2) == i}
        assert control_request(runner.control, {"cmd": "status"})["shard"] == f"{i}/2"


def test_a_stream_on_the_wrong_shard_topic_is_rejected_not_split(
        farm: tuple[VehicleStack, list[Served]]) -> None:
    stack, runners = farm
    name = next(f"car-{i}" for i in range(100) if shard_of(f"car-{i}", 2) == 1)
    stack.send(encode_sensor(0, np.zeros(16, np.float32), stream=name),
               shard_topic("sensors", 0, 2).encode())  # published on shard 0's topic
    ((topic, event),) = stack.receive(1)
    assert topic == "diagnostics" and event["reason"] == "wrong_shard"
    assert "shard 1 of 2" in event["detail"] and event["stream"] == name
    assert control_request(runners[0].control, {"cmd": "status"})["streams"] == 0
