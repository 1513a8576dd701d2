"""The whole benchmark: step latencies, end-to-end runs, floors, ratios; text, JSON, plot."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.bench.e2e import measure
from lstm_stream.bench.platform import platform_record
from lstm_stream.bench.step import RUNNER_PATH, has_torch, step_suite
from lstm_stream.core.contract import ModelContract, load_contract
from lstm_stream.core.progress import NullProgress, Progress

log = logging.getLogger(__name__)

FLOOR_A = "echo"  # bare ZeroMQ echo: receive, decode, encode, send
FLOOR_B = "floor b: bare InferenceSession.run"
QS = ("p50", "p90", "p99", "p99.9", "max")  # the latency columns of every table


@dataclass
class BenchSettings:
    model: str = "models/random_lstm.onnx"
    rates: tuple[float, ...] = (100.0, 1000.0, 0.0)  # 0: closed loop, as fast as possible
    duration_s: float = 10.0
    transports: tuple[str, ...] = ("tcp",)
    servers: tuple[str, ...] = ("echo", "runner", "naive-ort", "naive-torch")
    steps: int = 20000
    warmup: int = 1000
    batches: tuple[int, ...] = (1, 8, 64)
    threads: int = 1
    pin: int | None = None
    pin_load: int | None = None
    rt_priority: int | None = None
    busy_poll_us: int = 0
    closed_loop_count: int = 5000
    extra: dict[str, Any] = field(default_factory=dict)


def run_bench(settings: BenchSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Run every measurement; returns the report (raw latencies under ``raw``)."""
    progress = progress or NullProgress()
    contract = load_contract(settings.model)
    servers = [s for s in settings.servers if s != "naive-torch" or has_torch()]
    configs = [(t, s, r) for t in settings.transports for r in settings.rates for s in servers]
    progress.start("bench", total=1 + len(configs))
    started = time.time()
    steps = step_suite(contract, steps=settings.steps, warmup=settings.warmup,
                       batches=settings.batches, threads=settings.threads)
    progress.advance(1, status="step latency done")
    e2e: list[dict[str, Any]] = []
    raw: dict[str, np.ndarray] = {}
    for transport, server, rate in configs:
        result = measure(server, settings.model, contract.n_features, rate_hz=rate,
                         duration_s=settings.duration_s, transport=transport,
                         threads=settings.threads, pin=settings.pin,
                         pin_load=settings.pin_load, rt_priority=settings.rt_priority,
                         busy_poll_us=settings.busy_poll_us,
                         closed_loop_count=settings.closed_loop_count)
        raw[config_name(result)] = result.pop("_raw_latency_ns")
        e2e.append(result)
        progress.advance(1, status=f"{server} {transport} {rate_label(rate)}")
    progress.close()
    return {
        "platform": platform_record({
            "rates_hz": list(settings.rates), "duration_s": settings.duration_s,
            "transports": list(settings.transports), "steps": settings.steps,
            "warmup": settings.warmup, "threads": settings.threads, "pin_runner": settings.pin,
            "pin_load": settings.pin_load, "rt_priority": settings.rt_priority,
            "busy_poll_us": settings.busy_poll_us}),
        "model": model_record(settings.model, contract),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "step": steps,
        "e2e": e2e,
        "verdict": verdict(steps, e2e),
        "raw": raw,
    }


def model_record(path: str, contract: ModelContract) -> dict[str, Any]:
    """The model's identity and shape, as every report records it."""
    state = contract.states[0]
    return {"path": path, "sha256": contract.sha256, "cell": contract.cell,
            "layers": state.layers, "hidden": state.hidden, "features": contract.n_features,
            "outputs": contract.n_outputs,
            "sensor_payload_bytes": sensor_payload_bytes(contract.n_features)}


def sensor_payload_bytes(n_features: int) -> int:
    import msgpack

    body = {"stream": "bench/0", "seq": 1_000_000, "stamp_ns": time.monotonic_ns(),
            "x": b"\x00" * 4 * n_features}
    return len(msgpack.packb(body))


def rate_label(rate: float) -> str:
    return f"{rate:g} Hz" if rate > 0 else "max (closed loop)"


