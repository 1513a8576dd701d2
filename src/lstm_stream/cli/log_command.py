"""The ``log`` command: ``log info``, ``log export --foxglove`` and ``log recover``.

Like cli/record_replay_eval.py, it imports the library modules that need the ``[logs]`` (or
``[ros]``) extra only in its handlers, under ``logs_extra()``, so that a missing
extra is one clear error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lstm_stream.cli.extras import logs_extra
from lstm_stream.cli.record_replay_eval import _progress
from lstm_stream.core.errors import ConfigError
from lstm_stream.core.model.contract import load_contract


def add_commands(sub: Any) -> None:
    """Add ``log`` to the ``lstm-stream`` parser."""
    _add_log(sub)


def _add_log(sub: Any) -> None:
    p = sub.add_parser("log", help="inspect or repair a log file",
                       description="Inspect (info) or repair (recover) an MCAP log.")
    cmds = p.add_subparsers(dest="log_command", required=True, metavar="SUBCOMMAND")
    info = cmds.add_parser("info", help="topics, counts, rates, duration, streams, seq gaps")
    info.add_argument("file", metavar="LOG.mcap")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=_log_info)
    exp = cmds.add_parser("export", help="rewrite a log for Foxglove: JSON messages with a "
                          "JSON schema per channel", description="Rewrite an lstm-stream log "
                          "(recording or eval output) so that Foxglove opens and plots it "
                          "with no setup (docs/logs.md).")
    exp.add_argument("file", metavar="LOG.mcap")
    exp.add_argument("--foxglove", action="store_true", required=True,
                     help="JSON encoding with JSON schemas (the one export there is)")
    exp.add_argument("-o", "--output", metavar="OUT.mcap",
                     help="where to write (default LOG.foxglove.mcap beside it)")
    exp.add_argument("--model", help="the model whose output names label y ('outputs')")
    exp.set_defaults(handler=_log_export)
    rec = cmds.add_parser("recover", help="rewrite a truncated log as a complete MCAP file",
                          description="Read every intact message of a truncated or damaged "
                          "log and write them into a complete MCAP file that any MCAP reader "
                          "accepts.")
    rec.add_argument("file", metavar="LOG.mcap")
    rec.add_argument("-o", "--output", metavar="OUT.mcap",
                     help="where to write (default LOG.recovered.mcap beside it)")
    rec.add_argument("--in-place", action="store_true", help="replace LOG.mcap once done")
    rec.set_defaults(handler=_log_recover)


def _log_info(args: argparse.Namespace) -> int:
    with logs_extra():
        from lstm_stream.logs.rosbag import RosBag, is_rosbag, render_summary
    if is_rosbag(args.file):  # a ROS 1 .bag or a rosbag2 directory (the [ros] extra)
        bag = RosBag(args.file)
        summary = bag.summary()
        bag.close()
        print(json.dumps(summary, indent=2) if args.json else render_summary(summary))
        return 0
    with logs_extra():
        from lstm_stream.logs.info import render, summarize
    summary = summarize(args.file)
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0


def _log_export(args: argparse.Namespace) -> int:
    with logs_extra():
        from lstm_stream.logs.foxglove import export_foxglove
    source = Path(args.file)
    target = Path(args.output) if args.output else source.with_name(
        source.name.removesuffix(".mcap") + ".foxglove.mcap")
    if target.resolve() == source.resolve():
        raise ConfigError("log export: --output must differ from the log it reads.")
    names = None
    if args.model:
        names = load_contract(args.model).output_names
    written = export_foxglove(source, target, output_names=names, progress=_progress())
    print(f"log export: {written} messages written to {target} (JSON, one JSON schema per "
          "channel: open it in Foxglove)")
    return 0


def _log_recover(args: argparse.Namespace) -> int:
    with logs_extra():
        from lstm_stream.logs.recover import recover
    if args.in_place and args.output:
        raise ConfigError("Give either --output or --in-place, not both.")
    report = recover(args.file, args.output, in_place=args.in_place, progress=_progress())
    state = "was complete" if report.was_complete else "was truncated"
    print(f"log recover: {report.source} {state}; {report.messages} messages written to "
          f"{report.output}")
    for problem in report.problems:
        print(f"log recover: {report.source}: {problem}")
    return 0
