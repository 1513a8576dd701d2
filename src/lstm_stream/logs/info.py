"""``lstm-stream log info``: what a log holds, from the messages themselves.

Per topic: message count, rate and time span; per stream (payloads that are
msgpack maps with ``stream`` and ``seq``): count, first and last seq, gaps
(runs of missing seq) and seq that went backwards; plus the file's metadata and
any damage the reader found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from lstm_stream.logs.reader import LogReader


@dataclass
class _StreamSeq:
    count: int = 0
    first: int = -1
    last: int = -1
    gaps: int = 0  # places where seq jumped by more than one
    missing: int = 0  # seq skipped over in total
    backwards: int = 0  # seq not greater than the previous one (duplicates, restarts)

    def add(self, seq: int) -> None:
        if self.count == 0:
            self.first = seq
        elif seq > self.last + 1:
            self.gaps += 1
            self.missing += seq - self.last - 1
        elif seq <= self.last:
            self.backwards += 1
        self.last = seq
        self.count += 1


def summarize(path: str | Path) -> dict[str, Any]:
    """A JSON-ready summary of the log at ``path``."""
    reader = LogReader(path)
    topics: dict[str, dict[str, Any]] = {}
    streams: dict[tuple[str, str], _StreamSeq] = {}
    for msg in reader.messages():
        t = topics.setdefault(msg.topic, {"messages": 0, "first_ns": msg.log_time_ns,
                                          "last_ns": msg.log_time_ns, "bytes": 0,
                                          "not_stream_messages": 0})
        t["messages"] += 1
        t["last_ns"] = msg.log_time_ns
        t["bytes"] += len(msg.data)
        key = _stream_key(msg.topic, msg.data)
        if key is None:
            t["not_stream_messages"] += 1
            continue
        streams.setdefault((msg.topic, key[0]), _StreamSeq()).add(key[1])
    for name, t in topics.items():
        schema = reader.schema(name)
        t["encoding"] = reader.encoding(name)
        t["schema"] = None if schema is None else {"name": schema.name,
                                                   "encoding": schema.encoding}
        span = (t["last_ns"] - t["first_ns"]) / 1e9
        t["duration_s"] = span
        t["rate_hz"] = (t["messages"] - 1) / span if span > 0 else None
    rng = reader.time_range()
    return {
        "path": str(reader.path), "complete": reader.complete, "library": reader.library,
        "messages": sum(t["messages"] for t in topics.values()),
        "start_ns": rng[0] if rng else None, "end_ns": rng[1] if rng else None,
        "duration_s": (rng[1] - rng[0]) / 1e9 if rng else 0.0,
        "topics": dict(sorted(topics.items())),
        "streams": [{"topic": topic, "stream": name, "messages": s.count, "first_seq": s.first,
                     "last_seq": s.last, "gaps": s.gaps, "missing": s.missing,
                     "backwards": s.backwards} for (topic, name), s in sorted(streams.items())],
        "metadata": reader.metadata,
        "problems": [str(p) for p in reader.problems],
    }


def _stream_key(topic: str, data: bytes) -> tuple[str, int] | None:
    try:
        body = msgpack.unpackb(data, raw=False)
    except Exception:  # not msgpack: counted, not fatal
        return None
    if type(body) is not dict or type(body.get("seq")) is not int:
        return None
    stream = body.get("stream", topic)
    return (stream, body["seq"]) if type(stream) is str else None


def render(info: dict[str, Any]) -> str:
    """The summary as text for a terminal."""
    lines = [f"log       {info['path']}",
             f"status    {'complete' if info['complete'] else 'TRUNCATED (no footer)'}"
             f"  written by {info['library'] or '?'}",
             f"messages  {info['messages']} over {info['duration_s']:.3f} s", "", "topics:"]
    for name, t in info["topics"].items():
        rate = f"{t['rate_hz']:.1f} Hz" if t["rate_hz"] else "-"
        schema = t["schema"]
        encoding = t["encoding"] + (f", schema {schema['name']} ({schema['encoding']})"
                                    if schema else "")
        lines.append(f"  {name:<20} {t['messages']:>9} msgs  {rate:>12}  "
                     f"{t['duration_s']:9.3f} s  {t['bytes'] / 1e3:10.1f} kB  {encoding}")
    if info["streams"]:
        lines += ["", "streams:"]
        for s in info["streams"]:
            lines.append(f"  {s['topic'] + '/' + s['stream']:<30} {s['messages']:>9} msgs  "
                         f"seq {s['first_seq']}..{s['last_seq']}  gaps {s['gaps']} "
                         f"(missing {s['missing']})  backwards {s['backwards']}")
    for name, values in info["metadata"].items():
        lines += ["", f"metadata {name}:"] + [f"  {k} = {v}" for k, v in values.items()]
    if info["problems"]:
        lines += ["", "problems:"] + [f"  {p}" for p in info["problems"]]
    return "\n".join(lines)
