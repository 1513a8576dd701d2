"""Several `serve` processes behind one vehicle-stack endpoint, streams sharded by topic.

Real runner subprocesses, real sockets: the stack binds one sensor PUB and one
output SUB; every runner connects to both and subscribes to its shard's topic.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np
import pytest
import zmq

from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.core.wire.shard import Shard, shard_of, shard_topic, topic_for
from lstm_stream.serve.client import control_request

from helpers.support import REPO, Reference, Served, VehicleStack, serve_process

MODEL = REPO / "models" / "random_lstm.onnx"


def test_shard_of_is_crc32_of_the_utf8_name() -> None:
    # The definition a vehicle stack in another language must reproduce: the standard
    # CRC-32 (zlib, IEEE 802.3), whose check value for "123456789" is 0xCBF43926.
    assert shard_of("123456789", 65536) == 0xCBF43926 % 65536
    assert shard_of("trüffel", 3) == zlib.crc32("trüffel".encode()) % 3
    assert shard_of("car-7", 4) == 0
    assert topic_for("sensors", "car-7", 4) == "sensors/0/4" == shard_topic("sensors", 0, 4)
    assert Shard(0, 4).owns("car-7") and not Shard(1, 4).owns("car-7")


def test_streams_spread_over_every_shard() -> None:
    counts = np.bincount([shard_of(f"sim-{i}", 8) for i in range(8000)], minlength=8)
    assert counts.min() > 850 and counts.max() < 1150  # ~1000 each


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
