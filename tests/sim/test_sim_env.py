"""The lane-keeping task on the real highway-env race track: seeded, partial, noisy; the expert
keeps the lane; the recorder writes logs the trainer reads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highway_env", reason="needs the [sim] extra")

import zmq

from lstm_stream.logs.writer import LogWriter
from lstm_stream.procs import free_endpoint
from lstm_stream.serve.client import VehicleStack
from lstm_stream.sim import SimError
from lstm_stream.sim.env import LaneKeepingSim, SimConfig
from lstm_stream.sim.loop import (
    Mode,
    record_episodes,
    run_episode,
    wait_subscribers,
)
from lstm_stream.train.config import DataConfig
from lstm_stream.train.log_data import LogSource


def observations(sim: LaneKeepingSim, seed: int, steer: float, ticks: int = 20) -> np.ndarray:
    sim.reset(seed)
    out = []
    for _ in range(ticks):
        out.append(sim.observe())
        sim.step(steer)
    return np.array(out)


def test_same_seed_same_episode_and_noise_does_not_depend_on_the_driver() -> None:
    with LaneKeepingSim() as sim:
        a = observations(sim, 3, 0.0)
        b = observations(sim, 3, 0.0)
        other_seed = observations(sim, 4, 0.0)
        sim.reset(3)
        truth0 = sim.truth()
        steered = observations(sim, 3, 0.2)
    assert np.array_equal(a, b)
    assert not np.allclose(a, other_seed)
    assert a.shape == (20, 2) and a.dtype == np.float32
    assert a[0] == pytest.approx([truth0.lateral_m, truth0.heading_error_rad], abs=0.25 * 5)
    assert np.array_equal(a[0], steered[0])  # the first reading is before any command
    assert not np.allclose(a[5:], steered[5:])  # the car moved differently


def test_the_expert_keeps_its_lane_round_the_bends() -> None:
    with LaneKeepingSim(SimConfig(episode_s=20.0)) as sim:
        trace = run_episode(sim, 11, Mode.EXPERT)
    assert trace.steps == 200 and not trace.off_road
    assert float(np.mean(np.abs(trace.lateral_m[50:]))) < 0.1  # after the initial recovery
    assert max(abs(s) for s in trace.steer_rad) > 0.2  # it did steer through bends


@pytest.mark.parametrize(("field", "value", "match"), [
    ("sim_hz", 15.0, "whole multiple of control_hz"),
    ("episode_s", 0.0, "episode_s"),
    ("lateral_noise_m", -1.0, "lateral_noise_m"),
])
def test_bad_settings_are_refused_naming_the_field(field: str, value: float, match: str) -> None:
    with pytest.raises(SimError, match=match):
        SimConfig(**{field: value})


def episodes(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    data = DataConfig(source="log", path=str(path), features=["lateral_offset_m",
                                                              "heading_error_rad"],
                      targets=["steer_rad"])
    ep = LogSource(data).read()
    return ep.x, ep.y


def test_recorded_logs_are_reproducible_and_train_ready(tmp_path: Path) -> None:
    paths = [tmp_path / "a.mcap", tmp_path / "b.mcap"]
    with LaneKeepingSim(SimConfig(episode_s=3.0)) as sim:
        for path in paths:
            with LogWriter(path) as writer:
                traces = record_episodes(sim, [0, 1], writer.write, exploration_rad=0.1)
    assert paths[0].read_bytes() == paths[1].read_bytes()  # same seeds: the same file
    xs, ys = episodes(paths[0])
    assert [len(x) for x in xs] == [30, 30] and xs[0].shape[1] == 2 and ys[0].shape[1] == 1
    # the targets are the expert's commands, not the noisy applied ones
    assert ys[0][:, 0] == pytest.approx(traces[0].expert_rad, abs=1e-6)
    assert not np.allclose(traces[0].expert_rad, traces[0].steer_rad)


def test_lstm_stream_record_captures_the_same_training_data(tmp_path: Path) -> None:
    """The live path: the simulator publishes sensors and controls, `lstm-stream record`
    (a real subprocess) logs them; the trainer reads the same episodes as from a direct log."""
    endpoint = free_endpoint()
    out = tmp_path / "live.mcap"
    proc = subprocess.Popen([sys.executable, "-m", "lstm_stream", "record", "--input", endpoint,
                             "--topics", "sensors,controls", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ctx = zmq.Context()
    try:
        with VehicleStack(ctx, endpoint) as stack, \
                LaneKeepingSim(SimConfig(episode_s=2.0)) as sim:
            wait_subscribers(stack, ["sensors", "controls"])
            record_episodes(sim, [5, 6], lambda *_: None, exploration_rad=0.1, publish=stack)
            with LogWriter(tmp_path / "direct.mcap") as writer:
                record_episodes(sim, [5, 6], writer.write, exploration_rad=0.1)
            time.sleep(1.0)  # the recorder flushes at least every 0.5 s
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
        ctx.destroy(linger=0)
    assert proc.returncode == 0
    live_x, live_y = episodes(out)
    direct_x, direct_y = episodes(tmp_path / "direct.mcap")
    assert len(live_x) == len(direct_x) == 2
    for a, b in zip(live_x + live_y, direct_x + direct_y, strict=True):
        assert np.array_equal(a, b)
