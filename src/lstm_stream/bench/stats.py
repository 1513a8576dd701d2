"""Percentile summaries of latency samples (nanoseconds in, microseconds out)."""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = (50.0, 90.0, 99.0, 99.9)


def summarize_ns(samples_ns: np.ndarray | list[int]) -> dict[str, Any]:
    """p50/p90/p99/p99.9/max/mean/min in microseconds, and the sample count."""
    arr = np.asarray(samples_ns, dtype=np.float64)
    if arr.size == 0:
        return {"count": 0}
    us = arr / 1e3
    out: dict[str, Any] = {"count": int(arr.size)}
    for q in QUANTILES:
        out[_key(q)] = round(float(np.percentile(us, q)), 2)
    out["max"] = round(float(us.max()), 2)
    out["min"] = round(float(us.min()), 2)
    out["mean"] = round(float(us.mean()), 2)
    return out


def _key(q: float) -> str:
    return "p" + (f"{q:g}".replace(".", "."))
