"""``lstm-stream bench``: latency tests to run on the computer that goes in the vehicle,
and with ``--throughput`` the steps per second one runner sustains for many streams."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from lstm_stream.bench.latency import BenchSettings, run_bench
from lstm_stream.bench.liveview import LiveViewSettings, run_liveview
from lstm_stream.bench.load import MAX_WINDOW
from lstm_stream.bench.report import (
    plot,
    plot_throughput,
    render,
    render_eval,
    render_liveview,
    render_throughput,
    save_raw,
)
from lstm_stream.bench.results import BenchReport, ThroughputReport
from lstm_stream.bench.throughput import (
    KNOWN_SERVERS,
    SERVERS,
    ThroughputSettings,
    run_throughput,
)
from lstm_stream.cli.progress import TerminalProgress

EPILOG = """\
examples:
  lstm-stream bench                                   # everything, a few minutes
  lstm-stream bench --rate 1000 --duration 60 --transport ipc --pin 1 --json out.json --plot out.png
  lstm-stream bench --quick                           # a smoke test, under a minute
  lstm-stream bench --throughput --streams 1,10,100,1000 --duration 5 --json out.json --plot out.png
  lstm-stream bench --throughput --quick              # throughput smoke test
  lstm-stream bench --eval                            # eval against reading the log (generated)
  lstm-stream bench --eval drive.mcap --json eval.json
  lstm-stream bench --liveview --rounds 3 --duration 5   # the Foxglove live view's cost

