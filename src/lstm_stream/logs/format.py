"""How an lstm-stream log is laid out in MCAP (docs/logs.md is the prose version).

- One MCAP channel per ZeroMQ topic: channel topic = the topic frame, message
  encoding ``msgpack``, no schema (schema id 0: msgpack is self-describing).
- Each MCAP message's data is the payload frame exactly as it crossed the wire.
- ``log_time`` is the receive time in ns since the Unix epoch, taken from a
  monotonic clock anchored once to the wall clock, so it never goes backwards.
  ``publish_time`` is the payload's ``stamp_ns`` when it has one, else the log time.
  ``sequence`` is the message's position in the file, from 0.
- One metadata record named ``lstm_stream`` says which tool wrote the file and
  with what settings (all values are strings, as MCAP requires).
- Chunks are zstd-compressed. The recorder closes a chunk at least every
  :data:`FLUSH_INTERVAL_S` so that a killed recorder loses at most that much.

This module imports nothing from ``mcap``; it only holds the conventions.
"""

from __future__ import annotations

from typing import Any

import msgpack

from lstm_stream import __version__

MESSAGE_ENCODING = "msgpack"
METADATA_NAME = "lstm_stream"
PROFILE = ""  # no MCAP profile: not ROS
LIBRARY = f"lstm-stream/{__version__}"
FLUSH_INTERVAL_S = 0.5  # recorder: chunk closed and flushed at least this often
CHUNK_BYTES = 1 << 20  # chunk size for files written in one go (eval outputs)
LOG_SUFFIX = ".mcap"

# Metadata keys: what wrote the file.
KIND = "kind"  # "recording", "evaluation", "synthetic", "recovered"
WRITER = "writer"  # LIBRARY of the writer

# Output topics of the runner (and of eval), see docs/protocol.md.
POLICY_TOPIC = "policy"
DIAGNOSTICS_TOPIC = "diagnostics"


def publish_time(data: bytes, log_time_ns: int) -> int:
    """The payload's ``stamp_ns`` when it is a msgpack map with an integer stamp, else
    ``log_time_ns``. Never raises: any payload may be recorded."""
    try:
        body: Any = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # not msgpack: recorded anyway, stamped with the log time
        return log_time_ns
    if type(body) is dict:
        stamp = body.get("stamp_ns")
        if type(stamp) is int and 0 <= stamp < 1 << 64:
            return stamp
    return log_time_ns


def string_metadata(values: dict[str, Any]) -> dict[str, str]:
    """MCAP metadata values must be strings; keys sorted so files are reproducible."""
    return {k: str(values[k]) for k in sorted(values)}
