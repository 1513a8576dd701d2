"""One message through decode -> admit -> step -> commit: shared by serve and eval.

:class:`StreamStepper` is the logic of the hot path without sockets or clocks:
the runner calls it with the receive time of each message, and the offline
evaluator with each message's log time, so the live and offline paths cannot
drift apart.

:meth:`StreamStepper.step_many` steps several waiting messages with as few
backend calls as ordering allows: messages of distinct streams share one call;
a second message of a stream already in the batch first closes the batch, so a
stream's messages are stepped one after the other, in order, each from the
state the previous one committed. The results are the same, message for
message, as :meth:`StreamStepper.step` one at a time. It yields each outcome as
soon as the backend call holding it is done, so the caller publishes it at once.
What an outcome becomes (outputs, rejections, events) is the emitter's (emit.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from lstm_stream.core.backends import StepBackend
from lstm_stream.core.model.contract import ModelContract
from lstm_stream.core.state.store import Admission, StateStore
from lstm_stream.core.step.results import (
    BatchStepped,
    Outcome,
    ReadingOutcome,
    SteadyRows,
    Stepped,
)
from lstm_stream.core.wire.batch_message import BatchColumns, BatchMessage, MessageDecoder
from lstm_stream.core.wire.protocol import Rejection, RejectReason, SensorMessage
from lstm_stream.core.wire.shard import Shard, shard_of

log = logging.getLogger(__name__)

WARMUP_CALLS = 20  # batch-1 steps before the first message: caches, allocator, IOBinding
WARMUP_ALL_BATCHES = 64  # every batch size up to this is warmed; powers of two above it

Timed = tuple[Outcome, int]  # an outcome and its message's receive (or log) time


class StreamStepper:
    """Decodes, validates and steps messages, keeping every stream's state."""

    def __init__(self, contract: ModelContract, backend: StepBackend, *,
                 max_streams: int = 1024, idle_timeout_s: float = 5.0, max_gap: int = 0,
                 max_message_bytes: int = 65536, shard: Shard | None = None) -> None:
        self.contract = contract
        self.backend = backend
        self.store = StateStore(contract.states, max_streams=max_streams,
                                idle_timeout_s=idle_timeout_s, max_gap=max_gap)
        self.decoder = MessageDecoder(contract.n_features, contract.feature_names,
                                      max_message_bytes)
        # what decode returns for this decoder: single readings, batch messages, rejections
        self._decode: Callable[[list[bytes]], SensorMessage | BatchMessage | Rejection]
        self._decode = self.decoder.decode
        self.calls = 0  # backend calls, batched or not
        self.shard = shard  # serve only these streams; None: all
        self._finite = backend.finite
        # a model exported with a fixed batch of one is stepped one message per call
        self.max_batch = 1 if contract.fixed_batch == 1 else 1 << 30

    def step(self, frames: list[bytes], now_ns: int) -> Outcome:
        """Step one ``[topic, payload]`` message received at ``now_ns`` (monotonic or log time).

        A rejection changes no state: not the stream's arrays, not its seq.
        """
        msg = self._decode(frames)
        if type(msg) is not SensorMessage:  # a rejection, or a batch message
            if isinstance(msg, BatchMessage):
                return self.step_batch(msg, now_ns)
            assert isinstance(msg, Rejection)
            return msg
        return self.step_message(msg, now_ns)

    def step_message(self, msg: SensorMessage, now_ns: int) -> ReadingOutcome:
        """Step a message already decoded (the feature vector assembled by sources.py)."""
        admission = self._admit(msg, now_ns)
        if type(admission) is Rejection:
            return admission
        return self._step_one(msg, admission, now_ns)

    def step_many(self, items: Sequence[tuple[list[bytes], int]], *,
                  max_batch: int = 64) -> Iterator[Timed]:
        """Step ``(frames, receive time)`` items, yielding ``(outcome, receive time)`` in
        the order of ``items``, each as soon as the backend call holding it is done."""
        pending = _PendingCall()
        limit = min(max_batch, self.store.max_streams, self.max_batch)
        decode = self._decode
        for frames, now_ns in items:
            msg = decode(frames)
            kind = type(msg)
            if kind is SensorMessage:
                if msg.stream in pending.names:  # type: ignore[union-attr,operator]
                    yield from self._flush(pending)  # its previous message commits first
                refused = self._admit_into(pending, msg, now_ns)  # type: ignore[arg-type]
                if refused is not None:
                    if pending.entries:
                        pending.entries.append((refused, now_ns))
                    else:  # nothing before it is waiting: no reason to hold it
                        yield refused, now_ns
                elif pending.full(limit, self.store.room):
                    yield from self._flush(pending)
            elif kind is BatchMessage:  # its own rows, after everything before it
                yield from self._flush(pending)
                # the message is its sender's batch: its rows share one call
                yield self.step_batch(msg, now_ns), now_ns  # type: ignore[arg-type]
            elif pending.entries:
                pending.entries.append((msg, now_ns))  # type: ignore[arg-type]
            else:
                yield msg, now_ns  # type: ignore[misc]
        yield from self._flush(pending)

    def step_batch(self, message: BatchMessage, now_ns: int) -> BatchStepped:
        """Step every row of a batch message as a single message with its values would
        be (distinct streams, so one backend call when the limits allow)."""
        limit = min(self.store.max_streams, self.max_batch)
        if message.columns is not None and 1 < len(message.columns.streams) <= limit:
            steady = self._step_steady(message.columns, now_ns)
            if steady is not None:
                return BatchStepped(message.topic, None, steady)
        results: list[ReadingOutcome] = []
        pending = _PendingCall()
        for row in message.rows:
            if type(row) is SensorMessage:
                if row.stream in pending.names:  # a duplicate is refused by decoding;
                    results += self._flush_results(pending)  # kept for safety
                refused = self._admit_into(pending, row, now_ns)
                if refused is not None:
                    pending.entries.append((refused, now_ns))
                elif pending.full(limit, self.store.room):
                    results += self._flush_results(pending)
            else:
                pending.entries.append((row, now_ns))  # type: ignore[arg-type]
        results += self._flush_results(pending)
        return BatchStepped(message.topic, results)

    # -- admission and backend calls ------------------------------------------

    def _wrong_shard(self, msg: SensorMessage) -> Rejection:
        assert self.shard is not None
        return Rejection(RejectReason.WRONG_SHARD,
                         f"stream {msg.stream[:256]!r} belongs to shard "
                         f"{shard_of(msg.stream, self.shard.count)} of {self.shard.count}, this "
                         f"runner serves shard {self.shard}; publish it on "
                         f"shard.topic_for(base, stream, {self.shard.count})",
                         msg.topic, msg.stream, msg.seq)

    def _admit_into(self, pending: _PendingCall, msg: SensorMessage,
                    now_ns: int) -> Rejection | None:
        """Admit ``msg`` into the pending call; its rejection when it is refused."""
        admission = self._admit(msg, now_ns)
        if type(admission) is Rejection:
            return admission
        pending.add(msg, admission, now_ns)
        return None

    def _admit(self, msg: SensorMessage, now_ns: int) -> Admission | Rejection:
        """The store's decision for ``msg``, after the shard's (nothing changed yet)."""
        if self.shard is not None and not self.shard.owns(msg.stream):
            return self._wrong_shard(msg)
        return self.store.admit(msg, now_ns)

    def _flush(self, pending: _PendingCall) -> list[Timed]:
        """Step the pending rows in one call; every entry, stepped or held, in order."""
        if not pending.entries:
            return []
        results = iter(self._step_rows(pending.rows))
        out = [(next(results) if held is None else held, now_ns)
               for held, now_ns in pending.entries]
        pending.clear()
        return out

    def _flush_results(self, pending: _PendingCall) -> list[ReadingOutcome]:
        return [outcome for outcome, _ in self._flush(pending)]  # type: ignore[misc]

    def _step_one(self, msg: SensorMessage, admission: Admission,
                  now_ns: int) -> ReadingOutcome:
        self.calls += 1
        try:
            y, new_states = self.backend.step_one(msg.x, admission.states)
        except Exception as err:  # a backend failure must not kill the caller
            return _failed(msg, err)
        if not self._finite(y, new_states):  # never published, never committed
            return self._bad_output(msg, y, new_states, 0)
        stream = self.store.commit(admission, msg, new_states, now_ns)
        return Stepped(msg, y, stream.step, admission.reset, admission.gap)

    def _step_rows(self, rows: list[tuple[SensorMessage, Admission, int]]
                   ) -> list[ReadingOutcome]:
        """Rows of distinct streams in one backend call, committed in one go."""
        if len(rows) == 1:
            return [self._step_one(*rows[0])]
        msgs = [row[0] for row in rows]
        admissions = [row[1] for row in rows]
        store = self.store
        self.calls += 1
        try:
            y, new_states = self.backend.step(
                np.concatenate([m.x for m in msgs]), store.gather(admissions))
        except Exception:
            # Step them one by one, so that whatever failed takes down only itself.
            return [self._step_one(*row) for row in rows]
        if not self._finite(y, new_states):
            return self._commit_finite_rows(rows, y, new_states)
        streams = store.commit_many(admissions, msgs, new_states, [row[2] for row in rows])
        return [Stepped(m, y[i:i + 1], s.step, a.reset, a.gap)
                for i, (m, a, s) in enumerate(zip(msgs, admissions, streams, strict=True))]

    def _commit_finite_rows(self, rows: list[tuple[SensorMessage, Admission, int]],
                            y: np.ndarray, new_states: Sequence[np.ndarray]
                            ) -> list[ReadingOutcome]:
        """Commit the rows whose outputs are all finite; reject the others (bad_output)."""
        ok = np.isfinite(y).all(axis=1)
        for new in new_states:  # (layers, batch, hidden)
            ok &= np.isfinite(new).all(axis=(0, 2))
        keep = np.flatnonzero(ok)
        kept = [rows[i] for i in keep]
        streams = iter(self.store.commit_many(
            [r[1] for r in kept], [r[0] for r in kept], [new[:, keep] for new in new_states],
            [r[2] for r in kept]))
        out: list[ReadingOutcome] = []
        for i, (msg, admission, _) in enumerate(rows):
            if ok[i]:
                out.append(Stepped(msg, y[i:i + 1], next(streams).step, admission.reset,
                                   admission.gap))
            else:
                out.append(self._bad_output(msg, y, new_states, i))
        return out

    def _step_steady(self, columns: BatchColumns, now_ns: int) -> SteadyRows | None:
        """Every row in one backend call with no per-row objects, when each stream steps
        from its own state (StateStore.admit_steady); what the row-by-row path gives,
        bit for bit. None, with nothing changed, sends the message row by row: a row to
        admit otherwise, a backend failure, a row with NaN or Inf in its outputs."""
        if self.shard is not None:
            return None
        store = self.store
        admitted = store.admit_steady(columns.streams, columns.seqs, now_ns)
        if admitted is None:
            return None
        streams, gaps = admitted
        slots = [stream.slot for stream in streams]
        self.calls += 1
        try:
            y, new_states = self.backend.step(columns.x, store.gather_slots(slots))
        except Exception:  # the row-by-row path steps them one by one
            return None
        if not self._finite(y, new_states):
            return None
        steps = store.commit_steady(streams, slots, columns.seqs, columns.stamps, new_states,
                                    now_ns)
        return SteadyRows(columns, y, steps, gaps)

    def _bad_output(self, msg: SensorMessage, y: np.ndarray, new_states: Sequence[np.ndarray],
                    row: int) -> Rejection:
        """The rejection of a step whose row ``row`` of the outputs holds NaN or Inf."""
        bad = []
        if not np.isfinite(y[row]).all():
            bad.append(f"output y (first at index {int(np.flatnonzero(~np.isfinite(y[row]))[0])})")
        for spec, new in zip(self.contract.states, new_states, strict=True):
            if not np.isfinite(new[:, row]).all():
                bad.append(f"new state {spec.output!r}")
        return Rejection(RejectReason.BAD_OUTPUT,
                         f"the model returned NaN or Inf in {' and '.join(bad)}; "
                         "nothing was published and the stream's state is as it was before "
                         "this message. Check the model (lstm-stream info) and this input.",
                         msg.topic, msg.stream, msg.seq)


