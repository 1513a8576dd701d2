"""State snapshots: every stream's state on disk, so that a restart loses nothing it can keep.

A snapshot holds, for each stream, its recurrent state arrays, last seq, last
stamp, step count, how long it had been idle and any pending reset, plus the
SHA-256 of the model that produced the state. The file is::

    b"LSTMSNAP" | version (1 byte) | SHA-256 of the body (32 bytes) | body

where the body is one msgpack map: plain ints, strings and ``bin`` arrays of
little-endian float32, one per state tensor, shaped (streams, layers, hidden).
No pickle, nothing executable: a snapshot is data only, and a damaged one is
detected by its checksum.

Writing is atomic: a temporary file in the same directory is written and
fsynced, renamed over the old snapshot, and the directory is fsynced, so a
crash leaves either the old or the new snapshot, never a torn one.

The runner encodes a snapshot between messages (a copy of every stream's state,
about a millisecond for 1000 streams; docs/reliability.md) and hands the bytes
to a :class:`SnapshotWriter` thread, which hashes and writes them while the
runner goes on stepping.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from lstm_stream import __version__
from lstm_stream.core.errors import SnapshotError
from lstm_stream.core.state.snapshot_files import (
    MAGIC,
    keep_aside,
    require_snapshot_file,
    write_atomic,
)
from lstm_stream.core.state.store import RESET_REASONS, ResetReason, StateStore

log = logging.getLogger(__name__)

VERSION = 1
_HEADER = len(MAGIC) + 1 + 32


def encode_snapshot(store: StateStore, model_sha256: str, now_ns: int,
                    unix_ns: int | None = None) -> bytes:
    """The body of a snapshot of ``store`` at monotonic time ``now_ns`` (no header yet).

    Copies every stream's state; call it between messages.
    """
    streams = store.streams()
    arrays = []
    for i, spec in enumerate(store.specs):
        if streams:
            stacked = np.stack([s.states[i][:, 0, :] for s in streams])  # (n, layers, hidden)
        else:
            stacked = np.zeros((0, spec.layers, spec.hidden), np.float32)
        arrays.append(stacked.astype("<f4", copy=False).tobytes())
    body = {
        "lstm_stream": __version__,
        "written_unix_ns": time.time_ns() if unix_ns is None else unix_ns,
        "model_sha256": model_sha256,
        "states": [{"input": s.input, "layers": s.layers, "hidden": s.hidden}
                   for s in store.specs],
        "name": [s.name for s in streams],
        "last_seq": [s.last_seq for s in streams],
        "last_stamp_ns": [s.last_stamp_ns for s in streams],
        "step": [s.step for s in streams],
        "idle_ns": [max(0, now_ns - s.last_seen_ns) for s in streams],
        "pending_reset": [s.pending_reset for s in streams],
        "arrays": arrays,
        "forgotten": [[name, why] for name, why in store.forgotten()],
    }
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def frame_snapshot(body: bytes) -> bytes:
    """Header plus body: what goes into the file."""
    return MAGIC + bytes([VERSION]) + hashlib.sha256(body).digest() + body


@dataclass
class Snapshot:
    """A decoded, checked snapshot."""

    model_sha256: str
    written_unix_ns: int
    states: list[tuple[str, int, int]]  # (input name, layers, hidden) per state tensor
    name: list[str]
    last_seq: list[int]
    last_stamp_ns: list[int | None]
    step: list[int]
    idle_ns: list[int]
    pending_reset: list[str | None]
    arrays: list[np.ndarray]  # one (streams, layers, hidden) float32 per state tensor
    forgotten: list[tuple[str, str]] = field(default_factory=list)  # reasons checked

    def __len__(self) -> int:
        return len(self.name)


def decode_snapshot(data: bytes, source: str = "snapshot") -> Snapshot:
    """Check and decode a snapshot file's bytes; raises SnapshotError naming the problem."""
    if len(data) < _HEADER or not data.startswith(MAGIC):
        raise SnapshotError(f"{source} is not an lstm-stream snapshot (no {MAGIC!r} header).")
    if data[len(MAGIC)] != VERSION:
        raise SnapshotError(f"{source} has format version {data[len(MAGIC)]}; this runner "
                            f"reads version {VERSION}.")
    digest, body = data[len(MAGIC) + 1:_HEADER], data[_HEADER:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{source} is damaged: its checksum does not match its contents.")
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True)
        return _from_map(raw)
    except SnapshotError as err:
        raise SnapshotError(f"{source}: {err}") from None
    except Exception as err:  # msgpack and type errors on a well-checksummed but odd file
        raise SnapshotError(f"{source} could not be decoded: {type(err).__name__}: {err}"
                            ) from err


