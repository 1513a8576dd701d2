"""One large log over several workers: each steps the streams of its shard, then merge.

Streams are independent, so the streams of one log can be evaluated in ``n``
processes: worker ``i`` reads the whole log (every sensor message's log time
drives housekeeping, as in one process), steps only the streams whose CRC-32
shard is ``i`` (as ``serve --shard`` does), and writes its part of the output
with a merge key for each message: the log position of the message it answers,
and for an idle expiry the position of that stream's last step (the order in
which one process expires streams). :func:`merge` interleaves the parts by those
keys into the output file one process would have written, byte for byte.

Two things couple streams, and a log that has them is evaluated in one piece
instead (:func:`needs_one_piece`): batch messages (a row of every shard in one
message), and more distinct streams than ``state.max_streams`` (eviction picks
the least recently used stream across all of them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from lstm_stream.core.errors import EvaluationError
from lstm_stream.core.wire.shard import shard_of
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.evaluate.results import LogResult, StreamResult
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.writer import LogWriter

BATCH = object()  # owner() of a batch message: it belongs to every shard


def owner(data: bytes, default: str | None) -> str | object | None:
    """The stream a payload belongs to (``default`` when it names none), :data:`BATCH`
    for a batch message, None when it cannot be read (shard 0 rejects it)."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # garbage is rejected by the shard that owns the unknown
        return None
    if type(body) is not dict:
        return None
    if "streams" in body:
        return BATCH
    stream = body.get("stream", default)
    return stream if type(stream) is str else None


def shard_of_owner(stream: str | object | None, count: int) -> int:
    return shard_of(stream, count) if isinstance(stream, str) else 0


def needs_one_piece(parts: list[LogResult], options: EvalOptions) -> str | None:
    """Why these parts cannot be merged into what one process gives, or None."""
    if any(p.unsplittable for p in parts):
        return "it holds batch messages"
    streams = {s.stream for p in parts for s in p.streams}
    if len(streams) > options.max_streams:
        return (f"it has {len(streams)} streams, more than state.max_streams "
                f"({options.max_streams}), so evictions couple them")
    return None


def merge(path: Path, options: EvalOptions, parts: list[LogResult],
          metadata: dict[str, Any]) -> LogResult:
    """The parts' outputs merged into ``options.output_path(path)`` and their results
    into one; the part files are removed."""
    out = options.output_path(path)
    source = merge_order([p.order_keys for p in parts])
    logs = [LogReader(p.output) for p in parts]
    for i, (p, part_log) in enumerate(zip(parts, logs, strict=True)):
        if part_log.message_count() != len(p.order_keys) // 3:
            raise EvaluationError(f"eval: worker {i}'s part {p.output} holds "
                                  f"{part_log.message_count()} messages but "
                                  f"{len(p.order_keys) // 3} merge keys; this is a bug in "
                                  "lstm-stream, please report it")
    readers = [part_log.messages() for part_log in logs]
    with LogWriter(out, metadata=metadata) as writer:
        writer.channel(options.output_topic)  # in the order one process registers them
        writer.channel(options.diagnostics_topic)
        write = writer.write
        for i in source.tolist():
            m = next(readers[i])
            write(m.topic, m.data, m.log_time_ns, m.publish_time_ns)
    for p in parts:
        Path(p.output).unlink()
    return _merged_result(path, out, parts)


def merge_order(keys: list[list[int]]) -> np.ndarray:
    """Which part each message of the merged output comes from, in order.

    ``keys[i]`` holds part ``i``'s merge keys, three ints a message, in the order of
    its file. Sorting every key at once (ties: the lower part first, then file order)
    gives what a k-way merge gives, with no Python per message; each part's messages
    are then taken in their file order, so a part is read as a stream.
    """
    arrays = [np.asarray(k, dtype=np.int64).reshape(-1, 3) for k in keys]
    for i, a in enumerate(arrays):
        if len(a) > 1 and np.any(np.diff(_ranks(a)) < 0):
            raise EvaluationError(f"eval: the merge keys of worker {i}'s part are out of "
                                  "order; this is a bug in lstm-stream, please report it")
    every = np.concatenate(arrays) if arrays else np.zeros((0, 3), dtype=np.int64)
    part = np.concatenate([np.full(len(a), i, dtype=np.int64) for i, a in enumerate(arrays)]
                          or [np.zeros(0, dtype=np.int64)])
    order = np.lexsort((part, every[:, 2], every[:, 1], every[:, 0]), axis=0)
    return part[order]


def _ranks(keys: np.ndarray) -> np.ndarray:
    """The rank of each key among its part's keys (lexicographic)."""
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))] = np.arange(len(keys))
    return ranks


def _merged_result(path: Path, out: Path, parts: list[LogResult]) -> LogResult:
    merged = LogResult(str(path), str(out), problems=list(parts[0].problems))
    examples: dict[str, tuple[int, str]] = {}
    hist: list[int] = []
    for p in parts:
        merged.messages += p.messages
        merged.stepped += p.stepped
        merged.targets += p.targets
        merged.targets_rejected += p.targets_rejected
        merged.unmatched_outputs += p.unmatched_outputs
        merged.backend_calls += p.backend_calls
        for reason, n in p.rejected.items():
            merged.rejected[reason] = merged.rejected.get(reason, 0) + n
        for reason, detail in p.rejection_examples.items():
            at = p.example_seq.get(reason, 0)
            if reason not in examples or at < examples[reason][0]:
                examples[reason] = (at, detail)
        hist = [a + b for a, b in zip(hist, p.histogram, strict=True)] if hist else list(
            p.histogram)
    merged.rejected = dict(sorted(merged.rejected.items(), key=lambda kv: min(
        p.example_seq.get(kv[0], 1 << 62) for p in parts)))  # first seen first, as in one
    merged.rejection_examples = {r: examples[r][1] for r in merged.rejected if r in examples}
    all_streams: list[StreamResult] = [s for p in parts for s in p.streams]
    merged.streams = sorted(all_streams, key=lambda s: s.stream)
    merged.histogram = hist
    return merged