def config_name(result: dict[str, Any]) -> str:
    return f"{result['server']} {result['transport']} {rate_label(result['rate_hz'])}"


def verdict(steps: dict[str, Any], e2e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runner against the floors (a: echo, b: bare run) at each transport and rate."""
    bare = steps.get(FLOOR_B, {})
    rows = []
    for run in e2e:
        if run["server"] != "runner":
            continue
        echo = next((r for r in e2e if r["server"] == FLOOR_A
                     and r["transport"] == run["transport"] and r["rate_hz"] == run["rate_hz"]),
                    None)
        row: dict[str, Any] = {"transport": run["transport"], "rate": rate_label(run["rate_hz"]),
                               "lost": run["lost"], "startup_s": run["startup_s"],
                               "server_rss_mb": run.get("server_rss_mb")}
        lat = run["latency_us"]
        if echo is not None and bare and lat.get("count"):
            for q in ("p50", "p99"):
                floor = echo["latency_us"][q] + bare[q]
                row[f"{q}_runner_us"] = lat[q]
                row[f"{q}_floors_us"] = round(floor, 2)
                row[f"{q}_ratio"] = round(lat[q] / floor, 3)
        inside = run["in_server_us"]
        if bare and inside.get("count"):
            row["in_server_p50_us"] = inside["p50"]
        path = steps.get(RUNNER_PATH, {})
        if bare and path:
            row["overhead_p50_us"] = round(path["p50"] - bare["p50"], 2)
        rows.append(row)
    return rows


def render(report: dict[str, Any]) -> str:
    """The report as text: platform, step latency, end-to-end table, verdict."""
    lines = [
        *render_platform(report, "lstm-stream bench"),
        "",
        "step latency in process (us)",
        render_table(["", "p50", "p90", "p99", "p99.9", "max", "n"],
                     [[name, *(s.get(k, "") for k in (*QS, "count"))]
                      for name, s in report["step"].items()]),
        "",
        "end to end over ZeroMQ (us): sensor sent -> output received, same clock",
        render_table(["server", "transport", "rate", *QS, "sent", "lost", "jitter p99",
                      "cpu %", "rss MB"],
                     [[r["server"], r["transport"], rate_label(r["rate_hz"]),
                       *(r["latency_us"].get(k, "") for k in QS),
                       r["sent"], r["lost"], r["send_jitter_us"].get("p99", ""),
                       r.get("server_cpu_percent", ""), r.get("server_rss_mb", "")]
                      for r in report["e2e"]]),
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
                      for r in report["verdict"]]),
        "",
        "ratio: runner / (floor a + floor b); in runner p50: receive -> publish inside the "
        "live runner (its latency_ns).",
        _overhead_line(report),
    ]
    return "\n".join(lines)


def render_platform(report: dict[str, Any], title: str) -> list[str]:
    """The platform record's lines that head every report: machine, software, settings."""
    p, m = report["platform"], report["model"]
    v, s = p["versions"], p["settings"]
    return [
        f"{title}  {report['started']}",
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


def _overhead_line(report: dict[str, Any]) -> str:
    bare = report["step"].get(FLOOR_B, {})
    path = report["step"].get(RUNNER_PATH, {})
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


def save_raw(report: dict[str, Any], path: str | Path) -> None:
    """Per-message end-to-end latencies (ns), one array per configuration, as .npz."""
    arrays = {name.replace(" ", "_"): arr for name, arr in report["raw"].items()}
    np.savez_compressed(path, **arrays)


def plot(report: dict[str, Any], path: str | Path) -> None:
    """Latency CDF per configuration (log x), one panel per rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({r["rate_hz"] for r in report["e2e"]}, key=lambda r: (r == 0, r))
    fig, axes = plt.subplots(1, len(rates), figsize=(5.5 * len(rates), 4.2), squeeze=False)
    for ax, rate in zip(axes[0], rates, strict=True):
        for run in report["e2e"]:
            if run["rate_hz"] != rate:
                continue
            name = config_name(run)
            lat = np.sort(report["raw"][name]) / 1e3
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
    m = report["model"]
    fig.suptitle(f"lstm-stream bench: {m['cell']} {m['layers']}x{m['hidden']}, "
                 f"{report['platform']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
