"""``lstm-stream bench --eval``: offline evaluation against the speed of reading the log.

In one run, over the same log and model: the floor (read and msgpack-decode every
sensor message with the project's own reader, nothing else), floor b (the model
alone on the log's readings, batched, nothing else), eval one message per
backend call, batched eval, batched eval with ``--workers 2`` on the log and on
four logs. Each is steps per second and its ratio to the floor. The bound is
read + decode followed by the model: what eval would reach with no other work.
The parallel ceiling is what two processes get from the machine at all: the
floor's work alone, then in two processes at once (two cores that share a
physical core, or a quota, give much less than 2x).

Without a log, one is generated: ``streams`` x ``steps`` sensor messages of the
model's features, round robin, 10 ms apart per stream (the layout of issue 16's
measurement: 100 x 2,000). ``--workers 2`` splits the one log's streams over two
processes (evaluate/split.py), so its row is the same log and the same outputs.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from lstm_stream.bench.platform import platform_record
from lstm_stream.bench.results import EvalBenchReport, model_record
from lstm_stream.core.backends import BackendName, create_backend
from lstm_stream.core.errors import LstmStreamError
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.core.step.emit import Emitter
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.batch_message import encode_sensor_batch
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.evaluate import parallel
from lstm_stream.evaluate.fleet import evaluate
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.evaluate.run import PENDING_MAX
from lstm_stream.logs.format import POLICY_TOPIC
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.writer import LogWriter

T0 = 1_700_000_000_000_000_000
PERIOD_NS = 10_000_000
FLEET_LOGS = 4  # logs of the many-logs rows: each of two workers starts once, runs two


def write_bench_log(path: Path, n_features: int, *, streams: int, steps: int,
                    seed: int = 0) -> Path:
    """``streams`` x ``steps`` sensor messages, round robin, on topic ``sensors``."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(64, n_features)).astype(np.float32)
    with LogWriter(path) as log:
        for k in range(steps):
            for s in range(streams):
                t = T0 + k * PERIOD_NS + s * 1000
                log.write("sensors", encode_sensor(k, xs[(k + s) % 64], stream=f"car{s}",
                                                   stamp_ns=t), t)
    return path


