"""The evaluation report: ``report.json``, a per-stream Markdown table, and plots.

The plots need matplotlib (the ``[logs]`` extra); core/plotting.py imports it only
when a report directory is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.core.errors import EvaluationError
from lstm_stream.core.plotting import pyplot
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.evaluate.results import HIST_EDGES, EvalReport
from lstm_stream.evaluate.score import Series

MAX_PLOTTED_STREAMS = 8


def write_report(report: EvalReport, directory: Path) -> Path:
    """``report.json``, ``report.md`` (per-stream table) and ``error_histogram.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    data = report.as_dict()
    path = directory / "report.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (directory / "report.md").write_text(render_table(report))
    hist = np.zeros(len(HIST_EDGES) - 1, np.int64)
    for r in report.logs:
        if r.histogram:
            hist += np.asarray(r.histogram)
    if hist.any():
        _plot_histogram(hist, directory / "error_histogram.png")
    return path


def render_table(report: EvalReport) -> str:
    """The per-stream (per-episode) table as Markdown."""
    lines = ["| log | stream | stepped | rejected | resets | matched | MAE | RMSE | max |",
             "|---|---|---|---|---|---|---|---|---|"]
    rejected: dict[str, int] = {}
    for r in report.logs:
        for reason, n in r.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + n
        for s in r.streams:
            m = s.errors.metrics()
            resets = ", ".join(f"{k} {v}" for k, v in sorted(s.resets.items()))
            lines.append(f"| {Path(r.log).name} | {s.stream} | {s.stepped} | "
                         f"{_reasons(s.rejected, s.rejections)} | {resets} | {m['matched']} | "
                         f"{_num(m['mae'])} | {_num(m['rmse'])} | {_num(m['max_error'])} |")
    o = report.overall()
    lines.append(f"| **all** | | {sum(r.stepped for r in report.logs)} | "
                 f"{_reasons(sum(rejected.values()), rejected)} | | {o['matched']} | "
                 f"{_num(o['mae'])} | {_num(o['rmse'])} | {_num(o['max_error'])} |")
    return "\n".join(lines) + "\n"


def _reasons(total: int, by_reason: dict[str, int], top: int = 3) -> str:
    """``"12 (wrong_length 10, stale_seq 2)"``: the count and its top reasons."""
    if not total:
        return "0"
    reasons = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{k} {v}" for k, v in reasons[:top])
    return f"{total} ({shown}{', ...' if len(reasons) > top else ''})"


def _num(v: float | int | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _pyplot() -> Any:
    return pyplot("--report", EvaluationError, otherwise="or leave out --report")


def plot_predictions(path: Path, series: Series, options: EvalOptions,
                     output_names: tuple[str, ...] | None) -> str:
    """``<log>.predictions.png`` in the report directory: predicted and target values
    over log time for the first streams; returns its path."""
    plt = _pyplot()
    names = sorted(series)[:MAX_PLOTTED_STREAMS]  # a readable figure; the JSON has them all
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.5 * len(names)), squeeze=False)
    t0 = min(series[n][0][0] for n in names)
    for ax, name in zip(axes[:, 0], names, strict=True):
        times, preds, targets = series[name]
        t = (np.asarray(times) - t0) / 1e9
        p, y = np.stack(preds), np.stack(targets)
        for k in range(p.shape[1]):
            label = output_names[k] if output_names else f"y{k}"
            line = ax.plot(t, p[:, k], lw=1, label=f"{label} predicted")[0]
            ax.plot(t, y[:, k], lw=1, ls="--", color=line.get_color(), label=f"{label} target")
        ax.set_title(f"{path.name}: {name}", fontsize=9)
        ax.set_xlabel("log time (s)")
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    assert options.report_dir is not None
    out = Path(options.report_dir) / f"{path.name.removesuffix('.mcap')}.predictions.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return str(out)


def _plot_histogram(hist: np.ndarray, out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    edges = HIST_EDGES.copy()
    edges[0] = edges[1] / 10  # log axis: show the zero bin just left of the first edge
    ax.stairs(hist, edges, fill=True)
    ax.set_xscale("log")
    ax.set_xlabel("|predicted - target|")
    ax.set_ylabel("values")
    ax.set_title("error histogram (all streams, all outputs)")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


