"""What an evaluation produced, as types: per stream, per log, the whole report.

Results are dataclasses inside the library and plain JSON-able dicts only at the
edges (a worker's pipe, a Ray task, ``report.json``): :func:`to_plain` and
:func:`from_plain` are the one place where they change form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from lstm_stream import __version__
from lstm_stream.core.errors import EvaluationError
from lstm_stream.evaluate.options import EvalOptions

# |error| histogram bins: fixed, so that histograms of many logs (and workers) add up.
HIST_EDGES = np.concatenate([[0.0], np.logspace(-7, 2, 55)])


@dataclass
class ErrorSums:
    """Running sums for MAE/RMSE/max that add up across streams, logs and workers."""

    count: int = 0  # matched messages
    values: int = 0  # matched scalar values (messages x outputs)
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    max_abs: float = 0.0

    def add(self, err: np.ndarray) -> None:
        self.count += err.shape[0]
        self.values += err.size
        self.abs_sum += float(np.abs(err, dtype=np.float64).sum())
        self.sq_sum += float(np.square(err, dtype=np.float64).sum())
        self.max_abs = max(self.max_abs, float(np.abs(err).max(initial=0.0)))

    def merge(self, other: ErrorSums) -> None:
        self.count += other.count
        self.values += other.values
        self.abs_sum += other.abs_sum
        self.sq_sum += other.sq_sum
        self.max_abs = max(self.max_abs, other.max_abs)

    def metrics(self) -> dict[str, float | int | None]:
        if not self.values:
            return {"matched": 0, "mae": None, "rmse": None, "max_error": None}
        return {"matched": self.count, "mae": self.abs_sum / self.values,
                "rmse": math.sqrt(self.sq_sum / self.values), "max_error": self.max_abs}


@dataclass
class StreamResult:
    """One stream of one log (an episode)."""

    stream: str
    stepped: int = 0
    rejected: int = 0
    resets: dict[str, int] = field(default_factory=dict)
    errors: ErrorSums = field(default_factory=ErrorSums)
    rejections: dict[str, int] = field(default_factory=dict)  # by reason


@dataclass
class LogResult:
    """What evaluating one log produced; small, so it can come back from a worker."""

    log: str
    output: str
    messages: int = 0  # sensor messages read
    stepped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rejection_examples: dict[str, str] = field(default_factory=dict)  # first detail per reason
    targets: int = 0
    targets_rejected: int = 0
    unmatched_outputs: int = 0  # outputs without a target (when a target topic is given)
    problems: list[str] = field(default_factory=list)  # file damage found while reading
    streams: list[StreamResult] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)
    plot: str | None = None
    backend_calls: int = 0  # stepped / backend_calls: the mean batch
    # one shard of a log split over workers (evaluate/split.py); not in report.json:
    order_keys: list[int] = field(default_factory=list)  # merge key of each message, 3 ints
    example_seq: dict[str, int] = field(default_factory=dict)  # where each example came from
    unsplittable: bool = False  # it holds batch messages: evaluate it in one piece

    def errors(self) -> ErrorSums:
        total = ErrorSums()
        for s in self.streams:
            total.merge(s.errors)
        return total

    def rejection_summary(self, top: int = 3) -> str:
        """``"200 of 200 messages rejected: wrong_length ('x' has 16 values; ...)"``, or ""."""
        total = sum(self.rejected.values())
        if not total:
            return ""
        reasons = sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0]))
        parts = []
        for reason, n in reasons[:top]:
            count = f" {n}" if len(reasons) > 1 else ""
            example = self.rejection_examples.get(reason)
            parts.append(f"{reason}{count}" + (f" ({example})" if example else ""))
        more = len(reasons) - top
        return (f"{total} of {self.messages} messages rejected: " + "; ".join(parts)
                + (f"; and {more} other reason(s)" if more > 0 else ""))

    def as_dict(self) -> dict[str, Any]:
        """The log's entry in ``report.json``."""
        out = asdict(self)
        out["streams"] = [{"stream": s.stream, "stepped": s.stepped, "rejected": s.rejected,
                           "rejections": s.rejections, "resets": s.resets,
                           **s.errors.metrics()} for s in self.streams]
        out["metrics"] = self.errors().metrics()
        for internal in ("histogram", "order_keys", "example_seq", "unsplittable"):
            del out[internal]
        return out


@dataclass(frozen=True)
class LogFailure:
    """A log that could not be evaluated; the message names the log and the fix."""

    error: str


LogOutcome = LogResult | LogFailure


@dataclass
class EvalReport:
    """Every log's result and the overall metrics."""

    logs: list[LogResult]
    options: EvalOptions
    model_sha256: str = ""

    def overall(self) -> dict[str, float | int | None]:
        total = ErrorSums()
        for r in self.logs:
            total.merge(r.errors())
        return total.metrics()

    def as_dict(self) -> dict[str, Any]:
        """``report.json``."""
        return {"lstm_stream": __version__, "model": self.options.model,
                "model_sha256": self.model_sha256, "target_topic": self.options.target_topic,
                "target_key": self.options.target_key, "overall": self.overall(),
                "stepped": sum(r.stepped for r in self.logs),
                "rejected": sum(sum(r.rejected.values()) for r in self.logs),
                "logs": [r.as_dict() for r in self.logs]}


# -- the edge: plain data for pipes and Ray tasks ----------------------------------------


def to_plain(outcome: LogOutcome) -> dict[str, Any] | str:
    """A result as a JSON-able dict, a failure as its message."""
    if isinstance(outcome, LogFailure):
        return outcome.error
    # Field by field, not asdict(): that deep-copies order_keys (3 ints a message), which
    # cost a split log's worker about 2 us a message; the values are JSON-able as they are.
    plain = {f.name: getattr(outcome, f.name) for f in fields(outcome)}
    plain["streams"] = [asdict(s) for s in outcome.streams]
    return plain


def from_plain(plain: dict[str, Any] | str) -> LogOutcome:
    """The inverse of :func:`to_plain`."""
    if isinstance(plain, str):
        return LogFailure(plain)
    data = dict(plain)
    streams = [StreamResult(s["stream"], s["stepped"], s["rejected"], s["resets"],
                            ErrorSums(**s["errors"]), s["rejections"])
               for s in data.pop("streams")]
    return LogResult(**data, streams=streams)


def gather(outcomes: Sequence[LogOutcome]) -> list[LogResult]:
    """The results, in order; one error naming every failed log.

    Raised only after every log has run, so that a damaged log costs the run its
    report but not the outputs of the others.
    """
    errors = [o.error for o in outcomes if isinstance(o, LogFailure)]
    if errors:
        raise EvaluationError("; ".join(errors))
    return [o for o in outcomes if isinstance(o, LogResult)]
