"""`lstm-stream bench` runs, against real processes, and its report has every field.

Speed is not asserted here (the machine is shared and noisy); the benchmark
prints its ratios and docs/benchmarks.md records them with their command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lstm_stream.bench.e2e import process_usage, set_realtime
from lstm_stream.bench.stats import summarize_ns

REPO = Path(__file__).resolve().parents[2]


def test_summary_of_known_samples() -> None:
    s = summarize_ns(np.arange(1, 101) * 1000)  # 1 .. 100 us
    assert s["count"] == 100 and s["min"] == 1.0 and s["max"] == 100.0
    assert s["mean"] == 50.5
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)
    assert summarize_ns([]) == {"count": 0}


def test_process_usage_reads_proc_for_a_live_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "x = bytearray(50_000_000); input()"],
                             stdin=subprocess.PIPE)
    try:
        import time

        time.sleep(0.5)
        usage = process_usage(child.pid)
    finally:
        child.kill()
        child.wait()
    assert usage["peak_rss_mb"] >= 45 and usage["cpu_s"] >= 0


def test_realtime_request_is_granted_or_explained() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        got = set_realtime(child.pid, 1)
    finally:
        child.kill()
        child.wait()
    assert got == "SCHED_FIFO 1" or got.startswith("refused:")
    assert set_realtime(child.pid, None) == "not requested"


@pytest.mark.slow
def test_bench_quick_writes_a_complete_report(tmp_path: Path) -> None:
    out, png, raw = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "r.npz"
    cmd = [sys.executable, "-m", "lstm_stream", "bench", "--quick", "--rate", "500",
           "--rate", "0", "--duration", "0.5", "--servers", "echo,runner,naive-ort",
           "--transport", "both",
           "--json", str(out), "--plot", str(png), "--raw", str(raw)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    # platform record
    p = report["platform"]
    for key in ("cpu", "cores", "governor", "kernel", "versions", "settings", "affinity"):
        assert key in p
    for key in ("python", "numpy", "onnxruntime", "pyzmq", "libzmq"):
        assert p["versions"][key]
    assert report["model"]["layers"] == 2 and report["model"]["hidden"] == 64
    assert report["model"]["features"] == 16 and report["model"]["sensor_payload_bytes"] > 64
    # step latency: every backend, the floor and the naive loop
    for name in ("onnxruntime batch 1", "numpy batch 1", "floor b: bare InferenceSession.run",
                 "naive: default InferenceSession loop",
                 "runner in process: decode + state + step + encode",
                 "bare InferenceSession.run, 1 ms apart"):
        for q in ("p50", "p90", "p99", "p99.9", "max"):
            assert report["step"][name][q] > 0, (name, q)
    # end to end: 3 servers x 2 rates x 2 transports
    assert {(r["server"], r["rate_hz"], r["transport"]) for r in report["e2e"]} == {
        (s, r, t) for s in ("echo", "runner", "naive-ort") for r in (500.0, 0.0)
        for t in ("tcp", "ipc")}
    for run in report["e2e"]:
        assert run["received"] > 0 and run["sent"] >= run["received"]
        for key in ("latency_us", "in_server_us", "send_jitter_us", "server_cpu_percent",
                    "server_peak_rss_mb", "achieved_rate_hz", "lost"):
            assert key in run, key
        assert run["latency_us"]["p50"] > 0
    runner = [r for r in report["e2e"] if r["server"] == "runner"]
    assert all(0 < r["startup_s"] < 30 for r in runner)
    # the verdict: ratios to the floors, computed per rate
    assert len(report["verdict"]) == 4
    for row in report["verdict"]:
        assert row["p50_ratio"] == pytest.approx(row["p50_runner_us"] / row["p50_floors_us"],
                                                 rel=1e-2)
        assert "overhead_p50_us" in row and "p99_ratio" in row and "in_server_p50_us" in row
    assert "runner vs floors" in done.stdout and "runner overhead in process" in done.stdout
    # the first messages after start, warm-up off and on; the first batched calls
    messages, batches = report["startup"]["messages"], report["startup"]["batches"]
    assert [r["warmup"] for r in messages] == [False, True] == [b["warmup"] for b in batches]
    for run in messages:
        assert len(run["first_us"]) == 10 and run["steady_us"]["count"] == 100
        assert run["first_over_steady"] == pytest.approx(
            run["first_mean_us"] / run["steady_p50_us"], rel=2e-2)
    assert [row["batch"] for row in batches[0]["batches"]] == [2, 8, 32, 64]
    assert "first messages after start" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(raw, allow_pickle=False) as arrays:
        assert len(arrays.files) == 12 and all(arrays[f].size > 0 for f in arrays.files)
