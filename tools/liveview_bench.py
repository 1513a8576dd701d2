"""What the Foxglove live view costs the runner: 1 kHz latency with and without it.

    python tools/liveview_bench.py [--rounds 3] [--duration 5] [--rate 1000]

Alternates, ``--rounds`` times, a runner without the live view and one with
``serve --foxglove`` and a Foxglove WebSocket client connected and subscribed
to every channel (inputs, outputs, diagnostics, health), each fed the same
fixed-rate load by the bench's load generator; prints each round's p50 and
p99 (sensor sent -> output received) and the medians' ratio, live / plain.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import threading
from typing import Any

import zmq
from websockets.sync.client import connect

from lstm_stream.bench.e2e import LoadGenerator, endpoints, server_process
from lstm_stream.core.contract import load_contract


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def viewer(port: int, stop: threading.Event, counts: dict[str, int]) -> None:
    """A Foxglove client: subscribes to every channel advertised, reads everything."""
    with connect(f"ws://127.0.0.1:{port}", open_timeout=10,
                 subprotocols=["foxglove.sdk.v1", "foxglove.websocket.v1"]) as ws:
        subscribed: set[int] = set()
        while not stop.is_set():
            try:
                frame = ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            if isinstance(frame, str):
                body = json.loads(frame)
                if body.get("op") == "advertise":
                    new = [c["id"] for c in body["channels"] if c["id"] not in subscribed]
                    ws.send(json.dumps({"op": "subscribe", "subscriptions": [
                        {"id": cid, "channelId": cid} for cid in new]}))
                    subscribed.update(new)
            else:
                counts["frames"] += 1


def one_run(model: str, n_features: int, live: bool, rate: float,
            duration: float) -> dict[str, Any]:
    ends = endpoints("tcp")
    port = free_port()
    sets = [f"viz.foxglove_port={port}"] if live else []
    ctx = zmq.Context()
    gen = LoadGenerator(ctx, ends, n_features)
    stop, counts = threading.Event(), {"frames": 0}
    thread = None
    try:
        with server_process("runner", model, ends, runner_sets=sets):
            gen.connect()
            if live:
                thread = threading.Thread(target=viewer, args=(port, stop, counts), daemon=True)
                thread.start()
            gen.closed_loop(200)  # warm, and the viewer has its channels
            result = gen.fixed_rate(rate, duration).summary()
            stop.set()
            if thread is not None:
                thread.join(5)
    finally:
        gen.close()
        ctx.destroy(0)
        if ends.directory is not None:
            shutil.rmtree(ends.directory, ignore_errors=True)
    lat = result["latency_us"]
    return {"p50": lat["p50"], "p99": lat["p99"], "lost": result["lost"],
            "viewer_frames": counts["frames"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/random_lstm.onnx")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=1000.0)
    args = p.parse_args()
    n_features = load_contract(args.model).n_features
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for k in range(args.rounds):
        for live in (False, True):
            r = one_run(args.model, n_features, live, args.rate, args.duration)
            runs[live].append(r)
            print(f"round {k + 1} {'live view' if live else 'plain':>9}: p50 {r['p50']:.1f} us, "
                  f"p99 {r['p99']:.1f} us, lost {r['lost']}"
                  + (f", viewer got {r['viewer_frames']} frames" if live else ""), flush=True)
    med = {live: (statistics.median(r["p50"] for r in rs), statistics.median(r["p99"] for r in rs))
           for live, rs in runs.items()}
    print(f"\nmedians: plain p50 {med[False][0]:.1f} us, p99 {med[False][1]:.1f} us; "
          f"live view p50 {med[True][0]:.1f} us, p99 {med[True][1]:.1f} us; "
          f"p50 ratio live / plain {med[True][0] / med[False][0]:.3f}")


if __name__ == "__main__":
    main()
