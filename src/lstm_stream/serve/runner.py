"""The serve loop: sockets, polling, batching of queued messages; no maths.

The hot path is :meth:`Runner.handle`: decode and validate -> admit against the
stream's state -> one backend step -> commit -> encode and publish, with no
logging, config reads or state allocation. Queued messages go through
:meth:`Runner.handle_batch` (distinct streams share a backend call, each
stream's messages stay in order). Control requests, subscriptions, idle
expiry, health and snapshots run between messages. Around that path, never on
it: the model pin (``model.sha256``), state restore and snapshots
(snapshot.py), CURVE (security/), and the Foxglove live view (liveview.py).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, cast

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from lstm_stream.core.backends import StepBackend, create_backend
from lstm_stream.core.config.runner import RunnerConfig
from lstm_stream.core.config.sources import resolve_sources
from lstm_stream.core.errors import SnapshotError
from lstm_stream.core.model.contract import ModelContract, check_model_pin, load_contract
from lstm_stream.core.state.snapshot import (
    RestoreResult,
    SnapshotWriter,
    encode_snapshot,
    restore,
)
from lstm_stream.core.state.snapshot_files import check_snapshot_path
from lstm_stream.core.step.emit import Emitter, LiveClock, Sink
from lstm_stream.core.step.latency import LatencyWindow
from lstm_stream.core.step.results import Outcome
from lstm_stream.core.step.sources import SourceStepper, StalePolicy
from lstm_stream.core.step.stepper import StreamStepper, warm_up
from lstm_stream.core.wire.shard import Shard, shard_topic
from lstm_stream.serve.control import ControlService, Counters, ServedModel
from lstm_stream.serve.health import HealthTracker
from lstm_stream.serve.liveview import LiveView, TeeSink, tee_input
from lstm_stream.serve.security.curve import ServerKeys, load_server_keys
from lstm_stream.serve.sink import ZmqSink
from lstm_stream.serve.sockets import Subscriptions, attach, frame_receiver

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 0.1  # idle expiry and signal checks at least this often
MAX_BURST = 256  # messages handled before control requests get a turn
# ZMQ_MAXMSGSIZE of the control socket: above this a peer is disconnected by ZeroMQ
# (no reply is possible), so that no client can make the runner buffer without bound
CONTROL_HARD_LIMIT_BYTES = 1 << 20
# libzmq does not reconnect a connecting socket after a protocol error, such as a
# message above ZMQ_MAXMSGSIZE: when a disconnect is not followed by a reconnect
# attempt within this time, the runner connects again itself.
RECONNECT_CHECK_NS = 250_000_000


class Runner:
    """One model, one input SUB, one output XPUB, one control ROUTER."""

    def __init__(self, config: RunnerConfig, *, context: zmq.Context[Any] | None = None,
                 contract: ModelContract | None = None,
                 backend: StepBackend | None = None) -> None:
        self.config = config
        self.contract = contract or load_contract(config.model.path,
                                                  config.model.io.declared())
        check_model_pin(self.contract, config.model.sha256)
        self.backend = backend or create_backend(config.model.backend, self.contract,
                                                 threads=config.model.threads)
        sharding = config.sharding
        self.shard = Shard(sharding.index, sharding.count) if sharding.count > 1 else None
        self.stepper = StreamStepper(self.contract, self.backend,
                                     max_streams=config.state.max_streams,
                                     idle_timeout_s=config.state.idle_timeout_s,
                                     max_gap=config.state.max_gap,
                                     max_message_bytes=config.input.max_message_bytes,
                                     shard=self.shard)
        self.store = self.stepper.store
        self._max_batch = min(config.batching.max_batch, self.stepper.max_batch)
        self.sources: SourceStepper | None = None
        self._step: Callable[[list[bytes], int], Outcome] = self.stepper.step
        if config.input.sources:  # several topics assembled into x: stepped one at a time
            self.sources = SourceStepper(
                resolve_sources(config.input.sources, self.contract.feature_names,
                                self.contract.n_features), self.stepper,
                stale=StalePolicy(config.freshness.stale), ages=config.output.ages,
                max_message_bytes=config.input.max_message_bytes,
                max_streams=config.state.max_streams)
            self._step, self._max_batch = self.sources.step, 1
        self.live: LiveView | None = None
        if config.viz.foxglove_port:  # inputs too: what the stack sent, as it arrived
            self.live = LiveView(config.viz.foxglove_port, config.viz.foxglove_host,
                                 self.contract.output_names, config.viz.max_rate_hz)
            self._step = tee_input(self._step, self.live)
        if self.contract.fixed_batch == 1 and config.batching.max_batch > 1:
            log.info("model: exported with a fixed batch of 1, so messages are stepped one "
                     "per call (batching.max_batch %d not used)", config.batching.max_batch)
        self.warmup_s = (warm_up(self.backend, self.contract, self._max_batch)
                         if config.model.warmup else 0.0)
        self._input_connected = config.input.bind  # a bound input has nothing to wait for
        self.counters = Counters()
        self.latencies = LatencyWindow()
        self.health = HealthTracker(self.sources, self.counters, self.latencies,
                                    time.monotonic_ns())
        self._max_wait_ns = config.batching.max_wait_us * 1000
        self._packer = msgpack.Packer(use_bin_type=True)  # control replies
        self._stop = threading.Event()
        self.restored = RestoreResult()
        self.snapshots: SnapshotWriter | None = None
        self._snapshot_mark: tuple[int, ...] | None = None
        if config.state.snapshot_path:
            check_snapshot_path(config.state.snapshot_path)  # before anything is overwritten
            self.restored = restore(self.store, config.state.snapshot_path,
                                    self.contract.sha256)
            log.log(self.restored.level, "state: %s", self.restored.note)
            self.snapshots = SnapshotWriter(config.state.snapshot_path)
        self.keys: ServerKeys | None = None
        if config.security.enabled:
            self.keys = load_server_keys(config.security.server_key,
                                         config.security.authorized_keys)
        self._own_context = context is None
        self.context = context or zmq.Context()
        self._auth = None
        if self.keys is not None:
            self._auth = self.keys.start_authenticator(self.context)
            log.info("CURVE: control%s accept %d allow-listed client keys from %s",
                     " and data sockets" if config.security.secure_data else " socket",
                     self.keys.authorized, self.keys.authorized_dir)
        self.topics = input_topics(config.input.topics, self.shard)
        self._open_sockets()
        self.control_service = ControlService(
            ServedModel(self.contract, self.backend, self.topics, self.shard, self.warmup_s,
                        self.keys is not None, config.state.snapshot_interval_s),
            self.stepper, self.counters, self.latencies, self.health, self.subscriptions,
            lambda: self.ready, sources=self.sources, live=self.live, restored=self.restored,
            snapshots=self.snapshots)
        if self.snapshots is not None:
            self._snapshot_mark = self._change_mark()

    @property
    def ready(self) -> bool:
        """Warmed up (before the sockets open) and the input connected, or bound."""
        return self._input_connected

    # -- sockets -------------------------------------------------------------

    def _open_sockets(self) -> None:
        cfg = self.config
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, cfg.input.rcvhwm)
        self.sub.setsockopt(zmq.MAXMSGSIZE, cfg.input.zmq_max_message_bytes)
        self.sub.setsockopt(zmq.LINGER, 0)
        for topic in self.topics:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.pub = self.context.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, cfg.output.sndhwm)
        self.pub.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscription
        self.pub.setsockopt(zmq.LINGER, 0)
        self.subscriptions = Subscriptions(self.pub)
        self.control = self.context.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.setsockopt(zmq.MAXMSGSIZE, CONTROL_HARD_LIMIT_BYTES)
        if self.keys is not None:
            self.keys.secure(self.control)
            if cfg.security.secure_data:
                self.keys.secure(self.sub)
                self.keys.secure(self.pub)
        self.monitor: zmq.Socket[Any] | None = None
        self._reconnect_due: int | None = None
        if not cfg.input.bind:
            self.monitor = self.sub.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED)
        self._receive = frame_receiver(self.sub)
        sink: Sink = ZmqSink(self.pub, cfg.output.topic, cfg.output.diagnostics_topic)
        if self.live is not None:  # every payload also to the Foxglove thread's queue
            sink = TeeSink(sink, self.live, cfg.output.topic, cfg.output.diagnostics_topic)
        self.emitter = Emitter(self.contract, sink, self.counters, latencies=self.latencies,
                               clock=LiveClock(int(cfg.output.deadline_ms * 1e6)))
        self._emit = self.emitter.emit
        try:
            attach(self.sub, cfg.input.endpoint, cfg.input.bind, "input")
            attach(self.pub, cfg.output.endpoint, cfg.output.bind, "output")
            attach(self.control, cfg.control.endpoint, cfg.control.bind, "control")
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.monitor is not None:
            self.sub.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        for sock in (self.sub, self.pub, self.control):
            sock.close(linger=0)
        if self.snapshots is not None:
            self.snapshots.close()
        if self.live is not None:
            self.live.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self.context.term()

    # -- the loop ------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to return (thread-safe; also what SIGINT/SIGTERM do)."""
        self._stop.set()

    def run(self) -> None:
        """Serve until :meth:`stop` or SIGINT/SIGTERM."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        timeout_ms = int(HOUSEKEEPING_S * 1000)
        next_housekeeping = time.monotonic_ns()
        # Busy polling: after a message, keep polling without sleeping for this long.
        # A core that never sleeps keeps its caches and clock warm, which more than
        # halves the step time of a small model (docs/benchmarks.md), at the cost
        # of that core.
        busy_ns = self.config.input.busy_poll_us * 1000
        spin_until = 0
        snapshot_every_ns = int(self.config.state.snapshot_interval_s * 1e9)
        next_snapshot = time.monotonic_ns() + snapshot_every_ns
        rate = self.config.health.rate_hz
        health_every_ns = int(1e9 / rate) if rate > 0 else 0
        next_health = time.monotonic_ns() + health_every_ns
        log.info("ready: input %s (topics %s), output %s, control %s, model %s (%s)",
                 self.config.input.endpoint, ",".join(self.topics),
                 self.config.output.endpoint, self.config.control.endpoint,
                 self.contract.path, self.backend.name)
        while not self._stop.is_set():
            spinning = busy_ns and time.monotonic_ns() < spin_until
            events = dict(poller.poll(0 if spinning else timeout_ms))
            if self.sub in events:
                self._drain_input()
                if busy_ns:
                    spin_until = time.monotonic_ns() + busy_ns
            if self.control in events:
                self._serve_control()
            now = time.monotonic_ns()
            if self._reconnect_due is not None and now >= self._reconnect_due:
                self._reconnect_input()
            if now >= next_housekeeping:
                # The input monitor and the output's (un)subscriptions are read here,
                # not polled with the input: every socket in the poll set costs every
                # message a little, on its way in.
                if self.monitor is not None:
                    self._read_input_events()
                self.subscriptions.read()
                self._housekeeping(now)
                next_housekeeping = now + int(HOUSEKEEPING_S * 1e9)
            if health_every_ns and now >= next_health:
                self.publish_health(now)
                next_health = now + health_every_ns
            if self.snapshots is not None and now >= next_snapshot:
                self.snapshot()
                next_snapshot = now + snapshot_every_ns
        final_error = self._final_snapshot()
        log.info("stopping: %d received, %d stepped, %d rejected",
                 self.counters.received, self.counters.stepped,
                 sum(self.counters.rejected.values()))
        if final_error is not None:
            raise SnapshotError(f"The final snapshot was not written: {final_error} The state "
                                f"of {len(self.store)} streams was not saved, so a restart "
                                "starts them from zeros.")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _drain_input(self) -> None:
        # The first message of a drain is stepped at once, alone: at control-loop rates
        # nothing is queued behind it, and asking would cost it a microsecond. What is
        # found queued after it is a backlog, stepped in batches of distinct streams
        # (the first one too when batching.max_wait_us asks to wait for company).
        receive, clock = self._receive, time.monotonic_ns
        max_batch = self._max_batch
        batching, wait_first = max_batch > 1, max_batch > 1 and self._max_wait_ns > 0
        handled = 0
        while handled < MAX_BURST:
            try:
                frames = receive()
            except zmq.Again:
                return
            items = [(frames, clock())]
            if batching and (handled or wait_first):
                self._take_queued(items, max_batch)
            if len(items) == 1:
                self.handle(frames, items[0][1])
            else:
                self.handle_batch(items)
            handled += len(items)

    def _take_queued(self, items: list[tuple[list[bytes], int]], max_batch: int) -> None:
        """Add the messages already queued (waiting up to ``max_wait_us`` for more)."""
        receive, clock = self._receive, time.monotonic_ns
        deadline = items[0][1] + self._max_wait_ns
        while len(items) < max_batch:
            try:
                items.append((receive(), clock()))
            except zmq.Again:
                left_ns = deadline - clock()
                if left_ns <= 0:
                    return
                if left_ns >= 1_000_000:  # poll() counts in whole milliseconds;
                    self.sub.poll(left_ns // 1_000_000, zmq.POLLIN)  # below that, spin

    # -- the hot path --------------------------------------------------------

    def handle(self, frames: list[bytes], t_recv_ns: int) -> None:
        """Step one message received at ``t_recv_ns`` (monotonic clock) and publish
        its output, or its rejection on the diagnostics topic."""
        self.counters.received += 1
        self._emit(self._step(frames, t_recv_ns), t_recv_ns)

    def handle_batch(self, items: list[tuple[list[bytes], int]]) -> None:
        """Step several queued messages, those of distinct streams in one backend call,
        and publish each output (or rejection) in arrival order, as soon as it is stepped."""
        self.counters.received += len(items)
        emit = self._emit
        for outcome, t_recv_ns in self.stepper.step_many(items, max_batch=self._max_batch):
            emit(outcome, t_recv_ns)

    # -- between messages ----------------------------------------------------

    def _housekeeping(self, now_ns: int) -> None:
        self.emitter.expire(self.store, now_ns)
        if self.sources is not None:
            self.sources.forget_idle(now_ns, self.store.idle_timeout_ns)

    def publish_health(self, now_ns: int) -> bool:
        """Publish one health message, when a subscriber asked for the topic by name."""
        topic = self.config.health.topic
        if self.live is None and not self.subscriptions.asked_by_name(topic):
            return False
        self.emitter.topic_message(topic, self.control_service.health_report(now_ns), now_ns)
        return True
    def _change_mark(self) -> tuple[int, ...]:
        """Changes whenever the state store may have changed (cheap; between messages)."""
        return (self.counters.stepped, self.store.expired, self.store.evicted,
                self.control_service.resets, len(self.store))

    def snapshot(self) -> bool:
        """Hand a snapshot of every stream's state to the background writer; returns
        whether one was taken (not when nothing changed: the file on disk is exact)."""
        if self.snapshots is None:
            return False
        mark = self._change_mark()
        if mark == self._snapshot_mark:
            return False
        self.snapshots.submit(encode_snapshot(self.store, self.contract.sha256,
                                              time.monotonic_ns()))
        self._snapshot_mark = mark
        return True

    def _final_snapshot(self) -> SnapshotError | None:
        """Write the snapshot at stop, before returning; the error when it failed."""
        if self.snapshots is None:
            return None
        body = encode_snapshot(self.store, self.contract.sha256, time.monotonic_ns())
        try:
            self.snapshots.write_now(body)
        except SnapshotError as err:
            return err
        log.info("state: snapshot of %d streams written to %s", len(self.store),
                 self.snapshots.path)
        return None

    def _read_input_events(self) -> None:
        assert self.monitor is not None
        while cast(int, self.monitor.get(zmq.EVENTS)) & zmq.POLLIN:
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_CONNECTED:
                self._input_connected = True
            if event == zmq.EVENT_DISCONNECTED:
                self._input_connected = False
                self._reconnect_due = time.monotonic_ns() + RECONNECT_CHECK_NS
            else:  # libzmq is reconnecting (or has) by itself
                self._reconnect_due = None

    def _reconnect_input(self) -> None:
        self._reconnect_due = None
        self.counters.input_reconnects += 1
        log.warning("input: ZeroMQ dropped the connection to %s and will not reconnect (a "
                    "message larger than input.zmq_max_message_bytes?); connecting again",
                    self.config.input.endpoint)
        # A plain connect to an endpoint already known is ignored: forget it first
        # (its session is gone, nothing queued is lost), then connect afresh.
        with contextlib.suppress(zmq.ZMQError):
            self.sub.disconnect(self.config.input.endpoint)
        self.sub.connect(self.config.input.endpoint)

    def _serve_control(self) -> None:
        while cast(int, self.control.get(zmq.EVENTS)) & zmq.POLLIN:
            frames = self.control.recv_multipart()
            self.counters.control_requests += 1
            # REQ clients send [identity, b"", request]; DEALER clients [identity, request].
            envelope, request = frames[:-1], frames[-1]
            if len(frames) < 2:
                envelope, request = frames, b""
            reply = self.control_service.reply(request)
            if not reply.get("ok"):
                self.counters.control_errors += 1
            self.control.send_multipart([*envelope, self._packer.pack(reply)])


def input_topics(topics: Sequence[str], shard: Shard | None) -> list[str]:
    """What the input socket subscribes to: the topics, or their shard's topics."""
    if shard is None:
        return list(topics)
    return [shard_topic(t, shard.index, shard.count) for t in topics]
