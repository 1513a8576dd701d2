"""Several sensors on several topics: the runner assembles the model's feature vector.

A vehicle stack has no single message with the model's whole input: it has an
IMU at 100 Hz, wheel odometry at 50 Hz, GNSS at 10 Hz, each on its own topic.
With ``[[input.sources]]`` every topic is one source giving some of the model's
features (by name: the model's ``feature_names``, else the sources' order).
:class:`SourceStepper` keeps, per stream, the latest value of every source; a
message on a trigger source steps the model once with the latest value of
every source, through the same :class:`~lstm_stream.core.step.stepper.StreamStepper`
as a single-topic runner.

Freshness: the age of each source is measured against the trigger message's
``stamp_ns`` (sensor time; receive times when either has none). A source older
than its ``max_age_ms`` is *stale*; ``freshness.stale`` says what happens:
``flag`` steps and lists it in the output's ``stale``, ``skip`` does not step
(a ``stale_skipped`` diagnostic instead), ``hold`` steps with the last value of
that source that was fresh when it was used. Until every source of a stream has
been seen, trigger messages are not stepped (one ``waiting`` diagnostic per
stream names the missing sources).

A rejected message (bad payload, stale seq of its source) changes nothing: not
the assembled vector, not the stream's state.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from lstm_stream.core.state.store import StateStore
from lstm_stream.core.step.results import NoOutput, Stepped
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.protocol import (
    EventKind,
    Rejection,
    RejectReason,
    SensorDecoder,
    SensorMessage,
)

RATE_WINDOW = 32  # receive times kept per source: its rate is measured over them


class StalePolicy(StrEnum):
    """What a trigger does when a source is older than its ``max_age_ms``."""

    FLAG = "flag"  # step, and list the stale sources in the output's ``stale``
    SKIP = "skip"  # do not step; publish a stale_skipped diagnostic
    HOLD = "hold"  # step with the last fresh value of each stale source


@dataclass(frozen=True)
class Source:
    """One input topic, resolved against the model: where its features go in ``x``."""

    topic: str
    features: tuple[str, ...]
    columns: tuple[int, ...]  # the model's feature index of each of ``features``
    rate_hz: float  # expected rate, for health
    max_age_ns: int
    trigger: bool


class _Readings:
    """One stream's latest value of every source."""

    __slots__ = ("fresh_x", "recv_ns", "reset", "seq", "stamp_ns", "triggers", "waiting_reported",
                 "x")

    def __init__(self, n_sources: int, n_features: int) -> None:
        self.x = np.zeros((1, n_features), np.float32)  # the latest value of every source
        self.fresh_x = np.zeros((1, n_features), np.float32)  # as last used fresh (hold)
        self.seq = [-1] * n_sources  # -1: not seen yet
        self.stamp_ns: list[int | None] = [None] * n_sources
        self.recv_ns = [0] * n_sources
        self.reset = False  # a reset asked by a non-trigger message, for the next step
        self.triggers = 0  # trigger messages stepped: the step's seq with several triggers
        self.waiting_reported = False


