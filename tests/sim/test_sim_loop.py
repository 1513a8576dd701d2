"""The simulator as a vehicle stack, in closed loop with a real `lstm-stream serve` process over
loopback ZeroMQ, on the real highway-env race track (the [sim] extra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import zmq

pytest.importorskip("highway_env", reason="needs the [sim] extra")

from lstm_stream.serve.client import VehicleStack
from lstm_stream.sim.env import LaneKeepingSim, SimConfig
from lstm_stream.sim.loop import Mode, PolicyLink, closed_loop, run_episode
from lstm_stream.sim.report import summarize, table, write_json, write_plot

from helpers.support import REPO

MODEL = REPO / "models" / "lane_keep_lstm.onnx"


@pytest.mark.slow
def test_carried_state_beats_reset_every_step_in_closed_loop(tmp_path: Path) -> None:
    seeds = [1000, 1001, 1002]
    with LaneKeepingSim(SimConfig(episode_s=15.0)) as sim:
        traces = closed_loop(MODEL, seeds, list(Mode), sim=sim, deadline_ms=2000.0)
        road = sim.road_lines()
    by = {(t.mode, t.seed): t for t in traces}
    assert len(by) == 9
    summary = summarize(traces)
    carried, reset, expert = summary["carried"], summary["reset"], summary["expert"]
    # The episode metric: the same model with its state carried drives clearly better.
    assert carried["mean_return"] > reset["mean_return"] + 10
    assert carried["mean_lateral_error_m"] < 0.5 * reset["mean_lateral_error_m"]
    assert carried["off_road"] == 0 and expert["off_road"] == 0
    for seed in seeds:
        served = by[(Mode.CARRIED, seed)]
        assert served.missed_deadlines == 0 and served.rejected == 0
        assert len(served.latency_us) == served.steps  # one measured round trip per tick
        assert by[(Mode.EXPERT, seed)].latency_us == []  # nobody asked
    assert "carried" in table(summary) and "reset" in table(summary)
    write_json(tmp_path / "r.json", traces, summary, {"seeds": seeds})
    body: dict[str, Any] = json.loads((tmp_path / "r.json").read_text())
    assert len(body["episodes"]) == 9 and body["summary"]["reset"]["episodes"] == 3
    write_plot(tmp_path / "r.png", traces, road)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_silent_runner_is_a_missed_deadline_and_the_last_command_is_kept() -> None:
    ctx = zmq.Context()
    try:
        with VehicleStack(ctx) as stack, LaneKeepingSim(SimConfig(episode_s=1.0)) as sim:
            trace = run_episode(sim, 7, Mode.CARRIED, link=PolicyLink(stack, deadline_ms=5))
    finally:
        ctx.destroy(linger=0)
    assert trace.steps == 10 and trace.missed_deadlines == 10
    assert trace.steer_rad == [0.0] * 10  # the fallback: the previous (initial) command
    assert trace.latency_us == []
