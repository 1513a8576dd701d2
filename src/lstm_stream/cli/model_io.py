"""``--io`` and ``--state``: the options that name a model's own inputs and outputs.

Shared by ``serve``, ``info``, ``check`` (cli/main.py) and ``eval`` (cli/record_replay_eval.py).
"""

from __future__ import annotations

import argparse
import json


def add_model_io_options(p: argparse.ArgumentParser) -> None:
    """``--io`` and ``--state``: the model's own names (sets ``model.io``)."""
    p.add_argument("--io", metavar="x=INPUT,y=OUTPUT", type=_io_arg,
                   help="the model's own names for its feature input and policy output, "
                   "e.g. --io x=obs,y=action (model.io.x, model.io.y)")
    p.add_argument("--state", dest="state_pairs", action="append", default=[],
                   metavar="IN=OUT", type=_pair_arg, help="a state input and the output that "
                   "returns it, e.g. --state h0=hn --state c0=cn; repeatable (model.io.states)")


def model_io_overrides(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """``--io``/``--state`` as config overrides, and the labels that name them in errors."""
    overrides: list[str] = []
    labels: dict[str, str] = {}
    for key, value in (args.io or {}).items():
        overrides.append(f"model.io.{key}={json.dumps(value)}")
        labels[f"model.io.{key}"] = "--io"
    if args.state_pairs:
        table = ", ".join(f"{json.dumps(i)} = {json.dumps(o)}" for i, o in args.state_pairs)
        overrides.append(f"model.io.states={{{table}}}")
        labels["model.io.states"] = "--state"
    return overrides, labels


def _io_arg(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in ("x", "y") or not value.strip():
            raise argparse.ArgumentTypeError(
                f"{text!r} is not x=INPUT,y=OUTPUT (either or both), e.g. x=obs,y=action")
        out[key.strip()] = value.strip()
    return out


def _pair_arg(text: str) -> tuple[str, str]:
    name, sep, out = text.partition("=")
    if not sep or not name.strip() or not out.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not IN=OUT, e.g. h0=hn")
    return name.strip(), out.strip()
