"""Every benchmark report as text, plot and raw arrays: the one place that renders.

The suites (latency.py, throughput.py) measure and return typed reports
(results.py); this module only reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.bench.latency import FLOOR_B
from lstm_stream.bench.results import (
    BenchReport,
    EvalBenchReport,
    LiveViewReport,
    ReportHeader,
    ThroughputReport,
    config_name,
    rate_label,
)
from lstm_stream.bench.step import RUNNER_PATH
from lstm_stream.bench.throughput import GENERATOR_BOUND_WAIT, KNOWN_SERVERS, LABELS
from lstm_stream.core.plotting import pyplot

QS = ("p50", "p90", "p99", "p99.9", "max")  # the latency columns of every table


def render(report: BenchReport) -> str:
    """The report as text: platform, step latency, end-to-end table, verdict."""
    lines = [
        *render_platform(report, "lstm-stream bench"),
        "",
        "step latency in process (us)",
        render_table(["", "p50", "p90", "p99", "p99.9", "max", "n"],
                     [[name, *(s.get(k, "") for k in (*QS, "count"))]
                      for name, s in report.step.items()]),
        "",
        "end to end over ZeroMQ (us): sensor sent -> output received, same clock",
        render_table(["server", "transport", "rate", *QS, "sent", "lost", "jitter p99",
                      "cpu %", "rss MB"],
                     [[r["server"], r["transport"], rate_label(r["rate_hz"]),
                       *(r["latency_us"].get(k, "") for k in QS),
                       r["sent"], r["lost"], r["send_jitter_us"].get("p99", ""),
                       r.get("server_cpu_percent", ""), r.get("server_rss_mb", "")]
                      for r in report.e2e]),
        "",
        "runner vs floors (a) bare ZeroMQ echo + (b) bare InferenceSession.run",
        render_table(["transport", "rate", "p50 runner", "p50 floors", "ratio", "p99 runner",
                      "p99 floors", "ratio", "in runner p50", "lost", "start-up s", "rss MB"],
                     [[r["transport"], r["rate"], r.get("p50_runner_us", ""),
                       r.get("p50_floors_us", ""), r.get("p50_ratio", ""),
                       r.get("p99_runner_us", ""),
                       r.get("p99_floors_us", ""), r.get("p99_ratio", ""),
                       r.get("in_server_p50_us", ""), r["lost"],
                       round(r["startup_s"], 3) if r["startup_s"] else "", r["server_rss_mb"]]
                      for r in report.verdict]),
        "",
        "ratio: runner / (floor a + floor b); in runner p50: receive -> publish inside the "
        "live runner (its latency_ns).",
        _overhead_line(report),
        *_startup_lines(report.startup),
    ]
    return "\n".join(lines)


def _startup_lines(startup: dict[str, Any]) -> list[str]:
    """The first ten messages after start against the steady p50 (in the runner, us), and
    the first batched call at each size against the later ones."""
    if not startup:
        return []
    runs, batches = startup["messages"], startup["batches"]
    sizes = [row["batch"] for row in batches[0]["batches"]]
    return [
        "",
        "first messages after start (us, receive -> publish in the runner, 100 Hz)",
        render_table(["warm-up", "first 10 mean", "first 10 max", "steady p50", "ratio",
                      "first 10"],
                     [["on" if r["warmup"] else "off", r["first_mean_us"], r["first_max_us"],
                       r["steady_p50_us"], r["first_over_steady"],
                       " ".join(f"{v:g}" for v in r["first_us"])] for r in runs]),
        "ratio: mean of the first 10 / steady p50 (1.0: the first message costs what later "
        "ones do).",
        "",
        "first batched call at each size / median of the next 20 (in process, fresh backend)",
        render_table(["warm-up", *(f"batch {b}" for b in sizes)],
                     [["on" if run["warmup"] else "off",
                       *(f"{row['first_us']:g} / {row['later_p50_us']:g} us = x{row['ratio']:g}"
                         for row in run["batches"])] for run in batches]),
    ]


def render_platform(report: ReportHeader, title: str) -> list[str]:
    """The platform record's lines that head every report: machine, software, settings."""
    p, m = report.platform, report.model
    v, s = p["versions"], p["settings"]
    return [
        f"{title}  {report.started}",
        f"machine   {p['cpu']}, {p['cores']} cores, governor {p['governor'] or 'n/a'}, "
        f"{p['kernel']} {p['machine']}",
        f"software  python {v['python']}, numpy {v['numpy']}, onnxruntime {v['onnxruntime']}, "
        f"pyzmq {v['pyzmq']} (libzmq {v['libzmq']}), torch {v['torch']}",
        f"settings  threads {s['threads']}, pin runner {s['pin_runner']}, pin load "
        f"{s['pin_load']}, rt {s['rt_priority']}, busy poll {s['busy_poll_us']} us "
        "(all servers), warm-up discarded",
        f"model     {m['path']}: {m['cell']} {m['layers']}x{m['hidden']}, {m['features']} "
        f"features -> {m['outputs']} outputs; sensor payload {m['sensor_payload_bytes']} B",
    ]


