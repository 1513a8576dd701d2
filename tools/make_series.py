"""Generate the sample forecasting data: price-like series with trend, seasonality and noise.

Each series (one episode) is ``level + slope * t + amplitude * sin(2 pi t / period
+ phase) + noise`` with its own seeded level, slope, period, amplitude and phase,
and independent Gaussian noise; prices are written with 4 decimals, so the same
seed gives the same bytes.

    python tools/make_series.py -o src/lstm_stream/data/forecast.csv

Columns: ``series`` (episode id), ``day`` (step in the series), ``price`` and
``change`` (price minus the previous day's price, 0 on the first day: the same
series on the scale of one day's move, which a model reads far more easily
than the price level).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

DEFAULT_OUTPUT = Path("src/lstm_stream/data/forecast.csv")


def make_series(series: int = 16, days: int = 250, seed: int = 7) -> str:
    """The CSV text of ``series`` series of ``days`` steps each."""
    rng = np.random.default_rng(seed)
    lines = ["series,day,price,change"]
    t = np.arange(days)
    for s in range(series):
        level = rng.uniform(50.0, 150.0)
        slope = rng.uniform(-0.05, 0.15)
        period = rng.uniform(15.0, 30.0)
        amplitude = rng.uniform(3.0, 8.0)
        phase = rng.uniform(0.0, 2 * np.pi)
        noise = rng.normal(0.0, 1.0, size=days)
        price = level + slope * t + amplitude * np.sin(2 * np.pi * t / period + phase) + noise
        text = [f"{p:.4f}" for p in price]
        # The change is computed from the rounded prices, so the file is self-consistent.
        rounded = np.array([float(p) for p in text])
        change = np.diff(rounded, prepend=rounded[0])
        lines += [f"s{s:02d},{d},{p},{c:.4f}" for d, p, c in zip(t, text, change, strict=True)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=16)
    parser.add_argument("--days", type=int, default=250)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.series < 1 or args.days < 2:
        parser.error("--series must be >= 1 and --days >= 2")
    data = make_series(args.series, args.days, args.seed).encode()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(f"{args.output}  {len(data)} bytes  sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