def write_farm_log(path: Path, n_features: int, *, streams: int, steps: int,
                   seed: int = 0) -> Path:
    """The readings of :func:`write_bench_log` as a simulation farm records them: one
    batch message per tick with every stream's reading (protocol v1.1)."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(64, n_features)).astype(np.float32)
    names = [f"car{s}" for s in range(streams)]
    rows = np.arange(streams)
    with LogWriter(path) as log:
        for k in range(steps):
            t = T0 + k * PERIOD_NS
            log.write("sensors", encode_sensor_batch(
                names, [k] * streams, xs[(k + rows) % 64],
                stamps=[t + s * 1000 for s in range(streams)]), t)
    return path


def model_floor(rows: int, model: str, batch: int) -> tuple[int, float]:
    """The model alone on ``rows`` readings: random features through the backend,
    ``batch`` rows a call with zero states, nothing decoded, no state kept (an LSTM's
    cost does not depend on the values): (rows, seconds)."""
    contract = load_contract(model)
    backend = create_backend(BackendName.ONNXRUNTIME, contract)
    x = np.random.default_rng(0).normal(size=(batch, contract.n_features)).astype(np.float32)
    blocks = [x[:min(batch, rows - i)] for i in range(0, rows, batch)]
    states = {len(b): [np.zeros((s.layers, len(b), s.hidden), np.float32)
                       for s in contract.states] for b in blocks}
    step = backend.step
    started = time.perf_counter()
    for block in blocks:
        step(block, states[len(block)])
    return rows, time.perf_counter() - started


def read_floor(path: Path) -> tuple[int, float]:
    """Read and decode every sensor message: (messages, seconds)."""
    started = time.perf_counter()
    n = 0
    unpack = msgpack.unpackb
    for msg in LogReader(path).messages(["sensors"]):
        unpack(msg.data)
        n += 1
    return n, time.perf_counter() - started


def floor_rate_from(path: str, start_at: float, repeats: int) -> float:
    """Messages per second of :func:`read_floor` run ``repeats`` times from wall-clock
    time ``start_at`` on: what :func:`parallel_ceiling` runs in each process."""
    time.sleep(max(0.0, start_at - time.time()))
    started = time.perf_counter()
    total = sum(read_floor(Path(path))[0] for _ in range(repeats))
    return total / (time.perf_counter() - started)


def parallel_ceiling(log: Path, floor_s: float, rounds: int = 3) -> float:
    """What two processes get from this machine: the floor's work (Python and C, no
    model) in one worker process, then in two that start it at the same moment. Each
    round's ratio (messages/s of the two together over one alone) pairs runs seconds
    apart; the median of ``rounds`` rounds is returned."""
    repeats = max(1, math.ceil(1.0 / max(floor_s, 1e-3)))  # about a second of work each
    ratios = []
    for _ in range(rounds):
        rates = []
        for processes in (1, 2):  # both in fresh worker processes, started alike
            start_at = time.time() + 1.0  # the workers spawned and waiting by then
            got = parallel.run(f"{__name__}:floor_rate_from",
                               [(str(log), start_at, repeats)] * processes, processes)
            if not all(isinstance(rate, float) for rate in got):
                raise LstmStreamError(f"bench --eval: a worker of the parallel ceiling "
                                      f"failed: {got}")
            rates.append(float(sum(got)))
        ratios.append(rates[1] / rates[0])
    return statistics.median(ratios)


class _Payloads:
    """A sink that keeps what it is given: the encoded outputs, for timing their writing."""

    def __init__(self) -> None:
        self.outputs: list[tuple[bytes, int, int | None]] = []

    def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
        self.outputs.append((payload, t_ns, stamp_ns))

    def diagnostic(self, payload: bytes, t_ns: int) -> None:
        pass

    def message(self, topic: str, payload: bytes, t_ns: int) -> None:
        pass


def where_the_time_goes(log: Path, model: str, batch: int, work: Path) -> dict[str, float]:
    """Batched eval's work in parts, each timed alone over the whole log (us per message):
    reading the log, decode + admit + step + commit (StreamStepper.step_many), encoding
    the outputs (Emitter) and writing them (LogWriter)."""
    contract = load_contract(model)
    started = time.perf_counter()
    items = [([msg.topic.encode(), msg.data], msg.log_time_ns)
             for msg in LogReader(log).messages(["sensors"])]
    read_s = time.perf_counter() - started
    # Stepped as eval steps them, PENDING_MAX messages at a time, each output encoded as
    # soon as it is stepped (timed apart) and then dropped: holding every result would
    # add the garbage collector's scans of them (about 2 us a message) to a time eval
    # does not pay.
    stepper = StreamStepper(contract, create_backend(BackendName.ONNXRUNTIME, contract))
    sink = _Payloads()
    emit, clock = Emitter(contract, sink).emit, time.perf_counter_ns
    encode_ns = 0
    started = time.perf_counter()
    for i in range(0, len(items), PENDING_MAX):
        for outcome, t in stepper.step_many(items[i:i + PENDING_MAX], max_batch=batch):
            began = clock()
            emit(outcome, t)
            encode_ns += clock() - began
    encode_s = encode_ns / 1e9
    step_s = time.perf_counter() - started - encode_s
    started = time.perf_counter()
    with LogWriter(work / "written.mcap") as writer:
        for payload, t, stamp in sink.outputs:
            writer.write(POLICY_TOPIC, payload, t, t if stamp is None else stamp)
    write_s = time.perf_counter() - started
    n = max(1, len(items))
    parts = {"read the log": read_s, "decode + admit + step + commit": step_s,
             "encode outputs": encode_s, "write outputs (LogWriter)": write_s}
    return {name: round(seconds * 1e6 / n, 2) for name, seconds in parts.items()}


def _timed(paths: list[Path], options: EvalOptions, workers: int) -> tuple[int, float]:
    started = time.perf_counter()
    report = evaluate(paths, options, workers=workers)
    return sum(r.stepped for r in report.logs), time.perf_counter() - started


def eval_suite(model: str, log: Path | None = None, *, streams: int = 100, steps: int = 2000,
               batch: int = 64, ceiling_rounds: int = 3,
               progress: Progress | None = None) -> EvalBenchReport:
    """The floor, one per call, batched, and two workers against one; see the module doc."""
    progress = progress or NullProgress()
    contract = load_contract(model)
    progress.start("bench --eval", total=8)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    source = str(log) if log is not None else f"generated: {streams} streams x {steps} steps"
    with tempfile.TemporaryDirectory(prefix="lstm-stream-evalbench-") as tmp:
        work = Path(tmp)
        generated = log is None
        if log is None:
            log = write_bench_log(work / "bench.mcap", contract.n_features, streams=streams,
                                  steps=steps)
        progress.advance(1, status="log ready")
        messages, floor_s = read_floor(log)
        progress.advance(1, status="floor")
        base = EvalOptions(model=model, output_dir=str(work / "out"))
        rows: list[dict[str, Any]] = [{"name": "floor: read + decode", "messages": messages,
                                       "seconds": floor_s}]
        for name, opts in (("eval, one message per call", replace(base, batch=1)),
                           (f"eval, batched (up to {batch} streams per call)",
                            replace(base, batch=batch))):
            stepped, seconds = _timed([log], opts, 1)
            rows.append({"name": name, "messages": stepped, "seconds": seconds})
            progress.advance(1, status=name)
        stepped, seconds = _timed([log], replace(base, batch=batch), 2)
        rows.append({"name": "eval, batched, --workers 2 (the log's streams split in two)",
                     "messages": stepped, "seconds": seconds, "workers": 2})
        progress.advance(1, status="2 workers")
        # a fleet's case: several logs, a log a worker at a time (copies of the log)
        fleet = [log] + [work / f"copy{i}-{log.name}" for i in range(1, FLEET_LOGS)]
        for copy in fleet[1:]:
            shutil.copyfile(log, copy)
        for workers in (1, 2):
            stepped, seconds = _timed(fleet, replace(base, batch=batch), workers)
            rows.append({"name": f"eval, batched, {FLEET_LOGS} logs, --workers {workers}",
                         "messages": stepped, "seconds": seconds, "workers": workers,
                         "logs": FLEET_LOGS})
        progress.advance(1, status=f"{FLEET_LOGS} logs")
        if generated:  # the same readings as a farm records them: one message per tick
            farm = write_farm_log(work / "farm.mcap", contract.n_features, streams=streams,
                                  steps=steps)
            stepped, seconds = _timed([farm], replace(base, batch=batch), 1)
            rows.append({"name": "eval, the same readings as batch messages (one per tick)",
                         "messages": stepped, "seconds": seconds, "log": "batch messages"})
        rows_done, model_s = model_floor(messages, model, batch)
        rows.insert(1, {"name": f"floor b: the model alone ({batch} rows a call)",
                        "messages": rows_done, "seconds": model_s})
        parts = where_the_time_goes(log, model, batch, work)
        progress.advance(1, status="parts")
        ceiling = parallel_ceiling(log, floor_s, ceiling_rounds)
        progress.advance(1, status="two processes")
    progress.close()
    floor_rate = messages / floor_s
    for row in rows:
        row["steps_per_s"] = round(row["messages"] / row["seconds"], 1)
        row["ratio_to_floor"] = round(row["steps_per_s"] / floor_rate, 3)
        row["seconds"] = round(row["seconds"], 3)
    rate = {row["name"]: row["steps_per_s"] for row in rows}
    one_worker = rate[f"eval, batched (up to {batch} streams per call)"]
    two_workers = rate["eval, batched, --workers 2 (the log's streams split in two)"]
    # read + decode, then the model: what eval would do with no other work at all
    bound = 1 / (1 / floor_rate + 1 / rate[f"floor b: the model alone ({batch} rows a call)"])
    return EvalBenchReport(
        platform=platform_record({"batch": batch, "log": source, "threads": 1,
                                  "pin_runner": None, "pin_load": None, "rt_priority": None,
                                  "busy_poll_us": 0}),
        model=model_record(model, contract), started=started, log=source,
        messages=messages, rows=rows, workers_2_over_1=round(two_workers / one_worker, 3),
        logs_workers_2_over_1=round(rate[f"eval, batched, {FLEET_LOGS} logs, --workers 2"]
                                    / rate[f"eval, batched, {FLEET_LOGS} logs, --workers 1"], 3),
        bound_steps_per_s=round(bound, 1), parts_us=parts,
        two_processes_over_one=round(ceiling, 3))
