"""Synthetic logs for the log tests: sensor messages made with protocol.encode_sensor,
plus a 'controls' target topic, written with the project's own LogWriter."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np

from lstm_stream.core.wire.protocol import encode_sensor
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


MS_EVENTFUL = 1_000_000
KINDS = ["next"] * 12 + ["reset", "gap", "stale", "garbage", "nan", "short", "pause"]


def write_eventful_log(path: Path, seed: int, streams: int = 24, messages: int = 3000) -> Path:
    rng = np.random.default_rng(seed)
    seq = [-1] * streams
    t = T0
    with LogWriter(path) as log:
        for _ in range(messages):
            s = int(rng.integers(streams))
            kind = KINDS[int(rng.integers(len(KINDS)))]
            t += int(rng.integers(0, 3)) * MS_EVENTFUL  # several messages often share a log time
            if kind == "pause":
                t += 700 * MS_EVENTFUL  # longer than state.idle_timeout_s: idle streams expire
            x = rng.normal(size=16).astype(np.float32)
            if kind == "stale" and seq[s] >= 0:
                number = seq[s]  # repeated: rejected as stale_seq
            else:
                seq[s] += 3 if kind == "gap" else 1
                number = seq[s]
            if kind == "garbage":
                payload = b"\x92\xc1"
            elif kind == "nan":
                x[3] = np.nan
                payload = encode_sensor(number, x, stream=f"car{s}", stamp_ns=t)
            elif kind == "short":
                payload = encode_sensor(number, x[:15], stream=f"car{s}", stamp_ns=t)
            else:
                payload = encode_sensor(number, x, stream=f"car{s}", stamp_ns=t,
                                        reset=kind == "reset")
            log.write("sensors", payload, t)
            log.write("controls", msgpack.packb({"stream": f"car{s}", "seq": number,
                                                 "y": rng.normal(size=2).tolist()}), t)
    return path
