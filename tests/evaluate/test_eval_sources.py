"""eval of a multi-source log (issue 15's sources) equals a live serve fed by replay of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from lstm_stream.cli.main import main
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.replay import ReplayConfig, Replayer
from lstm_stream.logs.writer import LogWriter

from helpers.logs import T0
from helpers.sources import ISSUE_TOML, make_model
from helpers.support import VehicleStack, serve_process

MS = 1_000_000
RATES = {"imu": (10, 3), "wheels": (20, 1), "gnss": (100, 2)}  # period ms, features


def write_vehicle_log(path: Path, streams: int = 2, seconds: float = 1.5) -> Path:
    """An IMU at 100 Hz, wheels at 50 Hz, GNSS at 10 Hz per stream, stamped with log time;
    gnss of car1 stops half-way (stale later) and one wheels message is garbage."""
    rng = np.random.default_rng(5)
    events = []
    for s in range(streams):
        for topic, (period, width) in RATES.items():
            for k in range(int(seconds * 1000 / period)):
                t = T0 + k * period * MS + s * 100_000 + {"imu": 3, "wheels": 1, "gnss": 0}[topic]
                if topic == "gnss" and s == 1 and k * period > 700:
                    continue
                events.append((t, topic, s, k, width))
    events.sort()
    with LogWriter(path) as log:
        for t, topic, s, k, width in events:
            if topic == "wheels" and s == 0 and k == 7:
                payload = b"\xc1not msgpack"
            else:
                x = rng.normal(size=width).astype(np.float32)
                payload = encode_sensor(k, x, stream=f"car{s}", stamp_ns=t)
            log.write(topic, payload, t)
    return path


def policy_outputs(path: Path) -> list[dict[str, Any]]:
    return [msgpack.unpackb(m.data) for m in LogReader(path).messages(["policy"])]


def test_eval_of_a_multi_source_log_equals_serve_fed_by_replay(tmp_path: Path) -> None:
    model = tmp_path / "six.onnx"
    make_model(model)
    config = tmp_path / "vehicle.toml"
    config.write_text(ISSUE_TOML + "\n[output]\nages = true\n")
    log = write_vehicle_log(tmp_path / "drive.mcap")
    assert main(["eval", str(log), "--model", str(model), "--config", str(config)]) == 0
    offline = policy_outputs(tmp_path / "drive.policy.mcap")
    # one message per call gives the same file: sources are assembled one at a time anyway
    first = (tmp_path / "drive.policy.mcap").read_bytes()
    assert main(["eval", str(log), "--model", str(model), "--config", str(config),
                 "--set", "batching.max_batch=1"]) == 0
    assert (tmp_path / "drive.policy.mcap").read_bytes() == first
    assert len(offline) > 250  # two IMUs at 100 Hz, less the waits for the first gnss
    assert any(o["stale"] == ["gnss"] for o in offline)  # car1's GNSS stopped
    assert any(o["stale"] is None for o in offline)
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        cfg = ReplayConfig([log], output="tcp://127.0.0.1:*", rate=0,
                           topics=["imu", "wheels", "gnss"], wait_subscribers=3)
        with Replayer(cfg, context=ctx) as rep, VehicleStack(ctx) as stack, \
                serve_process(model, rep.endpoint, "--config", str(config)) as served:
            stack.connect_outputs(served.output, served.control)
            rep.run()
            live = []
            while len(live) < len(offline):
                live += [o for topic, o in stack.receive(1) if topic == "policy"]
    finally:
        ctx.destroy(linger=0)
    assert [(o["stream"], o["seq"]) for o in live] == [(o["stream"], o["seq"]) for o in offline]
    for out, ref in zip(live, offline, strict=True):
        np.testing.assert_allclose(out["y"], ref["y"], atol=1e-5, rtol=1e-5)
        assert (out["step"], out["reset"], out["gap"], out["stale"], out["age_ms"]) == (
            ref["step"], ref["reset"], ref["gap"], ref["stale"], ref["age_ms"])
