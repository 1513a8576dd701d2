"""Benchmark: how closely `replay` keeps the recorded timing of a 1 kHz log.

Writes a synthetic log (one sensor stream at --hz for --seconds), replays it at
rate 1.0 to a subscriber in a separate process on loopback, and prints the
schedule error (actual send - scheduled send) p50/p99/max, the achieved rate,
the reader's longest wait for one message of the same log (what a chunk
boundary costs the replayer) and a description of the machine. Nothing is
asserted: the figures depend on the machine and on what else runs on it.

    .venv/bin/python tools/bench_replay.py --seconds 10 --hz 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.replay import ReplayConfig, Replayer
from lstm_stream.logs.writer import LogWriter

SUBSCRIBER = """
import sys, zmq
ctx = zmq.Context(); sub = ctx.socket(zmq.SUB); sub.setsockopt(zmq.RCVHWM, 0)
sub.connect(sys.argv[1]); sub.subscribe(b"")
n, want = 0, int(sys.argv[2])
while n < want and sub.poll(10000):
    sub.recv_multipart(); n += 1
print(n)
"""


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, load average {load[0]:.2f} (shared machine)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--hz", type=float, default=1000.0)
    args = parser.parse_args()
    count = int(args.seconds * args.hz)
    period = int(1e9 / args.hz)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "bench.mcap"
        x = np.zeros(16, np.float32)
        with LogWriter(log) as w:
            for k in range(count):
                t = 1_700_000_000_000_000_000 + k * period
                w.write("sensors", encode_sensor(k, x, stream="bench", stamp_ns=t), t)
        waits = reader_waits(log)
        with Replayer(ReplayConfig([log], output="tcp://127.0.0.1:*", rate=1.0)) as rep:
            sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, rep.endpoint, str(count)],
                                   stdout=subprocess.PIPE, text=True)
            report = rep.run()
            received = sub.communicate(timeout=60)[0].strip()
    err = report.schedule_error_us or {}
    print(f"replay benchmark: {count} messages at {args.hz:g} Hz ({args.seconds:g} s), rate 1.0, "
          f"tcp loopback, subscriber in another process (received {received})")
    print(f"schedule error  p50 {err.get('p50', 0):8.1f} us   p99 {err.get('p99', 0):8.1f} us   "
          f"max {err.get('max', 0):8.1f} us")
    print(f"achieved rate   {report.achieved_rate:,.1f} msg/s (schedule "
          f"{report.target_rate or 0:,.1f} msg/s), resyncs {report.resyncs}")
    print(f"reader          longest wait for one message {waits[-1] / 1e6:.2f} ms, median "
          f"{waits[len(waits) // 2] / 1e3:.2f} us ({count} messages read as fast as they come)")
    print(f"machine         {machine()}")
    return 0


def reader_waits(log: Path) -> list[int]:
    """The time LogReader.messages() takes to give each message, sorted (ns)."""
    waits = []
    clock = time.perf_counter_ns
    reader = LogReader(log)  # the scan at open is not a wait between messages
    last = clock()
    for _ in reader.messages():
        now = clock()
        waits.append(now - last)
        last = now
    return sorted(waits)


if __name__ == "__main__":
    sys.exit(main())
