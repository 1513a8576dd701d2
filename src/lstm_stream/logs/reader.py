"""Read an lstm-stream log (or any MCAP file), including files whose writer was killed.

:class:`LogReader` scans the file record by record once when opened: it learns
the channels, the metadata and where each chunk is, and notes any problem (a
truncated end, a corrupt chunk) with its byte offset instead of giving up, so
that everything before and after a bad chunk stays readable. It does not need
the summary section, which a killed writer never wrote.

:meth:`LogReader.messages` then yields messages in log-time order; messages with
the same log time come in the order they were recorded (file order). A file whose
chunks follow each other in time (what lstm-stream and most recorders write) is
read chunk after chunk; otherwise chunks are merged lazily, so a well-ordered
file is read one chunk at a time either way.

Record framing and message records are parsed here with ``struct`` (the hot
path of replay); every other record with the official ``mcap`` classes.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from itertools import pairwise
from pathlib import Path
from typing import IO, Any, NamedTuple

from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, Header, Metadata, Schema

from lstm_stream.core.errors import LogError
from lstm_stream.logs import format as fmt
from lstm_stream.logs.mcap_records import MAGIC
from lstm_stream.logs.mcap_records import MESSAGE as _MESSAGE
from lstm_stream.logs.mcap_records import RECORD as _RECORD
from lstm_stream.logs.mcap_records import chunk_records as _chunk_records
from lstm_stream.logs.mcap_records import message_times as _message_times
from lstm_stream.logs.mcap_records import messages_in as _messages_in
from lstm_stream.logs.mcap_records import opname as _opname

log = logging.getLogger(__name__)

MESSAGES_PER_RUN = 4096  # unchunked messages are read in runs of this many


class LoggedMessage(NamedTuple):
    """One recorded message (a named tuple: replay and eval make one per message, and a
    tuple is built in a third of a frozen dataclass's time)."""

    topic: str
    log_time_ns: int  # receive time
    publish_time_ns: int  # the message's stamp_ns when present, else log time
    data: bytes  # the payload frame exactly as it crossed the wire (msgpack)
    sequence: int  # position in the recording (file order, from 0)


@dataclass(frozen=True, slots=True)
class LogProblem:
    """Something wrong in a file, where, and what was lost."""

    offset: int  # byte offset in the file
    detail: str

    def __str__(self) -> str:
        return f"at byte offset {self.offset}: {self.detail}"


@dataclass(slots=True)
class _Segment:
    """A chunk, or a run of unchunked message records: the unit read at once."""

    offset: int  # file offset of the chunk record / first message record
    end: int  # file offset just past it
    start_ns: int
    end_ns: int
    chunked: bool
    first_sequence: int = 0  # position in the file of its first message
    counts: Counter[int] = field(default_factory=Counter)  # messages per channel id
    ordered: bool = True  # its messages' log times never go back (in file order)

    @property
    def size(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    id: int
    topic: str
    message_encoding: str
    metadata: dict[str, str]
    schema_id: int = 0  # 0: no schema (msgpack needs none)


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    """A channel's schema as the file declares it (its data is not interpreted here)."""

    id: int
    name: str
    encoding: str  # e.g. "jsonschema", "ros2msg", "protobuf"


class LogReader:
    """A log opened for reading. Raises LogError when the file is not a readable MCAP."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.channels: dict[int, ChannelInfo] = {}
        self.schemas: dict[int, SchemaInfo] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self.problems: list[LogProblem] = []
        self.library = ""
        self.complete = False  # True when the footer was reached (the writer finished)
        self._segments: list[_Segment] = []
        self._bad_segments: set[int] = set()
        try:
            with open(self.path, "rb") as f:
                self._size = os.fstat(f.fileno()).st_size
                _Scanner(self, f).scan()
        except FileNotFoundError:
            raise LogError(f"Log {str(self.path)!r} does not exist.") from None
        except IsADirectoryError:
            raise LogError(f"Log {str(self.path)!r} is a directory, not an MCAP file.") from None
        except OSError as err:
            raise LogError(f"Could not read log {str(self.path)!r}: {err.strerror}.") from err
        base = 0
        for seg in self._segments:
            seg.first_sequence = base
            base += seg.size
        for problem in self.problems:
            log.warning("%s: %s", self.path, problem)

    # -- what is in the file --------------------------------------------------

    def topics(self) -> list[str]:
        """Topics that have at least one message, sorted."""
        counts = self.topic_counts()
        return sorted(t for t, n in counts.items() if n)

    def topic_counts(self) -> dict[str, int]:
        """Number of readable messages per topic."""
        out: Counter[str] = Counter()
        for seg in self._segments:
            for cid, n in seg.counts.items():
                if cid in self.channels:
                    out[self.channels[cid].topic] += n
        return dict(out)

    def message_count(self, topics: Iterable[str] | None = None) -> int:
        counts = self.topic_counts()
        wanted = counts.keys() if topics is None else set(topics)
        return sum(counts.get(t, 0) for t in wanted)

    def time_range(self) -> tuple[int, int] | None:
        """(first, last) log time in ns, or None for a log without messages."""
        segs = [s for s in self._segments if s.size]
        if not segs:
            return None
        return min(s.start_ns for s in segs), max(s.end_ns for s in segs)

    @property
    def truncated(self) -> bool:
        """True when the file ends before its footer (a writer killed or still writing)."""
        return not self.complete

    def encoding(self, topic: str) -> str:
        """The message encoding of ``topic``'s channel(s), joined by "," when they differ."""
        found = sorted({ch.message_encoding for ch in self.channels.values()
                        if ch.topic == topic})
        return ",".join(found)

    def schema(self, topic: str) -> SchemaInfo | None:
        """The schema of ``topic``'s first channel that has one."""
        for ch in self.channels.values():
            if ch.topic == topic and ch.schema_id in self.schemas:
                return self.schemas[ch.schema_id]
        return None

    def require_msgpack(self, topics: Iterable[str]) -> None:
        """Raise LogError when one of ``topics`` is not msgpack-encoded: lstm-stream
        reads the payloads of msgpack channels only (docs/logs.md)."""
        for topic in topics:
            encoding = self.encoding(topic)
            if encoding and encoding != fmt.MESSAGE_ENCODING:
                schema = self.schema(topic)
                described = f" (schema {schema.name!r}, {schema.encoding})" if schema else ""
                raise LogError(f"Log {str(self.path)!r}: channel {topic} is {encoding}-encoded"
                               f"{described}; lstm-stream reads msgpack channels. Choose other "
                               "topics, or convert this channel's messages to lstm-stream's "
                               "msgpack sensor messages (docs/logs.md).")

    def require_topics(self, topics: Iterable[str]) -> None:
        """Raise LogError naming the file, the missing topics and the ones it has."""
        have = self.topics()
        missing = [t for t in topics if t not in have]
        if missing:
            raise LogError(f"Log {str(self.path)!r} has no messages on topic(s) "
                           f"{', '.join(missing)}; it has: {', '.join(have) or 'no messages'}. "
                           "Choose topics with --topics (see `lstm-stream log info FILE`).")

    # -- messages -------------------------------------------------------------

    def messages(self, topics: Iterable[str] | None = None, start_ns: int | None = None,
                 end_ns: int | None = None) -> Iterator[LoggedMessage]:
        """Messages in log-time order (same-time messages in recorded order), optionally
        only those on ``topics`` with ``start_ns <= log_time < end_ns``."""
        wanted = {cid: ch.topic for cid, ch in self.channels.items()
                  if topics is None or ch.topic in set(topics)}
        lo = start_ns if start_ns is not None else 0
        hi = end_ns if end_ns is not None else 1 << 64
        segs = [(i, s) for i, s in enumerate(self._segments)
                if any(c in wanted for c in s.counts) and s.end_ns >= lo and s.start_ns < hi
                and i not in self._bad_segments]
        segs.sort(key=lambda item: (item[1].start_ns, item[0]))
        with open(self.path, "rb") as f:
            if _in_sequence(segs):  # the usual file: each segment after the one before
                for index, seg in segs:
                    yield from self._segment_messages(f, index, seg, wanted, lo, hi)
            else:
                yield from self._merge(f, segs, wanted, lo, hi)

    def _merge(self, f: IO[bytes], segs: list[tuple[int, _Segment]], wanted: dict[int, str],
               lo: int, hi: int) -> Iterator[LoggedMessage]:
        # k-way merge on (log_time, file position): a segment is opened only once the
        # merge reaches its first log time, so an ordered file holds one chunk at a time.
        heap: list[tuple[int, int, LoggedMessage, Iterator[LoggedMessage]]] = []
        nxt = 0
        while True:
            while nxt < len(segs) and (not heap or segs[nxt][1].start_ns <= heap[0][0]):
                index, seg = segs[nxt]
                nxt += 1
                it = self._segment_messages(f, index, seg, wanted, lo, hi)
                first = next(it, None)
                if first is not None:
                    heapq.heappush(heap, (first.log_time_ns, first.sequence, first, it))
            if not heap:
                return
            _, _, msg, it = heap[0]
            following = next(it, None)
            if following is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (following.log_time_ns, following.sequence,
                                         following, it))
            yield msg

    def _segment_messages(self, f: IO[bytes], index: int, seg: _Segment, wanted: dict[int, str],
                          lo: int, hi: int) -> Iterator[LoggedMessage]:
        body = self._segment_bytes(f, index, seg)
        if body is None:
            return
        # A segment is read (and decompressed) whole: a chunk is at most about a MiB.
        # Its messages, normally in log-time order already (known from the scan), are
        # then made one at a time as they are asked for, so that a replay does not
        # stall at each chunk; otherwise they are sorted stably (ties keep file order).
        first = seg.first_sequence
        found = (LoggedMessage(wanted[cid], log_time, pub, data, first + pos)
                 for pos, (cid, log_time, pub, data) in enumerate(_messages_in(body))
                 if cid in wanted and lo <= log_time < hi)
        if seg.ordered:
            yield from found
        else:
            yield from sorted(found, key=lambda m: m.log_time_ns)

    def _segment_bytes(self, f: IO[bytes], index: int, seg: _Segment) -> bytes | None:
        f.seek(seg.offset)
        raw = f.read(seg.end - seg.offset)
        if not seg.chunked:
            return raw
        try:
            return _chunk_records(raw[_RECORD.size:])
        except LogError as err:  # found at scan time too; here only if the file changed
            self._bad_segments.add(index)
            log.warning("%s: at byte offset %d: %s", self.path, seg.offset, err)
            return None


def _in_sequence(segs: list[tuple[int, _Segment]]) -> bool:
    """True when reading the segments one after the other gives what the merge gives:
    each ends before the next starts, or at its start time and earlier in the file
    (same-time messages come in file order)."""
    return all(a.end_ns < b.start_ns or (a.end_ns == b.start_ns and i < j)
               for (i, a), (j, b) in pairwise(segs))


def read_log(path: str | Path) -> LogReader:
    """Open a log for reading (see :class:`LogReader`)."""
    return LogReader(path)


# -- scanning -------------------------------------------------------------------


class _Scanner:
    """One pass over the records of a file, filling in a LogReader."""

    def __init__(self, reader: LogReader, f: IO[bytes]) -> None:
        self.r = reader
        self.f = f
        self.run: _Segment | None = None  # the run of unchunked messages being built

    def scan(self) -> None:
        r, f = self.r, self.f
        where = repr(str(r.path))
        head = f.read(len(MAGIC))
        if not head:
            raise LogError(f"Log {where} is empty (0 bytes): the recorder wrote nothing; "
                           "record again.")
        if head != MAGIC[:len(head)] or len(head) < len(MAGIC):
            raise LogError(f"Log {where} is not an MCAP file (wrong magic bytes at offset 0). "
                           "lstm-stream logs are MCAP files written by `lstm-stream record`.")
        pos = len(MAGIC)
        while True:
            frame = f.read(_RECORD.size)
            if len(frame) < _RECORD.size:
                self._end_run()
                self._truncated(pos, "the file ends without a footer (the writer was killed or "
                                "is still writing)" if not frame else
                                f"the file ends inside a record header ({len(frame)} of 9 bytes)")
                return
            opcode, length = _RECORD.unpack(frame)
            left = r._size - pos - _RECORD.size
            if length > left:
                self._end_run()
                self._truncated(pos, f"a {_opname(opcode)} record claims {length} bytes but only "
                                f"{left} remain: the file is truncated or corrupt from here on")
                return
            if opcode == Opcode.FOOTER:
                self._end_run()
                r.complete = True
                return
            if opcode == Opcode.DATA_END:
                self._end_run()  # the summary that follows repeats what we have
                r.complete = True
                return
            if opcode == Opcode.MESSAGE:
                self._message(pos, f.read(min(length, _MESSAGE.size)), length)
            else:
                self._end_run()
                self._record(pos, opcode, length)
            pos += _RECORD.size + length
            f.seek(pos)

    def _truncated(self, pos: int, detail: str) -> None:
        self.r.problems.append(LogProblem(pos, detail + "; everything before this offset "
                                          "is read (`lstm-stream log recover` makes it a "
                                          "complete file)"))

    def _message(self, pos: int, head: bytes, length: int) -> None:
        if len(head) < _MESSAGE.size:
            self.r.problems.append(LogProblem(pos, f"a message record of {length} bytes is too "
                                              "short; skipped"))
            return
        cid, _, log_time, _ = _MESSAGE.unpack(head)
        run = self.run
        end = pos + _RECORD.size + length
        if run is None or run.size >= MESSAGES_PER_RUN:
            self._end_run()
            run = self.run = _Segment(pos, end, log_time, log_time, chunked=False)
        run.end = end
        run.ordered = run.ordered and log_time >= run.end_ns
        run.start_ns = min(run.start_ns, log_time)
        run.end_ns = max(run.end_ns, log_time)
        run.counts[cid] += 1

    def _end_run(self) -> None:
        if self.run is not None:
            self.r._segments.append(self.run)
            self.run = None

    def _record(self, pos: int, opcode: int, length: int) -> None:
        r = self.r
        if opcode == Opcode.CHUNK:
            body = self.f.read(length)
            try:
                records = _chunk_records(body)
            except LogError as err:
                r.problems.append(LogProblem(pos, f"{err}; the chunk's messages are lost, the "
                                             "rest of the log is read"))
                return
            # Times from the messages themselves, not the chunk header: they decide order.
            counts, lo, hi, ordered, others = _message_times(records)
            for opcode_in, rec in others:
                if opcode_in == Opcode.CHANNEL:
                    self._channel(pos, bytes(rec))
                elif opcode_in == Opcode.SCHEMA:
                    self._schema(pos, bytes(rec))
            if counts:
                r._segments.append(_Segment(pos, pos + _RECORD.size + length, lo, hi,
                                            chunked=True, counts=Counter(counts),
                                            ordered=ordered))
        elif opcode in (Opcode.CHANNEL, Opcode.SCHEMA, Opcode.METADATA, Opcode.HEADER):
            body = self.f.read(length)
            if opcode == Opcode.CHANNEL:
                self._channel(pos, body)
            elif opcode == Opcode.SCHEMA:
                self._schema(pos, body)
            elif opcode == Opcode.METADATA:
                meta = _parse(Metadata, body, pos, r.problems)
                if meta is not None:
                    r.metadata[meta.name] = dict(meta.metadata)
            else:
                header = _parse(Header, body, pos, r.problems)
                if header is not None:
                    r.library = header.library

    def _channel(self, pos: int, body: bytes) -> None:
        ch = _parse(Channel, body, pos, self.r.problems)
        if ch is not None:
            self.r.channels[ch.id] = ChannelInfo(ch.id, ch.topic, ch.message_encoding,
                                                 dict(ch.metadata), ch.schema_id)

    def _schema(self, pos: int, body: bytes) -> None:
        schema = _parse(Schema, body, pos, self.r.problems)
        if schema is not None:
            self.r.schemas[schema.id] = SchemaInfo(schema.id, schema.name, schema.encoding)


def _parse(cls: Any, body: bytes, pos: int, problems: list[LogProblem]) -> Any:
    try:
        return cls.read(ReadDataStream(BytesIO(body)))
    except Exception as err:  # mcap raises struct/Unicode/EndOfFile errors on bad bytes
        problems.append(LogProblem(pos, f"a corrupt {cls.__name__} record "
                                   f"({type(err).__name__}); skipped"))
        return None
