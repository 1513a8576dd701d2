"""The ``lstm-stream`` command: a thin layer that parses, calls the library and prints.

Library code logs; only this module prints. Errors derived from
LstmStreamError become one readable line on stderr and the exit code they carry.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lstm_stream import __version__
from lstm_stream.cli import bench, keys, log_command, record_replay_eval, train
from lstm_stream.cli.info import describe, render
from lstm_stream.cli.model_io import add_model_io_options, model_io_overrides
from lstm_stream.core.backends import BackendName
from lstm_stream.core.config.runner import load_runner_config
from lstm_stream.core.errors import LstmStreamError
from lstm_stream.demo import DemoReport, DemoTick, default_model, run_demo, write_demo_plot
from lstm_stream.evaluate.check import check_model
from lstm_stream.serve.client import control_request
from lstm_stream.serve.runner import Runner
from lstm_stream.serve.security.curve import ClientKeys

log = logging.getLogger("lstm_stream.cli.main")

# Modules that add subcommands with ``add_commands(subparsers)``. Each is imported
# when the CLI starts, so each must import no optional dependency at module level
# (torch, mcap, matplotlib, ... are imported when a handler runs, with the extra to
# install as the error), so that `lstm-stream --help` works on an edge install;
# tests/cli/test_cli.py checks every subcommand's --help with them all missing.
COMMAND_MODULES = (train, record_replay_eval, log_command, bench, keys)

SERVE_EPILOG = """\
examples:
  lstm-stream serve models/random_lstm.onnx
  lstm-stream serve --config configs/runner.toml --input tcp://127.0.0.1:6000
  lstm-stream serve --set state.idle_timeout_s=2 --set input.topics=sensors,lidar
  lstm-stream serve --shard 0/2 --output-connect --output tcp://127.0.0.1:5556 --control tcp://127.0.0.1:5560

The runner subscribes to sensor messages on --input (the vehicle stack binds
its PUB there; use --input-bind to bind instead), runs one step per message,
keeps each stream's state, and publishes outputs on --output (topic 'policy')
and rejections on the same socket (topic 'diagnostics'). Ask it for counters
with `lstm-stream control status`. Wire format: docs/protocol.md.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # here, so that a closed pipe is seen inside this try
        return code
    except LstmStreamError as err:
        print(f"lstm-stream {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`lstm-stream info MODEL | head -3`): stop quietly, as
        # Unix tools do, with the status of a SIGPIPE death. stdout now points at
        # /dev/null so that the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-stream",
        description="Streaming, stateful LSTM inference over ZeroMQ: one step per message, "
                    "state kept per stream.")
    parser.add_argument("--version", action="version", version=f"lstm-stream {__version__}")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="logging verbosity on stderr (default: info)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_info(sub)
    _add_check(sub)
    _add_control(sub)
    _add_demo(sub)
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return parser


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the streaming runner",
                       description="Serve an ONNX step model over ZeroMQ.",
                       epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="ONNX step model (default: model.path in the "
                   "config, models/random_lstm.onnx)")
    p.add_argument("--config", metavar="TOML", help="runner config file (default: built-in "
                   "defaults, the same as configs/runner.toml)")
    p.add_argument("--input", metavar="ENDPOINT", help="where sensor messages are published "
                   "(default tcp://127.0.0.1:5555, connected)")
    p.add_argument("--input-bind", action="store_true", default=None,
                   help="bind the input socket instead of connecting to it")
    p.add_argument("--output", metavar="ENDPOINT", help="where outputs and diagnostics are "
                   "published (default tcp://127.0.0.1:5556, bound)")
    p.add_argument("--output-connect", dest="output_bind", action="store_false", default=None,
                   help="connect the output socket to a vehicle stack's bound SUB instead of "
                   "binding it (several runners, one output endpoint)")
    p.add_argument("--control", metavar="ENDPOINT", help="control socket for status and reset "
                   "(default tcp://127.0.0.1:5557, bound)")
    p.add_argument("--shard", metavar="INDEX/COUNT", type=_shard_arg,
                   help="serve only shard INDEX of COUNT runners sharing the sensor endpoint "
                   "(sets sharding.index and sharding.count; docs/architecture.md)")
    p.add_argument("--backend", choices=list(BackendName),
                   help="step backend (default onnxruntime)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default 1)")
    p.add_argument("--foxglove", metavar="PORT", type=int, help="run a Foxglove WebSocket "
                   "server on PORT (loopback; viz.foxglove_host to change) with the live "
                   "inputs, outputs and health (the [viz] extra)")
    add_model_io_options(p)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE", help="override any config option; repeatable")
    p.set_defaults(handler=_serve)


