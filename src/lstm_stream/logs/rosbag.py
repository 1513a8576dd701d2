"""ROS bags as logs (the ``[ros]`` extra): rosbag2 directories (sqlite3 or mcap storage)
and ROS 1 ``.bag`` files, read with the pure-Python ``rosbags`` library.

A bag holds ROS messages, not lstm-stream sensor messages. The ``fields`` of each
``[[input.sources]]`` say which message field gives which feature::

    [[input.sources]]
    topic = "/imu/data"
    fields = { ax = "linear_acceleration.x", yaw_rate = "angular_velocity.z" }
    trigger = true

:class:`RosBag` turns every message of those topics into the sensor message a
vehicle stack would have sent (``stream``, ``seq``, ``stamp_ns``, ``x`` as a map
by feature), so eval steps it exactly as it steps an lstm-stream log: the stream
is the bag's name (or ``stream_field``, such as ``header.frame_id``), ``seq``
counts the stream's messages per topic, ``stamp_ns`` is ``header.stamp`` when the
message has one, else the bag's log time. Field paths may index arrays
(``position_covariance[0]``). A path the message type does not have is refused
before anything runs, naming the type and its fields.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack

from lstm_stream.core.config.runner import SourceConfig
from lstm_stream.core.errors import ConfigError, LogError
from lstm_stream.logs.reader import LoggedMessage

INSTALL_HINT = "pip install 'lstm-stream[ros]'"
_STEP = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")
_NUMERIC = {"bool", "byte", "char", "int8", "uint8", "int16", "uint16", "int32", "uint32",
            "int64", "uint64", "float32", "float64"}


def is_rosbag(path: str | Path) -> bool:
    """A ROS 1 ``.bag`` file or a rosbag2 directory (with its ``metadata.yaml``)."""
    p = Path(path)
    return p.suffix == ".bag" or (p.is_dir() and (p / "metadata.yaml").is_file())


def _rosbags() -> tuple[ModuleType, ModuleType]:
    try:
        return (importlib.import_module("rosbags.highlevel"),
                importlib.import_module("rosbags.typesys"))
    except ModuleNotFoundError as err:
        raise LogError(f"Reading ROS bags needs the 'rosbags' package: `{INSTALL_HINT}`."
                       ) from err


class RosBag:
    """A bag read as lstm-stream sensor messages, with LogReader's surface for eval."""

    def __init__(self, path: str | Path, sources: Sequence[SourceConfig] = (),
                 target: SourceConfig | None = None,
                 target_option: str = "data.target.fields",
                 target_stream_option: str = "data.target.stream_field") -> None:
        """``target``: a topic of targets read like a source (train's ``[data.target]``,
        eval's ``--target-field``); a wrong path in it is refused naming ``target_option``
        (``target_stream_option`` for its ``stream_field``)."""
        self.path = Path(path)
        highlevel, typesys = _rosbags()
        if not self.path.exists():
            raise LogError(f"ROS bag {str(self.path)!r} does not exist.")
        store = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
        self._reader = highlevel.AnyReader([self.path], default_typestore=store)
        try:
            self._reader.open()
        except Exception as err:  # rosbags raises its own errors for damaged bags
            raise LogError(f"Could not open ROS bag {str(self.path)!r}: {err}.") from err
        self.name = self.path.name.removesuffix(".bag")
        self.problems: list[str] = []
        self.sources = {s.topic: s for s in sources if s.fields}
        for source in self.sources.values():
            self._check(source, "input.sources", "input.sources.fields",
                        "input.sources.stream_field")
        if target is not None:
            self._check(target, target_option, target_option, target_stream_option)
            self.sources[target.topic] = target

    def close(self) -> None:
        self._reader.close()

    # -- what the bag holds ------------------------------------------------------

    def topics(self) -> list[str]:
        """The topics that become sensor messages: the sources' (all, without sources)."""
        return sorted(t for t in self._reader.topics if not self.sources or t in self.sources)

    def time_range(self) -> tuple[int, int] | None:
        """First and last log time (ns) of the bag, None when it is empty."""
        if not self._reader.message_count:
            return None
        return int(self._reader.start_time), int(self._reader.end_time)

    def topic_types(self) -> dict[str, tuple[str, int]]:
        """topic -> (message type, message count)."""
        return {t: (info.msgtype, info.msgcount) for t, info in self._reader.topics.items()}

    def summary(self) -> dict[str, Any]:
        """What ``lstm-stream log info`` shows of a bag: topics, types, counts, rates."""
        start, end = self._reader.start_time, self._reader.end_time
        duration = max(0, end - start) / 1e9 if self._reader.message_count else 0.0
        topics = {t: {"type": kind, "messages": n,
                      "rate_hz": round(n / duration, 2) if duration > 0 else None}
                  for t, (kind, n) in sorted(self.topic_types().items())}
        return {"path": str(self.path), "format": "ROS 1 bag" if self._reader.is2 is False
                else "rosbag2", "messages": self._reader.message_count,
                "duration_s": round(duration, 3), "start_ns": start, "topics": topics}

    def message_count(self, topics: Iterable[str] | None = None) -> int:
        wanted = set(topics) if topics is not None else None
        return sum(info.msgcount for t, info in self._reader.topics.items()
                   if wanted is None or t in wanted)

    def require_topics(self, topics: Iterable[str]) -> None:
        missing = [t for t in topics if not any(b.startswith(t) for b in self._reader.topics)]
        if missing:
            raise LogError(f"ROS bag {str(self.path)!r} has no topic {missing}; its topics: "
                           f"{', '.join(self.topics())}.")

    def require_msgpack(self, topics: Iterable[str]) -> None:
        """Every topic must be a source with ``fields`` (what turns it into sensor messages)."""
        plain = [t for t in topics if t not in self.sources]
        if plain:
            raise ConfigError(f"ROS bag {str(self.path)!r}: topic(s) {plain} have no "
                              "[[input.sources]] with fields; declare which field gives which "
                              'feature, e.g. fields = { ax = "linear_acceleration.x" } '
                              "(docs/sources.md).", field="input.sources")

    # -- messages ------------------------------------------------------------------

    def messages(self, topics: Iterable[str] | None = None, start_ns: int | None = None,
                 end_ns: int | None = None) -> Iterator[LoggedMessage]:
        """Each message of ``topics`` (sources with fields) as a sensor message payload,
        in the bag's time order; only log times in [``start_ns``, ``end_ns``) when given."""
        wanted = set(topics) if topics is not None else set(self.sources)
        connections = [c for c in self._reader.connections
                       if c.topic in wanted and c.topic in self.sources]
        seqs: dict[tuple[str, str], int] = {}
        for position, (conn, log_time, raw) in enumerate(
                self._reader.messages(connections=connections)):
            if (start_ns is not None and log_time < start_ns) or (
                    end_ns is not None and log_time >= end_ns):
                continue
            source = self.sources[conn.topic]
            msg = self._reader.deserialize(raw, conn.msgtype)
            stream = (str(_resolve(msg, source.stream_field)) if source.stream_field
                      else self.name)
            key = (stream, conn.topic)
            seq = seqs.get(key, -1) + 1
            seqs[key] = seq
            header = getattr(msg, "header", None)
            stamp = (int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
                     if header is not None and hasattr(header, "stamp") else int(log_time))
            x = {feature: float(_resolve(msg, path)) for feature, path in source.fields.items()}
            data = msgpack.packb({"stream": stream, "seq": seq, "stamp_ns": stamp, "x": x})
            yield LoggedMessage(conn.topic, int(log_time), stamp, data, position)

    # -- field paths -----------------------------------------------------------------

    def _check(self, source: SourceConfig, what: str, option: str,
               stream_option: str) -> None:
        info = self._reader.topics.get(source.topic)
        if info is None:
            raise ConfigError(f"{what}: topic {source.topic!r} is not in ROS bag "
                              f"{str(self.path)!r}; its topics: "
                              f"{', '.join(sorted(self._reader.topics))}.", field=option)
        paths = dict(source.fields)
        if source.stream_field:
            paths["stream_field"] = source.stream_field
        for feature, path in paths.items():
            problem = _check_path(self._reader.typestore.fielddefs, info.msgtype, path,
                                  numeric=feature != "stream_field")
            if problem:
                raise ConfigError(f"{what} topic {source.topic!r}: {feature} = "
                                  f"{path!r}: {problem}",
                                  field=stream_option if feature == "stream_field" else option)


