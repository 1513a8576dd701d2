"""``lstm-stream bench --liveview``: what the Foxglove live view costs the runner.

Alternates, ``rounds`` times, a runner without the live view and one with
``serve --foxglove`` (``viz.foxglove_port``) and a Foxglove WebSocket client
connected and subscribed to every channel it advertises (inputs, outputs,
diagnostics, health). Both get the same fixed-rate load from the bench's load
generator; each run reports p50 and p99 (sensor sent -> output received), and
the live runs also what the viewer received and what the runner's live view
published, thinned and dropped (its control ``status``).

The viewer runs in a process of its own (``python -m lstm_stream.bench.liveview
PORT``), as a Foxglove app would: it shares no interpreter with the load
generator that takes the timestamps. It prints ``connected`` once the WebSocket
is open and, when its stdin closes, one JSON line of what it got.

Needs the ``[viz]`` extra (foxglove-sdk for the server, websockets for the client).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from lstm_stream.bench.e2e import LoadGenerator, endpoints, server_process
from lstm_stream.bench.platform import platform_record
from lstm_stream.bench.results import LiveViewReport, model_record
from lstm_stream.core.errors import LstmStreamError
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.procs import free_port
from lstm_stream.serve.client import control_request

SUBPROTOCOLS = ("foxglove.sdk.v1", "foxglove.websocket.v1")  # what the viewer offers


@dataclass
class LiveViewSettings:
    model: str = "models/random_lstm.onnx"
    rounds: int = 3
    rate_hz: float = 1000.0
    duration_s: float = 5.0
    warmup: int = 200  # closed-loop messages before each measurement (the viewer subscribes)


def run_liveview(settings: LiveViewSettings, progress: Progress | None = None
                 ) -> LiveViewReport:
    """Every round's plain and live runs, then the medians and their ratio."""
    progress = progress or NullProgress()
    contract = load_contract(settings.model)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    progress.start("bench --liveview", total=2 * settings.rounds)
    runs: list[dict[str, Any]] = []
    for k in range(settings.rounds):
        for live in (False, True):
            run = one_run(settings, contract.n_features, live)
            runs.append({"round": k + 1, **run})
            progress.advance(1, status=f"round {k + 1} {'live view' if live else 'plain'}")
    progress.close()
    return LiveViewReport(
        platform=platform_record({"rate_hz": settings.rate_hz, "duration_s": settings.duration_s,
                                  "rounds": settings.rounds, "threads": 1, "pin_runner": None,
                                  "pin_load": None, "rt_priority": None, "busy_poll_us": 0}),
        model=model_record(settings.model, contract), started=started,
        rate_hz=settings.rate_hz, duration_s=settings.duration_s, runs=runs,
        medians=medians(runs))


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """p50 and p99 medians over the rounds, plain and live, and live / plain."""
    out: dict[str, float] = {}
    for kind in ("plain", "live"):
        mine = [r for r in runs if r["live"] == (kind == "live")]
        for q in ("p50", "p99"):
            out[f"{kind}_{q}_us"] = round(statistics.median(r[q] for r in mine), 1)
    for q in ("p50", "p99"):
        out[f"{q}_ratio"] = round(out[f"live_{q}_us"] / out[f"plain_{q}_us"], 3)
    return out


def one_run(settings: LiveViewSettings, n_features: int, live: bool) -> dict[str, Any]:
    """One runner, with or without the live view and its viewer, under the fixed-rate load."""
    ends = endpoints("tcp")
    port = free_port()
    ctx = zmq.Context()
    gen = LoadGenerator(ctx, ends, n_features)
    viewer: subprocess.Popen[str] | None = None
    status: dict[str, Any] = {}
    got: dict[str, Any] = {}
    try:
        with server_process("runner", settings.model, ends,
                            runner_sets=[f"viz.foxglove_port={port}"] if live else []):
            gen.connect()
            if live:
                viewer = start_viewer(port)
            gen.closed_loop(settings.warmup)
            result = gen.fixed_rate(settings.rate_hz, settings.duration_s).summary()
            if viewer is not None:
                status = control_request(ends.control, {"cmd": "status"})["foxglove"]
                got, viewer = stop_viewer(viewer), None  # before its server goes away
    finally:
        if viewer is not None:
            viewer.kill()
            viewer.communicate()
        gen.close()
        ctx.destroy(0)
        if ends.directory is not None:
            shutil.rmtree(ends.directory, ignore_errors=True)
    lat = result["latency_us"]
    run: dict[str, Any] = {"live": live, "p50": lat["p50"], "p99": lat["p99"],
                           "sent": result["sent"], "lost": result["lost"]}
    if live:
        run.update(viewer_frames=got.get("frames", 0), viewer_channels=got.get("channels", 0),
                   published=status.get("published", 0), thinned=status.get("thinned", 0),
                   dropped=status.get("dropped", 0))
    return run


def start_viewer(port: int) -> subprocess.Popen[str]:
    """The viewer process, once its WebSocket is open."""
    proc = subprocess.Popen([sys.executable, "-m", "lstm_stream.bench.liveview", str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "connected":
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise LstmStreamError(f"the Foxglove viewer could not connect to port {port}: "
                           f"{(err or line).strip()[-500:]}")
    return proc


def stop_viewer(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Close the viewer's stdin and read what it got."""
    try:
        out, _ = proc.communicate(input="", timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return dict(json.loads(lines[-1])) if lines else {}


def view(port: int, stop: threading.Event, got: dict[str, int]) -> None:
    """A Foxglove client: subscribes to every channel advertised, reads every frame."""
    from websockets.exceptions import ConnectionClosed  # the [viz] extra, only in the viewer
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}", open_timeout=10,
                 subprotocols=list(SUBPROTOCOLS)) as ws:  # type: ignore[arg-type]
        print("connected", flush=True)
        subscribed: set[int] = set()
        while not stop.is_set():
            try:
                frame = ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            except ConnectionClosed:
                return
            if isinstance(frame, bytes):
                got["frames"] += 1
                continue
            body = json.loads(frame)
            if body.get("op") == "advertise":
                new = [c["id"] for c in body["channels"] if c["id"] not in subscribed]
                ws.send(json.dumps({"op": "subscribe", "subscriptions": [
                    {"id": cid, "channelId": cid} for cid in new]}))
                subscribed.update(new)
                got["channels"] = len(subscribed)


def _view_or_exit(port: int, stop: threading.Event, got: dict[str, int]) -> None:
    try:
        view(port, stop, got)
    except Exception as err:  # the bench reads this line instead of "connected"
        print(f"viewer failed: {type(err).__name__}: {err}", flush=True)
        os._exit(1)


def _viewer_main(port: int) -> None:
    stop, got = threading.Event(), {"frames": 0, "channels": 0}
    thread = threading.Thread(target=_view_or_exit, args=(port, stop, got), daemon=True)
    thread.start()
    sys.stdin.read()  # until the bench closes our stdin
    stop.set()
    thread.join(5)
    print(json.dumps(got), flush=True)


if __name__ == "__main__":
    _viewer_main(int(sys.argv[1]))
