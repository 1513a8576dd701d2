"""The ``record``, ``replay`` and ``eval`` commands: parse, call the library, print.

Imported by ``lstm_stream.cli.main`` at start-up, so this module imports neither
``mcap`` nor ``matplotlib``: the handlers import the library modules, under
``logs_extra()``, and a missing ``[logs]`` extra becomes one clear error instead
of a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from lstm_stream.cli.extras import logs_extra
from lstm_stream.cli.model_io import add_model_io_options, model_io_overrides
from lstm_stream.cli.progress import TerminalProgress
from lstm_stream.core.backends import BackendName
from lstm_stream.core.config.runner import load_runner_config
from lstm_stream.core.errors import ConfigError, EvaluationError
from lstm_stream.evaluate.options import ENCODINGS, EvalOptions
from lstm_stream.evaluate.report import render_table
from lstm_stream.logs.replay_options import ReplayConfig

RECORD_EPILOG = """\
examples:
  lstm-stream record --input tcp://127.0.0.1:5555 --topics sensors,controls -o drive.mcap
  lstm-stream record --input tcp://127.0.0.1:5555 -o drive.mcap --split-duration 600

Stops on Ctrl-C / SIGTERM / --duration with a complete file. Killed with SIGKILL,
the file keeps everything but the last half second: read it as it is, or make it
a complete MCAP with `lstm-stream log recover`. Format: docs/logs.md.
"""

REPLAY_EPILOG = """\
examples:
  lstm-stream replay drive.mcap --output tcp://127.0.0.1:5555 --rate 1.0
  lstm-stream replay drive.mcap --rate 0 --topics sensors --remap sensors=sensors_replay
  lstm-stream replay drive.mcap --loop --control tcp://127.0.0.1:5560

