"""What stepping one message gives: the outcomes the emitter turns into messages.

A sensor message is either stepped (:class:`Stepped`), refused
(:class:`~lstm_stream.core.wire.protocol.Rejection`), or, on a multi-source
runner, taken without a step (:class:`NoOutput`: a source's value kept, a
trigger waiting or skipped). A batch message gives one :class:`BatchStepped`
holding a result per row, or, when every row stepped from its stream's own
state, the rows as columns (:class:`SteadyRows`). Only the emitter (emit.py)
sorts outcomes by type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_stream.core.state.store import ResetReason
from lstm_stream.core.wire.batch_message import BatchColumns
from lstm_stream.core.wire.protocol import Rejection, SensorMessage


@dataclass(slots=True)
class Stepped:
    """A message that was stepped: what goes into its output."""

    msg: SensorMessage
    y: np.ndarray  # (1, outputs + extra outputs) float32; the emitter splits the extras off
    step: int  # steps since the stream's last reset
    reset: ResetReason | None  # why the state was reset before this step
    gap: int  # seq missed just before this one
    info: dict[str, Any] | None = None  # more output keys: stale, age_ms, trigger (sources.py)


@dataclass(slots=True)
class NoOutput:
    """A message that was taken (or a trigger that was not stepped) with no output;
    ``event``: the diagnostic to publish, if any."""

    event: dict[str, Any] | None = None
    stale: tuple[str, ...] = ()  # for a skipped step: the stale sources


@dataclass(slots=True)
class SteadyRows:
    """A batch message whose every row was stepped from its stream's own state, with no
    reset and no rejection (the stepper's steady path), as columns."""

    columns: BatchColumns  # what came in
    y: np.ndarray  # (rows, outputs + extra outputs)
    steps: list[int]
    gaps: list[int]

    def as_results(self, topic: str) -> list[ReadingOutcome]:
        y = self.y
        return [Stepped(msg, y[i:i + 1], step, None, gap)  # type: ignore[arg-type]
                for i, (msg, step, gap) in enumerate(zip(
                    self.columns.as_rows(topic), self.steps, self.gaps, strict=True))]


@dataclass(slots=True)
class BatchStepped:
    """What a batch message gave: per row, in row order, its result (built from
    ``steady`` only when asked for)."""

    topic: str
    given_results: list[ReadingOutcome] | None
    steady: SteadyRows | None = None

    @property
    def results(self) -> list[ReadingOutcome]:
        if self.given_results is None:
            assert self.steady is not None
            self.given_results = self.steady.as_results(self.topic)
        return self.given_results


ReadingOutcome = Stepped | Rejection  # of one reading: a single message or a batch row
Outcome = Stepped | Rejection | BatchStepped | NoOutput  # of one message
