"""``lstm-stream demo``: a recorded drive steered by the shipped policy, with nothing to set up.

Starts ``lstm-stream serve`` with the shipped lane-keeping model
(``models/lane_keep_lstm.onnx``, docs/driving.md) as a real subprocess on free
loopback ports, then plays the vehicle stack: it replays a short drive shipped
with the package (the sensor messages of expert drives in the race-track
simulator, with the expert's steering commands) into the runner over ZeroMQ on
the drive's own schedule, sped up by ``rate``, and waits for each output as a
car would. It reports, live and at the end:

- the served steering against the expert's recorded command;
- the same model stepped offline by the numpy backend with its state carried
  (parity: the served outputs must equal it, so carried state is verified, not
  assumed) and with its state reset before every message (what a stateless
  server would have answered);
- the round trip (sensor message out, output back) and the time inside the runner.

The drive file is msgpack, read with msgpack and numpy only (no ``mcap``, no
pickle): the runtime install needs nothing else. :func:`write_drive` is how
``tools/sim_vehicle.py drive`` writes it; the payloads are the wire bytes the
simulator published, exactly what ``lstm-stream record`` would have logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import numpy as np
import zmq

from lstm_stream.core.backends.numpy import NumpyBackend
from lstm_stream.core.errors import LogError, LstmStreamError
from lstm_stream.core.model.contract import ModelContract, load_contract
from lstm_stream.core.model.shipped import resolve_model_path
from lstm_stream.core.plotting import pyplot
from lstm_stream.logs.format import DIAGNOSTICS_TOPIC
from lstm_stream.procs import runner_process
from lstm_stream.serve.client import ControlError, VehicleStack, control_request

# ----------------------------------------------------------------------------- the drive file

DRIVE_FORMAT = "lstm-stream drive"
DRIVE_VERSION = 1
DRIVE_NAME = "lane_keep_drive.msgpack"  # in the package's data/ directory
DEFAULT_MODEL = Path("models") / "lane_keep_lstm.onnx"


class DriveMessage(NamedTuple):
    """One recorded message: topic, log time, and the payload as it crossed the wire."""

    topic: str
    log_time_ns: int
    data: bytes


@dataclass
class Drive:
    """A recorded drive: sensor messages and the expert's commands, in log-time order."""

    messages: list[DriveMessage]
    sensor_topic: str = "sensors"
    target_topic: str = "controls"
    info: dict[str, Any] = field(default_factory=dict)  # how it was made (free-form)


def write_drive(path: str | Path, drive: Drive) -> int:
    """Write ``drive`` as one msgpack map; returns the file size in bytes."""
    body = {"format": DRIVE_FORMAT, "version": DRIVE_VERSION,
            "sensor_topic": drive.sensor_topic, "target_topic": drive.target_topic,
            "info": drive.info,
            "messages": [[m.topic, m.log_time_ns, m.data] for m in drive.messages]}
    data: bytes = msgpack.packb(body, use_bin_type=True)
    Path(path).write_bytes(data)
    return len(data)


def read_drive(path: str | Path | None = None) -> Drive:
    """Read a drive file (default: the one shipped in the package) and check its layout."""
    where = str(path) if path is not None else f"lstm_stream/data/{DRIVE_NAME}"
    try:
        if path is None:
            raw = resources.files("lstm_stream").joinpath("data", DRIVE_NAME).read_bytes()
        else:
            raw = Path(path).read_bytes()
    except OSError as err:
        raise LogError(f"Could not read the drive file {where!r}: {err.strerror or err}.") from err
    try:
        body = msgpack.unpackb(raw, raw=False)
    except Exception as err:
        raise LogError(f"The drive file {where!r} is not msgpack ({err}).") from err
    if not isinstance(body, dict) or body.get("format") != DRIVE_FORMAT:
        raise LogError(f"{where!r} is not an lstm-stream drive file (no format "
                       f"{DRIVE_FORMAT!r}).")
    if body.get("version") != DRIVE_VERSION:
        raise LogError(f"{where!r} is drive format version {body.get('version')!r}; this "
                       f"lstm-stream reads version {DRIVE_VERSION}.")
    messages = []
    for i, item in enumerate(body.get("messages") or []):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], int) and isinstance(item[2], bytes)):
            raise LogError(f"{where!r}: message {i} is not [topic, log_time_ns, payload].")
        messages.append(DriveMessage(item[0], item[1], item[2]))
    if not messages:
        raise LogError(f"{where!r} holds no messages.")
    return Drive(messages, str(body.get("sensor_topic", "sensors")),
                 str(body.get("target_topic", "controls")), dict(body.get("info") or {}))


