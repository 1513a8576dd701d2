"""`lstm-stream replay` on real sockets: order and bytes, selection and renaming, the
rate-1.0 report, waiting for subscribers, and pause/step/resume over the control socket."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from lstm_stream.core.errors import ConfigError, LogError
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.replay import ReplayConfig, Replayer
from lstm_stream.procs import free_endpoint
from lstm_stream.serve.client import control_request

from helpers.logs import write_drive


def subscriber(ctx: zmq.Context[Any], endpoint: str, topic: bytes = b"") -> zmq.Socket[Any]:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(endpoint)
    sub.subscribe(topic)
    return sub


def receive(sub: zmq.Socket[Any], count: int, timeout_ms: int = 10000) -> list[list[bytes]]:
    out = []
    while len(out) < count and sub.poll(timeout_ms):
        out.append(sub.recv_multipart())
    return out


def test_rate0_sends_every_message_in_order_with_selection_and_remap(
        tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=2, steps=50, chunk_bytes=3000)
    expected = [m.data for m in LogReader(log).messages(["sensors"])]
    cfg = ReplayConfig([log], output="tcp://127.0.0.1:*", rate=0, topics=["sensors"],
                       remap={"sensors": "replayed"})
    with Replayer(cfg, context=ctx) as rep:
        sub = subscriber(ctx, rep.endpoint, b"replayed")
        report = rep.run()
        got = receive(sub, len(expected))
    assert [t for t, _ in got] == [b"replayed"] * len(expected)
    assert [d for _, d in got] == expected
    assert report.published == len(expected) and report.schedule_error_us is None
    assert report.topics == {"replayed": len(expected)}


def test_start_and_duration_select_a_window(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=1, steps=100, targets=False)
    cfg = ReplayConfig([log], output="tcp://127.0.0.1:*", rate=0, start_s=0.2, duration_s=0.1)
    with Replayer(cfg, context=ctx) as rep:
        sub = subscriber(ctx, rep.endpoint)
        report = rep.run()
        got = receive(sub, report.published)
    assert [msgpack.unpackb(d)["seq"] for _, d in got] == list(range(20, 30))


def test_cli_rate_one_prints_the_schedule_error_report(tmp_path: Path,
                                                       ctx: zmq.Context[Any]) -> None:
    log = write_drive(tmp_path / "khz.mcap", streams=1, steps=500, period_ns=1_000_000,
                      targets=False)  # 1 kHz for 0.5 s
    endpoint = free_endpoint()
    sub = subscriber(ctx, endpoint)
    proc = subprocess.run([sys.executable, "-m", "lstm_stream", "replay", str(log), "--output",
                           endpoint, "--rate", "1.0", "--json"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json

    report = json.loads(proc.stdout)
    assert report["published"] == 500 and len(receive(sub, 500)) == 500
    assert set(report["schedule_error_us"]) == {"p50", "p99", "max"}
    assert report["achieved_rate"] > 0 and report["target_rate"] == pytest.approx(1000.0)
    text = subprocess.run([sys.executable, "-m", "lstm_stream", "replay", str(log), "--output",
                           endpoint, "--rate", "1.0", "--duration", "0.05"],
                          capture_output=True, text=True, timeout=60)
    assert "schedule error p50" in text.stdout and "p99" in text.stdout


def test_no_subscriber_is_a_clear_error(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    log = write_drive(tmp_path / "drive.mcap", steps=5)
    cfg = ReplayConfig([log], output="tcp://127.0.0.1:*", wait_timeout_s=0.3)
    with Replayer(cfg, context=ctx) as rep, pytest.raises(LogError, match="--no-wait"):
        rep.run()


def test_bad_options_are_named(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    log = write_drive(tmp_path / "drive.mcap", steps=5)
    with pytest.raises(ConfigError, match="--rate"):
        ReplayConfig([log], rate=-1)
    with pytest.raises(ConfigError, match="--remap names topic"):
        Replayer(ReplayConfig([log], output="tcp://127.0.0.1:*", remap={"lidar": "x"}),
                 context=ctx)
    with pytest.raises(LogError, match="no messages on topic"):
        Replayer(ReplayConfig([log], output="tcp://127.0.0.1:*", topics=["lidar"]), context=ctx)


def test_pause_step_resume_from_the_control_socket(tmp_path: Path,
                                                   ctx: zmq.Context[Any]) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=1, steps=40, targets=False)
    control = free_endpoint()
    cfg = ReplayConfig([log], output="tcp://127.0.0.1:*", rate=1.0, control=control,
                       start_paused=True)
    with Replayer(cfg, context=ctx) as rep:
        sub = subscriber(ctx, rep.endpoint)
        thread = threading.Thread(target=rep.run)
        thread.start()
        try:
            assert not sub.poll(300)  # paused: nothing sent
            for _ in range(2):
                assert control_request(control, {"cmd": "step"})["ok"]
            first = receive(sub, 2)
            assert not sub.poll(200)  # still paused after the steps
            status = control_request(control, {"cmd": "status"})
            assert status["paused"] and status["published"] == 2
            bad = control_request(control, {"cmd": "rewind"})
            assert not bad["ok"] and "unknown command" in bad["error"]
            assert not control_request(control, {"cmd": "resume"})["paused"]
            rest = receive(sub, 38)
        finally:
            rep.stop()
            thread.join(10)
    seqs = [msgpack.unpackb(d)["seq"] for _, d in first + rest]
    assert seqs == list(range(40))


def test_loop_plays_the_log_again_until_stopped(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=1, steps=10, targets=False,
                      period_ns=1_000_000)
    cfg = ReplayConfig([log], output="tcp://127.0.0.1:*", rate=1.0, loop=True)
    with Replayer(cfg, context=ctx) as rep:
        sub = subscriber(ctx, rep.endpoint)
        thread = threading.Thread(target=rep.run)
        thread.start()
        got = receive(sub, 25)
        rep.stop()
        thread.join(10)
    assert [msgpack.unpackb(d)["seq"] for _, d in got] == (list(range(10)) * 3)[:25]
    assert rep.report.loops >= 2