class _PendingCall:
    """Admitted messages of distinct streams waiting for one backend call, with the
    outcomes held between them (in arrival order) until the call is made. Plain data:
    the stepper makes the call."""

    __slots__ = ("created", "entries", "names", "rows")

    def __init__(self) -> None:
        self.entries: list[tuple[Outcome | None, int]] = []  # None: a row to step
        self.rows: list[tuple[SensorMessage, Admission, int]] = []
        self.names: set[str] = set()
        self.created = 0  # rows that create a stream

    def add(self, msg: SensorMessage, admission: Admission, now_ns: int) -> None:
        self.entries.append((None, now_ns))
        self.rows.append((msg, admission, now_ns))
        self.names.add(msg.stream)
        self.created += admission.stream is None

    def full(self, limit: int, room: int) -> bool:
        """Whether the call must be made before another row joins: at the batch limit, or
        when one more new stream would evict a stream of this call before it commits (a
        full store evicts the least recently used; this call's streams are the most
        recently used)."""
        return len(self.rows) >= limit or (self.rows[-1][1].stream is None
                                           and self.created > room)

    def clear(self) -> None:
        self.entries.clear()
        self.rows.clear()
        self.names.clear()
        self.created = 0


def _failed(msg: SensorMessage, err: Exception) -> Rejection:
    return Rejection(RejectReason.STEP_FAILED, f"the backend failed: {err}"[:300], msg.topic,
                     msg.stream, msg.seq)


def warm_up(backend: StepBackend, contract: ModelContract, max_batch: int) -> float:
    """Step zeros at batch 1 and at every batch size batching will use, so that the first
    real messages do not pay onnxruntime's first-call costs (allocations, the kernels
    of a new shape); returns the seconds it took. A size the model cannot run (a fixed
    batch) is skipped: its messages are rejected as they would be without warm-up."""
    started = time.perf_counter()
    sizes = [1, *range(2, min(max_batch, WARMUP_ALL_BATCHES) + 1)]
    size = WARMUP_ALL_BATCHES * 2
    while size <= max_batch:
        sizes.append(size)
        size *= 2
    for batch in sizes:
        x = np.zeros((batch, contract.n_features), np.float32)
        states = [np.zeros((s.layers, batch, s.hidden), np.float32) for s in contract.states]
        try:
            for _ in range(WARMUP_CALLS if batch == 1 else 1):
                (backend.step_one if batch == 1 else backend.step)(x, states)
        except Exception as err:  # the model's own limits show up on real messages too
            log.debug("warm-up: batch %d skipped: %s", batch, err)
    return time.perf_counter() - started