def _from_map(raw: Any) -> Snapshot:
    if not isinstance(raw, dict):
        raise SnapshotError("the body is not a map")
    states = [(str(s["input"]), int(s["layers"]), int(s["hidden"])) for s in raw["states"]]
    columns = ("name", "last_seq", "last_stamp_ns", "step", "idle_ns", "pending_reset")
    n = len(raw["name"])
    for col in columns:
        if not isinstance(raw[col], list) or len(raw[col]) != n:
            raise SnapshotError(f"column {col!r} does not have {n} entries")
    if not all(isinstance(v, str) for v in raw["name"]):
        raise SnapshotError("a stream name is not a string")
    for col in ("last_seq", "step", "idle_ns"):
        if not all(type(v) is int for v in raw[col]):
            raise SnapshotError(f"column {col!r} holds a value that is not an integer")
    if not all(v is None or v in RESET_REASONS for v in raw["pending_reset"]):
        raise SnapshotError("column 'pending_reset' holds an unknown reset reason")
    if len(raw["arrays"]) != len(states):
        raise SnapshotError(f"{len(raw['arrays'])} state arrays for {len(states)} states")
    arrays = []
    for (name, layers, hidden), blob in zip(states, raw["arrays"], strict=True):
        if not isinstance(blob, bytes) or len(blob) != 4 * n * layers * hidden:
            raise SnapshotError(f"state {name!r} does not hold {n} x {layers} x {hidden} "
                                "float32 values")
        arr = np.frombuffer(blob, "<f4").reshape(n, layers, hidden)
        if not np.isfinite(arr).all():
            raise SnapshotError(f"state {name!r} holds NaN or Inf")
        arrays.append(arr)
    forgotten = [(str(a), str(b)) for a, b in raw.get("forgotten", [])]
    if not all(why in RESET_REASONS for _, why in forgotten):
        raise SnapshotError("column 'forgotten' holds an unknown reset reason")
    return Snapshot(str(raw["model_sha256"]), int(raw["written_unix_ns"]), states,
                    list(raw["name"]), list(raw["last_seq"]), list(raw["last_stamp_ns"]),
                    list(raw["step"]), list(raw["idle_ns"]), list(raw["pending_reset"]),
                    arrays, forgotten)


