"""Where a batch message's time goes, per row, in process: decode, step, encode.

    python tools/batch_breakdown.py [--streams 100] [--messages 500]

Steps batch messages of ``--streams`` rows through ``StreamStepper`` (decode,
then ``step_batch``: admission, one backend call, commit) and ``Emitter``
(the output message), timing each part, then the backend call alone on the
same batch: what is left between the two is per-row bookkeeping in Python.
Then the parts of the steady path's step, each timed on its own.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lstm_stream.core.backends import create_backend
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.step.emit import Emitter
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.batch_message import encode_sensor_batch


class Discard:
    """A sink that drops what it is given: only the encoding is timed."""

    def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
        pass

    def diagnostic(self, payload: bytes, t_ns: int) -> None:
        pass

    def message(self, topic: str, payload: bytes, t_ns: int) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/random_lstm.onnx")
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--messages", type=int, default=500)
    args = p.parse_args()
    contract = load_contract(args.model)
    stepper = StreamStepper(contract, create_backend("onnxruntime", contract))
    emitter = Emitter(contract, Discard())
    names = [f"car{i}" for i in range(args.streams)]
    x = np.random.default_rng(0).normal(size=(args.streams, contract.n_features))
    frames = [[b"sensors", encode_sensor_batch(names, [k] * args.streams, x)]
              for k in range(args.messages + 100)]
    for k in range(100):  # warm: every stream exists, caches are hot
        emitter.emit(stepper.step(frames[k], k), k)
    parts = {"decode": 0, "step (admit, backend call, commit)": 0, "encode output": 0}
    for k in range(100, 100 + args.messages):
        t0 = time.perf_counter_ns()
        msg = stepper.decoder.decode(frames[k])
        t1 = time.perf_counter_ns()
        result = stepper.step_batch(msg, k)  # type: ignore[arg-type]
        t2 = time.perf_counter_ns()
        emitter.output_batch(result, k)
        t3 = time.perf_counter_ns()
        parts["decode"] += t1 - t0
        parts["step (admit, backend call, commit)"] += t2 - t1
        parts["encode output"] += t3 - t2
    steady = steady_parts(stepper, frames[100:100 + args.messages], 100)
    states = [np.zeros((s.layers, args.streams, s.hidden), np.float32) for s in contract.states]
    xs = x.astype(np.float32)
    t0 = time.perf_counter_ns()
    for _ in range(args.messages):
        stepper.backend.step(xs, states)
    alone = time.perf_counter_ns() - t0
    rows = args.messages * args.streams
    for name, ns in parts.items():
        print(f"{name:38s} {ns / rows / 1e3:6.2f} us per row")
    print(f"{'backend.step alone, same batch':38s} {alone / rows / 1e3:6.2f} us per row")
    print("the step's parts on the steady path (StreamStepper._step_steady), timed alone:")
    for name, ns in steady.items():
        print(f"  {name:36s} {ns / rows / 1e3:6.2f} us per row")


def steady_parts(stepper: StreamStepper, frames: list[list[bytes]], t0: int) -> dict[str, int]:
    """_step_steady's parts over ``frames``, each timed (ns in all): admission
    (StateStore.admit_steady), gathering the states, the backend call, the finite
    check, the commit (StateStore.commit_steady)."""
    store, parts = stepper.store, dict.fromkeys(
        ["admit_steady", "gather the states", "backend call", "finite check", "commit_steady"], 0)
    clock = time.perf_counter_ns
    for k, frame in enumerate(frames):
        cols = stepper.decoder.decode(frame).columns  # type: ignore[union-attr]
        assert cols is not None, "a batch message off the steady path"
        now = t0 + len(frames) + k  # after the timed loop's messages: every seq is new
        seqs = [seq + len(frames) for seq in cols.seqs]
        ticks = [clock()]
        admitted = store.admit_steady(cols.streams, seqs, now)
        ticks.append(clock())
        assert admitted is not None, "a row off the steady path"
        streams = admitted[0]
        slots = [stream.slot for stream in streams]
        states = store.gather_slots(slots)
        ticks.append(clock())
        y, new_states = stepper.backend.step(cols.x, states)
        ticks.append(clock())
        stepper.backend.finite(y, new_states)
        ticks.append(clock())
        store.commit_steady(streams, slots, seqs, cols.stamps, new_states, now)
        ticks.append(clock())
        for name, a, b in zip(parts, ticks, ticks[1:], strict=False):
            parts[name] += b - a
    return parts


if __name__ == "__main__":
    main()