def _overhead_line(report: BenchReport) -> str:
    bare = report.step.get(FLOOR_B, {})
    path = report.step.get(RUNNER_PATH, {})
    if not bare or not path:
        return ""
    return (f"runner overhead in process (decode + state + step + encode minus bare run), "
            f"p50: {path['p50'] - bare['p50']:.2f} us  ({path['p50']:.2f} - {bare['p50']:.2f})")


def render_table(header: list[str], rows: list[list[Any]]) -> str:
    """Columns padded to their widest cell; the first left-aligned, the rest right."""
    cells = [header, *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                     for row in cells)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def save_raw(report: BenchReport, path: str | Path) -> None:
    """Per-message end-to-end latencies (ns), one array per configuration, as .npz."""
    arrays: dict[str, Any] = {name.replace(" ", "_"): arr for name, arr in report.raw.items()}
    np.savez_compressed(path, **arrays)


def plot(report: BenchReport, path: str | Path) -> None:
    """Latency CDF per configuration (log x), one panel per rate."""
    plt = pyplot("--plot")
    rates = sorted({r["rate_hz"] for r in report.e2e}, key=lambda r: (r == 0, r))
    fig, axes = plt.subplots(1, len(rates), figsize=(5.5 * len(rates), 4.2), squeeze=False)
    for ax, rate in zip(axes[0], rates, strict=True):
        for run in report.e2e:
            if run["rate_hz"] != rate:
                continue
            name = config_name(run)
            lat = np.sort(report.raw[name]) / 1e3
            if lat.size == 0:
                continue
            ax.plot(lat, np.arange(1, lat.size + 1) / lat.size,
                    label=f"{run['server']} ({run['transport']})")
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (us)")
        ax.set_ylabel("fraction of messages")
        ax.set_title(rate_label(rate))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = report.model
    fig.suptitle(f"lstm-stream bench: {m['cell']} {m['layers']}x{m['hidden']}, "
                 f"{report.platform['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the throughput suite ---------------------------------------------------------


def _rate(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "n/a"


def _ms(latency_us: dict[str, Any], keys: tuple[str, ...]) -> list[Any]:
    """Latencies at saturation are milliseconds (about window / rate): show them so."""
    return [round(latency_us[k] / 1e3, 2) if k in latency_us else "" for k in keys]


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def render_throughput(report: ThroughputReport) -> str:
    """The throughput report as text: platform, per-server table, floors, verdict."""
    lat_cols = ("p50", "p90", "p99", "p99.9", "max")
    lines = render_platform(report, "lstm-stream bench --throughput")
    lines += [
        "",
        "floor b': bare batched InferenceSession.run in process (steps/s = batch / time "
        "per run)",
        render_table(["batch", "run p50 us", "run p99 us", "steps/s"],
                     [[f["batch"], f["run_us"]["p50"], f["run_us"]["p99"],
                       _rate(f["steps_per_s"])] for f in report.floor_b]),
        "",
        "throughput over ZeroMQ: steps/s, latency per message (ms, sensor sent -> output "
        "received, same clock) with window messages in flight",
        render_table(["streams", "server", "transport", "window", "steps/s",
                      *lat_cols, "sent", "lost", "reord", "cpu %", "batch", "gen cpu %",
                      "gen wait %", "limited by"],
                     [[r["streams"], r["label"], r["transport"], r["window"],
                       _rate(r["steps_per_s"]),
                       *_ms(r["latency_us"], lat_cols), r["sent"], r["lost"],
                       r["reordered"], r["server_cpu_percent"] or "",
                       r["mean_batch"] or "", r["generator"]["process_cpu_percent"],
                       r["generator"]["wait_percent"], r["limited_by"]]
                      for r in report.throughput]),
        "",
        "runner (batched) vs floor a' (receive + decode), floor b' (bare batched run), "
        "the unbatched runner and the naive onnxruntime server",
        render_table(["transport", "streams", "runner steps/s", "floor a'", "ratio",
                      "floor b' (batch)", "ratio", "max_batch 1", "batching gain",
                      "naive-ort", "ratio", "mean batch", "lost", "reord", "limited by"],
                     [[v["transport"], v["streams"], _rate(v["runner_steps_per_s"]),
                       _rate(v["floor_a_steps_per_s"]), _x(v["ratio_to_floor_a"]),
                       f"{_rate(v['floor_b_steps_per_s'])} ({v['floor_b_batch']})",
                       _x(v["ratio_to_floor_b"]), _rate(v["unbatched_steps_per_s"]),
                       _x(v["batching_gain"]), _rate(v["naive_ort_steps_per_s"]),
                       _x(v["ratio_to_naive_ort"]), v["mean_batch"] or "n/a", v["lost"],
                       v["reordered"], v["limited_by"]] for v in report.verdict]),
        "",
        "floor a': a Python server that only receives and msgpack-decodes each message and, so "
        "that it can be counted, answers it with the same output map as the echo server (no "
        "model, no state).",
        "cpu %: the server process (all its threads). batch: steps per backend call (runner "
        "status stepped / batches; empty when the runner does not report batches). gen cpu %: "
        "the generator process (its thread and ZeroMQ's I/O thread); gen wait %: time it "
        f"waited for outputs with its window full: below {GENERATOR_BOUND_WAIT:g} % the "
        "generator, not the server, set the pace ('limited by').",
        *_generator_lines(report.generator),
        *_target_lines(report.verdict),
        *_batch_message_lines(report.batch_messages),
    ]
    return "\n".join(lines)


def _batch_message_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Batch messages (protocol v1.1) against the bare batched run of the same batch."""
    if not rows:
        return []
    return [
        "",
        "batch messages: one message per tick with every stream's reading, against floor b' "
        "of the same batch (goal >= 0.5x) and the runner fed one message per stream",
        render_table(["transport", "streams", "steps/s", "floor b' (batch)", "ratio",
                      "one per stream", "gain", "lost", "reord", "limited by"],
                     [[v["transport"], v["streams"], _rate(v["steps_per_s"]),
                       f"{_rate(v['floor_b_steps_per_s'])} ({v['floor_b_batch']})",
                       _x(v["ratio_to_floor_b"]), _rate(v["runner_steps_per_s"]),
                       _x(v["gain"]), v["lost"], v["reordered"], v["limited_by"]]
                      for v in rows]),
    ]


def _generator_lines(g: dict[str, Any]) -> list[str]:
    if not g:
        return []
    at = g["max_at"]
    limited = ", ".join(g["limited_rows"]) or "none"
    return [f"load generator: pushed up to {_rate(g['max_steps_per_s'])} steps/s "
            f"({at['server']}, {at['streams']} streams, {at['transport']}), its thread "
            f"{g['thread_cpu_percent']} % busy and {g['wait_percent']} % waiting for outputs, "
            f"the whole process (with ZeroMQ's I/O thread) {g['process_cpu_percent']} % of a "
            f"core; its thread's {g['cpu_us_per_message']} us of CPU per message make about "
            f"{_rate(g['capacity_per_core_steps_per_s'])} messages/s on a core of its own. "
            f"Rows limited by the generator: {limited}."]


def _target_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 8's target: at least 100,000 steps/s with 100 streams on one runner."""
    return [f"target (>= 100,000 steps/s, 100 streams, one runner), {v['transport']}: "
            f"{_rate(v['runner_steps_per_s'])} steps/s -> "
            f"{'met' if v['runner_steps_per_s'] >= 100_000 else 'not met'}"
            for v in rows if v["streams"] == 100]


def plot_throughput(report: ThroughputReport, path: str | Path) -> None:
    """Steps/s against streams (log-log), one line per server, floor (b') dashed."""
    plt = pyplot("--plot")
    fig, ax = plt.subplots(figsize=(10, 4.8))
    transports = sorted({r["transport"] for r in report.throughput})
    for transport in transports:
        for kind in KNOWN_SERVERS:
            rows = sorted((r for r in report.throughput
                           if r["server"] == kind and r["transport"] == transport),
                          key=lambda r: r["streams"])
            if not rows:
                continue
            label = LABELS[kind] + (f" ({transport})" if len(transports) > 1 else "")
            ax.plot([r["streams"] for r in rows], [r["steps_per_s"] for r in rows],
                    marker="o", label=label)
    streams = sorted({v["streams"] for v in report.verdict}
                     or {r["streams"] for r in report.throughput})
    by_batch = {f["batch"]: f["steps_per_s"] for f in report.floor_b}
    limit = report.platform["settings"]["max_batch"]
    ax.plot(streams, [by_batch.get(min(n, limit), np.nan) for n in streams], "k--",
            label="floor b': bare batched run in process, batch min(streams, max_batch)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("streams")
    ax.set_ylabel("steps per second")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the lines
    m = report.model
    ax.set_title(f"lstm-stream bench --throughput: {m['cell']} {m['layers']}x{m['hidden']}, "
                 f"{report.platform['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the eval suite ---------------------------------------------------------------


def render_eval(report: EvalBenchReport) -> str:
    """The eval benchmark as text: each way of evaluating against the read + decode floor."""
    lines = [line for line in render_platform(report, "lstm-stream bench --eval")
             if not line.startswith("settings")]  # no servers, no pinning: nothing to say
    lines += [
        f"log       {report.log}: {report.messages:,} sensor messages",
        "",
        render_table(["", "steps/s", "seconds", "/ floor"],
                     [[r["name"], _rate(r["steps_per_s"]), r["seconds"],
                       f"{r['ratio_to_floor']:.2f}x"] for r in report.rows]),
        "",
        f"2 workers / 1 worker, batched, the same log: {report.workers_2_over_1:.2f}x; "
        f"several logs: {report.logs_workers_2_over_1:.2f}x",
        f"parallel ceiling: the floor's work in two processes at once gives "
        f"{report.two_processes_over_one:.2f}x of one process on this machine",
        f"bound: read + decode, then the model, nothing else: "
        f"{_rate(report.bound_steps_per_s)} steps/s "
        f"({report.bound_steps_per_s / report.rows[0]['steps_per_s']:.2f}x of the floor)",
        "",
        "where batched eval's time goes (each part timed alone over the log, us per message)",
        render_table(["part", "us/message"],
                     [[name, us] for name, us in report.parts_us.items()]
                     + [["sum", round(sum(report.parts_us.values()), 2)]]),
        "floor: the project's MCAP reader and msgpack decoding of every sensor message, "
        "nothing else; eval rows include loading the model and writing the output file.",
    ]
    if any(r.get("log") == "batch messages" for r in report.rows):
        lines.append("batch messages: the generated log's readings written as one batch "
                     "message per tick (a farm's recording); steps/s in rows, against the "
                     "floor above (one message per reading).")
    return "\n".join(lines)


def render_liveview(report: LiveViewReport) -> str:
    """The live-view benchmark as text: each round, plain and live, then the medians."""
    m = report.medians
    lines = [line for line in render_platform(report, "lstm-stream bench --liveview")
             if not line.startswith("settings")]
    lines += [
        f"load      {rate_label(report.rate_hz)} for {report.duration_s:g} s per run, "
        "one stream, tcp; live: serve --foxglove and a viewer subscribed to every channel",
        "",
        "end to end over ZeroMQ (us): sensor sent -> output received, same clock",
        render_table(["round", "runner", "p50", "p99", "sent", "lost", "viewer frames",
                      "channels", "published", "thinned", "dropped"],
                     [[r["round"], "live view" if r["live"] else "plain", r["p50"], r["p99"],
                       r["sent"], r["lost"],
                       *((r["viewer_frames"], r["viewer_channels"], r["published"],
                          r["thinned"], r["dropped"]) if r["live"] else ("",) * 5)]
                      for r in report.runs]),
        "",
        f"medians: plain p50 {m['plain_p50_us']} us, p99 {m['plain_p99_us']} us; live view "
        f"p50 {m['live_p50_us']} us, p99 {m['live_p99_us']} us",
        f"live / plain: p50 {m['p50_ratio']:.3f}x, p99 {m['p99_ratio']:.3f}x",
        "published, thinned, dropped: the runner's live view (control status); thinned is "
        "viz.max_rate_hz at work, dropped a viewer too slow for the queue.",
    ]
    return "\n".join(lines)