Read docs/latency.md for how to prepare the machine and read the report.
"""


def add_commands(sub: Any) -> None:
    p = sub.add_parser("bench", help="latency tests: step, end to end, floors, naive loops; "
                       "--throughput: steps/s for many streams",
                       description="Measure step latency in process and end-to-end latency "
                       "over ZeroMQ against a real `lstm-stream serve`, next to the floors "
                       "(bare ZeroMQ echo, bare InferenceSession.run) and naive loops, all "
                       "in the same run. With --throughput: steps per second and latency "
                       "for 1 to 1000 streams at the highest sustainable rate, next to the "
                       "floors (receive + decode, bare batched run), the naive loops and the "
                       "unbatched runner.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/random_lstm.onnx", help="ONNX step model")
    p.add_argument("--rate", type=float, action="append", metavar="HZ",
                   help="send rate; 0 = closed loop, as fast as possible; repeatable "
                   "(default: 100, 1000 and 0)")
    p.add_argument("--duration", type=float, help="seconds per rate (default 10), or per "
                   "server and stream count with --throughput (default 5)")
    p.add_argument("--transport", choices=["tcp", "ipc", "both"], default="tcp")
    p.add_argument("--servers", help="comma list of: echo (floor a), runner, naive-ort, "
                   "naive-torch (default: all); with --throughput: decode (floor a'), "
                   "runner-unbatched, runner, naive-ort, naive-torch, echo (default: all but "
                   "echo)")
    p.add_argument("--steps", type=int, default=20000, help="in-process steps per backend; "
                   "with --throughput, runs of floor (b') per batch size (default 20000)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--pin", type=int, metavar="CPU", help="pin the server process to this CPU")
    p.add_argument("--pin-load", type=int, metavar="CPU",
                   help="pin the load generator (this process) to this CPU")
    p.add_argument("--rt-priority", type=int, metavar="N",
                   help="SCHED_FIFO priority for the server when permitted")
    p.add_argument("--busy-poll", type=int, default=0, metavar="US",
                   help="servers keep polling this long after a message instead of sleeping "
                   "(the runner's input.busy_poll_us); applied to every server alike")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH, or with "
                   "'-' as one JSON document on stdout (the text report then goes to stderr)")
    p.add_argument("--plot", metavar="PATH", help="write latency CDFs as PNG (with "
                   "--throughput: steps/s against streams)")
    p.add_argument("--raw", metavar="PATH", help="write per-message latencies (.npz)")
    p.add_argument("--quick", action="store_true",
                   help="short run for a smoke test (1 s per rate or stream count, fewer "
                   "steps)")
    e = p.add_argument_group("offline evaluation: steps/s against reading the log")
    e.add_argument("--eval", nargs="?", const="", metavar="LOG",
                   help="run the eval suite on LOG (default: a generated log of "
                   "--eval-streams x --eval-steps messages)")
    e.add_argument("--eval-streams", type=int, default=100, metavar="N",
                   help="streams of the generated log (default 100)")
    e.add_argument("--eval-steps", type=int, default=2000, metavar="N",
                   help="messages per stream of the generated log (default 2000)")
    v = p.add_argument_group("live view: the runner with and without serve --foxglove")
    v.add_argument("--liveview", action="store_true",
                   help="alternate a plain runner and one with the Foxglove live view and a "
                   "viewer subscribed to everything, at one --rate (default 1000) for "
                   "--duration s per run (default 5); needs the [viz] extra")
    v.add_argument("--rounds", type=int, default=3, metavar="N",
                   help="plain and live runs each, alternating (default 3)")
    t = p.add_argument_group("throughput (issue 8): many streams at the highest sustainable rate")
    t.add_argument("--throughput", action="store_true",
                   help="run the throughput suite instead of the latency suite")
    t.add_argument("--streams", metavar="N,N,...",
                   help="stream counts (default 1,10,100,1000)")
    t.add_argument("--window", type=int, metavar="N",
                   help="messages in flight (default: 4 per stream, at least two full "
                   "batches and 64; at most 10000, the servers' high-water mark)")
    t.add_argument("--max-batch", type=int, metavar="N", help="the batched runner's "
                   "batching.max_batch, and floor (b')'s batch limit (default: the runner's)")
    t.add_argument("--max-wait", type=int, metavar="US",
                   help="the batched runner's batching.max_wait_us (default: the runner's)")
    p.set_defaults(handler=_bench)


def _error(message: str) -> int:
    print(f"lstm-stream bench: error: {message}", file=sys.stderr)
    return 2


def _bench(args: argparse.Namespace) -> int:
    if args.eval is not None:
        return _eval(args)
    if args.liveview:
        return _liveview(args)
    if args.throughput:
        return _throughput(args)
    given = [name for name, value in (("--streams", args.streams), ("--window", args.window),
                                      ("--max-batch", args.max_batch),
                                      ("--max-wait", args.max_wait)) if value is not None]
    if given:
        return _error(f"{', '.join(given)} apply only with --throughput")
    known = ("echo", "runner", "naive-ort", "naive-torch")
    servers = _servers(args.servers, known)
    if not servers:
        return _error(f"--servers takes a comma list of {list(known)}")
    duration = 10.0 if args.duration is None else args.duration
    if duration <= 0 or args.steps < 10:
        return _error("--duration must be > 0 and --steps >= 10")
    settings = BenchSettings(
        model=args.model, rates=tuple(args.rate or (100.0, 1000.0, 0.0)),
        duration_s=duration,
        transports=("tcp", "ipc") if args.transport == "both" else (args.transport,),
        servers=servers, steps=args.steps, threads=args.threads, pin=args.pin,
        pin_load=args.pin_load, rt_priority=args.rt_priority, busy_poll_us=args.busy_poll)
    if args.quick:
        settings.duration_s, settings.steps, settings.warmup = 1.0, 1000, 200
        settings.closed_loop_count, settings.batches = 500, (1, 8)
        settings.startup_steady = 100
    report = run_bench(settings, TerminalProgress())
    out = _text_stream(args)
    print(render(report), file=out)
    rt = {r["realtime"] for r in report.e2e}
    for note in rt - {"not requested"}:
        print(f"real-time priority: {note}", file=out)
    if args.json:
        _write_json(report.to_json(), args.json)
    if args.raw:
        save_raw(report, args.raw)
        print(f"wrote {args.raw}", file=out)
    return _write_plot(plot, report, args.plot, out)


def _text_stream(args: argparse.Namespace) -> TextIO:
    """Where the text report goes: stderr when stdout carries the JSON (``--json -``)."""
    return sys.stderr if args.json == "-" else sys.stdout


def _write_json(report: dict[str, Any], path: str) -> None:
    if path == "-":
        print(json.dumps(report, indent=2))
        return
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {path}")


def _write_plot(plotter: Callable[[Any, str], None], report: BenchReport | ThroughputReport,
                path: str | None, out: TextIO) -> int:
    if not path:
        return 0
    plotter(report, path)  # without matplotlib: an error that says what to install
    print(f"wrote {path}", file=out)
    return 0


def _servers(given: str | None, known: tuple[str, ...]) -> tuple[str, ...]:
    """The servers asked for (all known ones by default); empty when any is unknown."""
    if given is None:
        return known
    servers = tuple(s.strip() for s in given.split(",") if s.strip())
    return servers if servers and set(servers) <= set(known) else ()


def _streams(given: str) -> tuple[int, ...]:
    """``1,10,100`` as stream counts; empty when any is not a positive integer."""
    try:
        counts = tuple(int(n) for n in given.split(",") if n.strip())
    except ValueError:
        return ()
    return counts if counts and min(counts) >= 1 else ()


def _eval(args: argparse.Namespace) -> int:
    if args.throughput or args.liveview:
        return _error("give one of --eval, --liveview and --throughput")
    if args.eval_streams < 1 or args.eval_steps < 1:
        return _error("--eval-streams and --eval-steps must be >= 1")
    streams, steps = args.eval_streams, args.eval_steps
    if args.quick:
        streams, steps = min(streams, 20), min(steps, 200)
    log = Path(args.eval) if args.eval else None
    if log is not None and not log.is_file():
        return _error(f"--eval {args.eval!r}: no such log file")
    try:  # reads and writes MCAP logs: the [logs] extra, imported only here
        from lstm_stream.bench.evalbench import eval_suite
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]  # the package to install, not mcap.records
        if missing not in ("mcap", "zstandard", "lz4"):
            raise
        return _error(f"--eval needs the {missing!r} package: pip install 'lstm-stream[logs]'")
    report = eval_suite(args.model, log, streams=streams, steps=steps,
                        ceiling_rounds=1 if args.quick else 3, progress=TerminalProgress())
    out = _text_stream(args)
    print(render_eval(report), file=out)
    if args.json:
        _write_json(report.to_json(), args.json)
    return 0


def _liveview(args: argparse.Namespace) -> int:
    given = [name for name, value in (
        ("--throughput", args.throughput or None), ("--streams", args.streams),
        ("--raw", args.raw), ("--plot", args.plot), ("--servers", args.servers),
        ("--pin", args.pin), ("--pin-load", args.pin_load),
        ("--rt-priority", args.rt_priority), ("--busy-poll", args.busy_poll or None),
        ("--threads", None if args.threads == 1 else args.threads),
        ("--transport", None if args.transport == "tcp" else args.transport),
        ("--window", args.window), ("--max-batch", args.max_batch),
        ("--max-wait", args.max_wait)) if value is not None]
    if given:
        return _error(f"{', '.join(given)} do not apply with --liveview (it runs one "
                      "stream over tcp; its options: --model, --rate, --duration, --rounds, "
                      "--quick, --json)")
    rates = args.rate or [1000.0]
    duration = (1.0 if args.quick else 5.0) if args.duration is None else args.duration
    rounds = 1 if args.quick else args.rounds
    if len(rates) != 1 or rates[0] <= 0:
        return _error(f"--liveview takes one --rate above 0 Hz (a fixed rate); got {rates}")
    if duration <= 0 or rounds < 1:
        return _error("--duration must be > 0 and --rounds >= 1")
    for package, extra in (("foxglove", "viz"), ("websockets", "viz")):
        if importlib.util.find_spec(package) is None:
            return _error(f"--liveview needs the {package!r} package: "
                          f"pip install 'lstm-stream[{extra}]'")
    settings = LiveViewSettings(model=args.model, rounds=rounds, rate_hz=rates[0],
                                duration_s=duration)
    report = run_liveview(settings, TerminalProgress())
    out = _text_stream(args)
    print(render_liveview(report), file=out)
    if args.json:
        _write_json(report.to_json(), args.json)
    return 0


def _throughput(args: argparse.Namespace) -> int:
    given = [name for name, value in (("--rate", args.rate), ("--raw", args.raw))
             if value is not None]
    if given:
        return _error(f"{', '.join(given)} do not apply with --throughput")
    servers = SERVERS if args.servers is None else _servers(args.servers, KNOWN_SERVERS)
    streams = _streams(args.streams or "1,10,100,1000")
    if not servers:
        return _error(f"with --throughput, --servers takes a comma list of {list(KNOWN_SERVERS)}")
    if not streams:
        return _error(f"--streams takes positive integers such as 1,10,100; got {args.streams!r}")
    if args.max_batch is not None and args.max_batch < 1:
        return _error(f"--max-batch must be >= 1; got {args.max_batch}")
    if args.max_wait is not None and args.max_wait < 0:
        return _error(f"--max-wait must be >= 0 microseconds; got {args.max_wait}")
    if args.window is not None and not 1 <= args.window <= MAX_WINDOW:
        return _error(f"--window must be between 1 and {MAX_WINDOW} (above, the servers' "
                      f"high-water marks could drop messages); got {args.window}")
    duration = 5.0 if args.duration is None else args.duration
    if duration <= 0 or args.steps < 10:
        return _error("--duration must be > 0 and --steps >= 10")
    settings = ThroughputSettings(
        model=args.model, streams=streams, duration_s=duration, window=args.window,
        transports=("tcp", "ipc") if args.transport == "both" else (args.transport,),
        servers=servers, max_batch=args.max_batch, max_wait_us=args.max_wait,
        floor_b_runs=args.steps, threads=args.threads, pin=args.pin, pin_load=args.pin_load,
        rt_priority=args.rt_priority, busy_poll_us=args.busy_poll)
    if args.quick:
        settings.duration_s = 1.0 if args.duration is None else duration
        settings.warmup_s, settings.floor_b_runs = 0.2, min(args.steps, 1000)
    report = run_throughput(settings, TerminalProgress())
    out = _text_stream(args)
    print(render_throughput(report), file=out)
    for note in {r["realtime"] for r in report.throughput} - {"not requested"}:
        print(f"real-time priority: {note}", file=out)
    if args.json:
        _write_json(report.to_json(), args.json)
    return _write_plot(plot_throughput, report, args.plot, out)