def default_model() -> Path:
    """``models/lane_keep_lstm.onnx`` in the current directory, else the shipped copy."""
    return resolve_model_path(DEFAULT_MODEL)


# ----------------------------------------------------------------------------- the demo


class DemoError(LstmStreamError):
    """The demo could not run: a missing model or drive, or a model that does not fit."""


@dataclass
class DemoTick:
    """One answered sensor message."""

    stream: str
    seq: int
    t_s: float  # drive time since its first message
    served: float  # y[0] from the runner
    expert: float  # the recorded command
    reset_each: float  # the model with its state reset before this message (offline)
    round_trip_us: float
    runner_us: float


@dataclass
class DemoReport:
    """What the demo measured."""

    model: str = ""
    sent: int = 0
    received: int = 0
    max_parity_error: float = 0.0  # served output vs the numpy backend offline, state carried
    ticks: list[DemoTick] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    @staticmethod
    def percentiles(values: Sequence[float]) -> dict[str, float]:
        if not values:
            return {}
        arr = np.asarray(values)
        return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 99)} | {
            "max": float(arr.max())}

    def errors(self, stream: str | None = None) -> dict[str, float]:
        """MAE and max |error| against the expert, of the served and the reset-each outputs."""
        ticks = [t for t in self.ticks if stream is None or t.stream == stream]
        served = np.abs([t.served - t.expert for t in ticks])
        reset = np.abs([t.reset_each - t.expert for t in ticks])
        if not ticks:
            return {}
        return {"served_mae": float(served.mean()), "served_max": float(served.max()),
                "reset_mae": float(reset.mean()), "reset_max": float(reset.max())}

    def streams(self) -> list[str]:
        return list(dict.fromkeys(t.stream for t in self.ticks))


def _targets(drive: Drive) -> dict[tuple[str, int], float]:
    out = {}
    for m in drive.messages:
        if m.topic == drive.target_topic:
            body = msgpack.unpackb(m.data, raw=False)
            out[(str(body["stream"]), int(body["seq"]))] = float(body["y"][0])
    return out


def _sensor_x(body: dict[str, Any], contract: ModelContract) -> np.ndarray:
    x = body["x"]
    arr = (np.frombuffer(x, dtype="<f4") if isinstance(x, bytes)
           else np.asarray(x, dtype=np.float32))
    if arr.size != contract.n_features:
        raise DemoError(f"The drive's sensor messages have {arr.size} features; the model "
                        f"{contract.path} takes {contract.n_features}. Use the model the drive "
                        "was recorded for (models/lane_keep_lstm.onnx).")
    return arr.astype(np.float32).reshape(1, -1)


