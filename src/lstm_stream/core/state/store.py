"""Per-stream recurrent state: creation, resets, gaps, stale messages and bounds.

A message goes through two phases so that a failure in between can never leave
a stream half-updated:

1. :meth:`StateStore.admit` decides, without changing anything, whether the
   message may be stepped, which state it starts from (the stream's own or
   zeros after a reset), why a reset happened and how many seq were missed.
2. After the backend has stepped, :meth:`StateStore.commit` writes the new state
   into the stream's row of the state pool and advances its seq.

If the step fails, nothing is committed: the stream is exactly as it was.

Every stream's state lives in one row ("slot") of a pool array per state
tensor, ``(capacity, layers, hidden)``, so that a batch of streams is gathered
and scattered with one numpy call per tensor (:meth:`StateStore.gather`,
:meth:`StateStore.commit_many`) instead of a Python loop over streams. A
stream's ``states`` are views of its row, shaped ``(layers, 1, hidden)`` as a
batch-1 step wants them. The pool doubles when full, up to ``max_streams``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from lstm_stream.core.model.contract import StateSpec
from lstm_stream.core.wire.protocol import Rejection, RejectReason, SensorMessage


class ResetReason(StrEnum):
    """Why a stream's state was reset, reported in the output message that follows the
    reset (``reset``). Members are strings: on the wire they are their values."""

    NEW_STREAM = "new_stream"  # first message of a stream never seen (or long forgotten)
    REQUESTED = "requested"  # the message carried reset: true
    CONTROL = "control"  # a reset request on the control socket
    IDLE = "idle"  # no message for longer than state.idle_timeout_s
    GAP = "gap"  # more than state.max_gap seq were missed
    EVICTED = "evicted"  # the stream was evicted (stream cap) and has come back
    RESTORED = "restored"  # state loaded from a snapshot at start-up (not zeroed; snapshot.py)


RESET_REASONS = tuple(ResetReason)


@dataclass(slots=True)
class Stream:
    """One stream's state and bookkeeping. ``states`` are views of its pool row."""

    name: str
    slot: int  # the stream's row in the state pools
    states: tuple[np.ndarray, ...]  # each (layers, 1, hidden) float32, a view of the pool
    last_seq: int
    last_stamp_ns: int | None
    step: int  # steps since the last reset
    last_seen_ns: int  # monotonic clock of the last commit
    pending_reset: ResetReason | None = None  # set by a control reset, reported on the next output


@dataclass(slots=True)
class Admission:
    """The decision for one message: what to step from, and what to report."""

    stream: Stream | None  # None: a stream to be created on commit
    states: tuple[np.ndarray, ...]  # what to feed the backend
    reset: ResetReason | None
    gap: int


INITIAL_SLOTS = 64  # pool rows allocated at start; doubled when full, up to max_streams


