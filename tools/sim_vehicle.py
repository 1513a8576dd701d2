"""The simulator as a vehicle stack: closed-loop eval, training logs, the demo drive, the card.

Needs the ``[sim]`` extra (highway-env, gymnasium); docs/driving.md is the guide.

    python tools/sim_vehicle.py --episodes 20                  # = eval: expert / carried / reset
    python tools/sim_vehicle.py eval --episodes 20 --json out/lane_keep/closed_loop.json \\
        --plot out/lane_keep/closed_loop.png
    python tools/sim_vehicle.py record -o out/lane_keep/train.mcap --episodes 80
    python tools/sim_vehicle.py record --publish tcp://127.0.0.1:5555 --realtime 1   # for
        # `lstm-stream record --input tcp://127.0.0.1:5555 --topics sensors,controls -o x.mcap`
    python tools/sim_vehicle.py drive                          # the drive `lstm-stream demo` plays
    python tools/sim_vehicle.py card                           # models/README.md metrics + parity

``eval`` drives the same seeds three ways: the expert (privileged state), the
model served by a real ``lstm-stream serve`` subprocess with its state carried,
and the same served model with ``reset: true`` on every message. ``record``
writes the expert's drives (sensor messages plus the expert's command on
``controls``; exploration noise on the applied command) with the project's
LogWriter and the simulated time as log time, so the same seeds give the same
file, byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.cli.progress import TerminalProgress
from lstm_stream.core.errors import LstmStreamError

MODEL = Path("models/lane_keep_lstm.onnx")
CARD_JSON = Path("models/lane_keep_lstm.card.json")
PARITY = Path("models/lane_keep_lstm.parity.npz")
CARD_MD = Path("models/README.md")
TRAIN_LOG = Path("out/lane_keep/train.mcap")
EVAL_JSON = Path("out/lane_keep/closed_loop.json")
RUN_DIR = Path("runs/lane_keep")
DRIVE = Path("src/lstm_stream/data/lane_keep_drive.msgpack")
EVAL_SEED, DRIVE_SEED = 1000, 2000  # training uses seeds 0..episodes-1: these are held out
COMMANDS = ("eval", "record", "drive", "card")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "eval")
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
        return result
    except LstmStreamError as err:
        print(f"sim_vehicle {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sim_vehicle.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def sim_options(p: argparse.ArgumentParser, episodes: int, seed: int) -> None:
        p.add_argument("--episodes", type=int, default=episodes,
                       help=f"episodes, seeds SEED..SEED+N-1 (default {episodes})")
        p.add_argument("--seed", type=int, default=seed, help=f"first seed (default {seed})")
        p.add_argument("--episode-s", type=float, default=30.0,
                       help="simulated seconds per episode (default 30)")
        p.add_argument("--realtime", type=float, default=0.0, metavar="FACTOR",
                       help="pace ticks at FACTOR x simulated time (default 0: lockstep, "
                       "as fast as possible)")

    p = sub.add_parser("eval", help="closed loop: expert / served with state / served reset")
    sim_options(p, 20, EVAL_SEED)
    p.add_argument("--model", type=Path, default=MODEL, help=f"ONNX model (default {MODEL})")
    p.add_argument("--deadline-ms", type=float, default=50.0,
                   help="how long the simulator waits for the runner's output per tick; a miss "
                   "is counted and the previous command applied (default 50)")
    p.add_argument("--modes", default="expert,carried,reset",
                   help="which of expert,carried,reset to run (default all three)")
    p.add_argument("--json", type=Path, help="write per-episode metrics and the summary here")
    p.add_argument("--plot", type=Path, help="write trajectories and steering (PNG) here")
    p.set_defaults(handler=_eval)

    p = sub.add_parser("record", help="expert drives as a training log (MCAP)")
    sim_options(p, 80, 0)
    p.add_argument("-o", "--output", type=Path, default=TRAIN_LOG,
                   help=f"MCAP file to write (default {TRAIN_LOG})")
    p.add_argument("--exploration", type=float, default=0.1, metavar="RAD",
                   help="std of the noise on the applied steering (default 0.1 rad)")
    p.add_argument("--publish", metavar="ENDPOINT",
                   help="publish sensors and controls live on this bound endpoint instead of "
                   "writing a file (record them with `lstm-stream record`)")
    p.set_defaults(handler=_record)

    p = sub.add_parser("drive", help="the short recorded drive `lstm-stream demo` replays")
    sim_options(p, 2, DRIVE_SEED)
    p.add_argument("-o", "--output", type=Path, default=DRIVE, help=f"default {DRIVE}")
    p.add_argument("--exploration", type=float, default=0.1, metavar="RAD")
    p.set_defaults(handler=_drive)

    p = sub.add_parser("card", help="write the model card's metrics and the parity reference")
    p.add_argument("--run", type=Path, default=RUN_DIR, help=f"training run (default {RUN_DIR})")
    p.add_argument("--eval-json", type=Path, default=EVAL_JSON,
                   help=f"closed-loop results (default {EVAL_JSON})")
    p.add_argument("--model", type=Path, default=MODEL)
    p.set_defaults(handler=_card)
    return parser


def _sim(args: argparse.Namespace) -> Any:
    from lstm_stream.sim.env import LaneKeepingSim, SimConfig

    if args.episodes < 1:
        raise LstmStreamError(f"--episodes must be at least 1; got {args.episodes}.")
    return LaneKeepingSim(SimConfig(episode_s=args.episode_s))


def _eval(args: argparse.Namespace) -> int:
    from lstm_stream.sim import report
    from lstm_stream.sim.loop import Mode, closed_loop

    try:
        modes = [Mode(m.strip()) for m in args.modes.split(",") if m.strip()]
    except ValueError:
        raise LstmStreamError(f"--modes takes expert, carried and reset; got "
                              f"{args.modes!r}.") from None
    seeds = list(range(args.seed, args.seed + args.episodes))
    print(f"closed loop: {args.model}, seeds {seeds[0]}..{seeds[-1]}, modes "
          f"{', '.join(map(str, modes))}, deadline {args.deadline_ms:g} ms")
    started = time.monotonic()
    with _sim(args) as sim:
        traces = closed_loop(args.model, seeds, modes, sim=sim, deadline_ms=args.deadline_ms,
                             realtime=args.realtime, progress=TerminalProgress())
        road = sim.road_lines()
        settings = {"model": str(args.model), "model_sha256": _sha256(args.model),
                    "seeds": seeds, "deadline_ms": args.deadline_ms,
                    "realtime": args.realtime, "sim": sim.config.as_dict(),
                    "command": "python tools/sim_vehicle.py " + " ".join(sys.argv[1:])}
    summary = report.summarize(traces)
    print(report.table(summary))
    print(f"({time.monotonic() - started:.1f} s)")
    if args.json:
        report.write_json(args.json, traces, summary, settings)
        print(f"wrote {args.json}")
    if args.plot:
        report.write_plot(args.plot, traces, road)
        print(f"wrote {args.plot}")
    return 0


def _record(args: argparse.Namespace) -> int:
    from lstm_stream.sim.loop import record_episodes

    seeds = list(range(args.seed, args.seed + args.episodes))
    with _sim(args) as sim:
        if args.publish:
            return _record_live(args, sim, seeds)
        from lstm_stream.logs.writer import LogWriter

        args.output.parent.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "recording", "source": "tools/sim_vehicle.py record",
                "seeds": f"{seeds[0]}..{seeds[-1]}", "exploration_rad": args.exploration,
                "sim": json.dumps(sim.config.as_dict(), sort_keys=True)}
        with LogWriter(args.output, metadata=meta) as writer:
            traces = record_episodes(sim, seeds, writer.write, exploration_rad=args.exploration,
                                     realtime=args.realtime, progress=TerminalProgress())
            messages = writer.messages
    ticks = sum(t.steps for t in traces)
    off = sum(t.off_road for t in traces)
    print(f"wrote {args.output}: {messages} messages, {ticks} ticks in {len(traces)} episodes "
          f"({off} left the road), sha256 {_sha256(args.output)[:16]}")
    return 0


def _record_live(args: argparse.Namespace, sim: Any, seeds: list[int]) -> int:
    import zmq

    from lstm_stream.serve.client import VehicleStack
    from lstm_stream.sim.loop import record_episodes, wait_subscribers

    ctx = zmq.Context()
    try:
        with VehicleStack(ctx, args.publish) as stack:
            print(f"waiting for subscribers to 'sensors' and 'controls' on "
                  f"{stack.sensors_endpoint} ...")
            wait_subscribers(stack, ["sensors", "controls"], timeout_s=60)
            traces = record_episodes(sim, seeds, lambda *_: None, exploration_rad=args.exploration,
                                     publish=stack, realtime=args.realtime,
                                     progress=TerminalProgress())
            time.sleep(0.5)  # let the last messages leave before the socket closes
    finally:
        ctx.destroy(linger=0)
    print(f"published {sum(t.steps for t in traces)} ticks of {len(traces)} episodes")
    return 0


def _drive(args: argparse.Namespace) -> int:
    from lstm_stream.demo import Drive, DriveMessage, write_drive
    from lstm_stream.sim.loop import record_episodes

    seeds = list(range(args.seed, args.seed + args.episodes))
    messages: list[DriveMessage] = []
    with _sim(args) as sim:
        record_episodes(sim, seeds, lambda topic, data, t: messages.append(
            DriveMessage(topic, t, data)), exploration_rad=args.exploration)
        info = {"made_by": "python tools/sim_vehicle.py " + " ".join(sys.argv[1:]),
                "seeds": seeds, "exploration_rad": args.exploration,
                "sim": sim.config.as_dict()}
    size = write_drive(args.output, Drive(messages, info=info))
    print(f"wrote {args.output}: {len(messages)} messages, {size} bytes, sha256 "
          f"{_sha256(args.output)[:16]}")
    return 0


# ------------------------------------------------------------------------------ model card

CARD_BEGIN = "<!-- metrics:begin (written by `python tools/sim_vehicle.py card`) -->"
CARD_END = "<!-- metrics:end -->"


def _card(args: argparse.Namespace) -> int:
    import torch

    from lstm_stream.core.model.contract import load_contract
    from lstm_stream.train.checkpoint import load_checkpoint, model_from_checkpoint

    best = args.run / "best.pt"
    ckpt = load_checkpoint(best)
    model, _ = model_from_checkpoint(ckpt, str(best))
    xs = [t.numpy().astype(np.float32) for t in ckpt["verify_x"]][:4]
    length = min(len(x) for x in xs)
    x = np.stack([s[:length] for s in xs])  # (B, T, F)
    with torch.no_grad():
        y, _ = model(torch.from_numpy(x))
    np.savez(PARITY, x=x, y=y.numpy().astype(np.float32))
    summary = json.loads((args.run / "summary.json").read_text())
    epochs = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()
              if line.strip()]
    best_row = next(r for r in epochs if r["epoch"] == summary["best_epoch"])
    summary["validation"] = {k[4:]: round(v, 5) for k, v in best_row.items()
                             if k.startswith("val_")}
    summary["test"] = {k: round(v, 5) for k, v in summary["test"].items()}
    closed = json.loads(args.eval_json.read_text())
    contract = load_contract(args.model)
    card = {
        "model": str(args.model), "bytes": args.model.stat().st_size,
        "sha256": _sha256(args.model),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "features": list(contract.feature_names or ()),
        "outputs": list(contract.output_names or ()),
        "parity_reference": {"file": str(PARITY), "sequences": int(x.shape[0]),
                             "steps": int(x.shape[1])},
        "training": summary,
        "closed_loop": {"settings": closed["settings"], "summary": closed["summary"]},
    }
    CARD_JSON.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    _update_card_markdown(card)
    print(f"wrote {PARITY}, {CARD_JSON} and the metrics of {CARD_MD}")
    return 0


def _update_card_markdown(card: dict[str, Any]) -> None:
    from lstm_stream.sim.report import table

    t = card["training"]
    s = card["closed_loop"]["settings"]
    lines = [CARD_BEGIN, "",
             f"Model file: `{card['model']}`, {card['bytes']} bytes, sha256 "
             f"`{card['sha256'][:16]}...`, {card['parameters']} parameters.", "",
             f"Validation (held-out episodes of the training log, whole episodes from a zero "
             f"state, best epoch {t.get('best_epoch')}): `"
             + json.dumps(t["validation"], sort_keys=True) + "`", "",
             "Test split: `" + json.dumps(t.get("test", {}), sort_keys=True) + "`", "",
             f"Closed loop, seeds {s['seeds'][0]}..{s['seeds'][-1]} (never trained on), "
             f"deadline {s['deadline_ms']:g} ms, command `{s['command']}`:", "",
             "```", table(card["closed_loop"]["summary"]), "```", "", CARD_END]
    text = CARD_MD.read_text()
    pattern = re.compile(re.escape(CARD_BEGIN) + ".*?" + re.escape(CARD_END), re.S)
    if not pattern.search(text):
        raise LstmStreamError(f"{CARD_MD} has no metrics markers ({CARD_BEGIN!r} ... "
                              f"{CARD_END!r}); add them where the metrics go.")
    CARD_MD.write_text(pattern.sub(lambda _: "\n".join(lines), text))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
