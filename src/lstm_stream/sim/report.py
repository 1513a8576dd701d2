"""Closed-loop results: per-episode metrics, the expert / carried / reset table, JSON and PNG.

Per episode (:meth:`EpisodeTrace.metrics`): return (highway-env's reward summed
over the episode), mean and max absolute lateral error to the lane centre, off
the road (the episode ended there), collisions, missed deadlines. Per mode: the
means over episodes, the worst lateral error, the counts, and the distribution
of the loop latency (sensor message published -> its output received, on the
simulator's clock) over every tick of every episode.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.core.plotting import pyplot
from lstm_stream.sim import SimError
from lstm_stream.sim.loop import EpisodeTrace, Mode


def summarize(traces: Sequence[EpisodeTrace]) -> dict[str, dict[str, Any]]:
    """Per mode, in the order the modes first appear."""
    out: dict[str, dict[str, Any]] = {}
    for mode in dict.fromkeys(t.mode for t in traces):
        ts = [t for t in traces if t.mode is mode]
        m = [t.metrics() for t in ts]
        lat = np.concatenate([np.asarray(t.latency_us) for t in ts]) if ts else np.zeros(0)
        out[str(mode)] = {
            "episodes": len(ts),
            "mean_return": round(float(np.mean([r["return"] for r in m])), 3),
            "mean_lateral_error_m": round(float(np.mean([r["mean_lateral_error_m"]
                                                         for r in m])), 4),
            "max_lateral_error_m": round(float(np.max([r["max_lateral_error_m"] for r in m])), 4),
            "off_road": sum(r["off_road"] for r in m),
            "collisions": sum(r["collisions"] for r in m),
            "missed_deadlines": sum(r["missed_deadlines"] for r in m),
            "ticks": sum(r["steps"] for r in m),
            "latency_us": ({f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)}
                           | {"max": round(float(lat.max()), 1)}) if lat.size else {},
        }
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The comparison as fixed-width text."""
    head = (f"{'policy':<8} {'episodes':>8} {'return':>8} {'mean |e_y| m':>13} "
            f"{'max |e_y| m':>12} {'off-road':>8} {'collisions':>10} {'missed':>7} "
            f"{'latency p50/p99/max us':>24}")
    lines = [head, "-" * len(head)]
    order = [str(m) for m in Mode]  # expert, carried, reset, whatever order the dict has
    for mode, s in sorted(summary.items(), key=lambda kv: order.index(kv[0])
                          if kv[0] in order else len(order)):
        lat = s["latency_us"]
        lat_text = (f"{lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f}" if lat else "-")
        lines.append(f"{mode:<8} {s['episodes']:>8} {s['mean_return']:>8.1f} "
                     f"{s['mean_lateral_error_m']:>13.3f} {s['max_lateral_error_m']:>12.2f} "
                     f"{s['off_road']:>8} {s['collisions']:>10} {s['missed_deadlines']:>7} "
                     f"{lat_text:>24}")
    return "\n".join(lines)


def write_json(path: Path, traces: Sequence[EpisodeTrace], summary: dict[str, Any],
               settings: dict[str, Any]) -> None:
    body = {"settings": settings, "summary": summary,
            "episodes": [t.metrics() for t in traces]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


def write_plot(path: Path, traces: Sequence[EpisodeTrace],
               road: Sequence[np.ndarray] = (), episodes: int = 3) -> None:
    """Trajectories of the first ``episodes`` seeds per mode, and steering over time."""
    plt = pyplot("The closed-loop plot", SimError)
    seeds = list(dict.fromkeys(t.seed for t in traces))[:episodes]
    colors = {Mode.EXPERT: "black", Mode.CARRIED: "tab:blue", Mode.RESET: "tab:red"}
    fig, axes = plt.subplots(1 + len(seeds), 1, figsize=(10, 4 + 2.6 * len(seeds)),
                             gridspec_kw={"height_ratios": [2.5] + [1] * len(seeds)})
    ax = axes[0]
    for line in road:
        ax.plot(line[:, 0], line[:, 1], color="0.8", lw=0.8)
    for t in traces:
        if t.seed in seeds:
            ax.plot(t.x_m, t.y_m, color=colors[t.mode], lw=1,
                    label=f"{t.mode}" if t.seed == seeds[0] else None)
            if t.off_road:
                ax.plot(t.x_m[-1], t.y_m[-1], "x", color=colors[t.mode], ms=8)
    ax.set_aspect("equal")
    ax.invert_yaxis()  # highway-env draws y downwards
    ax.set_title(f"trajectories, seeds {seeds} (x: left the road)")
    ax.legend(loc="upper right")
    for ax, seed in zip(axes[1:], seeds, strict=True):
        dt = None
        for t in traces:
            if t.seed != seed:
                continue
            dt = np.arange(t.steps) * 0.1
            ax.plot(dt, t.steer_rad, color=colors[t.mode], lw=1, label=str(t.mode))
            if t.mode is Mode.CARRIED:
                ax.plot(dt, t.expert_rad, color="0.5", lw=0.8, ls="--",
                        label="expert on the carried run")
        ax.set_ylabel("steer rad")
        ax.set_title(f"seed {seed}: steering over time")
        ax.legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("simulated time s")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
