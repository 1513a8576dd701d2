"""``lstm-stream record``: capture live ZeroMQ traffic into MCAP logs.

A SUB socket connects to (or binds) the vehicle stack's PUB endpoint and every
``[topic, payload]`` message on the chosen topics is appended, byte for byte,
with its receive time (see format.py). The open chunk is closed and handed to
the OS at least every :data:`~lstm_stream.logs.format.FLUSH_INTERVAL_S`, so a
recorder killed with SIGKILL loses at most that much; SIGINT, SIGTERM, the
duration limit or :meth:`Recorder.stop` end the recording cleanly with a
complete, indexed file. Files can be split by size or duration.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from lstm_stream.core.errors import ConfigError
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.logs import format as fmt
from lstm_stream.logs.writer import LogWriter

log = logging.getLogger(__name__)

POLL_MS = 100  # how often the loop checks for stop, flush, split and duration
MAX_BURST = 1024  # messages taken from the socket before those checks run again


@dataclass
class RecordConfig:
    """What to record, from where, into which file(s)."""

    input: str
    output: Path
    topics: list[str] | None = None  # None: every topic
    bind: bool = False  # bind the SUB socket instead of connecting
    duration_s: float | None = None  # stop after this long
    split_bytes: int | None = None  # start a new file when one reaches this size
    split_duration_s: float | None = None  # ... or covers this long
    rcvhwm: int = 0  # 0: ZeroMQ queues without limit rather than drop

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if not self.input.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"--input must be a ZeroMQ endpoint such as "
                              f"tcp://127.0.0.1:5555; got {self.input!r}.")
        if self.topics is not None and not all(self.topics):
            raise ConfigError(f"--topics must name non-empty topics; got {self.topics!r}.")
        for name, value in (("--duration", self.duration_s), ("--split-size", self.split_bytes),
                            ("--split-duration", self.split_duration_s)):
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive; got {value!r}.")

    def file_path(self, part: int) -> Path:
        """The output file of part ``part``: numbered ``name_000.mcap`` when splitting."""
        if self.split_bytes is None and self.split_duration_s is None:
            return self.output
        return self.output.with_name(f"{self.output.stem}_{part:03d}{self.output.suffix}")


@dataclass
class RecordReport:
    """What a recording captured."""

    files: list[Path] = field(default_factory=list)
    messages: int = 0
    payload_bytes: int = 0
    topics: Counter[str] = field(default_factory=Counter)
    malformed: int = 0  # not [topic, payload] or topic not UTF-8: not recordable
    elapsed_s: float = 0.0


class WallClock:
    """Unix-epoch nanoseconds that never go backwards: the wall clock read once, then
    advanced by the monotonic clock (an NTP step mid-recording cannot reorder a log)."""

    def __init__(self) -> None:
        self._wall = time.time_ns()
        self._mono = time.monotonic_ns()

    def now_ns(self) -> int:
        return self._wall + time.monotonic_ns() - self._mono


class Recorder:
    """Records until :meth:`stop`, SIGINT/SIGTERM (in the main thread) or the duration."""

    def __init__(self, config: RecordConfig, *, context: zmq.Context[Any] | None = None,
                 progress: Progress | None = None,
                 on_ready: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.progress = progress or NullProgress()
        self.on_ready = on_ready  # called once, with a line saying what is subscribed
        self.report = RecordReport()
        self._stop = threading.Event()
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, config.rcvhwm)
        for topic in config.topics or [""]:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        # Connecting: ready once the ZMTP handshake with the publisher is done, which is
        # when the subscriptions go out. Binding: ready once bound; each publisher gets
        # the subscriptions as it connects, so only its XPUB can say when (docs/logs.md).
        self.monitor: zmq.Socket[Any] | None = (
            None if config.bind else self.sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED))
        try:
            if config.bind:
                self.sub.bind(config.input)
            else:
                self.sub.connect(config.input)
        except zmq.ZMQError as err:
            self.close()
            raise ConfigError(f"Could not {'bind' if config.bind else 'connect'} the record "
                              f"input {config.input!r}: {err}.") from err
        self.endpoint: str = (self.sub.getsockopt_string(zmq.LAST_ENDPOINT) if config.bind
                              else config.input)
        self._wanted = set(config.topics) if config.topics else None

    def stop(self) -> None:
        """Ask :meth:`run` to finish the file and return (thread-safe)."""
        self._stop.set()

    def close(self) -> None:
        self._stop_monitor()
        self.sub.close(linger=0)
        if self._own_context:
            self.context.term()

    def run(self) -> RecordReport:
        """Record; returns what was captured once stopped."""
        restore = self._install_signals()
        try:
            return self._record()
        finally:
            for sig, handler in restore.items():
                signal.signal(sig, handler)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _record(self) -> RecordReport:
        cfg, report, clock = self.config, self.report, WallClock()
        started = time.monotonic()
        deadline = started + cfg.duration_s if cfg.duration_s else None
        writer, file_start = self._open(0, clock), clock.now_ns()
        last_flush = next_tick = time.monotonic()
        ticker = _Ticker(self.progress, report)
        log.info("recording %s from %s into %s", ", ".join(cfg.topics or ["all topics"]),
                 self.endpoint, writer.path)
        if self.monitor is None:
            self._ready(writer.path, "listening")
        try:
            while not self._stop.is_set():
                if self.monitor is not None and self.monitor.poll(0):
                    self._ready(writer.path, "connected")
                if self.sub.poll(POLL_MS, zmq.POLLIN):
                    self._drain(writer, clock)
                now = time.monotonic()
                if now - last_flush >= fmt.FLUSH_INTERVAL_S:
                    writer.flush()  # the SIGKILL promise: at most this much is lost
                    last_flush = now
                if now >= next_tick:
                    ticker.tick(now - started)
                    next_tick = now + 1.0
                if self._split_due(writer, clock.now_ns() - file_start):
                    writer.close()
                    writer, file_start = self._open(len(report.files), clock), clock.now_ns()
                if deadline is not None and now >= deadline:
                    break
        finally:
            writer.close()
            report.elapsed_s = time.monotonic() - started
            self.progress.close()
        log.info("recorded %d messages (%d payload bytes) into %d file(s)", report.messages,
                 report.payload_bytes, len(report.files))
        return report

    def _ready(self, path: Path, how: str) -> None:
        """Say once that the subscriptions are out (or, bound, will go to each publisher)."""
        self._stop_monitor()
        topics = ",".join(self.config.topics or []) or "all topics"
        line = (f"subscribed to {topics} on {self.endpoint} ({how}); recording into {path}")
        log.info("ready: %s", line)
        if self.on_ready is not None:
            self.on_ready(line)

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            self.sub.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None

    def _open(self, part: int, clock: WallClock) -> LogWriter:
        cfg = self.config
        path = cfg.file_path(part)
        meta = {fmt.KIND: "recording", "input": self.endpoint, "bind": cfg.bind,
                "topics": ",".join(cfg.topics or []) or "*", "part": part,
                "started_unix_ns": clock.now_ns()}
        writer = LogWriter(path, metadata=meta)
        self.report.files.append(path)
        return writer

    def _drain(self, writer: LogWriter, clock: WallClock) -> None:
        sub, report, wanted, now = self.sub, self.report, self._wanted, clock.now_ns
        for _ in range(MAX_BURST):
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            t = now()
            if len(frames) != 2:
                self._malformed(f"a message of {len(frames)} frames (expected [topic, payload])")
                continue
            try:
                topic = frames[0].decode()
            except UnicodeDecodeError:
                self._malformed("a message whose topic frame is not UTF-8")
                continue
            if wanted is not None and topic not in wanted:
                continue  # ZeroMQ filters by prefix; the user named exact topics
            writer.write(topic, frames[1], t)
            report.messages += 1
            report.payload_bytes += len(frames[1])
            report.topics[topic] += 1

    def _malformed(self, what: str) -> None:
        self.report.malformed += 1
        if self.report.malformed <= 10 or self.report.malformed % 1000 == 0:
            log.warning("not recorded: %s (%d so far)", what, self.report.malformed)

    def _split_due(self, writer: LogWriter, covered_ns: int) -> bool:
        cfg = self.config
        if writer.messages == 0:
            return False
        if cfg.split_bytes is not None and writer.file_bytes >= cfg.split_bytes:
            return True
        return cfg.split_duration_s is not None and covered_ns >= cfg.split_duration_s * 1e9


class _Ticker:
    """The once-a-second live line: messages, rate and bytes."""

    def __init__(self, progress: Progress, report: RecordReport,
                 describe: Callable[[RecordReport], str] | None = None) -> None:
        self.progress = progress
        self.report = report
        self.seen = 0
        self.progress.start("record", None)

    def tick(self, elapsed_s: float) -> None:
        r = self.report
        rate = r.messages / elapsed_s if elapsed_s > 0 else 0.0
        self.progress.advance(r.messages - self.seen,
                              f"{r.messages} msgs  {rate:,.0f} msg/s  "
                              f"{r.payload_bytes / 1e6:,.2f} MB  {len(r.files)} file(s)")
        self.seen = r.messages
