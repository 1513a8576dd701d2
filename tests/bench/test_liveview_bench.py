"""lstm-stream bench --liveview: the runner with and without the Foxglove live view."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.support import REPO

pytest.importorskip("foxglove")
pytest.importorskip("websockets")


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lstm_stream", "bench", "--liveview", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_bench_liveview_measures_plain_and_live_runs_with_a_viewer_receiving(
        tmp_path: Path) -> None:
    out = tmp_path / "liveview.json"
    done = bench("--quick", "--rate", "500", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["suite"] == "liveview" and report["rate_hz"] == 500
    plain, live = report["runs"]
    assert (plain["live"], live["live"]) == (False, True)
    for run in (plain, live):
        assert run["sent"] == 500 and run["lost"] == 0 and 0 < run["p50"] <= run["p99"]
    # the viewer, a process of its own, subscribed to the runner's channels and got frames
    # the runner's live view published; inputs, outputs and health at the least
    assert live["viewer_channels"] >= 3 and 0 < live["viewer_frames"] <= live["published"]
    assert live["dropped"] == 0 and live["thinned"] > 0  # viz.max_rate_hz 50 < 500 Hz
    assert "viewer_frames" not in plain
    m = report["medians"]
    assert m["p50_ratio"] == pytest.approx(live["p50"] / plain["p50"], abs=2e-3)
    assert m["p99_ratio"] == pytest.approx(live["p99"] / plain["p99"], abs=2e-3)
    assert f"live / plain: p50 {m['p50_ratio']:.3f}x" in done.stdout


@pytest.mark.parametrize(("args", "wanted"), [
    (("--rate", "0"), "one --rate above 0 Hz"),
    (("--rate", "100", "--rate", "1000"), "one --rate above 0 Hz"),
    (("--rounds", "0"), "--rounds >= 1"),
    (("--throughput",), "--throughput do not apply with --liveview"),
    (("--plot", "x.png"), "--plot do not apply with --liveview"),
    (("--pin", "1", "--transport", "ipc"), "--pin, --transport do not apply with --liveview"),
])
def test_bench_liveview_refuses_what_it_cannot_measure(args: tuple[str, ...],
                                                        wanted: str) -> None:
    done = bench(*args, timeout=60)
    assert done.returncode == 2 and wanted in done.stderr, done.stderr
