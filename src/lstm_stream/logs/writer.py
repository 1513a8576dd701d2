"""Write an lstm-stream log: topic + payload bytes per message, as MCAP (see format.py).

The file is the one the official ``mcap`` writer makes with the options that fix
its bytes (1 MiB chunks, zstd, message/chunk/metadata indexes, statistics,
summary offsets, this library's string, no wall clock), byte for byte
(tests/logs/test_log_writer.py compares the two), so the same messages always
give the same file. What differs is the cost. Here a message is one header
packed into the open chunk's buffer and two entries in its channel's message
index (times, counts and CRC are worked out once a chunk): about 1 us. The
official writer builds a ``Message`` and writes it field by field: 4 to 6 us,
which was the largest part of eval's writing. Records written once per file or
per chunk (header, schemas, channels, metadata, summary) use the official
``mcap.records`` classes.

Channels are registered on first use of a topic.
"""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path
from typing import IO, Any

import zstandard
from mcap.data_stream import RecordBuilder
from mcap.opcode import Opcode
from mcap.records import (
    Channel,
    ChunkIndex,
    DataEnd,
    Footer,
    Header,
    Metadata,
    MetadataIndex,
    Schema,
    Statistics,
    SummaryOffset,
)

from lstm_stream.core.errors import LogError
from lstm_stream.logs import format as fmt
from lstm_stream.logs.mcap_records import MAGIC, MESSAGE, MESSAGE_RECORD

log = logging.getLogger(__name__)

_CHUNK_HEAD = struct.Struct("<BQQQQII4sQ")  # frame, times, size, crc, "zstd", data length
_INDEX_HEAD = struct.Struct("<BQHI")  # frame, channel id, entries' byte length
_FOOTER_HEAD = struct.Struct("<BQQQ")  # what the footer's CRC covers after the summary
_NO_MESSAGE = 1 << 64  # start time of an empty file: any log time is smaller
_MESSAGE_OPCODE = int(Opcode.MESSAGE)  # plain ints: an enum member costs a lookup a message
_MESSAGE_LENGTH = MESSAGE.size


def _packed(records: list[Any]) -> bytes:
    """Records framed and serialised by the official ``mcap.records`` classes."""
    builder = RecordBuilder()
    for record in records:
        record.write(builder)
    data: bytes = builder.end()  # type: ignore[no-untyped-call]
    return data


