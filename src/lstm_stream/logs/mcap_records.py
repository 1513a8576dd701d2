"""MCAP records at the byte level: the framing the reader walks without the mcap classes.

The record frame (opcode, length), the message record's fixed header, and the
records and messages inside a buffer (a file region or a decompressed chunk):
what :mod:`lstm_stream.logs.reader` uses on the hot path of replay and eval,
where building an ``mcap.records.Message`` per message would cost more than the
message. Chunks are decompressed and CRC-checked here (zstd and lz4 are the
``mcap`` package's own optional dependencies).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from io import BytesIO

from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Chunk

from lstm_stream.core.errors import LogError

MAGIC = b"\x89MCAP0\r\n"
RECORD = struct.Struct("<BQ")  # opcode, length
MESSAGE = struct.Struct("<HIQQ")  # channel_id, sequence, log_time, publish_time
MESSAGE_RECORD = struct.Struct("<BQHIQQ")  # a message record's frame and header at once


def chunk_records(body: bytes) -> bytes:
    """The decompressed, CRC-checked records of a chunk record body."""
    try:
        chunk = Chunk.read(ReadDataStream(BytesIO(body)))
        if chunk.compression == "zstd":
            import zstandard

            data = zstandard.decompress(chunk.data, chunk.uncompressed_size)
        elif chunk.compression == "lz4":
            import lz4.frame  # type: ignore[import-untyped]

            data = lz4.frame.decompress(chunk.data)
        elif chunk.compression == "":
            data = chunk.data
        else:
            raise LogError(f"a chunk uses unsupported compression {chunk.compression!r}")
    except LogError:
        raise
    except Exception as err:
        raise LogError(f"a chunk does not decode ({type(err).__name__}: {err})"[:200]) from err
    if len(data) != chunk.uncompressed_size:
        raise LogError(f"a chunk decompresses to {len(data)} bytes, its header says "
                       f"{chunk.uncompressed_size}")
    if chunk.uncompressed_crc and zlib.crc32(data) != chunk.uncompressed_crc:
        raise LogError("a chunk fails its CRC check (corrupt data)")
    return bytes(data)


def messages_in(buf: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(channel id, log time, publish time, data) of the message records in ``buf``;
    stops at a record that overruns it."""
    frame, head, size = RECORD.unpack_from, MESSAGE_RECORD.unpack_from, MESSAGE_RECORD.size
    pos, n = 0, len(buf)
    while pos + RECORD.size <= n:
        if buf[pos] == Opcode.MESSAGE and pos + size <= n:  # frame and header in one unpack
            _, length, cid, _, log_time, pub = head(buf, pos)
            end = pos + RECORD.size + length
            if end > n:
                return
            if end >= pos + size:
                yield cid, log_time, pub, buf[pos + size:end]
        else:
            _, length = frame(buf, pos)
            end = pos + RECORD.size + length
            if end > n:
                return
        pos = end


def message_times(buf: bytes) -> tuple[dict[int, int], int, int, bool,
                                       list[tuple[int, memoryview]]]:
    """What the scan of a chunk needs from its records: messages per channel id, the
    first and last log time (``1 << 64`` and 0 without messages), whether the log times
    never go back in file order, and the other records as (opcode, body) (channels and
    schemas a chunk may hold)."""
    counts: dict[int, int] = {}
    lo, hi = 1 << 64, 0
    ordered = True
    others: list[tuple[int, memoryview]] = []
    frame, head, size = RECORD.unpack_from, MESSAGE_RECORD.unpack_from, MESSAGE_RECORD.size
    pos, n = 0, len(buf)
    while pos + RECORD.size <= n:
        if buf[pos] == Opcode.MESSAGE and pos + size <= n:
            _, length, cid, _, log_time, _ = head(buf, pos)
            end = pos + RECORD.size + length
            if end > n:
                break
            if end >= pos + size:
                counts[cid] = counts.get(cid, 0) + 1
                if log_time < hi:
                    ordered = False
                if log_time < lo:
                    lo = log_time
                if log_time > hi:
                    hi = log_time
        else:
            opcode, length = frame(buf, pos)
            end = pos + RECORD.size + length
            if end > n:
                break
            if opcode != Opcode.MESSAGE:
                others.append((opcode, memoryview(buf)[pos + RECORD.size:end]))
        pos = end
    return counts, lo, hi, ordered, others


def opname(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"unknown (opcode 0x{opcode:02x})"
