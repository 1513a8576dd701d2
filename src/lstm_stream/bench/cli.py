"""``lstm-stream bench``: latency tests to run on the computer that goes in the vehicle."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EPILOG = """\
examples:
  lstm-stream bench                                   # everything, a few minutes
  lstm-stream bench --rate 1000 --duration 60 --transport ipc --pin 1 --json out.json --plot out.png
  lstm-stream bench --quick                           # a smoke test, under a minute

Read docs/latency.md for how to prepare the machine and read the report.
"""


def add_commands(sub: Any) -> None:
    p = sub.add_parser("bench", help="latency tests: step, end to end, floors, naive loops",
                       description="Measure step latency in process and end-to-end latency "
                       "over ZeroMQ against a real `lstm-stream serve`, next to the floors "
                       "(bare ZeroMQ echo, bare InferenceSession.run) and naive loops, all "
                       "in the same run.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/random_lstm.onnx", help="ONNX step model")
    p.add_argument("--rate", type=float, action="append", metavar="HZ",
                   help="send rate; 0 = closed loop, as fast as possible; repeatable "
                   "(default: 100, 1000 and 0)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per rate (default 10)")
    p.add_argument("--transport", choices=["tcp", "ipc", "both"], default="tcp")
    p.add_argument("--servers", default="echo,runner,naive-ort,naive-torch",
                   help="comma list of: echo (floor a), runner, naive-ort, naive-torch")
    p.add_argument("--steps", type=int, default=20000, help="in-process steps per backend")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--pin", type=int, metavar="CPU", help="pin the server process to this CPU")
    p.add_argument("--pin-load", type=int, metavar="CPU",
                   help="pin the load generator (this process) to this CPU")
    p.add_argument("--rt-priority", type=int, metavar="N",
                   help="SCHED_FIFO priority for the server when permitted")
    p.add_argument("--busy-poll", type=int, default=0, metavar="US",
                   help="servers keep polling this long after a message instead of sleeping "
                   "(the runner's input.busy_poll_us); applied to every server alike")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--plot", metavar="PATH", help="write latency CDFs as PNG")
    p.add_argument("--raw", metavar="PATH", help="write per-message latencies (.npz)")
    p.add_argument("--quick", action="store_true",
                   help="short run for a smoke test (1 s per rate, fewer steps)")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from lstm_stream.bench.report import BenchSettings, plot, render, run_bench, save_raw
    from lstm_stream.progress import TerminalProgress

    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    known = {"echo", "runner", "naive-ort", "naive-torch"}
    if not servers or set(servers) - known:
        print(f"lstm-stream bench: error: --servers takes a comma list of {sorted(known)}",
              file=sys.stderr)
        return 2
    if args.duration <= 0 or args.steps < 10:
        print("lstm-stream bench: error: --duration must be > 0 and --steps >= 10",
              file=sys.stderr)
        return 2
    settings = BenchSettings(
        model=args.model, rates=tuple(args.rate or (100.0, 1000.0, 0.0)),
        duration_s=args.duration,
        transports=("tcp", "ipc") if args.transport == "both" else (args.transport,),
        servers=servers, steps=args.steps, threads=args.threads, pin=args.pin,
        pin_load=args.pin_load, rt_priority=args.rt_priority, busy_poll_us=args.busy_poll)
    if args.quick:
        settings.duration_s, settings.steps, settings.warmup = 1.0, 1000, 200
        settings.closed_loop_count, settings.batches = 500, (1, 8)
    report = run_bench(settings, TerminalProgress())
    print(render(report))
    rt = {r["realtime"] for r in report["e2e"]}
    for note in rt - {"not requested"}:
        print(f"real-time priority: {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in report.items() if k != "raw"}, f, indent=2)
        print(f"wrote {args.json}")
    if args.raw:
        save_raw(report, args.raw)
        print(f"wrote {args.raw}")
    if args.plot:
        try:
            plot(report, args.plot)
        except ImportError:
            print("lstm-stream bench: --plot needs matplotlib (pip install matplotlib)",
                  file=sys.stderr)
            return 1
        print(f"wrote {args.plot}")
    return 0
