"""`lstm-stream record` as a real subprocess on real loopback sockets: the record ->
replay -> record round trip, SIGKILL survival plus `log recover`, and `log info`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from mcap.reader import make_reader

from lstm_stream.cli.main import main
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.replay import ReplayConfig, Replayer
from lstm_stream.procs import free_endpoint

from helpers.logs import write_drive
from helpers.support import run_python


def start_recorder(endpoint: str, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "lstm_stream", "record", "--input", endpoint,
                             "-o", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_count(path: Path, count: int, timeout_s: float = 15.0) -> None:
    """Poll the file being recorded (our reader reads unfinished files) until it holds
    ``count`` messages."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 8 and LogReader(path).message_count() >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach {count} messages")


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_record_replay_record_round_trip_is_identical(tmp_path: Path,
                                                      ctx: zmq.Context[Any]) -> None:
    first = write_drive(tmp_path / "first.mcap", streams=3, steps=100)
    expected = [(m.topic, m.data) for m in LogReader(first).messages()]
    endpoint = free_endpoint()
    second = tmp_path / "second.mcap"
    with Replayer(ReplayConfig([first], output=endpoint, rate=0.0), context=ctx) as replayer:
        proc = start_recorder(endpoint, second)
        try:
            report = replayer.run()  # waits for the recorder's subscription
            wait_count(second, len(expected))
        finally:
            out = stop(proc)
    assert report.published == len(expected)
    got = [(m.topic, m.data) for m in LogReader(second).messages()]
    assert got == expected  # same messages, bytes and order
    assert f"record: {len(expected)} messages" in out
    assert LogReader(second).metadata["lstm_stream"]["kind"] == "recording"


def test_sigkill_loses_at_most_the_last_second(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    out = tmp_path / "killed.mcap"
    pub = ctx.socket(zmq.XPUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    proc = start_recorder(endpoint, out, "--topics", "sensors")
    assert pub.poll(15000) and pub.recv() == b"\x01sensors"
    sent: list[tuple[int, float]] = []
    x = np.zeros(16, np.float32)
    t_end = time.monotonic() + 2.5
    k = 0
    while time.monotonic() < t_end:
        pub.send_multipart([b"sensors", encode_sensor(k, x, stream="car")])
        sent.append((k, time.monotonic()))
        k += 1
        time.sleep(0.005)
    killed_at = time.monotonic()
    proc.kill()
    proc.communicate(timeout=10)
    pub.close(linger=0)
    reader = LogReader(out)
    got = [msgpack.unpackb(m.data)["seq"] for m in reader.messages()]
    must_have = [seq for seq, t in sent if t < killed_at - 1.0]
    assert len(must_have) > 100
    assert got[:len(must_have)] == must_have  # everything older than 1 s, in order
    assert not reader.complete

    # `log recover` makes a file that the official reader accepts, with a summary.
    recovered = tmp_path / "recovered.mcap"
    assert main(["log", "recover", str(out), "-o", str(recovered)]) == 0
    with open(recovered, "rb") as f:
        mreader = make_reader(f)
        summary = mreader.get_summary()
        assert summary is not None and summary.statistics is not None
        theirs = [msgpack.unpackb(m.data)["seq"] for _, _, m in mreader.iter_messages()]
    assert theirs == got


def test_record_splits_by_duration_and_stops_after_duration(tmp_path: Path,
                                                            ctx: zmq.Context[Any]) -> None:
    pub = ctx.socket(zmq.XPUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    proc = start_recorder(endpoint, tmp_path / "part.mcap", "--split-duration", "0.4",
                          "--duration", "1.5")
    assert pub.poll(15000) and pub.recv() == b"\x01"
    k = 0
    while proc.poll() is None and k < 2000:
        pub.send_multipart([b"sensors", encode_sensor(k, [0.0] * 16)])
        pub.send_multipart([b"one-frame"])  # not [topic, payload]: counted, not recorded
        k += 1
        time.sleep(0.005)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err.decode()
    parts = sorted(tmp_path.glob("part_*.mcap"))
    assert len(parts) >= 2
    seqs = [msgpack.unpackb(m.data)["seq"] for p in parts for m in LogReader(p).messages()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing lost between parts
    assert "not recorded" in out.decode()


def test_log_info_reports_topics_streams_and_gaps(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from lstm_stream.logs.writer import LogWriter

    path = tmp_path / "gaps.mcap"
    with LogWriter(path) as w:
        for i, seq in enumerate([0, 1, 2, 5, 6, 10, 3]):
            w.write("sensors", encode_sensor(seq, [0.0] * 16, stream="car"), 10**9 + i * 10**7)
        w.write("other", b"\xc1", 2 * 10**9)  # not msgpack: still counted
    assert main(["log", "info", str(path), "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["topics"]["sensors"]["messages"] == 7
    assert info["topics"]["other"]["not_stream_messages"] == 1
    (car,) = info["streams"]
    assert (car["gaps"], car["missing"], car["backwards"]) == (2, 5, 1)
    assert main(["log", "info", str(path)]) == 0
    assert "gaps 2 (missing 5)" in capsys.readouterr().out


def test_cli_imports_and_explains_without_mcap() -> None:
    code = ("import sys; sys.modules['mcap'] = None\n"
            "from lstm_stream.cli.main import main\n"
            "sys.exit(main(['log', 'info', 'x.mcap']))")
    proc = run_python(code)
    assert proc.returncode == 1
    assert "pip install 'lstm-stream[logs]'" in proc.stderr


def _read_line(proc: subprocess.Popen[bytes], needle: str, timeout_s: float = 15.0) -> str:
    """The first stderr line of ``proc`` containing ``needle`` (reads line by line)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line with {needle!r} on stderr")


def test_a_vehicle_stack_can_tell_when_record_is_subscribed(tmp_path: Path,
                                                            ctx: zmq.Context[Any]) -> None:
    """Both ways docs/logs.md gives: the subscription frames on an XPUB, and the
    readiness line; what is published after them is all recorded."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    out = tmp_path / "ready.mcap"
    proc = start_recorder(endpoint, out, "--topics", "sensors,controls")
    try:
        seen = set()
        deadline = time.monotonic() + 15
        while seen != {b"\x01sensors", b"\x01controls"} and time.monotonic() < deadline:
            if pub.poll(100):
                seen.add(pub.recv())
        assert seen == {b"\x01sensors", b"\x01controls"}  # one frame per recorded topic
        line = _read_line(proc, "record: subscribed to")
        assert f"subscribed to sensors,controls on {endpoint} (connected)" in line
        assert f"recording into {out}" in line
        for seq in range(50):  # at once, no sleep: nothing may be lost
            pub.send_multipart([b"sensors", encode_sensor(seq, np.zeros(4, np.float32))])
            pub.send_multipart([b"controls", msgpack.packb({"seq": seq, "y": [0.0]})])
        wait_count(out, 100)
    finally:
        stop(proc)
    assert LogReader(out).topic_counts() == {"sensors": 50, "controls": 50}