def _shard_arg(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not INDEX/COUNT, such as 0/4 for the first of four runners") from None


def _serve(args: argparse.Namespace) -> int:

    named = {"model.path": args.model, "input.endpoint": args.input,
             "input.bind": args.input_bind, "output.endpoint": args.output,
             "control.endpoint": args.control, "model.backend": args.backend,
             "model.threads": args.threads, "output.bind": args.output_bind,
             "viz.foxglove_port": args.foxglove}
    flags = {"model.path": "MODEL", "input.endpoint": "--input", "input.bind": "--input-bind",
             "output.endpoint": "--output", "control.endpoint": "--control",
             "model.backend": "--backend", "model.threads": "--threads",
             "output.bind": "--output-connect", "sharding.index": "--shard",
             "sharding.count": "--shard", "viz.foxglove_port": "--foxglove"}
    if args.shard is not None:
        named["sharding.index"], named["sharding.count"] = args.shard
    overrides, labels = model_io_overrides(args)
    overrides = [*args.overrides, *overrides]
    for key, value in named.items():
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
            labels[key] = flags[key]
    config = load_runner_config(args.config, overrides, labels)
    log.info("config: %s", json.dumps(config.as_dict(), sort_keys=True))
    runner = Runner(config)
    try:
        runner.run()
    finally:
        runner.close()
    return 0


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="describe an ONNX step model and check its contract",
                       description="Show what a model takes and returns, its state tensors "
                       "and metadata, and whether it follows the model contract.")
    p.add_argument("model", help="ONNX file")
    add_model_io_options(p)
    p.add_argument("--config", metavar="TOML", help="runner config whose [model.io] declares "
                   "the model's names")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:

    overrides, labels = model_io_overrides(args)
    io = load_runner_config(args.config, overrides, labels).model.io.declared()
    info = describe(args.model, io)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


CHECK_EPILOG = """\
examples:
  lstm-stream check models/random_lstm.onnx
  lstm-stream check policy.onnx --io y=action --torch policy.py:make_policy

Steps random sequences message by message through the runner's own path (decode,
state, batching across streams, the model's names, layouts and type adapted) and
compares every output with a plain onnxruntime session fed in the model's own terms,
and, with --torch, with the PyTorch module the model was exported from. Exits 1 when
a difference exceeds the tolerance. Run it once before a model goes to the car.
"""


