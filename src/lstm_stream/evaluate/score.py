"""Scoring: targets aligned to outputs, errors summed per stream.

An lstm-stream log's targets name the sensor message they answer, so they are
matched by (stream, seq). A ROS bag's targets (``--target-field``, such as a
``geometry_msgs/msg/Twist`` on ``/cmd_vel``) name nothing: an output is matched,
as training from a bag pairs them (train/log_data.py), with the first target of
its stream stamped at or after the sensor message and before the stream's next
output. Both give the same errors for the same readings (tests/logs/test_rosbag.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field

import msgpack
import numpy as np

from lstm_stream.evaluate.results import HIST_EDGES, StreamResult

log = logging.getLogger(__name__)

MAX_WARNINGS = 10  # unusable targets logged one by one; the rest only counted

# per stream: log times, predictions and targets of the matched outputs, for the plot
Series = dict[str, tuple[list[int], list[np.ndarray], list[np.ndarray]]]


@dataclass
class Scored:
    """What scoring one log gave: the |error| histogram and the matched series."""

    histogram: list[int]
    unmatched_outputs: int
    series: Series = field(default_factory=dict)


class Scorer:
    """Collects one log's outputs and targets, then matches them."""

    def __init__(self, where: str, target_topic: str | None, target_key: str,
                 n_outputs: int, fields: list[str] | None = None) -> None:
        self.where = where  # the log, for warnings
        self.target_topic = target_topic
        self.target_key = target_key
        self.n_outputs = n_outputs
        # a ROS bag's targets: sensor-shaped messages whose x maps these names (the
        # model's outputs, in order) to values, matched by time
        self.fields = fields
        # stream -> (seq, log time, stamp, y) of each output, in log order
        self.outputs: dict[str, list[tuple[int, int, int, np.ndarray]]] = defaultdict(list)
        self.targets: dict[tuple[str, int], deque[np.ndarray]] = defaultdict(deque)
        self.timed: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
        self.accepted = 0
        self.rejected = 0

    def output(self, stream: str, seq: int, t: int, stamp: int, y: np.ndarray) -> None:
        """One output's policy values (float64, the model's outputs only); ``stamp`` is
        its sensor time, which a bag's targets are matched by."""
        self.outputs[stream].append((seq, t, stamp, y))

    def target(self, data: bytes, sequence: int, t: int) -> None:
        """One target message; an unusable one is counted, reported and skipped."""
        key = self.target_key
        try:
            body = msgpack.unpackb(data, raw=False)
            if self.fields is not None:  # made by RosBag from the message's fields
                x = body["x"]
                self.timed[body["stream"]].append(
                    (int(body["stamp_ns"]), np.array([x[f] for f in self.fields], np.float64)))
                self.accepted += 1
                return
            stream, seq, y = body["stream"], body["seq"], body[key]
            if not isinstance(stream, str) or type(seq) is not int:
                raise TypeError("'stream' must be a string and 'seq' an integer")
            value = np.asarray(y, dtype=np.float64).reshape(-1)
            if value.size != self.n_outputs:
                raise ValueError(f"{key!r} has {value.size} values, the model outputs "
                                 f"{self.n_outputs}")
        except Exception as err:  # any undecodable target is counted, reported, skipped
            self.rejected += 1
            if self.rejected <= MAX_WARNINGS:
                log.warning("%s: topic %r, message %d (log time %d): target not usable: "
                            "%s: %s (expected a map with 'stream', 'seq' and %r)", self.where,
                            self.target_topic, sequence, t, type(err).__name__,
                            str(err)[:200], key)
            return
        self.targets[(stream, seq)].append(value)
        self.accepted += 1

    def score(self, streams: list[StreamResult]) -> Scored:
        """Match each stream's outputs to their targets, in order; add the errors to
        each :class:`StreamResult`."""
        scoring = self.target_topic is not None
        hist = np.zeros(len(HIST_EDGES) - 1, np.int64)
        unmatched = 0
        series: Series = {}
        for s in streams:
            rows = self.outputs.get(s.stream, [])
            found = self._by_time(s.stream, rows) if self.fields is not None else \
                self._by_seq(s.stream, rows)
            times = [t for (_, t, _, _), y in zip(rows, found, strict=True) if y is not None]
            preds = [p for (_, _, _, p), y in zip(rows, found, strict=True) if y is not None]
            targets = [y for y in found if y is not None]
            unmatched += scoring * (len(rows) - len(targets))
            if preds:
                err = np.stack(preds) - np.stack(targets)
                s.errors.add(err)
                hist += np.histogram(np.abs(err), HIST_EDGES)[0]
                series[s.stream] = (times, preds, targets)
        return Scored(hist.tolist(), unmatched, series)

    def _by_seq(self, stream: str, rows: list[tuple[int, int, int, np.ndarray]]
                ) -> list[np.ndarray | None]:
        found: list[np.ndarray | None] = []
        for seq, _, _, _ in rows:
            queue = self.targets.get((stream, seq))
            found.append(queue.popleft() if queue else None)
        return found

    def _by_time(self, stream: str, rows: list[tuple[int, int, int, np.ndarray]]
                 ) -> list[np.ndarray | None]:
        """Per output: the first target stamped at or after it and before the stream's
        next output (none when the next output comes first)."""
        timed = sorted(self.timed.get(stream, []), key=lambda row: row[0])
        stamps = np.array([t for t, _ in timed], np.int64)
        found: list[np.ndarray | None] = []
        for i, (_, _, stamp, _) in enumerate(rows):
            k = int(np.searchsorted(stamps, stamp, side="left"))
            later = rows[i + 1][2] if i + 1 < len(rows) else None
            ok = k < len(timed) and (later is None or timed[k][0] < later)
            found.append(timed[k][1] if ok else None)
        return found