class StateStore:
    """All streams' state, least recently used first."""

    def __init__(self, specs: Sequence[StateSpec], *, max_streams: int = 1024,
                 idle_timeout_s: float = 5.0, max_gap: int = 0) -> None:
        self.specs = tuple(specs)
        self.max_streams = max_streams
        capacity = min(max_streams, INITIAL_SLOTS)
        self._pools = [np.zeros((capacity, spec.layers, spec.hidden), np.float32)
                       for spec in self.specs]
        self._free = list(range(capacity - 1, -1, -1))  # pop() hands out slot 0 first
        self.idle_timeout_ns = int(idle_timeout_s * 1e9)
        self.max_gap = max_gap
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        # Names of streams forgotten recently, so that their return is reported as
        # "idle" or "evicted" rather than "new_stream". Bounded like the streams.
        self._forgotten: OrderedDict[str, ResetReason] = OrderedDict()
        self._zeros = tuple(_zeros(spec) for spec in self.specs)
        for arr in self._zeros:
            arr.flags.writeable = False  # shared by every reset: must never change
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, name: str) -> bool:
        return name in self._streams

    def get(self, name: str) -> Stream | None:
        return self._streams.get(name)

    def streams(self) -> list[Stream]:
        """All streams, least recently stepped first."""
        return list(self._streams.values())

    def admit(self, msg: SensorMessage, now_ns: int) -> Admission | Rejection:
        """Decide how ``msg`` is stepped; changes nothing."""
        stream = self._streams.get(msg.stream)
        if stream is None:
            reason = self._forgotten.get(msg.stream, ResetReason.NEW_STREAM)
            return Admission(None, self._zeros, reason, 0)
        if now_ns - stream.last_seen_ns > self.idle_timeout_ns:
            return Admission(stream, self._zeros, ResetReason.IDLE, 0)
        seq, last = msg.seq, stream.last_seq
        gap = seq - last - 1 if seq > last else 0
        if msg.reset:
            return Admission(stream, self._zeros, ResetReason.REQUESTED, gap)
        if seq <= last:
            return Rejection(RejectReason.STALE_SEQ,
                             f"seq {seq} is not after the last stepped seq {last} "
                             "of this stream (duplicate or out of order); dropped. Send "
                             "reset: true to start the stream again.",
                             msg.topic, msg.stream, seq)
        pending = stream.pending_reset
        if pending is not None:
            if pending != ResetReason.RESTORED:
                return Admission(stream, self._zeros, pending, gap)
            if not (self.max_gap and gap > self.max_gap):
                # Restored state is fed, not zeroed; the output says where it came from.
                return Admission(stream, stream.states, ResetReason.RESTORED, gap)
        if self.max_gap and gap > self.max_gap:
            return Admission(stream, self._zeros, ResetReason.GAP, gap)
        return Admission(stream, stream.states, None, gap)

    def commit(self, admission: Admission, msg: SensorMessage,
               new_states: Sequence[np.ndarray], now_ns: int) -> Stream:
        """Store the state after a successful step; returns the stream."""
        stream = self._advance(admission, msg, now_ns)
        for dst, src in zip(stream.states, new_states, strict=True):
            np.copyto(dst, src)
        return stream

    def gather(self, admissions: Sequence[Admission]) -> tuple[np.ndarray, ...]:
        """The states to step a batch from: one ``(layers, batch, hidden)`` array per
        state tensor, row ``i`` from ``admissions[i]`` (zeros where it resets).

        The admissions must be of distinct streams, none of which may be
        created or evicted before the batch is committed.
        """
        slots = [0 if a.stream is None else a.stream.slot for a in admissions]
        zero_rows = [i for i, a in enumerate(admissions) if a.states is self._zeros]
        return self.gather_slots(slots, zero_rows)

    def gather_slots(self, slots: list[int], zero_rows: list[int] | None = None
                     ) -> tuple[np.ndarray, ...]:
        """:meth:`gather` by pool rows: row ``i`` from slot ``slots[i]``, zeros in
        ``zero_rows``."""
        gathered = []
        for pool in self._pools:
            rows = pool[slots]  # (batch, layers, hidden): a copy, in slot order
            if zero_rows:
                rows[zero_rows] = 0.0
            gathered.append(np.ascontiguousarray(rows.transpose(1, 0, 2)))
        return tuple(gathered)

    def admit_steady(self, names: list[str], seqs: list[int], now_ns: int
                     ) -> tuple[list[Stream], list[int]] | None:
        """The streams and gaps of a batch of distinct streams when :meth:`admit` would
        step every one of them from its own state with no reset and no rejection (the
        stream exists, is not idle, has no pending reset, its seq is new and its gap
        within ``max_gap``, and the message asks no reset); None when any row needs
        :meth:`admit`. Changes nothing."""
        get, limit, max_gap = self._streams.get, now_ns - self.idle_timeout_ns, self.max_gap
        streams = list(map(get, names))
        gaps: list[int] = []
        append = gaps.append
        for stream, seq in zip(streams, seqs, strict=True):
            if stream is None or stream.pending_reset is not None or (
                    stream.last_seen_ns < limit):
                return None
            gap = seq - stream.last_seq - 1
            if gap < 0 or (max_gap and gap > max_gap):  # stale, or past max_gap
                return None
            append(gap)
        return streams, gaps  # type: ignore[return-value]  # no None: checked above

    def commit_steady(self, streams: list[Stream], slots: list[int], seqs: list[int],
                      stamps: list[int | None], new_states: Sequence[np.ndarray],
                      now_ns: int) -> list[int]:
        """:meth:`commit_many` for :meth:`admit_steady`'s streams; returns their steps."""
        move = self._streams.move_to_end
        steps: list[int] = []
        append = steps.append
        for stream, seq, stamp in zip(streams, seqs, stamps, strict=True):
            move(stream.name)
            stream.last_seq = seq
            stream.last_stamp_ns = stamp
            stream.last_seen_ns = now_ns
            step = stream.step + 1
            stream.step = step
            append(step)
        for pool, new in zip(self._pools, new_states, strict=True):
            pool[slots] = new.transpose(1, 0, 2)
        return steps

    def commit_many(self, admissions: Sequence[Admission], msgs: Sequence[SensorMessage],
                    new_states: Sequence[np.ndarray], now_ns: Sequence[int]) -> list[Stream]:
        """:meth:`commit` for a batch stepped from :meth:`gather`: the bookkeeping in
        message order, then one scatter per state tensor."""
        streams = [self._advance(a, m, t)
                   for a, m, t in zip(admissions, msgs, now_ns, strict=True)]
        slots = [stream.slot for stream in streams]
        for pool, new in zip(self._pools, new_states, strict=True):
            pool[slots] = new.transpose(1, 0, 2)  # (layers, batch, hidden) -> rows
        return streams

    def _advance(self, admission: Admission, msg: SensorMessage, now_ns: int) -> Stream:
        """Everything a commit does but writing the state: create or touch the stream,
        advance its seq and step count."""
        stream = admission.stream
        if stream is None:
            stream = self._create(msg.stream, now_ns)
        else:
            self._streams.move_to_end(msg.stream)
        stream.last_seq = msg.seq
        stream.last_stamp_ns = msg.stamp_ns
        # step counts steps since the state was last zeroed (a restore does not zero it)
        stream.step = 1 if admission.states is self._zeros else stream.step + 1
        stream.last_seen_ns = now_ns
        stream.pending_reset = None
        return stream

    @property
    def room(self) -> int:
        """How many streams can be created before one is evicted."""
        return self.max_streams - len(self._streams)

    def _create(self, name: str, now_ns: int) -> Stream:
        while len(self._streams) >= self.max_streams:
            old_name, old = self._streams.popitem(last=False)
            self._free.append(old.slot)
            self._forget(old_name, ResetReason.EVICTED)
            self.evicted += 1
        self._forgotten.pop(name, None)
        if not self._free:
            self._grow()
        slot = self._free.pop()
        states = self._views(slot)
        for arr in states:
            arr.fill(0.0)  # the row may have been another stream's
        stream = Stream(name, slot, states, -1, None, 0, now_ns)
        self._streams[name] = stream
        return stream

    def _views(self, slot: int) -> tuple[np.ndarray, ...]:
        return tuple(pool[slot].reshape(spec.layers, 1, spec.hidden)
                     for pool, spec in zip(self._pools, self.specs, strict=True))

    def _grow(self) -> None:
        """Double the pools (they are full), and point every stream at the new rows."""
        old = len(self._pools[0])
        new = min(2 * old, self.max_streams)
        grown = []
        for pool in self._pools:
            bigger = np.zeros((new, *pool.shape[1:]), np.float32)
            bigger[:old] = pool
            grown.append(bigger)
        self._pools = grown
        self._free.extend(range(new - 1, old - 1, -1))
        for stream in self._streams.values():
            stream.states = self._views(stream.slot)

    def restore(self, name: str, states: Sequence[np.ndarray], *, last_seq: int,
                last_stamp_ns: int | None, step: int, last_seen_ns: int,
                pending_reset: ResetReason | None = ResetReason.RESTORED) -> Stream:
        """Recreate a stream from a snapshot (at start-up, before any message).

        Its next output reports ``pending_reset`` (``restored``: the state is
        carried on, not zeroed; ``control``: a control reset was pending).
        """
        stream = self._create(name, last_seen_ns)
        for dst, src in zip(stream.states, states, strict=True):
            np.copyto(dst, src)
        stream.last_seq = last_seq
        stream.last_stamp_ns = last_stamp_ns
        stream.step = step
        stream.pending_reset = pending_reset
        return stream

    def forgotten(self) -> list[tuple[str, str]]:
        """Recently forgotten streams and why (idle or evicted), oldest first."""
        return list(self._forgotten.items())

    def forget(self, name: str, why: ResetReason) -> None:
        """Remember that ``name`` was forgotten, so its return is reported as ``why``."""
        if name not in self._streams:
            self._forget(name, why)

    def _forget(self, name: str, why: ResetReason) -> None:
        self._forgotten[name] = why
        self._forgotten.move_to_end(name)
        while len(self._forgotten) > self.max_streams:
            self._forgotten.popitem(last=False)

    def expire(self, now_ns: int) -> list[Stream]:
        """Forget streams idle for longer than the timeout; returns them."""
        expired: list[Stream] = []
        limit = now_ns - self.idle_timeout_ns
        while self._streams:
            stream = next(iter(self._streams.values()))
            if stream.last_seen_ns >= limit:
                break
            del self._streams[stream.name]
            self._free.append(stream.slot)
            self._forget(stream.name, ResetReason.IDLE)
            expired.append(stream)
        self.expired += len(expired)
        return expired

    def request_reset(self, name: str | None = None) -> int:
        """Reset one stream (or all when ``name`` is None) before its next step.

        Returns how many streams will be reset. The state is zeroed at once and
        the reason ``control`` is reported on each stream's next output.
        """
        targets = list(self._streams.values()) if name is None else (
            [self._streams[name]] if name in self._streams else [])
        for stream in targets:
            for arr in stream.states:
                arr.fill(0.0)
            stream.pending_reset = ResetReason.CONTROL
        return len(targets)


def _zeros(spec: StateSpec) -> np.ndarray:
    return np.zeros((spec.layers, 1, spec.hidden), np.float32)
