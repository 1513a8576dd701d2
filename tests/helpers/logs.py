"""Synthetic logs for the log tests: sensor messages made with protocol.encode_sensor,
plus a 'controls' target topic, written with the project's own LogWriter."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np

from lstm_stream.core.protocol import encode_sensor
from lstm_stream.logs.writer import LogWriter

T0 = 1_700_000_000_000_000_000  # log times: ns since the epoch, like a real recording


def write_drive(path: Path, *, streams: int = 2, steps: int = 50, period_ns: int = 10_000_000,
                features: int = 16, seed: int = 0, chunk_bytes: int = 1 << 20,
                targets: bool = True) -> Path:
    """Interleaved streams at 1/period; a 'controls' target after each sensor message."""
    rng = np.random.default_rng(seed)
    with LogWriter(path, metadata={"kind": "synthetic"}, chunk_bytes=chunk_bytes) as w:
        for k in range(steps):
            for s in range(streams):
                t = T0 + k * period_ns + s * 1000
                x = rng.normal(size=features).astype(np.float32)
                w.write("sensors", encode_sensor(k, x, stream=f"car{s}", stamp_ns=t), t)
                if targets:
                    y = [float(np.tanh(x[:4].sum())), float(x[4])]
                    w.write("controls", msgpack.packb({"stream": f"car{s}", "seq": k, "y": y}),
                            t + 500)
    return path
