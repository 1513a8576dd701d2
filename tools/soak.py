"""Soak test: many streams at a steady aggregate rate against a real `lstm-stream serve`.

    .venv/bin/python tools/soak.py --duration 600 --streams 100 --rate 1000 --out out/soak

Starts `serve` as a subprocess on free loopback ports (with state snapshots on,
every second, as a deployment would run it), publishes ``--streams`` streams
round-robin at an aggregate ``--rate`` messages per second for ``--duration``
seconds, and reports: messages lost (sent but no output), gaps and resets by
reason as the outputs report them, rejections, round-trip latency percentiles
per window, and the runner's resident memory per window. The load generator
spins one core between sends so that it stamps each output as it arrives
(round trip = receive time - send time on one monotonic clock). Writes
``soak.json`` and ``soak.png`` (latency and RSS over time) to ``--out``.
Exit code 0 when nothing was lost, rejected or unexpectedly reset.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from lstm_stream.core.plotting import pyplot
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.serve.client import ControlError, VehicleStack, control_request


def free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_serve(model: str, sensors: str, *extra: str) -> tuple[subprocess.Popen[bytes], str,
                                                                   str]:
    output, control = free_endpoint(), free_endpoint()
    cmd = [sys.executable, "-m", "lstm_stream", "serve", model, "--input", sensors,
           "--output", output, "--control", control, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"serve exited with {proc.returncode}: {err}")
        try:
            control_request(control, {"cmd": "status"}, timeout_s=0.5)
            return proc, output, control
        except ControlError:
            pass
    proc.kill()
    raise SystemExit("serve did not start")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {"p50": round(float(np.percentile(arr, 50)), 1),
            "p99": round(float(np.percentile(arr, 99)), 1),
            "p99.9": round(float(np.percentile(arr, 99.9)), 1),
            "max": round(float(arr.max()), 1)}


def soak(model: str, duration_s: float, streams: int, rate_hz: float, window_s: float,
         snapshot_dir: str) -> dict[str, Any]:
    ctx = zmq.Context()
    x = np.random.default_rng(0).normal(size=(streams, 16)).astype(np.float32)
    names = [f"soak/{i:03d}" for i in range(streams)]
    sent = received = 0
    next_seq = [0] * streams
    last_out = dict.fromkeys(names, -1)
    resets: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    gaps = 0
    windows: list[dict[str, Any]] = []
    stack = VehicleStack(ctx)
    snap = str(Path(snapshot_dir) / "soak.snap")
    proc, output, control = start_serve(model, stack.sensors_endpoint, "--set",
                                        f'state.snapshot_path="{snap}"')
    try:
        stack.wait_subscribed()
        stack.connect_outputs(output, control)
        rss0 = rss_mb(proc.pid)
        sub = stack.sub
        window_lat: list[float] = []
        window_sent = 0
        t0 = time.perf_counter()
        next_window = t0 + window_s
        period = 1.0 / rate_hz
        k = 0
        print(f"soak: {streams} streams, {rate_hz:g} msg/s aggregate, {duration_s:g} s, "
              f"runner pid {proc.pid}, RSS {rss0:.1f} MB at start", flush=True)

        def drain() -> None:
            nonlocal received, gaps
            while sub.poll(0):
                topic, payload = sub.recv_multipart()
                now = time.monotonic_ns()
                body = msgpack.unpackb(payload, raw=False)
                if topic == b"diagnostics":
                    if body.get("event") == "rejected":
                        rejected[body["reason"]] += 1
                    continue
                received += 1
                window_lat.append((now - body["stamp_ns"]) / 1e3)
                if body["reset"] is not None:
                    resets[body["reset"]] += 1
                gaps += body["gap"]
                last_out[body["stream"]] = body["seq"]

        while True:
            now = time.perf_counter()
            if now - t0 >= duration_s:
                break
            target = t0 + k * period
            if target > now:
                # Wait for outputs until the next send is due, so each output is stamped as
                # it arrives: sleep in poll when a millisecond or more is left, spin below.
                left_ms = int((target - now) * 1000)
                if sub.poll(left_ms if left_ms >= 1 else 0):
                    drain()
                continue
            i = k % streams
            stack.send(encode_sensor(next_seq[i], x[i], stream=names[i],
                                     stamp_ns=time.monotonic_ns()))
            next_seq[i] += 1
            sent += 1
            window_sent += 1
            k += 1
            if now >= next_window:
                drain()
                row = {"t_s": round(now - t0, 1), "sent": window_sent,
                       "rate_hz": round(window_sent / window_s, 1),
                       "rtt_us": percentiles(window_lat), "rss_mb": round(rss_mb(proc.pid), 1),
                       "in_flight": sent - received}
                windows.append(row)
                print(json.dumps(row), flush=True)
                window_lat, window_sent = [], 0
                next_window += window_s
        deadline = time.monotonic() + 3
        while received < sent and time.monotonic() < deadline:
            drain()
            time.sleep(0.01)
        drain()
        status = control_request(control, {"cmd": "status"})
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stack.close()
        ctx.destroy(linger=0)
    all_rss = [w["rss_mb"] for w in windows]
    expected_resets = {"new_stream": streams}
    return {
        "settings": {"model": model, "duration_s": duration_s, "streams": streams,
                     "rate_hz": rate_hz, "window_s": window_s, "snapshot_interval_s": 1.0,
                     "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "sent": sent, "received": received, "lost": sent - received,
        "gaps_reported": gaps, "resets": dict(resets), "expected_resets": expected_resets,
        "rejected": dict(rejected), "achieved_rate_hz": round(sent / duration_s, 1),
        "runner": {"stepped": status["stepped"], "rejected": status["rejected"],
                   "resets": status["resets"], "evicted": status["evicted"],
                   "expired": status["expired"],
                   "latency_in_runner_ns": status["latency_ns"],
                   "snapshots_written": (status.get("snapshot") or {}).get("written"),
                   "snapshot_last_write_ms": (status.get("snapshot") or {}).get(
                       "last_write_ms")},
        "rss_mb": {"start": round(rss0, 1), "min": min(all_rss, default=rss0),
                   "max": max(all_rss, default=rss0), "end": all_rss[-1] if all_rss else rss0},
        "windows": windows,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    plt = pyplot("soak.png")
    w = report["windows"]
    t = [r["t_s"] for r in w]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for q in ("p50", "p99", "p99.9", "max"):
        ax1.plot(t, [r["rtt_us"].get(q, np.nan) for r in w], label=q)
    ax1.set_yscale("log")
    ax1.set_ylabel("round trip (us)")
    ax1.legend(loc="upper right")
    s = report["settings"]
    ax1.set_title(f"soak: {s['streams']} streams, {s['rate_hz']:g} msg/s, "
                  f"lost {report['lost']} of {report['sent']}")
    ax2.plot(t, [r["rss_mb"] for r in w])
    ax2.set_ylabel("runner RSS (MB)")
    ax2.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/random_lstm.onnx")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000.0, help="aggregate messages/s")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per report row")
    parser.add_argument("--out", default="out/soak", help="directory for soak.json, soak.png")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as snapshot_dir:
        report = soak(args.model, args.duration, args.streams, args.rate, args.window,
                      snapshot_dir)
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "soak.png")
    summary = {k: v for k, v in report.items() if k != "windows"}
    print(json.dumps(summary, indent=2))
    ok = (report["lost"] == 0 and not report["rejected"]
          and report["resets"] == report["expected_resets"])
    print("soak: OK" if ok else "soak: FAILED", f"({out / 'soak.json'}, {out / 'soak.png'})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
