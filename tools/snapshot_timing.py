"""How long a state snapshot takes: the pause of the serve loop and the background write.

    .venv/bin/python tools/snapshot_timing.py --streams 1000 --repeat 50 --dir /tmp

The runner encodes a snapshot between messages (the loop pauses for that long)
and a background thread hashes, writes and fsyncs it (the loop goes on). This
measures both for a store full of streams of the given model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.state.snapshot import encode_snapshot, frame_snapshot, read_snapshot
from lstm_stream.core.state.snapshot_files import write_atomic
from lstm_stream.core.state.store import Admission, StateStore
from lstm_stream.core.wire.protocol import SensorMessage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/random_lstm.onnx")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    contract = load_contract(args.model)
    store = StateStore(contract.states, max_streams=args.streams)
    rng = np.random.default_rng(0)
    for i in range(args.streams):
        m = SensorMessage("sensors", f"stream/{i}", 0, 0, np.zeros((1, 1), np.float32), False)
        adm = store.admit(m, 0)
        assert isinstance(adm, Admission)
        new = [rng.normal(size=(s.layers, 1, s.hidden)).astype(np.float32)
               for s in contract.states]
        store.commit(adm, m, new, 0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "state.snap"
        encode_ms, write_ms = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            body = encode_snapshot(store, contract.sha256, 0)
            t1 = time.perf_counter()
            write_atomic(path, frame_snapshot(body))
            t2 = time.perf_counter()
            encode_ms.append((t1 - t0) * 1e3)
            write_ms.append((t2 - t1) * 1e3)
        t0 = time.perf_counter()
        snap = read_snapshot(path)
        read_ms = (time.perf_counter() - t0) * 1e3
        assert len(snap) == args.streams
        size = path.stat().st_size

    def stats(v: list[float]) -> dict[str, float]:
        return {"p50": round(float(np.percentile(v, 50)), 3),
                "p99": round(float(np.percentile(v, 99)), 3), "max": round(max(v), 3)}

    report = {"streams": args.streams, "state_floats_per_stream":
              sum(s.layers * s.hidden for s in contract.states), "file_bytes": size,
              "loop_pause_ms (encode, between messages)": stats(encode_ms),
              "background_ms (hash + write + fsync + rename)": stats(write_ms),
              "restore_read_ms": round(read_ms, 3), "repeat": args.repeat}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
