"""Write an lstm-stream log: topic + payload bytes per message, as MCAP (see format.py).

A thin layer over the official ``mcap`` writer that fixes every option that
changes the bytes of the file (chunk size, compression, library string, no
wall clock), so that the same messages always give the same file. Channels are
registered on first use of a topic.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Any

from mcap.writer import CompressionType, Writer

from lstm_stream.core.errors import LogError
from lstm_stream.logs import format as fmt

log = logging.getLogger(__name__)


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
        self._writer = Writer(self._file, chunk_size=chunk_bytes,
                              compression=CompressionType.ZSTD)
        if not hasattr(self._writer, "flush"):  # added in mcap 1.6; recording relies on it
            self._file.close()
            raise LogError("The installed `mcap` package is too old: lstm-stream needs "
                           "mcap>=1.6 (pip install -U 'mcap>=1.6').")
        self._writer.start(profile=fmt.PROFILE, library=fmt.LIBRARY)
        meta = {fmt.WRITER: fmt.LIBRARY, **(metadata or {})}
        self._writer.add_metadata(fmt.METADATA_NAME, fmt.string_metadata(meta))
        self._channels: dict[str, int] = {}
        self.messages = 0
        self.payload_bytes = 0
        self._closed = False

    def channel(self, topic: str, message_encoding: str = fmt.MESSAGE_ENCODING,
                metadata: dict[str, str] | None = None,
                schema: tuple[str, str, bytes] | None = None) -> int:
        """The channel id of ``topic``, registering it on first use (the encoding,
        metadata and ``schema`` (name, encoding, data) of a channel are those given on
        first use)."""
        cid = self._channels.get(topic)
        if cid is None:
            sid = self._writer.register_schema(*schema) if schema is not None else 0
            cid = self._writer.register_channel(topic, message_encoding, sid, metadata or {})
            self._channels[topic] = cid
        return cid

    def write(self, topic: str, data: bytes, log_time_ns: int,
              publish_time_ns: int | None = None) -> None:
        """Append one message; ``publish_time_ns`` defaults to the payload's stamp."""
        if publish_time_ns is None:
            publish_time_ns = fmt.publish_time(data, log_time_ns)
        self._writer.add_message(self.channel(topic), log_time_ns, data, publish_time_ns,
                                 self.messages & 0xFFFFFFFF)  # MCAP sequence is u32
        self.messages += 1
        self.payload_bytes += len(data)

    def flush(self) -> None:
        """Close the current chunk and hand everything to the OS: survives a SIGKILL."""
        self._writer.flush()  # type: ignore[no-untyped-call]

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
            self._writer.finish()  # type: ignore[no-untyped-call]
        finally:
            self._file.close()
        log.debug("wrote %d messages to %s", self.messages, self.path)

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
