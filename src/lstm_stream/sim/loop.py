"""One episode in closed loop: the simulator as a vehicle stack talking to ``lstm-stream serve``.

At every control tick the simulator

1. reads its noisy sensor and publishes a wire-protocol-v1 message on
   ``sensors`` (``stream`` = the episode, ``seq`` = the tick, ``stamp_ns`` =
   simulated time, ``reset: true`` on the first tick; in :attr:`Mode.RESET` on
   every tick, which is what a stateless server does);
2. waits for the runner's ``policy`` output of that (stream, seq), at most
   ``deadline_ms``. A miss is counted and the previous command is applied (the
   fallback a real stack would use); an output that arrives later is dropped;
3. applies the command and steps the simulator one control period.

In :attr:`Mode.EXPERT` nobody is asked: the expert's command (plus exploration
noise when recording) is applied, and the expert's own command is published on
``controls`` as ``{stream, seq, stamp_ns, y: [steer_rad]}``, the log a real car
with a driver produces, which ``lstm-stream record`` captures and the trainer's
log source reads (sensors and targets matched by (stream, seq)).

Every message can also go to a *sink* ``(topic, payload, log_time_ns)``: the
recorder writes them with :class:`~lstm_stream.logs.writer.LogWriter` using the
simulated time as log time, so a recording is the same file, byte for byte,
for the same seeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.logs.format import DIAGNOSTICS_TOPIC, POLICY_TOPIC
from lstm_stream.procs import runner_process
from lstm_stream.serve.client import VehicleStack
from lstm_stream.sim import SimError
from lstm_stream.sim.env import LaneKeepingSim
from lstm_stream.sim.expert import ExpertController, ExplorationNoise

log = logging.getLogger(__name__)

SENSORS, CONTROLS = "sensors", "controls"
LOG_EPOCH_NS = 1_700_000_000 * 10**9  # log time of the first recorded tick (fixed: reproducible)
EPISODE_GAP_NS = 10**9  # log-time gap between recorded episodes
CONTROL_AFTER_NS = 1_000  # a command is logged 1 us after the sensor message it answers

Sink = Callable[[str, bytes, int], None]


class Mode(StrEnum):
    """Who drives."""

    EXPERT = "expert"  # the privileged expert controller, no runner
    CARRIED = "carried"  # the served model, state carried from message to message
    RESET = "reset"  # the same served model, state reset on every message


@dataclass
class EpisodeTrace:
    """Everything recorded of one episode, tick by tick."""

    seed: int
    mode: Mode
    steps: int = 0
    episode_return: float = 0.0
    off_road: bool = False
    crashed: bool = False
    missed_deadlines: int = 0
    late_outputs: int = 0  # outputs that came after their deadline (dropped)
    rejected: int = 0  # sensor messages the runner rejected (none expected)
    lateral_m: list[float] = field(default_factory=list)  # true, per tick
    steer_rad: list[float] = field(default_factory=list)  # applied
    expert_rad: list[float] = field(default_factory=list)  # what the expert would have done
    x_m: list[float] = field(default_factory=list)
    y_m: list[float] = field(default_factory=list)
    latency_us: list[float] = field(default_factory=list)  # send -> output received

    def metrics(self) -> dict[str, Any]:
        lat = np.abs(np.asarray(self.lateral_m))
        return {"seed": self.seed, "mode": str(self.mode), "steps": self.steps,
                "return": round(self.episode_return, 4),
                "mean_lateral_error_m": round(float(lat.mean()), 4) if lat.size else 0.0,
                "max_lateral_error_m": round(float(lat.max()), 4) if lat.size else 0.0,
                "off_road": int(self.off_road), "collisions": int(self.crashed),
                "missed_deadlines": self.missed_deadlines, "late_outputs": self.late_outputs,
                "rejected": self.rejected}


class PolicyLink:
    """Asks a runner for one step and waits for the answer, at most a deadline."""

    def __init__(self, stack: VehicleStack, deadline_ms: float) -> None:
        if not deadline_ms > 0:
            raise SimError(f"The deadline must be positive; got {deadline_ms!r} ms.")
        self.stack = stack
        self.deadline_ns = int(deadline_ms * 1e6)

    def ask(self, payload: bytes, stream: str, seq: int, trace: EpisodeTrace) -> float | None:
        """Publish ``payload`` and return ``y[0]`` of its output, or None on a miss."""
        sent = time.perf_counter_ns()
        self.stack.send(payload)
        deadline = sent + self.deadline_ns
        sub = self.stack.sub
        while True:
            left_ms = (deadline - time.perf_counter_ns()) / 1e6
            if left_ms <= 0 or not sub.poll(max(1, int(left_ms + 0.999)), zmq.POLLIN):
                if time.perf_counter_ns() < deadline:
                    continue
                trace.missed_deadlines += 1
                return None
            topic, body = sub.recv_multipart()
            received = time.perf_counter_ns()
            out = msgpack.unpackb(body, raw=False)
            if not isinstance(out, dict) or out.get("stream") != stream:
                continue  # another stream's traffic
            if topic == DIAGNOSTICS_TOPIC.encode() and out.get("seq") == seq:
                trace.rejected += 1
                log.warning("runner rejected %s seq %d: %s", stream, seq, out.get("detail"))
                return None
            if topic != POLICY_TOPIC.encode():
                continue
            if out.get("seq") != seq:
                trace.late_outputs += 1  # an answer to an earlier tick, after its deadline
                continue
            if received > deadline:
                trace.missed_deadlines += 1
                trace.late_outputs += 1
                return None
            trace.latency_us.append((received - sent) / 1e3)
            return float(out["y"][0])


def run_episode(sim: LaneKeepingSim, seed: int, mode: Mode, *,
                link: PolicyLink | None = None, expert: ExpertController | None = None,
                exploration_rad: float = 0.0, stream: str | None = None,
                publish: VehicleStack | None = None, sink: Sink | None = None,
                log_offset_ns: int = 0, realtime: float = 0.0) -> EpisodeTrace:
    """Drive one episode of ``seed``; see the module docstring.

    ``publish`` (expert mode): a bound vehicle-stack socket on which sensors and
    controls are published live. ``realtime`` > 0 paces ticks at that multiple
    of simulated time (1.0: real time); 0 runs in lockstep, as fast as possible.
    """
    if mode is not Mode.EXPERT and link is None:
        raise SimError(f"Mode {mode!s} needs a runner to ask (a PolicyLink).")
    expert = expert or ExpertController(steer_limit_rad=sim.config.steer_limit_rad)
    noise = ExplorationNoise(seed, exploration_rad) if exploration_rad > 0 else None
    stream = stream or f"{mode}/ep{seed}"
    period = sim.config.period_ns
    trace = EpisodeTrace(seed, mode)
    sim.reset(seed)
    command = 0.0
    started = time.perf_counter()
    for tick in range(sim.config.steps):
        if realtime > 0:
            time.sleep(max(0.0, started + tick * period / 1e9 / realtime - time.perf_counter()))
        truth = sim.truth()
        x = sim.observe(truth)
        expert_u = expert.steer(truth)
        stamp = tick * period
        payload = encode_sensor(tick, x, stream=stream, stamp_ns=stamp,
                                reset=tick == 0 or mode is Mode.RESET)
        if mode is Mode.EXPERT:
            control = msgpack.packb({"stream": stream, "seq": tick, "stamp_ns": stamp,
                                     "y": [expert_u]}, use_bin_type=True)
            if sink is not None:
                sink(SENSORS, payload, LOG_EPOCH_NS + log_offset_ns + stamp)
                sink(CONTROLS, control, LOG_EPOCH_NS + log_offset_ns + stamp + CONTROL_AFTER_NS)
            if publish is not None:
                publish.send(payload)
                publish.send(control, CONTROLS.encode())
            command = expert_u + (noise.sample() if noise is not None else 0.0)
        else:
            assert link is not None
            answer = link.ask(payload, stream, tick, trace)
            if answer is not None and np.isfinite(answer):
                command = answer  # else: keep the previous command (the fallback)
        trace.lateral_m.append(truth.lateral_m)
        trace.x_m.append(truth.x_m)
        trace.y_m.append(truth.y_m)
        trace.expert_rad.append(expert_u)
        trace.steer_rad.append(command)
        result = sim.step(command)
        trace.steps += 1
        trace.episode_return += result.reward
        if result.done:
            trace.off_road, trace.crashed = result.off_road, result.crashed
            break
    return trace


def wait_subscribers(stack: VehicleStack, topics: Sequence[str], timeout_s: float = 10.0) -> None:
    """Block until subscriptions to every one of ``topics`` arrived on the stack's XPUB (a
    recorder subscribes to each topic it records: publish nothing before they are all in)."""
    missing = {b"\x01" + t.encode() for t in topics}
    deadline = time.monotonic() + timeout_s
    while missing and time.monotonic() < deadline:
        if stack.pub.poll(100, zmq.POLLIN):
            missing.discard(stack.pub.recv())
    if missing:
        raise SimError(f"No subscriber to {sorted(m[1:].decode() for m in missing)} on "
                       f"{stack.sensors_endpoint} within {timeout_s:g} s. Start the recorder "
                       f"with `lstm-stream record --input {stack.sensors_endpoint} --topics "
                       f"{','.join(topics)}`.")


def record_episodes(sim: LaneKeepingSim, seeds: Sequence[int], sink: Sink, *,
                    exploration_rad: float, publish: VehicleStack | None = None,
                    realtime: float = 0.0, progress: Progress | None = None
                    ) -> list[EpisodeTrace]:
    """Expert drives of ``seeds`` into ``sink``, one after the other in log time."""
    progress = progress or NullProgress()
    progress.start("recording", len(seeds))
    traces = []
    offset = 0
    for seed in seeds:
        trace = run_episode(sim, seed, Mode.EXPERT, exploration_rad=exploration_rad,
                            stream=f"ep{seed}", publish=publish, sink=sink,
                            log_offset_ns=offset, realtime=realtime)
        offset += sim.config.steps * sim.config.period_ns + EPISODE_GAP_NS
        traces.append(trace)
        progress.advance(1, f"seed {seed}: {trace.steps} ticks")
    progress.close()
    return traces


@contextmanager
def served_policy(model: str | Path, deadline_ms: float, *extra: str,
                  context: zmq.Context[Any] | None = None) -> Iterator[PolicyLink]:
    """``lstm-stream serve MODEL`` in a subprocess on free loopback ports, warmed up."""
    ctx = context or zmq.Context()
    try:
        with VehicleStack(ctx) as stack, runner_process(model, stack.sensors_endpoint,
                                                        *extra) as run:
            stack.wait_subscribed()
            stack.connect_outputs(run.output, run.control)
            # One round trip before the clock matters: onnxruntime's first run is slow.
            stack.send(encode_sensor(0, np.zeros(2, np.float32), stream="warm-up"))
            stack.receive(1)
            yield PolicyLink(stack, deadline_ms)
    finally:
        if context is None:
            ctx.destroy(linger=0)


def closed_loop(model: str | Path, seeds: Sequence[int], modes: Sequence[Mode], *,
                sim: LaneKeepingSim, deadline_ms: float = 50.0, realtime: float = 0.0,
                progress: Progress | None = None) -> list[EpisodeTrace]:
    """Every mode on every seed, one served runner for both served modes."""
    progress = progress or NullProgress()
    traces: list[EpisodeTrace] = []
    served = [m for m in modes if m is not Mode.EXPERT]
    progress.start("closed loop", len(seeds) * len(modes))
    if Mode.EXPERT in modes:
        for seed in seeds:
            traces.append(run_episode(sim, seed, Mode.EXPERT, realtime=realtime))
            progress.advance(1, f"expert seed {seed}")
    if served:
        with served_policy(model, deadline_ms) as link:
            for mode in served:
                for seed in seeds:
                    traces.append(run_episode(sim, seed, mode, link=link, realtime=realtime))
                    progress.advance(1, f"{mode} seed {seed}")
    progress.close()
    return traces
