"""A live `lstm-stream serve` with several sources: a real subprocess fed on three topics.

The runner is started with issue 15's file as written; the vehicle stack publishes
an IMU, wheel odometry and GNSS on their own topics and reads policy outputs,
diagnostics, status and the health topic back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.serve.client import control_request

from helpers.sources import ISSUE_TOML, make_model
from helpers.support import Reference, Served, VehicleStack, serve_process


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "six.onnx"
    make_model(path)
    return path


@pytest.fixture
def stack(ctx: zmq.Context[Any]) -> Iterator[VehicleStack]:
    vs = VehicleStack(ctx)
    yield vs
    vs.close()


def start(tmp_path: Path, model: Path, stack: VehicleStack, more: str = "") -> Any:
    config = tmp_path / "runner.toml"
    config.write_text(ISSUE_TOML + more)
    served = serve_process(model, stack.sensors_endpoint, "--config", str(config))
    return served


def connect(stack: VehicleStack, served: Served) -> None:
    stack.wait_subscribed(b"gnss")  # the last of the three subscriptions
    stack.connect_outputs(served.output, served.control)


def status(served: Served) -> dict[str, Any]:
    return control_request(served.control, {"cmd": "status"})


def send(stack: VehicleStack, topic: str, seq: int, x: list[float],
         stamp: int | None = None) -> None:
    stack.send(encode_sensor(seq, np.asarray(x, np.float32), stream="car1", stamp_ns=stamp),
               topic.encode())


def test_three_topics_give_one_output_per_imu_message_equal_to_the_reference(
        tmp_path: Path, model: Path, stack: VehicleStack) -> None:
    ref = Reference(model)
    with start(tmp_path, model, stack, "\n[output]\nages = true\n") as served:
        connect(stack, served)
        send(stack, "imu", 0, [0.1, 0.2, 0.3])
        ((topic, waiting),) = stack.receive(1)
        assert topic == "diagnostics" and waiting["event"] == "waiting"
        assert waiting["missing"] == ["wheels", "gnss"] and waiting["stream"] == "car1"
        send(stack, "wheels", 0, [12.0])
        send(stack, "gnss", 0, [0.5, -0.5])
        rng = np.random.default_rng(2)
        outs = []
        for seq in range(1, 6):
            imu = rng.normal(size=3).astype(np.float32).tolist()
            send(stack, "imu", seq, imu)
            ((topic, out),) = stack.receive(1)
            assert topic == "policy"
            want = ref.step("car1", np.array([*imu, 12.0, 0.5, -0.5], np.float32))
            assert np.allclose(out["y"], want, atol=1e-5)
            outs.append(out)
        assert [o["seq"] for o in outs] == [1, 2, 3, 4, 5] and outs[0]["reset"] == "new_stream"
        assert all(o["stale"] is None for o in outs)  # sent just now: all fresh
        assert set(outs[-1]["age_ms"]) == {"imu", "wheels", "gnss"}
        got = status(served)
        assert got["waiting"] == 1 and got["stepped"] == 5 and got["ready"] is True
        assert got["stale"] == {"imu": 0, "wheels": 0, "gnss": 0}
        assert got["sources"]["imu"]["expected_hz"] == 100.0 and got["warmup_ms"] > 0


def test_a_stale_source_is_flagged_and_counted(tmp_path: Path, model: Path,
                                               stack: VehicleStack) -> None:
    with start(tmp_path, model, stack) as served:
        connect(stack, served)
        now = time.time_ns()
        send(stack, "wheels", 0, [1.0], stamp=now - 500_000_000)  # half a second old
        send(stack, "gnss", 0, [0.0, 0.0], stamp=now)
        send(stack, "imu", 0, [0.0, 0.0, 0.0], stamp=now)
        ((topic, out),) = stack.receive(1)
        assert topic == "policy" and out["stale"] == ["wheels"]
        assert status(served)["stale"]["wheels"] == 1


def test_late_outputs_carry_late_and_are_counted(tmp_path: Path, model: Path,
                                                 stack: VehicleStack) -> None:
    # a deadline of one microsecond: no output can meet it
    with start(tmp_path, model, stack, "\n[output]\ndeadline_ms = 0.001\n") as served:
        connect(stack, served)
        for topic, x in (("wheels", [1.0]), ("gnss", [0.0, 0.0]), ("imu", [0.0, 0.0, 0.0])):
            send(stack, topic, 0, x, stamp=time.time_ns())
        ((_, out),) = stack.receive(1)
        assert out["late"] is True and status(served)["late"] == 1


def test_health_reports_every_source_and_a_stopped_one_is_not_alive(
        tmp_path: Path, model: Path, stack: VehicleStack, ctx: zmq.Context[Any]) -> None:
    with start(tmp_path, model, stack, "\n[health]\nrate_hz = 5\n") as served:
        connect(stack, served)
        health = ctx.socket(zmq.SUB)
        health.setsockopt(zmq.LINGER, 0)
        health.setsockopt(zmq.SUBSCRIBE, b"health")
        health.connect(served.output)

        def next_health(timeout_s: float = 5.0) -> dict[str, Any]:
            assert health.poll(int(timeout_s * 1000)), "no health message"
            topic, payload = health.recv_multipart()
            assert topic == b"health"
            body: dict[str, Any] = msgpack.unpackb(payload)
            return body

        first = next_health()
        assert first["ready"] is True and set(first["sources"]) == {"imu", "wheels", "gnss"}
        assert first["sources"]["gnss"]["alive"] is False  # nothing heard yet
        seq = 0
        until = time.monotonic() + 1.0
        while time.monotonic() < until:  # every source at about its rate for a second
            send(stack, "imu", seq, [0.0, 0.0, 0.0])
            if seq % 2 == 0:
                send(stack, "wheels", seq // 2, [1.0])
            if seq % 10 == 0:
                send(stack, "gnss", seq // 10, [0.0, 0.0])
            seq += 1
            time.sleep(0.01)
        # gnss stops now; imu goes on. Within max_age_ms (250) and one health period
        # (200 ms) gnss must be reported not alive, with its age past max_age_ms.
        stopped = time.monotonic()
        report = None
        while time.monotonic() - stopped < 2.0:
            send(stack, "imu", seq, [0.0, 0.0, 0.0])
            seq += 1
            time.sleep(0.01)
            if health.poll(0):
                body = next_health()
                if not body["sources"]["gnss"]["alive"]:
                    report = body
                    break
        assert report is not None, "gnss still reported alive 2 s after it stopped"
        assert time.monotonic() - stopped < 0.25 + 0.2 + 0.3  # max age + a period + slack
        assert report["sources"]["gnss"]["age_ms"] > 250
        assert report["sources"]["imu"]["age_ms"] < 100 and report["steps_per_s"] > 0
        assert report["stale"]["gnss"] >= 0 and "p50" in report["latency_ns"]
        health.close()
