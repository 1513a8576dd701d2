"""Did a change make the runner slower? `lstm-stream bench` on two revisions, interleaved.

One bench run is one sample on a shared machine: its ratios move by +-0.2 from
run to run. To compare two revisions of the runner, this runs the same bench
command alternately on a baseline revision (checked out into a temporary git
worktree) and on the working tree, ``--rounds`` times each, so that both see
the same drift of the machine, and prints each round and the medians:

    python tools/ab_latency.py --baseline cb23943 --rounds 3
    python tools/ab_latency.py --baseline HEAD~1 -- --servers echo,runner --rate 1000 --duration 5
    python tools/ab_latency.py --baseline HEAD~1 -- --throughput --streams 1,100 \
        --servers decode,runner --duration 3

``--in-process`` times ``Runner.handle`` itself instead (decode, admit, step,
commit, emit and send, with no subscriber and no sockets' round trip): the
figure that a noisy machine moves least.

    python tools/ab_latency.py --baseline HEAD~1 --rounds 5 --in-process

Everything after ``--`` is passed to ``lstm-stream bench`` (default: echo and
runner at 1 kHz and closed loop, 5 s each); with ``--throughput`` the rows are
the throughput suite's verdict (steps/s and its ratios to the floors). Both revisions run with this
checkout's virtual environment; only the ``lstm_stream`` package differs
(``PYTHONPATH``), and every ``serve`` the bench starts inherits it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BENCH = ["--servers", "echo,runner", "--rate", "1000", "--rate", "0", "--duration", "5"]
FIELDS = ("p50_runner_us", "p50_ratio", "p99_runner_us", "p99_ratio", "in_server_p50_us",
          "overhead_p50_us")
THROUGHPUT_FIELDS = ("runner_steps_per_s", "ratio_to_floor_a", "ratio_to_floor_b",
                     "mean_batch")


def row_label(row: dict[str, Any]) -> str:
    """A verdict row's name: its rate (latency suite) or stream count (throughput)."""
    return str(row["rate"]) if "rate" in row else f"{row['streams']} streams {row['transport']}"


def row_line(row: dict[str, Any]) -> str:
    if "rate" in row:
        return (f"{row['rate']}: p50 {row['p50_runner_us']:.1f} us (x{row['p50_ratio']:.2f})"
                f" p99 {row['p99_runner_us']:.1f} us (x{row['p99_ratio']:.2f})")
    ratio = row["ratio_to_floor_a"]
    return (f"{row_label(row)}: {row['runner_steps_per_s']:,.0f} steps/s (floor a' "
            f"x{ratio:.2f})" if ratio is not None else f"{row_label(row)}: "
            f"{row['runner_steps_per_s']:,.0f} steps/s")


def bench_once(src: Path, bench_args: list[str], out: Path) -> list[dict[str, Any]]:
    """One ``lstm-stream bench`` with the package from ``src``; its verdict rows."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "lstm_stream", "--log-level", "warning", "bench", *bench_args,
           "--json", str(out)]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    rows: list[dict[str, Any]] = report["verdict"]
    return rows


# Runner.handle on one stream, 20,000 times after 2,000 discarded; prints p50 and p90 (us).
HANDLE_CODE = """
import socket, time
import numpy as np
try:
    from lstm_stream.core.config.runner import load_runner_config
    from lstm_stream.core.wire.protocol import encode_sensor
except ImportError:  # a baseline from before core/ was split into sub-packages
    from lstm_stream.core.config import load_runner_config
    from lstm_stream.core.protocol import encode_sensor
from lstm_stream.serve.runner import Runner

def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

cfg = load_runner_config(None, [f'input.endpoint="tcp://127.0.0.1:{port()}"', "input.bind=true",
                                f'output.endpoint="tcp://127.0.0.1:{port()}"',
                                f'control.endpoint="tcp://127.0.0.1:{port()}"'])
runner = Runner(cfg)
x = np.random.default_rng(0).normal(size=runner.contract.n_features).astype(np.float32)
frames = [[b"sensors", encode_sensor(k, x, stream="s")] for k in range(22000)]
for k in range(2000):
    runner.handle(frames[k], time.monotonic_ns())
ts = np.empty(20000, np.int64)
for k in range(20000):
    t0 = time.perf_counter_ns()
    runner.handle(frames[2000 + k], t0)
    ts[k] = time.perf_counter_ns() - t0
runner.close()
print(np.percentile(ts, 50) / 1e3, np.percentile(ts, 90) / 1e3)
"""


def handle_once(src: Path) -> tuple[float, float]:
    """``Runner.handle``'s p50 and p90 (us) with the package from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", HANDLE_CODE], cwd=REPO, env=env, check=True,
                          capture_output=True, text=True)
    p50, p90 = (float(v) for v in done.stdout.split())
    return p50, p90


def _median(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.2f}" if known else "-"


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=REPO,
                   check=True, capture_output=True)
    return where


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench_args = DEFAULT_BENCH
    if "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="git revision to compare against")
    p.add_argument("--rounds", type=int, default=3, help="runs of each revision (default 3)")
    p.add_argument("--in-process", action="store_true",
                   help="time Runner.handle in process instead of running lstm-stream bench")
    args = p.parse_args(argv)
    if args.in_process:
        return in_process(args.baseline, args.rounds)
    results: dict[str, list[list[dict[str, Any]]]] = {"baseline": [], "working tree": []}
    with tempfile.TemporaryDirectory(prefix="lstm-stream-ab-") as tmp:
        base = worktree(args.baseline, Path(tmp) / "baseline")
        try:
            sources = {"baseline": base / "src", "working tree": REPO / "src"}
            for k in range(args.rounds):
                for name, src in sources.items():
                    rows = bench_once(src, bench_args, Path(tmp) / "out.json")
                    results[name].append(rows)
                    print(f"round {k + 1} {name:>12}: " + "  ".join(row_line(r) for r in rows),
                          flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO,
                           capture_output=True)
    print(f"\nmedians over {args.rounds} rounds (baseline {args.baseline}):")
    fields = THROUGHPUT_FIELDS if "--throughput" in bench_args else FIELDS
    print(f"{'row':>18} {'revision':>12} " + " ".join(f"{f:>18}" for f in fields))
    for i, row in enumerate(results["baseline"][0]):
        for name, runs in results.items():
            medians = [_median([run[i].get(f) for run in runs]) for f in fields]
            print(f"{row_label(row):>18} {name:>12} " + " ".join(f"{m:>18}" for m in medians))
    return 0


def in_process(baseline: str, rounds: int) -> int:
    times: dict[str, list[tuple[float, float]]] = {"baseline": [], "working tree": []}
    with tempfile.TemporaryDirectory(prefix="lstm-stream-ab-") as tmp:
        base = worktree(baseline, Path(tmp) / "baseline")
        try:
            for k in range(rounds):
                for name, src in (("baseline", base / "src"), ("working tree", REPO / "src")):
                    p50, p90 = handle_once(src)
                    times[name].append((p50, p90))
                    print(f"round {k + 1} {name:>12}: Runner.handle p50 {p50:.2f} us, "
                          f"p90 {p90:.2f} us", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO,
                           capture_output=True)
    print(f"\nmedians over {rounds} rounds (baseline {baseline}):")
    for name, runs in times.items():
        print(f"{name:>12}: Runner.handle p50 {_median([r[0] for r in runs])} us, "
              f"p90 {_median([r[1] for r in runs])} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
