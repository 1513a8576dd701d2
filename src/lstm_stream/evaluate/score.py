"""Scoring: targets aligned to outputs by (stream, seq), errors summed per stream."""

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
                 n_outputs: int) -> None:
        self.where = where  # the log, for warnings
        self.target_topic = target_topic
        self.target_key = target_key
        self.n_outputs = n_outputs
        self.outputs: dict[str, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        self.targets: dict[tuple[str, int], deque[np.ndarray]] = defaultdict(deque)
        self.accepted = 0
        self.rejected = 0

    def output(self, stream: str, seq: int, t: int, y: np.ndarray) -> None:
        """One output's policy values (float64, the model's outputs only)."""
        self.outputs[stream].append((seq, t, y))

    def target(self, data: bytes, sequence: int, t: int) -> None:
        """One target message; an unusable one is counted, reported and skipped."""
        key = self.target_key
        try:
            body = msgpack.unpackb(data, raw=False)
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
            times: list[int] = []
            preds: list[np.ndarray] = []
            targets: list[np.ndarray] = []
            for seq, t, y in self.outputs.get(s.stream, []):
                queue = self.targets.get((s.stream, seq))
                if not queue:
                    unmatched += scoring
                    continue
                times.append(t)
                preds.append(y)
                targets.append(queue.popleft())
            if preds:
                err = np.stack(preds) - np.stack(targets)
                s.errors.add(err)
                hist += np.histogram(np.abs(err), HIST_EDGES)[0]
                series[s.stream] = (times, preds, targets)
        return Scored(hist.tolist(), unmatched, series)
