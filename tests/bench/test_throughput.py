"""`lstm-stream bench --throughput` counts every message over real sockets, and its
report has every field.

Real server processes, real sockets, no mocks. Speed is never asserted (the
machine is shared and noisy): only that messages flow, none is lost or
reordered, and that the report says what it measured.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from lstm_stream.bench.e2e import ServerProcess, endpoints, server_process
from lstm_stream.bench.load import ThroughputGenerator, default_window
from lstm_stream.bench.throughput import batched_run
from lstm_stream.cli.main import main
from lstm_stream.core.model.contract import load_contract

REPO = Path(__file__).resolve().parents[2]
MODEL = str(REPO / "models" / "random_lstm.onnx")


@pytest.fixture
def decode_server() -> Iterator[ServerProcess]:
    """Floor (a') as its own process on free loopback ports."""
    with server_process("decode", MODEL, endpoints("tcp")) as server:
        yield server


def generator(ctx: zmq.Context[Any], server: ServerProcess, streams: int,
              window: int) -> ThroughputGenerator:
    gen = ThroughputGenerator(ctx, server.ends, 16, streams, window)
    gen.connect()
    return gen


def test_every_message_comes_back_once_and_in_order(ctx: zmq.Context[Any],
                                                     decode_server: ServerProcess) -> None:
    gen = generator(ctx, decode_server, streams=10, window=64)
    try:
        first = gen.run(0.3)
        second = gen.run(0.3)  # seq carries on from the first run, per stream
    finally:
        gen.close()
    for phase in (first, second):
        s = phase.summary()
        assert s["sent"] > 100 and s["received"] == s["sent"], s
        assert s["lost"] == 0 and s["reordered"] == 0 and not s["stalled"]
        assert s["latency_us"]["count"] == s["received"] and s["latency_us"]["min"] > 0
        assert s["steps_per_s"] > 0 and 0 <= s["generator"]["wait_percent"] <= 100
    # round robin: every stream's next seq is within one of every other's
    assert max(gen.expect) - min(gen.expect) <= 1


def test_a_seq_going_back_is_counted_as_reordered(ctx: zmq.Context[Any],
                                                  decode_server: ServerProcess) -> None:
    # floor (a') echoes any seq: rewinding one round makes every stream's next
    # output older than the one before it
    gen = generator(ctx, decode_server, streams=4, window=8)
    try:
        gen.run(0.1)
        gen.seq -= 1
        phase = gen.run(0.1)
    finally:
        gen.close()
    assert phase.reordered == 4 and phase.received == phase.sent


def test_a_server_that_stops_answering_is_lost_not_hung(ctx: zmq.Context[Any],
                                                        decode_server: ServerProcess) -> None:
    gen = generator(ctx, decode_server, streams=3, window=16)
    try:
        decode_server.proc.terminate()
        decode_server.proc.wait(10)
        phase = gen.run(0.2, stall_s=0.5)
    finally:
        gen.close()
    s = phase.summary()
    assert s["stalled"] and s["received"] == 0 and s["lost"] == s["sent"] == 16


def test_floor_b_is_batch_over_time_per_run() -> None:
    result = batched_run(load_contract(MODEL), batch=8, runs=300, warmup=50)
    assert result["batch"] == 8 and result["run_us"]["count"] == 300
    assert result["steps_per_s"] == pytest.approx(8e6 / result["run_us"]["mean"], rel=0.01)


def test_default_window_fills_batches_and_stays_under_the_high_water_mark() -> None:
    assert default_window(1, 64) == 128  # two full batches
    assert default_window(100, 64) == 400  # four per stream
    assert default_window(100_000, 64) == 10_000  # ZeroMQ would drop above


@pytest.mark.parametrize("argv, message", [
    (["--throughput", "--rate", "100"], "--rate do not apply with --throughput"),
    (["--throughput", "--streams", "1,x"], "--streams takes positive integers"),
    (["--throughput", "--window", "20000"], "--window must be between 1 and 10000"),
    (["--throughput", "--servers", "runner,nope"], "--servers takes a comma list"),
    (["--window", "8"], "--window apply only with --throughput"),
])
def test_cli_refuses_options_that_do_not_fit(argv: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_throughput_cli_writes_a_complete_report(tmp_path: Path) -> None:
    out, png = tmp_path / "t.json", tmp_path / "t.png"
    plot = importlib.util.find_spec("matplotlib") is not None
    cmd = [sys.executable, "-m", "lstm_stream", "--log-level", "warning", "bench",
           "--throughput", "--quick", "--streams", "1,10", "--duration", "0.5", "--steps", "200",
           "--servers", "decode,runner-unbatched,runner", "--model", MODEL, "--json", str(out),
           *(["--plot", str(png)] if plot else [])]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["suite"] == "throughput"
    for key in ("cpu", "cores", "kernel", "versions", "settings"):
        assert key in report["platform"]
    assert report["platform"]["settings"]["streams"] == [1, 10]
    assert report["model"]["layers"] == 2 and report["model"]["features"] == 16
    # floor (b'): one entry per batch size, min(streams, max_batch)
    assert [f["batch"] for f in report["floor_b"]] == [1, 10]
    assert all(f["steps_per_s"] > 0 and f["run_us"]["p50"] > 0 for f in report["floor_b"])
    rows = report["throughput"]
    assert {(r["server"], r["streams"]) for r in rows} == {
        (s, n) for s in ("decode", "runner-unbatched", "runner") for n in (1, 10)}
    for r in rows:
        for key in ("label", "transport", "window", "steps_per_s", "latency_us", "sent",
                    "received", "lost", "reordered", "rejected", "server_cpu_percent",
                    "mean_batch", "generator", "limited_by", "elapsed_s"):
            assert key in r, key
        assert r["lost"] == 0 and r["reordered"] == 0 and r["rejected"] == 0, r
        assert r["steps_per_s"] > 0 and r["received"] == r["sent"]
        for q in ("p50", "p90", "p99", "p99.9", "max"):
            assert r["latency_us"][q] > 0
        for key in ("thread_cpu_percent", "process_cpu_percent", "wait_percent",
                    "cpu_us_per_message"):
            assert r["generator"][key] is not None
        assert r["limited_by"] in ("server", "generator")
    for r in rows:  # a runner without the batches counter reports none
        if r["server"] == "runner-unbatched" and r["mean_batch"] is not None:
            assert r["mean_batch"] == 1.0
        if r["server"] == "decode":
            assert r["mean_batch"] is None
    # the verdict: the batched runner against both floors and the unbatched runner
    assert [v["streams"] for v in report["verdict"]] == [1, 10]
    for v in report["verdict"]:
        assert v["ratio_to_floor_a"] == pytest.approx(
            v["runner_steps_per_s"] / v["floor_a_steps_per_s"], rel=1e-2)
        assert v["ratio_to_floor_b"] == pytest.approx(
            v["runner_steps_per_s"] / v["floor_b_steps_per_s"], rel=1e-2)
        assert v["batching_gain"] > 0 and v["lost"] == 0 and v["reordered"] == 0
    assert report["generator"]["max_steps_per_s"] > 0
    assert "runner (batched) vs floor a'" in done.stdout and "load generator:" in done.stdout
    assert "machine " in done.stdout and "floor a': a Python server" in done.stdout
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_throughput_has_a_batch_message_row_against_the_same_batch(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    cmd = [sys.executable, "-m", "lstm_stream", "--log-level", "warning", "bench",
           "--throughput", "--quick", "--streams", "10", "--duration", "0.5", "--steps", "200",
           "--servers", "runner,runner-batch-messages", "--model", MODEL, "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    (row,) = [r for r in report["throughput"] if r["server"] == "runner-batch-messages"]
    assert row["lost"] == 0 and row["reordered"] == 0 and row["received"] == row["sent"] > 0
    assert row["sent"] % 10 == 0  # whole ticks: every message carries the ten streams
    (v,) = report["batch_messages"]
    assert v["streams"] == v["floor_b_batch"] == 10
    assert v["ratio_to_floor_b"] == pytest.approx(v["steps_per_s"] / v["floor_b_steps_per_s"],
                                                  rel=1e-2)
    assert v["gain"] == pytest.approx(v["steps_per_s"] / v["runner_steps_per_s"], rel=1e-2)
    assert "batch messages: one message per tick" in done.stdout
