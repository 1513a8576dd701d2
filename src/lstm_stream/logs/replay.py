"""``lstm-stream replay``: publish a recorded log onto ZeroMQ with its original timing.

:class:`Replayer` sends each message at ``start + (log_time - first_log_time) / rate``
on a monotonic clock, computed from the log's own times for every message (never
by adding up sleeps, so errors do not accumulate). Messages with the same log time
keep their recorded order. Before the first message it waits for a subscriber
on its XPUB socket (the ZeroMQ slow-joiner problem) and it reads ahead, so the
first messages are not late. It can be paused, resumed and stepped from another
thread (the CLI's keyboard) or from a control socket, and it reports at the end
how far the actual send times were from the schedule and the rate achieved.

Falling more than :data:`RESYNC_NS` behind (a stall, a breakpoint) re-anchors the
schedule at the next message instead of bursting to catch up, as openpilot's
replay does; each re-anchoring is counted.
"""

from __future__ import annotations

import heapq
import logging
import queue
import time
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import zmq

from lstm_stream.core.errors import ConfigError, LogError
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.replay_options import ReplayConfig, ReplayReport
from lstm_stream.logs.rosbag import RosBag, is_rosbag

log = logging.getLogger(__name__)

RESYNC_NS = 1_000_000_000  # more than this late: re-anchor the schedule
READ_AHEAD = 4096  # messages decoded before the clock starts and kept ahead while playing
SERVICE_EVERY = 64  # at rate 0, look at control requests every this many messages
MAX_WAIT_MS = 20  # longest a wait blocks without looking at commands
COMMANDS = ("pause", "resume", "step", "status", "stop")


@dataclass
class _Timing:
    """Send and log times of a replay, across passes of a looped log."""

    first_send: int = 0
    last_send: int = 0
    first_log: int = -1  # log times as published (shifted by earlier passes)
    last_log: int = 0
    paused_ns: int = 0
    shift: int = 0  # added to log times in this pass
    pass_first: int = -1
    pass_last: int = 0
    pass_count: int = 0

    def fetched(self, log_time_ns: int) -> None:
        if self.pass_first < 0:
            self.pass_first = log_time_ns
        self.pass_last = log_time_ns
        self.pass_count += 1

    def sent(self, now: int, log_time_ns: int) -> None:
        if self.first_log < 0:
            self.first_send, self.first_log = now, log_time_ns
        self.last_send, self.last_log = now, log_time_ns

    def next_pass(self) -> int:
        """The shift of the next pass: one mean period after this pass ended."""
        span = self.pass_last - self.pass_first
        period = span // max(1, self.pass_count - 1) or 1_000_000
        self.shift += span + period
        self.pass_first, self.pass_count = -1, 0
        return self.shift


@dataclass(slots=True)
class _Out:
    """A message ready to send: its output topic frame and its log time."""

    topic: bytes
    data: bytes
    log_time_ns: int