def read_snapshot(path: str | Path) -> Snapshot:
    """Read and check the snapshot at ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise SnapshotError(f"Could not read snapshot {str(path)!r}: {err.strerror or err}."
                            ) from err
    return decode_snapshot(data, f"Snapshot {str(path)!r}")


@dataclass
class RestoreResult:
    """What restoring at start-up did, for the log and ``status``."""

    restored: int = 0  # streams whose state was restored
    idle: int = 0  # streams in the snapshot that had been idle too long by now
    note: str = "no snapshot configured"
    level: int = logging.INFO  # how loudly the runner logs the note
    kept_aside: Path | None = None  # where an unusable snapshot was moved, never deleted


def _unusable(path: Path, why: str, note: str, unix_ns: int) -> RestoreResult:
    aside = keep_aside(path, why, unix_ns)
    return RestoreResult(note=f"{note}; kept it as {str(aside)!r}; starting clean",
                         level=logging.WARNING, kept_aside=aside)


def restore(store: StateStore, path: str | Path, model_sha256: str, *,
            now_ns: int | None = None, unix_ns: int | None = None) -> RestoreResult:
    """Load the snapshot at ``path`` into an empty ``store`` when it is safe to do so.

    It is restored only when it exists, is intact, was made by the same model
    (SHA-256) with the same state shapes, and is younger than the store's idle
    timeout. Streams that have been idle for longer than the timeout by now are
    not restored but remembered as idle, as an uninterrupted runner would have
    expired them. Otherwise the store stays empty and the note says why; a
    snapshot that is damaged, of another model or shape, or dated in the future
    is renamed aside (:func:`keep_aside`), never deleted. A file that is not a
    snapshot at all raises SnapshotError: it is never touched.
    """
    path = Path(path)
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    unix_ns = time.time_ns() if unix_ns is None else unix_ns
    if not path.exists():
        return RestoreResult(note=f"no snapshot at {str(path)!r} yet: starting clean")
    require_snapshot_file(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SnapshotError(f"Could not read snapshot {str(path)!r}: {err.strerror or err}. "
                            "Fix its permissions or choose another state.snapshot_path."
                            ) from err
    try:
        snap = decode_snapshot(data, f"Snapshot {str(path)!r}")
    except SnapshotError as err:
        why = "other-version" if data[len(MAGIC):len(MAGIC) + 1] != bytes([VERSION]) else (
            "damaged")
        return _unusable(path, why, str(err).rstrip("."), unix_ns)
    if snap.model_sha256 != model_sha256:
        return _unusable(path, "other-model", f"snapshot {str(path)!r} was made with model "
                         f"sha256 {snap.model_sha256}, this model is {model_sha256}", unix_ns)
    want = [(s.input, s.layers, s.hidden) for s in store.specs]
    if snap.states != want:
        return _unusable(path, "other-shapes", f"snapshot {str(path)!r} holds states "
                         f"{snap.states}, the model has {want}", unix_ns)
    age_ns = unix_ns - snap.written_unix_ns
    if age_ns < 0:
        return _unusable(path, "future", f"snapshot {str(path)!r} is dated "
                         f"{-age_ns / 1e9:.1f} s in the future (the clock changed?)", unix_ns)
    if age_ns > store.idle_timeout_ns:
        return RestoreResult(note=f"snapshot {str(path)!r} is {age_ns / 1e9:.1f} s old, older "
                             f"than state.idle_timeout_s ({store.idle_timeout_ns / 1e9:g} s): "
                             "every stream would have expired; starting clean")
    for name, why in snap.forgotten:
        store.forget(name, ResetReason(why))
    result = RestoreResult()
    for i, name in enumerate(snap.name):
        idle_ns = snap.idle_ns[i] + age_ns
        if idle_ns > store.idle_timeout_ns:
            store.forget(name, ResetReason.IDLE)
            result.idle += 1
            continue
        pending = snap.pending_reset[i]
        store.restore(name, [arr[i][:, None, :] for arr in snap.arrays],
                      last_seq=snap.last_seq[i], last_stamp_ns=snap.last_stamp_ns[i],
                      step=snap.step[i], last_seen_ns=now_ns - idle_ns,
                      pending_reset=(ResetReason.CONTROL if pending == ResetReason.CONTROL
                                     else ResetReason.RESTORED))
        result.restored += 1
    result.note = (f"restored {result.restored} streams from {str(path)!r} "
                   f"({age_ns / 1e9:.3f} s old)"
                   + (f"; {result.idle} had been idle too long" if result.idle else ""))
    return result


class SnapshotWriter:
    """Writes snapshot bodies to one file from a background thread, latest first.

    ``submit`` never blocks: if a write is still in progress, the newest body
    waiting replaces any older one that has not been written yet.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.written = 0
        self.failed = 0
        self.failed_since_written = 0  # failures since the last successful write
        self.last_write_s = 0.0
        self.last_error: str | None = None
        self._pending: bytes | None = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="snapshot-writer", daemon=True)
        self._thread.start()

    def submit(self, body: bytes) -> None:
        with self._cond:
            self._pending = body
            self._cond.notify()

    def write_now(self, body: bytes) -> None:
        """Write ``body`` in the calling thread after any write in progress (shutdown).

        Raises SnapshotError when it could not be written (counted in ``failed``,
        not logged: the caller reports it).
        """
        with self._cond:
            self._pending = None
            while self._busy:
                self._cond.wait()
            self._busy = True
        error = self._write_then_release(body)
        if error is not None:
            raise error

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(10)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                body, self._pending, self._busy = self._pending, None, True
            error = self._write_then_release(body)
            if error is not None and self.failed_since_written == 1:
                # once per run of failures, not every interval; status counts them all
                log.error("%s Snapshots keep being attempted every interval; `lstm-stream "
                          "control status` counts the failures.", error)

    def _write_then_release(self, body: bytes) -> SnapshotError | None:
        """Write ``body`` (the caller has set ``_busy``), then let the next writer in."""
        try:
            return self._write(body)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _write(self, body: bytes) -> SnapshotError | None:
        start = time.perf_counter()
        try:
            write_atomic(self.path, frame_snapshot(body))
        except SnapshotError as err:
            self.failed += 1
            self.failed_since_written += 1
            self.last_error = str(err)
            return err
        self.written += 1
        self.failed_since_written = 0
        self.last_error = None
        self.last_write_s = time.perf_counter() - start
        return None