def run_demo(model: str | Path | None = None, drive_path: str | Path | None = None, *,
             rate: float = 5.0, progress: Callable[[DemoReport, DemoTick], None] | None = None,
             timeout_s: float = 10.0) -> DemoReport:
    """Serve ``model``, replay the drive into it at ``rate`` x its own speed (0: as fast
    as possible), and compare each output with the expert and the offline references."""
    if rate < 0:
        raise DemoError(f"The replay rate must be 0 (as fast as possible) or positive; "
                        f"got {rate!r}.")
    model = Path(model) if model is not None else default_model()
    if not model.is_file():
        raise DemoError(f"Model {str(model)!r} not found. Run the demo from the repository "
                        "root or pass --model PATH.")
    drive = read_drive(drive_path)
    contract = load_contract(model)
    reference = NumpyBackend(contract)
    zeros = tuple(np.zeros((s.layers, 1, s.hidden), np.float32) for s in contract.states)
    carried: dict[str, tuple[np.ndarray, ...]] = {}
    targets = _targets(drive)
    sensors = []  # decoded and checked before anything starts
    for m in drive.messages:
        if m.topic == drive.sensor_topic:
            body = msgpack.unpackb(m.data, raw=False)
            sensors.append((m, body, _sensor_x(body, contract)))
    if not sensors:
        raise DemoError(f"The drive has no messages on {drive.sensor_topic!r}.")
    t0 = sensors[0][0].log_time_ns
    report = DemoReport(model=str(model))
    ctx = zmq.Context()
    began = time.monotonic()
    try:
        with VehicleStack(ctx) as stack, runner_process(model, stack.sensors_endpoint) as run:
            stack.wait_subscribed()
            stack.connect_outputs(run.output, run.control)
            start = time.monotonic()
            for m, body, x in sensors:
                if rate > 0:
                    time.sleep(max(0.0, start + (m.log_time_ns - t0) / 1e9 / rate
                                   - time.monotonic()))
                stream, seq = str(body["stream"]), int(body["seq"])
                sent = time.perf_counter_ns()
                stack.send(m.data, drive.sensor_topic.encode())
                report.sent += 1
                out = _await_output(stack, stream, seq, timeout_s)
                received = time.perf_counter_ns()
                report.received += 1
                state = zeros if body.get("reset") or stream not in carried else carried[stream]
                y_ref, carried[stream] = reference.step(x, state)
                y_reset, _ = reference.step(x, zeros)
                served = np.asarray(out["y"], dtype=np.float64)
                report.max_parity_error = max(report.max_parity_error,
                                              float(np.max(np.abs(served - y_ref[0]))))
                tick = DemoTick(stream, seq, (m.log_time_ns - t0) / 1e9, float(served[0]),
                                targets.get((stream, seq), float("nan")),
                                float(y_reset[0, 0]), (received - sent) / 1e3,
                                out["latency_ns"] / 1e3)
                report.ticks.append(tick)
                if progress is not None:
                    progress(report, tick)
            report.status = control_request(run.control, {"cmd": "status"}, context=ctx)
    finally:
        ctx.destroy(linger=0)
    report.wall_s = time.monotonic() - began
    return report


def _await_output(stack: VehicleStack, stream: str, seq: int,
                  timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            topic, out = stack.receive(1, timeout_s=max(left, 0.001))[0]
        except ControlError as err:
            raise DemoError(f"No output for stream {stream!r} seq {seq} within "
                            f"{timeout_s:g} s: the runner is not answering.") from err
        if out.get("stream") != stream or out.get("seq") != seq:
            continue
        if topic == DIAGNOSTICS_TOPIC:
            raise DemoError(f"The runner rejected stream {stream!r} seq {seq}: "
                            f"{out.get('reason')}: {out.get('detail')}.")
        return out


def write_demo_plot(path: str | Path, report: DemoReport) -> None:
    """Steering over drive time per stream: expert, served, reset before every message."""
    plt = pyplot("--plot", DemoError)
    streams = report.streams()
    fig, axes = plt.subplots(len(streams), 1, figsize=(10, 2.8 * len(streams)), squeeze=False)
    for ax, stream in zip(axes[:, 0], streams, strict=True):
        ticks = [t for t in report.ticks if t.stream == stream]
        t = np.arange(len(ticks)) * 0.1
        ax.plot(t, [k.expert for k in ticks], color="black", lw=1.2, label="expert (recorded)")
        ax.plot(t, [k.served for k in ticks], color="tab:blue", lw=1, label="served, state carried")
        ax.plot(t, [k.reset_each for k in ticks], color="tab:red", lw=0.8, alpha=0.7,
                label="state reset every message")
        ax.set_title(f"{stream}: steering command")
        ax.set_ylabel("steer rad")
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("drive time s")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