def _check_path(fielddefs: dict[str, Any], msgtype: str, path: str,
                numeric: bool = True) -> str | None:
    """Why ``path`` does not lead to a number (or, ``numeric=False``, a value) in messages
    of ``msgtype``, or None."""
    kind: Any = (2, msgtype)  # Nodetype.NAME
    for step in path.split("."):
        match = _STEP.match(step)
        if match is None:
            return f"{step!r} is not a field name (or name[index])"
        name, index = match.group(1), match.group(2)
        if int(kind[0]) != 2:
            return f"{step!r} is below a value that has no fields"
        typename = kind[1]
        fields = dict(fielddefs[typename][1])
        if name not in fields:
            return (f"{typename} has no field {name!r}; its fields: "
                    f"{', '.join(f'{n} ({_describe(k)})' for n, k in fields.items())}")
        kind = fields[name]
        if int(kind[0]) in (3, 4):  # ARRAY, SEQUENCE: (element kind, length)
            if index is None:
                return f"{name!r} of {typename} is an array: give an index, {name}[0]"
            kind = kind[1][0]
        elif index is not None:
            return f"{name!r} of {typename} is not an array"
    if int(kind[0]) == 2:
        return (f"it ends at a message ({kind[1]}), not a number: go on into one of its "
                f"fields, {', '.join(n for n, _ in fielddefs[kind[1]][1])}")
    if numeric and kind[1][0] not in _NUMERIC:
        return f"it is a {kind[1][0]}, not a number"
    return None


def _describe(kind: Any) -> str:
    node = int(kind[0])
    if node == 1:
        return str(kind[1][0])
    if node == 2:
        return str(kind[1])
    return f"array of {_describe(kind[1][0])}"


def _resolve(msg: Any, path: str) -> Any:
    value = msg
    for step in path.split("."):
        match = _STEP.match(step)
        assert match is not None  # checked against the type before
        value = getattr(value, match.group(1))
        if match.group(2) is not None:
            value = value[int(match.group(2))]
    return value


def render_summary(info: dict[str, Any]) -> str:
    """A bag's summary as text for a terminal."""
    lines = [f"bag       {info['path']} ({info['format']})",
             f"messages  {info['messages']} over {info['duration_s']:.3f} s", "", "topics:"]
    for name, t in info["topics"].items():
        rate = f"{t['rate_hz']:.1f} Hz" if t["rate_hz"] else "-"
        lines.append(f"  {name:<24} {t['messages']:>9} msgs  {rate:>10}  {t['type']}")
    return "\n".join(lines)