class SourceStepper:
    """Assembles each stream's feature vector from its sources and steps on triggers."""

    def __init__(self, sources: list[Source], stepper: StreamStepper, *,
                 stale: StalePolicy = StalePolicy.FLAG, ages: bool = False,
                 max_message_bytes: int = 65536, max_streams: int = 1024) -> None:
        self.sources = sources
        self.stepper = stepper
        self.stale_policy = stale
        self.ages = ages
        self.max_streams = max_streams
        self._n = stepper.contract.n_features
        self._by_topic = {s.topic: (i, s, SensorDecoder(len(s.features), s.features,
                                                         max_message_bytes,
                                                         subject=f"source {s.topic!r}",
                                                         default_stream=sources[0].topic))
                          for i, s in enumerate(sources)}
        self._triggers = sum(s.trigger for s in sources)
        self._readings: OrderedDict[str, _Readings] = OrderedDict()  # least recent first
        self.waiting = 0  # trigger messages not stepped: some source not seen yet
        self.skipped = 0  # trigger messages not stepped: stale sources (policy skip)
        self.stale: dict[str, int] = {s.topic: 0 for s in sources}  # stale steps per source
        self.messages: dict[str, int] = {s.topic: 0 for s in sources}  # accepted per source
        self.last_recv_ns: dict[str, int | None] = {s.topic: None for s in sources}
        self._recent = [deque[int](maxlen=RATE_WINDOW) for _ in sources]

    @property
    def store(self) -> StateStore:
        return self.stepper.store

    def step(self, frames: list[bytes], now_ns: int) -> Stepped | Rejection | NoOutput:
        """Take one message of any source received at ``now_ns``; step on a trigger."""
        topic = frames[0].decode(errors="replace") if frames else ""
        found = self._by_topic.get(topic)
        if found is None:
            return Rejection(RejectReason.UNKNOWN_TOPIC,
                             f"topic {topic[:256]!r} is none of the sources "
                             f"({', '.join(self._by_topic)}); add it to [[input.sources]] or "
                             "narrow input.topics", topic)
        index, source, decoder = found
        msg = decoder.decode(frames)
        if type(msg) is Rejection:
            return msg
        assert not isinstance(msg, Rejection)
        readings = self._readings.get(msg.stream)
        if readings is None:
            if len(self._readings) >= self.max_streams:
                self._readings.popitem(last=False)
            readings = self._readings[msg.stream] = _Readings(len(self.sources), self._n)
        else:
            self._readings.move_to_end(msg.stream)
        if msg.seq <= readings.seq[index] and not msg.reset:
            return Rejection(RejectReason.STALE_SEQ, f"seq {msg.seq} is not after the last seq "
                             f"{readings.seq[index]} of source {topic!r} of this stream "
                             "(duplicate or out of order); dropped", topic, msg.stream, msg.seq)
        cols = source.columns
        previous = readings.x[0, cols].copy()
        readings.x[0, cols] = msg.x[0]
        readings.seq[index], readings.stamp_ns[index] = msg.seq, msg.stamp_ns
        readings.recv_ns[index] = now_ns
        self.messages[topic] += 1
        self.last_recv_ns[topic] = now_ns
        self._recent[index].append(now_ns)
        if not source.trigger:
            readings.reset = readings.reset or msg.reset
            return NoOutput()
        return self._trigger(msg, index, readings, previous, now_ns)

    def _trigger(self, msg: SensorMessage, index: int, readings: _Readings,
                 previous: np.ndarray, now_ns: int) -> Stepped | Rejection | NoOutput:
        missing = [s.topic for s, seq in zip(self.sources, readings.seq, strict=True)
                   if seq < 0]
        if missing:
            self.waiting += 1
            if readings.waiting_reported:
                return NoOutput()
            readings.waiting_reported = True
            return NoOutput({"event": EventKind.WAITING, "stream": msg.stream,
                             "missing": missing,
                             "detail": f"not stepped until every source has been seen; "
                                       f"waiting for {', '.join(missing)}"})
        ages = self._ages_ns(index, readings, now_ns)
        stale = tuple(s.topic for s, age in zip(self.sources, ages, strict=True)
                      if age > s.max_age_ns)
        x = readings.x
        if stale:
            for topic in stale:
                self.stale[topic] += 1
            if self.stale_policy == StalePolicy.SKIP:
                self.skipped += 1
                return NoOutput({"event": EventKind.STALE_SKIPPED, "stream": msg.stream,
                                 "seq": msg.seq, "stale": list(stale)}, stale)
            if self.stale_policy == StalePolicy.HOLD:
                x = readings.x.copy()
                for s in self.sources:
                    if s.topic in stale:
                        x[0, s.columns] = readings.fresh_x[0, s.columns]
        # One trigger: the step has its seq (gaps and stale seq work as without sources).
        # Several: each has its own seq, so the step's seq counts the stream's triggers.
        seq = msg.seq if self._triggers == 1 else readings.triggers + 1
        step_msg = SensorMessage(msg.topic, msg.stream, seq, msg.stamp_ns, x.copy(),
                                 msg.reset or readings.reset)
        result = self.stepper.step_message(step_msg, now_ns)
        if type(result) is Rejection:  # nothing committed: the trigger's value goes back
            readings.x[0, self.sources[index].columns] = previous
            return result
        assert isinstance(result, Stepped)
        readings.reset = False
        readings.triggers += 1
        for s in self.sources:
            if s.topic not in stale:
                readings.fresh_x[0, s.columns] = x[0, s.columns]
        info: dict[str, Any] = {"stale": list(stale) or None}
        if self._triggers > 1:
            info["trigger"] = {"topic": msg.topic, "seq": msg.seq}
        if self.ages:
            info["age_ms"] = {s.topic: round(age / 1e6, 3)
                              for s, age in zip(self.sources, ages, strict=True)}
        result.info = info
        return result

    def _ages_ns(self, trigger: int, readings: _Readings, now_ns: int) -> list[int]:
        """Each source's age at the trigger: sensor times when both have them, else
        receive times."""
        t_stamp = readings.stamp_ns[trigger]
        out = []
        for i in range(len(self.sources)):
            stamp = readings.stamp_ns[i]
            if t_stamp is not None and stamp is not None:
                out.append(max(0, t_stamp - stamp))
            else:
                out.append(max(0, now_ns - readings.recv_ns[i]))
        return out

    def rate_hz(self, topic: str) -> float | None:
        """The source's rate over its last RATE_WINDOW messages; None before two."""
        recent = self._recent[self._by_topic[topic][0]]
        if len(recent) < 2 or recent[-1] == recent[0]:
            return None
        return (len(recent) - 1) * 1e9 / (recent[-1] - recent[0])

    def forget_idle(self, now_ns: int, idle_ns: int) -> int:
        """Forget the readings of streams that sent nothing for ``idle_ns`` (as the state
        store forgets their state); returns how many."""
        gone = [name for name, r in self._readings.items() if now_ns - max(r.recv_ns) > idle_ns]
        for name in gone:
            del self._readings[name]
        return len(gone)