def _add_check(sub: Any) -> None:
    p = sub.add_parser("check", help="check that serve outputs what the model computes",
                       description="Serve random sequences through the runner's stepper and "
                       "compare every output with independent references.",
                       epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="ONNX step model")
    add_model_io_options(p)
    p.add_argument("--config", metavar="TOML", help="runner config whose [model.io] declares "
                   "the model's names")
    p.add_argument("--torch", metavar="FILE.py:FACTORY", help="also compare with the PyTorch "
                   "module FACTORY() returns (needs torch); it is called with the model's "
                   "inputs in the ONNX graph's order")
    p.add_argument("--sequences", type=int, default=4, help="sequences (streams), default 4")
    p.add_argument("--steps", type=int, default=20, help="messages per sequence, default 20")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--tolerance", type=float, help="largest allowed |difference| (default "
                   "1e-5, 1e-2 for a float16 model)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:

    if args.sequences < 1 or args.steps < 1:
        print("lstm-stream check: error: --sequences and --steps must be at least 1",
              file=sys.stderr)
        return 2
    overrides, labels = model_io_overrides(args)
    io = load_runner_config(args.config, overrides, labels).model.io.declared()
    report = check_model(args.model, io, sequences=args.sequences, steps=args.steps,
                         seed=args.seed, tolerance=args.tolerance, torch_factory=args.torch)
    if args.json:
        print(json.dumps({"model": report.model, "sequences": report.sequences,
                          "steps": report.steps, "tolerance": report.tolerance,
                          "differences": report.differences, "passed": report.passed},
                         indent=2))
    else:
        print(report.render())
    return 0 if report.passed else 1


def _add_control(sub: Any) -> None:
    p = sub.add_parser("control", help="query or reset a running runner",
                       description="Send a request to a runner's control socket.")
    p.add_argument("cmd", choices=["status", "streams", "reset"])
    p.add_argument("--stream", help="for reset: the stream to reset (default: all streams)")
    p.add_argument("--control", default="tcp://127.0.0.1:5557", metavar="ENDPOINT",
                   help="the runner's control endpoint (default tcp://127.0.0.1:5557)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the reply")
    p.add_argument("--client-key", metavar="FILE", help="for a runner with CURVE: your "
                   "NAME.key_secret (default: $LSTM_STREAM_CLIENT_KEY)")
    p.add_argument("--server-key", metavar="FILE", help="for a runner with CURVE: the "
                   "runner's public NAME.key (default: $LSTM_STREAM_SERVER_KEY)")
    p.set_defaults(handler=_control)


def _control(args: argparse.Namespace) -> int:

    if (args.client_key is None) != (args.server_key is None):
        print("lstm-stream control: error: give both --client-key and --server-key, or "
              "neither", file=sys.stderr)
        return 2
    keys = (ClientKeys.from_files(args.client_key, args.server_key)
            if args.client_key is not None else None)
    request: dict[str, Any] = {"cmd": args.cmd}
    if args.stream is not None:
        request["stream"] = args.stream
    reply = control_request(args.control, request, timeout_s=args.timeout, curve=keys)
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="a recorded drive steered by the shipped policy (no set-up)",
                       description="Start `lstm-stream serve` with the shipped lane-keeping "
                       "model on free loopback ports, replay the recorded drive shipped with "
                       "the package into it over ZeroMQ, and show the served steering against "
                       "the expert's, the model with its state reset every message, parity "
                       "with the numpy backend, and latency (docs/driving.md).")
    p.add_argument("--model", help="ONNX step model (default: models/lane_keep_lstm.onnx)")
    p.add_argument("--drive", metavar="PATH", help="drive file (default: the shipped "
                   "lstm_stream/data/lane_keep_drive.msgpack)")
    p.add_argument("--rate", type=float, default=5.0, help="replay speed, x the drive's own "
                   "(default 5; 0: as fast as possible)")
    p.add_argument("--plot", metavar="PNG", help="write steering over time to this PNG "
                   "(needs matplotlib)")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:

    if args.rate < 0:
        print("lstm-stream demo: error: --rate must be 0 (as fast as possible) or positive; "
              f"got {args.rate:g}", file=sys.stderr)
        return 2
    live = sys.stdout.isatty()
    last = [0.0]

    def progress(report: DemoReport, tick: DemoTick) -> None:
        if tick.t_s - last[0] < 2.0 and tick.seq != 0:
            return  # a line per two seconds of drive
        last[0] = tick.t_s
        rt = report.percentiles([t.round_trip_us for t in report.ticks[-50:]])
        line = (f"t {tick.t_s:5.1f} s  {tick.stream:>8} seq {tick.seq:3d}  steer: served "
                f"{tick.served:+.3f}  expert {tick.expert:+.3f}  reset-each {tick.reset_each:+.3f}"
                f" rad  round trip p50 {rt.get('p50', 0):6.0f} us")
        print("\r" + line if live else line, end="" if live else "\n", flush=True)

    model = args.model or str(default_model())
    print(f"demo: serving {model}; replaying the recorded drive at {args.rate:g}x")
    report = run_demo(model, args.drive, rate=args.rate, progress=progress)
    if live:
        print()
    st = report.status
    print(f"messages    sent {report.sent}, outputs {report.received}, stepped "
          f"{st.get('stepped')}, rejected {sum(st.get('rejected', {}).values())}, "
          f"in {report.wall_s:.1f} s")
    print(f"state       {st.get('streams')} streams, resets {st.get('resets')}")
    print("steering vs the expert's recorded command (rad):")
    for stream in [*report.streams(), None]:
        e = report.errors(stream)
        print(f"  {stream or 'all':>10}  served (state carried) MAE {e['served_mae']:.4f} max "
              f"{e['served_max']:.3f}   state reset every message MAE {e['reset_mae']:.4f} max "
              f"{e['reset_max']:.3f}")
    print(f"parity      max |served - numpy reference| = {report.max_parity_error:.2e} "
          "(state carried across messages)")
    rt = report.percentiles([t.round_trip_us for t in report.ticks])
    inside = report.percentiles([t.runner_us for t in report.ticks])
    print("round trip  " + _fmt_us(rt) + "  (vehicle stack -> runner -> vehicle stack)")
    print("in runner   " + _fmt_us(inside) + "  (receive -> publish, latency_ns)")
    if args.plot:
        write_demo_plot(args.plot, report)
        print(f"plot        {args.plot}")
    ok = report.received == report.sent and report.max_parity_error <= 1e-4
    print("demo: OK" if ok else "demo: FAILED (lost outputs or outputs differ)")
    return 0 if ok else 1


def _fmt_us(p: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:7.1f} us" for k, v in p.items())


if __name__ == "__main__":
    sys.exit(main())
