"""Logs that Foxglove opens and plots with no setup: JSON messages with a JSON schema
per channel (``lstm-stream log export --foxglove``).

lstm-stream's own logs are msgpack, which Foxglove does not decode. The export
rewrites every message as JSON (``message_encoding = "json"``) on a channel with
a ``jsonschema`` schema, converting what JSON cannot hold: ``bin`` features and
batch outputs become arrays of numbers. It adds the fields a plot panel wants as
numbers: ``outputs`` ({output name: value}, from the model's output names),
``reset_event`` (1 on a step whose state was reset, else 0) and ``stale_count``
(how many sources were stale). Message log times are kept, so Foxglove's
timeline is the recording's.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack

from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.core.wire.json_form import SCHEMAS, convert
from lstm_stream.logs import format as fmt
from lstm_stream.logs.reader import LoggedMessage, LogReader
from lstm_stream.logs.writer import LogWriter


def export_foxglove(source: str | Path, target: str | Path, *,
                    output_names: Sequence[str] | None = None,
                    progress: Progress | None = None,
                    extra: Iterable[LoggedMessage] = (),
                    metadata: dict[str, Any] | None = None) -> int:
    """Write ``source`` (an lstm-stream log) as a Foxglove-readable MCAP file at
    ``target``, with the ``extra`` messages (in log order, such as an eval's
    targets) merged in by log time, and ``metadata`` (default: what it was exported
    from); returns the messages written."""
    progress = progress or NullProgress()
    reader = LogReader(source)
    reader.require_msgpack(reader.topics())
    progress.start(f"export {Path(source).name}", reader.message_count())
    names = list(output_names) if output_names else None
    written = 0
    meta = metadata or {fmt.KIND: "foxglove export", "source": Path(source).name}
    with LogWriter(target, metadata=meta) as writer:
        for msg in heapq.merge(reader.messages(), extra, key=_log_time):
            try:
                body = msgpack.unpackb(msg.data, raw=False, strict_map_key=False)
            except Exception:  # a payload recorded as it came: skipped, not invented
                continue
            if not isinstance(body, dict):
                continue
            schema, plain = convert(body, names)
            writer.channel(msg.topic, "json", schema=(schema, "jsonschema",
                                                      json.dumps(SCHEMAS[schema]).encode()))
            writer.write(msg.topic, json.dumps(plain, allow_nan=False).encode(), msg.log_time_ns,
                         msg.publish_time_ns)
            written += 1
            if written % 1024 == 0:
                progress.advance(1024)
    progress.close()
    return written


def _log_time(msg: LoggedMessage) -> int:
    return msg.log_time_ns