Keys (when stdin is a terminal): space pause/resume, s step one message, q quit.
The control socket takes msgpack maps {"cmd": "pause"|"resume"|"step"|"status"|"stop"}.
"""

EVAL_EPILOG = """\
examples:
  lstm-stream eval drive.mcap --model models/policy.onnx --target-topic controls --report out/
  lstm-stream eval drive.mcap --model models/policy.onnx --reference ref/drive.policy.mcap
  lstm-stream eval logs/*.mcap --model models/policy.onnx --workers 4 --report out/
  lstm-stream eval /shared/logs/*.mcap --model models/policy.onnx --report /shared/out/ --ray auto
  lstm-stream eval run_bag/ --config ros.toml --target-topic /cmd_vel \
      --target-field steer=angular.z --report out/

Outputs are written as <log>.policy.mcap beside each log (or into --report).
With --reference the outputs must equal the reference within |a-b| <=
max(atol, rtol*max(|a|,|b|)); latency fields are never compared.
With --ray (the [cluster] extra) each log is one task on that Ray cluster; logs
and --report must be on storage every node reads (docs/logs.md).
"""


def add_commands(sub: Any) -> None:
    """Add ``record``, ``replay`` and ``eval`` to the ``lstm-stream`` parser (``log``
    is cli/log_command.py's)."""
    _add_record(sub)
    _add_replay(sub)
    _add_eval(sub)


def _progress() -> Any:
    return TerminalProgress(fps=4.0)  # quiet unless stderr is a terminal


def _topics(value: str | None) -> list[str] | None:
    if value is None:
        return None
    topics = [t.strip() for t in value.split(",") if t.strip()]
    if not topics:
        raise ConfigError(f"--topics needs at least one topic name; got {value!r}.")
    return topics


# -- record ----------------------------------------------------------------------


def _add_record(sub: Any) -> None:
    p = sub.add_parser("record", help="record ZeroMQ topics into an MCAP log",
                       description="Subscribe to topics and write every message, byte for "
                       "byte, with its receive time, into an MCAP file.",
                       epilog=RECORD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default="tcp://127.0.0.1:5555", metavar="ENDPOINT",
                   help="the publisher's endpoint (default tcp://127.0.0.1:5555, connected)")
    p.add_argument("--bind", action="store_true", help="bind --input instead of connecting")
    p.add_argument("--topics", help="comma-separated topics to record (default: all)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.mcap", help="the log file")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--split-size", type=float, metavar="MB",
                   help="start a new file (FILE_000.mcap, FILE_001.mcap, ...) every MB megabytes")
    p.add_argument("--split-duration", type=float, metavar="S",
                   help="start a new file every S seconds")
    p.set_defaults(handler=_record)


def _record(args: argparse.Namespace) -> int:
    with logs_extra():
        from lstm_stream.logs.record import RecordConfig, Recorder
    config = RecordConfig(
        input=args.input, output=Path(args.output), topics=_topics(args.topics), bind=args.bind,
        duration_s=args.duration,
        split_bytes=None if args.split_size is None else int(args.split_size * 1e6),
        split_duration_s=args.split_duration)
    recorder = Recorder(config, progress=_progress(),
                        on_ready=lambda line: print(f"record: {line}", file=sys.stderr,
                                                    flush=True))
    try:
        report = recorder.run()
    finally:
        recorder.close()
    files = ", ".join(str(f) for f in report.files)
    rate = report.messages / report.elapsed_s if report.elapsed_s else 0.0
    print(f"record: {report.messages} messages ({rate:,.1f} msg/s, {report.payload_bytes:,} "
          f"payload bytes) in {report.elapsed_s:.1f} s -> {files}")
    if report.malformed:
        print(f"record: {report.malformed} message(s) not recorded: not [topic, payload] "
              "frames or a topic that is not UTF-8")
    return 0


# -- replay ----------------------------------------------------------------------


def _add_replay(sub: Any) -> None:
    p = sub.add_parser("replay", help="publish a log onto ZeroMQ with its recorded timing",
                       description="Publish the messages of MCAP logs on a ZeroMQ PUB socket "
                       "with the recorded timing scaled by --rate.", epilog=REPLAY_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", metavar="LOG.mcap", help="logs (merged by log time)")
    p.add_argument("--output", default="tcp://127.0.0.1:5555", metavar="ENDPOINT",
                   help="where to publish (default tcp://127.0.0.1:5555, bound)")
    p.add_argument("--connect", action="store_true", help="connect --output instead of binding")
    p.add_argument("--rate", type=float, default=1.0,
                   help="speed factor: 1 as recorded, 2 twice as fast, 0 as fast as possible")
    p.add_argument("--loop", action="store_true", help="start again at the end, until stopped")
    p.add_argument("--start", type=float, default=0.0, metavar="S",
                   help="skip the first S seconds of the log")
    p.add_argument("--duration", type=float, metavar="S", help="play only S seconds of log")
    p.add_argument("--topics", help="comma-separated topics to replay (default: all)")
    p.add_argument("--remap", action="append", default=[], metavar="OLD=NEW",
                   help="publish topic OLD as NEW; repeatable")
    p.add_argument("--wait-subscribers", type=int, default=1, metavar="N",
                   help="wait for N subscriptions to a replayed topic before the first "
                   "message (default 1)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for subscribers")
    p.add_argument("--wait-timeout", type=float, default=30.0, metavar="S",
                   help="give up waiting for subscribers after S seconds (default 30)")
    p.add_argument("--control", metavar="ENDPOINT",
                   help="bind a control socket (ROUTER) for pause/resume/step/status")
    p.add_argument("--paused", action="store_true", help="start paused")
    p.add_argument("--config", metavar="RUNNER.toml", help="for ROS bags: the runner config "
                   "whose [[input.sources]] fields make sensor messages of the bag's messages")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.set_defaults(handler=_replay)


def _remap(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep:
            raise ConfigError(f"--remap {item!r}: expected OLD=NEW, e.g. sensors=sensors_replay.")
        out[old.strip()] = new.strip()
    return out


def _replay(args: argparse.Namespace) -> int:
    with logs_extra():
        from lstm_stream.logs.replay import Replayer
    config = ReplayConfig(
        paths=[Path(p) for p in args.logs], output=args.output, connect=args.connect,
        rate=args.rate, loop=args.loop, start_s=args.start, duration_s=args.duration,
        topics=_topics(args.topics), remap=_remap(args.remap),
        wait_subscribers=0 if args.no_wait else args.wait_subscribers,
        wait_timeout_s=args.wait_timeout, control=args.control, start_paused=args.paused,
        sources=list(load_runner_config(args.config).input.sources) if args.config else [])
    with Replayer(config, progress=_progress()) as replayer:
        if config.wait_subscribers:
            print(f"replay: waiting for {config.wait_subscribers} subscriber(s) on "
                  f"{replayer.endpoint}", file=sys.stderr)
        with _keyboard(replayer):
            report = replayer.run()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(render_replay(report))
    return 0


def render_replay(report: Any) -> str:
    """The end-of-replay report as text."""
    target = f" (schedule {report.target_rate:,.1f} msg/s)" if report.target_rate else ""
    lines = [f"replay: published {report.published} messages in {report.elapsed_s:.3f} s, "
             f"achieved rate {report.achieved_rate:,.1f} msg/s{target}, loops {report.loops}"]
    err = report.schedule_error_us
    if err is not None:
        lines.append(f"replay: schedule error p50 {err['p50']:.1f} us, p99 {err['p99']:.1f} us, "
                     f"max {err['max']:.1f} us (actual send - scheduled send); "
                     f"resyncs {report.resyncs}")
    return "\n".join(lines)


@contextmanager
def _keyboard(replayer: Any) -> Iterator[None]:
    """Space pauses/resumes, s steps, q stops, while stdin is a terminal."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    done = threading.Event()

    def read_keys() -> None:
        while not done.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            key = os.read(fd, 1)
            if key == b" ":
                replayer.toggle()
            elif key in (b"s", b"."):
                replayer.step()
            elif key in (b"q", b"\x03"):
                replayer.stop()

    tty.setcbreak(fd)
    thread = threading.Thread(target=read_keys, name="replay-keys", daemon=True)
    thread.start()
    print("replay: keys: space pause/resume, s step, q quit", file=sys.stderr)
    try:
        yield
    finally:
        done.set()
        thread.join(1.0)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# -- eval --------------------------------------------------------------------------


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="run a model over logs offline, score it, check it",
                       description="Feed the sensor messages of logs through the runner's own "
                       "state and step code, in log order, with log time as the clock.",
                       epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", metavar="LOG.mcap")
    p.add_argument("--model", help="ONNX step model (default: model.path of the config)")
    p.add_argument("--config", metavar="TOML", help="runner config, for the state options "
                   "and input topics (default: the built-in defaults, as serve)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE", help="override a runner config option")
    p.add_argument("--topics", help="comma-separated sensor topics (prefixes, as serve "
                   "subscribes; default: input.topics of the config, 'sensors')")
    p.add_argument("--backend", choices=list(BackendName),
                   help="step backend (default: model.backend of the config)")
    add_model_io_options(p)
    p.add_argument("--target-topic", help="topic of the recorded targets to score against")
    p.add_argument("--target-key", default="y", help="key of the target array (default y)")
    p.add_argument("--target-field", dest="target_fields", action="append", default=[],
                   metavar="OUTPUT=FIELD.PATH", help="ROS bags: the field of the target "
                   "message that gives a model output, once per output (e.g. "
                   "steer=angular.z); matched to the first output at or after it")
    p.add_argument("--target-stream-field", default="", metavar="FIELD.PATH",
                   help="ROS bags: the field of the target message that names its stream, "
                   "as a source's stream_field (e.g. header.frame_id; default: the bag's "
                   "name)")
    p.add_argument("--encoding", choices=ENCODINGS, default="msgpack",
                   help="of the output files: msgpack (as serve publishes, default) or json "
                   "(JSON with a schema per channel and the targets, which Foxglove plots "
                   "with no setup)")
    p.add_argument("--report", metavar="DIR", help="write report.json, report.md, PNG plots "
                   "and the output files into DIR")
    p.add_argument("--reference", metavar="OUT.mcap|DIR/", help="compare the outputs with "
                   "this reference: a file, or a directory of <log>.policy.mcap (several "
                   "logs, an existing directory, or a path ending in /)")
    p.add_argument("--update-reference", action="store_true",
                   help="write the outputs as the new reference instead of comparing")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (1e-5)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (1e-5)")
    p.add_argument("--ignore", action="append", default=[], metavar="FIELD[,FIELD]",
                   help="output fields not compared (latency_ns never is)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes for many logs")
    p.add_argument("--ray", metavar="ADDRESS", help="run one task per log on the Ray cluster "
                   "at HOST:PORT, or auto (RAY_ADDRESS or a head on this machine); needs "
                   "the [cluster] extra")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document "
                   "on stdout (other lines go to stderr)")
    p.set_defaults(handler=_eval)


def _target_fields(given: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--target-field {item!r}: give OUTPUT=FIELD.PATH, the model "
                              "output and the field of the target message that gives it, "
                              "e.g. --target-field steer=angular.z.", field="--target-field")
        if name.strip() in fields:
            raise ConfigError(f"--target-field {item!r}: output {name.strip()!r} is given "
                              "twice; give each output once.", field="--target-field")
        fields[name.strip()] = path.strip()
    return fields


def _eval(args: argparse.Namespace) -> int:
    with logs_extra():
        from lstm_stream.evaluate.compare import check_reference
        from lstm_stream.evaluate.fleet import evaluate
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1; got {args.workers}.")
    if args.ray is not None and args.workers > 1:
        raise ConfigError("Give either --ray (the cluster decides how many logs run at once) "
                          "or --workers (local processes), not both; got --workers "
                          f"{args.workers} with --ray {args.ray}.")
    if args.reference and args.encoding != "msgpack":
        raise ConfigError("--reference compares msgpack outputs; drop --encoding json, or "
                          "write the JSON file in a second run without --reference.",
                          field="--encoding")
    if args.update_reference and not args.reference:
        raise ConfigError("--update-reference needs --reference PATH (where to write it).")
    overrides, labels = model_io_overrides(args)
    overrides = [*args.overrides, *overrides]
    for key, flag, value in (("model.path", "--model", args.model),
                             ("model.backend", "--backend", args.backend),
                             ("input.topics", "--topics", _topics(args.topics))):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
            labels[key] = flag
    cfg = load_runner_config(args.config, overrides, labels)
    options = EvalOptions(
        model=cfg.model.path, backend=cfg.model.backend, threads=cfg.model.threads,
        sensor_topics=list(cfg.input.topics), target_topic=args.target_topic,
        target_key=args.target_key, target_fields=_target_fields(args.target_fields),
        target_stream_field=args.target_stream_field,
        output_dir=args.report, report_dir=args.report,
        max_streams=cfg.state.max_streams, idle_timeout_s=cfg.state.idle_timeout_s,
        max_gap=cfg.state.max_gap, max_message_bytes=cfg.input.max_message_bytes,
        output_topic=cfg.output.topic, diagnostics_topic=cfg.output.diagnostics_topic,
        io=dataclasses.asdict(cfg.model.io),
        sources=[dataclasses.asdict(s) for s in cfg.input.sources],
        stale=cfg.freshness.stale, ages=cfg.output.ages, batch=cfg.batching.max_batch,
        encoding=args.encoding)
    report = evaluate(args.logs, options, workers=args.workers, progress=_progress(),
                      ray_address=args.ray)
    # With --json, stdout carries exactly one JSON document; every other line is stderr's.
    lines = sys.stderr if args.json else sys.stdout
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        print(render_table(report), end="")
    for result in report.logs:
        print(f"eval: {result.log}: {result.stepped} stepped, "
              f"{sum(result.rejected.values())} rejected -> {result.output}", file=lines)
        if result.rejected:
            print(f"eval: {result.log}: {result.rejection_summary()}", file=lines)
        for problem in result.problems:
            print(f"eval: {result.log}: damaged, {problem}", file=lines)
    if args.report:
        print(f"eval: report in {Path(args.report) / 'report.json'}", file=lines)
    nothing = [r for r in report.logs if r.stepped == 0]
    if nothing:
        raise EvaluationError("Nothing was stepped in " + "; ".join(
            f"{r.log}: {r.rejection_summary() or 'it has no sensor messages'}" for r in nothing)
            + ". Check that the log's sensor messages fit the model (`lstm-stream info MODEL`, "
            "`lstm-stream log info LOG`).")
    if args.reference:
        _reference(check_reference, report, args, lines)
    return 0


def _reference(check_reference: Callable[..., None], report: Any, args: argparse.Namespace,
               lines: TextIO) -> None:
    ref = Path(args.reference)
    ignore = [f.strip() for item in args.ignore for f in item.split(",") if f.strip()]
    several = len(report.logs) > 1
    if several and ref.exists() and not ref.is_dir():
        raise ConfigError(f"--reference {str(ref)!r} must be a directory when evaluating "
                          "several logs (it holds one <log>.policy.mcap per log).")
    # a trailing slash says "directory" even before the directory exists
    as_dir = several or ref.is_dir() or args.reference.endswith(("/", os.sep))
    for result in report.logs:
        out = Path(result.output)
        target = ref / out.name if as_dir else ref
        if args.update_reference:
            target.parent.mkdir(parents=True, exist_ok=True)
            if out.resolve() != target.resolve():
                shutil.copyfile(out, target)
            print(f"eval: reference updated: {target}", file=lines)
        else:
            check_reference(out, target, atol=args.atol, rtol=args.rtol, ignore=ignore)
            print(f"eval: {out.name} matches the reference {target} (atol {args.atol:g}, "
                  f"rtol {args.rtol:g})", file=lines)