class Replayer:
    """Publishes logs; drive it with :meth:`run` (blocking) and the thread-safe controls."""

    def __init__(self, config: ReplayConfig, *, context: zmq.Context[Any] | None = None,
                 progress: Progress | None = None) -> None:
        self.config = config
        self.progress = progress or NullProgress()
        self.readers: list[LogReader | RosBag] = [
            RosBag(p, config.sources) if is_rosbag(p) else LogReader(p) for p in config.paths]
        self._check_topics()
        self._window = self._time_window()
        self.report = ReplayReport()
        self.state = "waiting"
        self._commands: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._paused = config.start_paused
        self._steps = 0
        self._stopped = False
        self._buffer: deque[_Out] = deque()
        self._position_ns = 0
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.pub = self.context.socket(zmq.XPUB)
        self.control_sock: zmq.Socket[Any] | None = None
        self._open_sockets()

    # -- set-up ----------------------------------------------------------------

    def _check_topics(self) -> None:
        topics = self.config.topics
        for reader in self.readers:
            if topics is not None:
                reader.require_topics(topics)
            elif not reader.topics():
                raise LogError(f"Log {str(reader.path)!r} holds no messages; nothing to replay.")
        self.out_topics = {t: self.config.remap.get(t, t).encode()
                           for r in self.readers for t in r.topics()
                           if topics is None or t in topics}
        for reader in self.readers:  # another tool's json or cdr would reach a runner as junk
            reader.require_msgpack(t for t in reader.topics() if t in self.out_topics)
        unknown = [t for t in self.config.remap if t not in self.out_topics]
        if unknown:
            raise ConfigError(f"--remap names topic(s) {', '.join(unknown)} that are not "
                              f"replayed; replayed topics: {', '.join(sorted(self.out_topics))}.")

    def _time_window(self) -> tuple[int, int | None]:
        ranges = [r.time_range() for r in self.readers]
        first = min(rng[0] for rng in ranges if rng is not None)
        start = first + int(self.config.start_s * 1e9)
        end = None if self.config.duration_s is None else start + int(
            self.config.duration_s * 1e9)
        return start, end

    def _open_sockets(self) -> None:
        cfg = self.config
        pub = self.pub
        pub.setsockopt(zmq.LINGER, 1000)  # let the last messages leave on close
        pub.setsockopt(zmq.SNDHWM, 0)  # queue rather than drop: a replay must be complete
        pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, not the first
        try:
            if cfg.connect:
                pub.connect(cfg.output)
            else:
                pub.bind(cfg.output)
            if cfg.control is not None:
                self.control_sock = self.context.socket(zmq.ROUTER)
                self.control_sock.setsockopt(zmq.LINGER, 0)
                self.control_sock.setsockopt(zmq.MAXMSGSIZE, 65536)
                self.control_sock.bind(cfg.control)
        except zmq.ZMQError as err:
            self.close()
            raise ConfigError(f"Could not open the replay sockets (output {cfg.output!r}, "
                              f"control {cfg.control!r}): {err}. Is another process using "
                              "the port?") from err
        self.endpoint: str = (pub.getsockopt_string(zmq.LAST_ENDPOINT) if not cfg.connect
                              else cfg.output)
        self.control_endpoint: str | None = (
            self.control_sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if self.control_sock is not None else None)
        self._poller = zmq.Poller()
        self._poller.register(pub, zmq.POLLIN)
        if self.control_sock is not None:
            self._poller.register(self.control_sock, zmq.POLLIN)

    def close(self) -> None:
        self.pub.close()
        if self.control_sock is not None:
            self.control_sock.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- controls (thread-safe) ------------------------------------------------

    def pause(self) -> None:
        self._commands.put("pause")

    def resume(self) -> None:
        self._commands.put("resume")

    def step(self) -> None:
        """While paused: send the next message only."""
        self._commands.put("step")

    def toggle(self) -> None:
        self._commands.put("resume" if self._paused else "pause")

    def stop(self) -> None:
        self._commands.put("stop")

    def status(self) -> dict[str, Any]:
        first = self._window[0]
        return {"ok": True, "state": self.state, "paused": self._paused,
                "published": self.report.published, "loops": self.report.loops,
                "position_s": max(0, self._position_ns - first) / 1e9,
                "rate": self.config.rate, "subscribers": self.report.subscribers}

    # -- the loop --------------------------------------------------------------

    def total(self) -> int | None:
        """Messages one run publishes, for the progress bar (None: unknown or endless)."""
        cfg = self.config
        if cfg.loop or cfg.start_s or cfg.duration_s is not None:
            return None
        return sum(r.message_count(cfg.topics) for r in self.readers)

    def run(self) -> ReplayReport:
        """Wait for subscribers, then publish until the end (or forever with loop)."""
        self.wait_for_subscribers()
        self.progress.start("replay", self.total())
        try:
            self._play()
        finally:
            self.progress.close()
            self.state = "finished"
        return self.report

    def wait_for_subscribers(self) -> None:
        """Block until ``wait_subscribers`` subscriptions that match a replayed topic arrive."""
        need = self.config.wait_subscribers
        if need == 0:
            return
        deadline = time.monotonic() + self.config.wait_timeout_s
        while self.report.subscribers < need:
            left = deadline - time.monotonic()
            if left <= 0:
                topics = ", ".join(t.decode() for t in sorted(set(self.out_topics.values())))
                raise LogError(
                    f"No subscriber for {topics} on {self.endpoint} within "
                    f"{self.config.wait_timeout_s:g} s ({self.report.subscribers} of {need} "
                    "seen). Start the consumer first (e.g. `lstm-stream serve --input "
                    f"{self.endpoint}`), raise --wait-timeout, or pass --no-wait.")
            self._service(min(left, 0.1))
            if self._stopped:
                return
        self._service(0)  # subscriptions sent together arrive together: take them all

    def _play(self) -> None:
        cfg, report = self.config, self.report
        scale = 1.0 / cfg.rate if cfg.rate > 0 else 0.0
        errors = array("q")
        send, clock = self.pub.send_multipart, time.monotonic_ns
        source = self._source()
        self._fill(source, READ_AHEAD)
        timing = _Timing()
        anchor_mono = anchor_log = 0
        anchored = False
        msg: _Out | None = None
        self.state = "paused" if self._paused else "playing"
        while not self._stopped:
            if msg is None:
                msg = self._next(source)
                if msg is None:
                    if not cfg.loop or timing.pass_count == 0:
                        break
                    source = self._source(timing.next_pass())
                    report.loops += 1
                    self._fill(source, READ_AHEAD)
                    continue
                timing.fetched(msg.log_time_ns)
            stepped = False
            if self._paused:
                t0 = clock()
                stepped = self._wait_paused(source)
                timing.paused_ns += clock() - t0
                anchored = False  # after a pause the schedule restarts at this message
                if self._stopped:
                    break
            if scale and not stepped:
                now = clock()
                if not anchored or now - (anchor_mono + int(
                        (msg.log_time_ns - anchor_log) * scale)) > RESYNC_NS:
                    report.resyncs += anchored  # late by more than RESYNC_NS
                    anchor_mono, anchor_log, anchored = now, msg.log_time_ns, True
                target = anchor_mono + int((msg.log_time_ns - anchor_log) * scale)
                self._wait_until(target, source)
                if self._stopped or self._paused:
                    continue  # paused while waiting: this message waits for resume
                now = clock()
                errors.append(now - target)
            else:
                if report.published % SERVICE_EVERY == 0 and not stepped:
                    self._service(0)
                    if self._paused or self._stopped:
                        continue
                now = clock()
            send((msg.topic, msg.data))
            timing.sent(now, msg.log_time_ns)
            report.published += 1
            report.topics[msg.topic.decode()] += 1
            self._position_ns = msg.log_time_ns - timing.shift
            if report.published % 64 == 0:
                self.progress.advance(64)
            msg = None
        self.progress.advance(report.published % 64)
        self._finish(errors, timing)

    def _finish(self, errors: array[int], timing: _Timing) -> None:
        report, cfg = self.report, self.config
        report.elapsed_s = max(0, timing.last_send - timing.first_send - timing.paused_ns) / 1e9
        report.paused_s = timing.paused_ns / 1e9
        report.log_span_s = max(0, timing.last_log - timing.first_log) / 1e9
        if report.published > 1 and report.elapsed_s > 0:
            report.achieved_rate = (report.published - 1) / report.elapsed_s
        if cfg.rate > 0 and len(errors):
            arr = np.frombuffer(errors, dtype=np.int64) / 1e3
            report.schedule_error_us = {"p50": float(np.percentile(arr, 50)),
                                        "p99": float(np.percentile(arr, 99)),
                                        "max": float(arr.max())}
            if report.published > 1 and report.log_span_s > 0:
                report.target_rate = (report.published - 1) / report.log_span_s * cfg.rate
        log.info("replayed %d messages in %.3f s (%.1f msg/s)", report.published,
                 report.elapsed_s, report.achieved_rate)

    # -- reading ahead -----------------------------------------------------------

    def _source(self, shift: int = 0) -> Iterator[_Out]:
        start, end = self._window
        iters = [r.messages(self.config.topics, start, end) for r in self.readers]
        merged = iters[0] if len(iters) == 1 else heapq.merge(
            *iters, key=lambda m: m.log_time_ns)  # stable: ties keep file order
        out = self.out_topics
        for m in merged:
            yield _Out(out[m.topic], m.data, m.log_time_ns + shift)

    def _fill(self, source: Iterator[_Out], up_to: int) -> None:
        buf = self._buffer
        while len(buf) < up_to:
            m = next(source, None)
            if m is None:
                return
            buf.append(m)

    def _next(self, source: Iterator[_Out]) -> _Out | None:
        if self._buffer:
            return self._buffer.popleft()
        return next(source, None)

    # -- waiting, commands and the control socket ---------------------------------

    def _wait_until(self, target: int, source: Iterator[_Out]) -> None:
        clock, spin = time.monotonic_ns, int(self.config.spin_us * 1000)
        while True:
            left = target - clock()
            if left <= 0:
                return
            if left > 2_000_000 and len(self._buffer) < READ_AHEAD:
                self._fill(source, len(self._buffer) + 1)  # use slack to read ahead
                continue
            if left > spin:
                self._service(min((left - spin) / 1e9, MAX_WAIT_MS / 1e3))
                if self._paused or self._stopped:
                    return
                continue
            while clock() < target:  # the last stretch: sleep is too coarse
                pass
            return

    def _wait_paused(self, source: Iterator[_Out]) -> bool:
        """Block while paused; True when leaving because of a single step."""
        self.state = "paused"
        while self._paused and not self._stopped:
            if self._steps:
                self._steps -= 1
                return True
            self._fill(source, READ_AHEAD)
            self._service(MAX_WAIT_MS / 1e3)
        self.state = "playing"
        return False

    def _service(self, timeout_s: float) -> None:
        """Take subscriptions, control requests and queued commands; wait up to timeout_s."""
        events = dict(self._poller.poll(int(timeout_s * 1000))) if timeout_s >= 0.001 else (
            dict(self._poller.poll(0)))
        if self.pub in events:
            self._read_subscriptions()
        if self.control_sock is not None and self.control_sock in events:
            self._serve_control()
        if timeout_s > 0 and not events and timeout_s < 0.001:
            time.sleep(timeout_s)
        while True:
            try:
                self._apply(self._commands.get_nowait())
            except queue.Empty:
                return

    def _read_subscriptions(self) -> None:
        wanted = list(self.out_topics.values())
        while self.pub.poll(0, zmq.POLLIN):
            frame = self.pub.recv()
            if frame[:1] == b"\x01" and any(t.startswith(frame[1:]) for t in wanted):
                self.report.subscribers += 1
                log.debug("subscriber for %r", frame[1:])

    def _apply(self, cmd: str) -> dict[str, Any]:
        if cmd == "pause":
            self._paused = True
        elif cmd == "resume":
            self._paused = False
        elif cmd == "step":
            self._paused = True
            self._steps += 1
        elif cmd == "stop":
            self._stopped = True
        return self.status()

    def _serve_control(self) -> None:
        sock = self.control_sock
        assert sock is not None
        while sock.poll(0, zmq.POLLIN):
            frames = sock.recv_multipart()
            envelope, body = frames[:-1], frames[-1]
            sock.send_multipart([*envelope, msgpack.packb(self._control_reply(body),
                                                          use_bin_type=True)])

    def _control_reply(self, body: bytes) -> dict[str, Any]:
        try:
            request = msgpack.unpackb(body, raw=False)
        except Exception:
            return {"ok": False, "error": "the request is not msgpack; send a map such as "
                    "{\"cmd\": \"status\"}"}
        cmd = request.get("cmd") if isinstance(request, dict) else None
        if cmd not in COMMANDS:
            return {"ok": False, "error": f"unknown command {cmd!r}; use one of "
                    f"{', '.join(COMMANDS)}"}
        return self.status() if cmd == "status" else self._apply(cmd)