class LogWriter:
    """Writes messages to one MCAP file; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path, *, metadata: dict[str, Any] | None = None,
                 chunk_bytes: int = fmt.CHUNK_BYTES) -> None:
        self.path = Path(path)
        try:
            self._file: IO[bytes] = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        except OSError as err:
            raise LogError(f"Could not create log file {str(self.path)!r}: {err.strerror}. "
                           "Check that the directory exists and is writable.") from err
        self._chunk_bytes = chunk_bytes
        self._channels: dict[str, int] = {}
        self._channel_records: list[Channel] = []
        self._schemas: list[Schema] = []
        self._chunk_indexes: list[ChunkIndex] = []
        self._metadata_indexes: list[MetadataIndex] = []
        self._counts: dict[int, int] = {}  # messages per channel id, in first-use order
        self._start_ns, self._end_ns = _NO_MESSAGE, 0
        self._new_chunk()
        self.messages = 0
        self.payload_bytes = 0
        self._closed = False
        self._file.write(MAGIC)
        self._write_record(Header(fmt.PROFILE, fmt.LIBRARY))
        self._add_metadata(fmt.METADATA_NAME,
                           fmt.string_metadata({fmt.WRITER: fmt.LIBRARY, **(metadata or {})}))

    def channel(self, topic: str, message_encoding: str = fmt.MESSAGE_ENCODING,
                metadata: dict[str, str] | None = None,
                schema: tuple[str, str, bytes] | None = None) -> int:
        """The channel id of ``topic``, registering it on first use (the encoding,
        metadata and ``schema`` (name, encoding, data) of a channel are those given on
        first use)."""
        cid = self._channels.get(topic)
        if cid is None:
            sid = 0
            if schema is not None:
                name, encoding, data = schema
                sid = len(self._schemas) + 1
                self._schemas.append(Schema(id=sid, name=name, encoding=encoding, data=data))
                self._in_chunk(self._schemas[-1])
            cid = len(self._channel_records) + 1
            self._channel_records.append(Channel(id=cid, topic=topic,
                                                 message_encoding=message_encoding,
                                                 schema_id=sid, metadata=metadata or {}))
            self._in_chunk(self._channel_records[-1])
            self._channels[topic] = cid
        return cid

    def write(self, topic: str, data: bytes, log_time_ns: int,
              publish_time_ns: int | None = None) -> None:
        """Append one message; ``publish_time_ns`` defaults to the payload's stamp."""
        if publish_time_ns is None:
            publish_time_ns = fmt.publish_time(data, log_time_ns)
        cid = self._channels.get(topic) or self.channel(topic)
        chunk = self._chunk
        index = self._index.get(cid)
        if index is None:
            index = self._index[cid] = []
        index += (log_time_ns, len(chunk))  # the record's offset in the chunk's records
        chunk += MESSAGE_RECORD.pack(_MESSAGE_OPCODE, _MESSAGE_LENGTH + len(data), cid,
                                     self.messages & 0xFFFFFFFF,  # MCAP sequence is u32
                                     log_time_ns, publish_time_ns)
        chunk += data
        self.messages += 1
        self.payload_bytes += len(data)
        if len(chunk) > self._chunk_bytes:
            self._end_chunk()

    def flush(self) -> None:
        """Close the current chunk and hand everything to the OS: survives a SIGKILL."""
        self._end_chunk()
        self._file.flush()

    @property
    def file_bytes(self) -> int:
        """Bytes handed to the file so far (excluding the open chunk)."""
        return self._file.tell()

    def close(self) -> None:
        """Write the summary and footer; the file is then a complete, indexed MCAP."""
        if self._closed:
            return
        self._closed = True
        try:
            self._end_chunk()
            self._write_record(DataEnd(0))  # no data-section CRC, as the official default
            self._write_summary()
        finally:
            self._file.close()
        log.debug("wrote %d messages to %s", self.messages, self.path)

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- chunks -----------------------------------------------------------------

    def _new_chunk(self) -> None:
        self._chunk = bytearray()
        self._index: dict[int, list[int]] = {}  # channel id -> [log time, offset, ...]

    def _in_chunk(self, record: Schema | Channel) -> None:
        """A schema or channel goes into the open chunk, as the official writer puts it."""
        self._chunk += _packed([record])
        if len(self._chunk) > self._chunk_bytes:
            self._end_chunk()

    def _end_chunk(self) -> None:
        """Write the open chunk and its message indexes; a chunk without messages stays
        open (its schema and channel records go out with the next message)."""
        if not self._index:
            return
        records = bytes(self._chunk)
        data = zstandard.compress(records)
        start = min(min(entries[::2]) for entries in self._index.values())
        end = max(max(entries[::2]) for entries in self._index.values())
        for cid, entries in self._index.items():
            self._counts[cid] = self._counts.get(cid, 0) + len(entries) // 2
        offset = self._file.tell()
        head = _CHUNK_HEAD.pack(Opcode.CHUNK, _CHUNK_HEAD.size - 9 + len(data),
                                start, end, len(records),
                                zlib.crc32(records), 4, b"zstd", len(data))
        self._file.write(head)
        self._file.write(data)
        index_offsets: dict[int, int] = {}
        at = index_start = self._file.tell()
        for cid, entries in self._index.items():
            index_offsets[cid] = at
            body = struct.pack(f"<{len(entries)}Q", *entries)
            self._file.write(_INDEX_HEAD.pack(Opcode.MESSAGE_INDEX, 6 + len(body), cid,
                                              len(body)))
            self._file.write(body)
            at += _INDEX_HEAD.size + len(body)
        self._chunk_indexes.append(ChunkIndex(
            message_start_time=start, message_end_time=end,
            chunk_start_offset=offset, chunk_length=len(head) + len(data),
            message_index_offsets=index_offsets, message_index_length=at - index_start,
            compression="zstd", compressed_size=len(data), uncompressed_size=len(records)))
        self._start_ns = min(self._start_ns, start)
        self._end_ns = max(self._end_ns, end)
        self._new_chunk()

    # -- records outside chunks ------------------------------------------------------

    def _write_record(self, record: Any) -> None:
        self._file.write(_packed([record]))

    def _add_metadata(self, name: str, values: dict[str, str]) -> None:
        offset = self._file.tell()
        data = _packed([Metadata(name=name, metadata=values)])
        self._file.write(data)
        self._metadata_indexes.append(MetadataIndex(offset=offset, length=len(data), name=name))

    def _write_summary(self) -> None:
        """Schemas, channels, statistics, chunk / attachment / metadata indexes, one
        summary offset per group, then the footer with the summary's CRC."""
        summary_start = self._file.tell()
        builder = RecordBuilder()
        offsets: list[SummaryOffset] = []
        statistics = Statistics(
            message_count=self.messages, schema_count=len(self._schemas),
            channel_count=len(self._channel_records), attachment_count=0,
            metadata_count=len(self._metadata_indexes), chunk_count=len(self._chunk_indexes),
            message_start_time=self._start_ns if self.messages else 0,
            message_end_time=self._end_ns, channel_message_counts=self._counts)
        groups: list[tuple[Opcode, list[Any]]] = [
            (Opcode.SCHEMA, self._schemas), (Opcode.CHANNEL, self._channel_records),
            (Opcode.STATISTICS, [statistics]), (Opcode.CHUNK_INDEX, self._chunk_indexes),
            (Opcode.ATTACHMENT_INDEX, []), (Opcode.METADATA_INDEX, self._metadata_indexes)]
        for opcode, records in groups:
            start = builder.count
            for record in records:
                record.write(builder)
            offsets.append(SummaryOffset(group_opcode=opcode, group_start=summary_start + start,
                                         group_length=builder.count - start))
        offset_start = summary_start + builder.count
        for summary_offset in offsets:
            summary_offset.write(builder)
        summary: bytes = builder.end()  # type: ignore[no-untyped-call]
        crc = zlib.crc32(_FOOTER_HEAD.pack(Opcode.FOOTER, 20, summary_start, offset_start),
                         zlib.crc32(summary))
        self._file.write(summary)
        self._write_record(Footer(summary_start=summary_start,
                                  summary_offset_start=offset_start, summary_crc=crc))
        self._file.write(MAGIC)
