"""The in-runner latencies of the last steps, for ``status`` and the health topic."""

from __future__ import annotations

import numpy as np

LATENCY_WINDOW = 4096  # latencies kept for the status percentiles


class LatencyWindow:
    """A ring of the latest ``size`` step latencies (ns); ``count`` counts every step."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self.size = size
        self.count = 0
        self._ring = np.zeros(size, np.int64)

    def add(self, latency_ns: int) -> None:
        self._ring[self.count % self.size] = latency_ns
        self.count += 1

    def add_many(self, latency_ns: int, n: int) -> None:
        """``n`` steps that waited as long (the rows of one batch message)."""
        if n >= self.size:
            self._ring[:] = latency_ns
        else:
            self._ring[np.arange(self.count, self.count + n) % self.size] = latency_ns
        self.count += n

    def last(self, n: int) -> np.ndarray:
        """The latencies of the last ``n`` steps (at most ``size``), oldest first."""
        n = min(n, self.count, self.size)
        return self._ring[np.arange(self.count - n, self.count) % self.size]

    def percentiles(self) -> dict[str, int]:
        """``window`` (how many are kept), and p50, p90, p99 and max over them."""
        kept = self.last(self.size)
        out = {"window": int(kept.size)}
        if kept.size:
            for q in (50, 90, 99):
                out[f"p{q}"] = int(np.percentile(kept, q))
            out["max"] = int(kept.max())
        return out
