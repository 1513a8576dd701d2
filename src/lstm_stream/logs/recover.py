"""``lstm-stream log recover``: make a complete MCAP file out of a truncated or damaged one.

A recorder killed with SIGKILL leaves a file that stops in the middle of a
chunk, without the summary and footer that standard MCAP readers look for.
This project's reader reads such files as they are; for other tools,
:func:`recover` reads every message that is still intact (everything the
recorder had flushed, at most :data:`~lstm_stream.logs.format.FLUSH_INTERVAL_S`
before the kill) and writes it, with the channels and metadata, into a new
file that ends with a proper summary and footer. The damaged file is never
modified unless asked (``in_place``), and then only replaced once the new file
is complete.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from lstm_stream.core.errors import LogError
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.logs import format as fmt
from lstm_stream.logs.reader import LogProblem, LogReader
from lstm_stream.logs.writer import LogWriter

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What :func:`recover` found and wrote."""

    source: Path
    output: Path
    messages: int
    was_complete: bool
    problems: list[LogProblem] = field(default_factory=list)


def default_output(path: Path) -> Path:
    """``drive.mcap`` -> ``drive.recovered.mcap`` beside it."""
    return path.with_name(f"{path.stem}.recovered{fmt.LOG_SUFFIX}")


def recover(path: str | Path, output: str | Path | None = None, *, in_place: bool = False,
            progress: Progress | None = None) -> RecoveryReport:
    """Rewrite every readable message of ``path`` into a complete MCAP file."""
    source = Path(path)
    reader = LogReader(source)
    if in_place:
        target = source.with_name(source.name + ".recovering")
    else:
        target = Path(output) if output is not None else default_output(source)
        if target.resolve() == source.resolve():
            raise LogError(f"Refusing to overwrite {str(source)!r} while reading it; give "
                           "another --output or use --in-place.")
    progress = progress or NullProgress()
    progress.start(f"recover {source.name}", reader.message_count())
    meta: dict[str, object] = dict(reader.metadata.get(fmt.METADATA_NAME, {}))
    meta.update({fmt.KIND: "recovered", "recovered_from": source.name,
                 "recovery_problems": len(reader.problems)})
    count = 0
    with LogWriter(target, metadata=meta) as writer:
        for ch in sorted(reader.channels.values(), key=lambda c: c.id):
            writer.channel(ch.topic, ch.message_encoding, ch.metadata)
        for msg in reader.messages():
            writer.write(msg.topic, msg.data, msg.log_time_ns, msg.publish_time_ns)
            count += 1
            if count % 4096 == 0:
                progress.advance(4096)
    progress.advance(count % 4096)
    progress.close()
    if in_place:
        os.replace(target, source)
        target = source
    log.info("recovered %d messages from %s into %s", count, source, target)
    return RecoveryReport(source, target, count, reader.complete, list(reader.problems))
