"""Training data from a recorded MCAP log: sensor messages give ``x``, target messages ``y``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from lstm_stream.core.config.runner import SourceConfig
from lstm_stream.core.errors import TrainingError
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.rosbag import RosBag, is_rosbag
from lstm_stream.train.config import DataConfig
from lstm_stream.train.episodes import Episodes


class LogSource:
    """Episodes from a recorded MCAP log, read through ``lstm_stream.logs.reader.LogReader``.

    Sensor messages (wire protocol v1 payloads on ``data.sensor_topic``) give ``x``;
    target messages on ``data.target_topic`` (msgpack maps with ``stream``, ``seq``
    and a numeric array under ``data.target_key``) give ``y``. A target is matched
    to the sensor message with the same (stream, seq), or with ``align = "time"``
    the latest target of the stream logged at or before the sensor message. An
    episode is one stream between resets (``reset: true``) and seq gaps larger
    than ``1 + data.max_gap``; sensor messages with no target are dropped.
    """

    def __init__(self, data: DataConfig) -> None:
        self.data = data
        self.path = Path(data.path)

    def read(self) -> Episodes:
        if is_rosbag(self.path):
            return self._read_bag()
        sensors: list[tuple[str, int, int, np.ndarray, bool]] = []
        targets: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        try:
            reader = LogReader(self.path)
            topics = [self.data.sensor_topic, self.data.target_topic]
            reader.require_msgpack(topics)
            for msg in reader.messages(topics=topics):
                if msg.topic == self.data.sensor_topic:
                    sensors.append(self._sensor(msg.data, msg.log_time_ns, msg.sequence))
                else:
                    stream, seq, y = self._target(msg.data, msg.sequence)
                    targets.setdefault(stream, []).append((seq, msg.log_time_ns, y))
        except TrainingError:
            raise
        except Exception as err:  # the reader's own errors, named with the file
            raise TrainingError(f"Could not read log {str(self.path)!r}: {err}.") from err
        return self._episodes(sensors, targets)

    def _read_bag(self) -> Episodes:
        """A ROS bag: at each trigger message (once every source has been seen) the latest
        value of every source is one step of x; its y is the first target at or after it
        (the command that answered what the sensors said), before the next trigger."""
        data = self.data
        if not data.sources or not data.target.topic or not data.target.fields:
            raise TrainingError(f"{str(self.path)!r} is a ROS bag: declare [[data.sources]] "
                                "with fields (which message field gives which feature) and "
                                "[data.target] with topic and fields (docs/training.md).")
        target = SourceConfig(data.target.topic, fields=dict(data.target.fields),
                              stream_field=data.target.stream_field)
        bag = RosBag(self.path, data.sources, target)
        names = [f for s in data.sources for f in s.features]
        latest: dict[str, dict[str, dict[str, float]]] = {}  # stream -> source -> values
        sensors: list[tuple[str, int, int, np.ndarray, bool]] = []
        targets: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        steps: dict[str, int] = {}
        triggers = {s.topic for s in data.sources if s.trigger}
        for msg in bag.messages():
            body = msgpack.unpackb(msg.data)
            stream, values, t = body["stream"], body["x"], body["stamp_ns"]
            if msg.topic == target.topic:
                y = np.array([values[k] for k in data.target.fields], np.float32)
                targets.setdefault(stream, []).append((0, t, y))
                continue
            seen = latest.setdefault(stream, {})
            seen[msg.topic] = values
            if msg.topic in triggers and len(seen) == len(data.sources):
                merged = {k: v for part in seen.values() for k, v in part.items()}
                steps[stream] = steps.get(stream, -1) + 1
                sensors.append((stream, steps[stream], t,
                                np.array([merged[n] for n in names], np.float32), False))
        bag.close()
        episodes = self._episodes(sensors, targets, align="after")
        episodes.feature_names, episodes.output_names = names, list(data.target.fields)
        return episodes

    def _fail(self, sequence: int, what: str) -> TrainingError:
        return TrainingError(f"Log {str(self.path)!r}, message {sequence}: {what}.")

    def _map(self, payload: bytes, sequence: int) -> dict[str, Any]:
        try:
            body = msgpack.unpackb(payload, raw=False)
        except Exception as err:
            raise self._fail(sequence, f"payload is not msgpack ({err})") from err
        if not isinstance(body, dict) or "seq" not in body:
            raise self._fail(sequence, "payload is not a msgpack map with a 'seq' key")
        return body

    def _sensor(self, payload: bytes, t_ns: int,
                sequence: int) -> tuple[str, int, int, np.ndarray, bool]:
        body = self._map(payload, sequence)
        x = body.get("x")
        if isinstance(x, bytes):
            arr = np.frombuffer(x, dtype="<f4").astype(np.float32)
        elif isinstance(x, list):
            arr = np.asarray(x, dtype=np.float32)
        elif isinstance(x, dict) and self.data.features:
            try:
                arr = np.asarray([x[name] for name in self.data.features], dtype=np.float32)
            except KeyError as err:
                raise self._fail(sequence, f"'x' lacks feature {err.args[0]!r}") from None
        else:
            raise self._fail(sequence, "'x' must be bin float32, an array, or a map of the "
                             "names in data.features")
        stream = str(body.get("stream", self.data.sensor_topic))
        return stream, int(body["seq"]), t_ns, arr, bool(body.get("reset", False))

    def _target(self, payload: bytes, sequence: int) -> tuple[str, int, np.ndarray]:
        body = self._map(payload, sequence)
        key = self.data.target_key
        value = body.get(key)
        if isinstance(value, int | float):
            value = [value]
        if not isinstance(value, list):
            raise self._fail(sequence, f"target message has no numeric array under {key!r} "
                             "(data.target_key)")
        stream = str(body.get("stream", self.data.target_topic))
        return stream, int(body["seq"]), np.asarray(value, dtype=np.float32)

    def _episodes(self, sensors: list[tuple[str, int, int, np.ndarray, bool]],
                  targets: dict[str, list[tuple[int, int, np.ndarray]]],
                  align: str | None = None) -> Episodes:
        align = align or self.data.align
        by_seq = {(s, seq): y for s, rows in targets.items() for seq, _, y in rows}
        current: dict[str, tuple[list[np.ndarray], list[np.ndarray], int]] = {}
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []

        def close(stream: str) -> None:
            ex, ey, _ = current.pop(stream)
            if ex:
                xs.append(np.stack(ex))
                ys.append(np.stack(ey))

        next_t: dict[tuple[str, int], int] = {}  # (stream, seq) -> log time of the next one
        last: dict[str, tuple[int, int]] = {}
        for stream, seq, t_ns, _, _ in sensors:
            if stream in last:
                next_t[(stream, last[stream][0])] = t_ns
            last[stream] = (seq, t_ns)
        for stream, seq, t_ns, x, reset in sensors:
            if align == "seq":
                y = by_seq.get((stream, seq))
            elif align == "after":
                y = self._later(targets.get(stream, []), t_ns, next_t.get((stream, seq)))
            else:
                y = self._earlier(targets.get(stream, []), t_ns)
            if y is None:
                continue  # no label: dropped, and the seq jump below ends the episode
            if stream in current and (reset or seq - current[stream][2] > 1 + self.data.max_gap
                                      or seq <= current[stream][2]):
                close(stream)
            ex, ey, _ = current.get(stream, ([], [], seq))
            ex.append(x)
            ey.append(y)
            current[stream] = (ex, ey, seq)
        for stream in list(current):
            close(stream)
        if not xs:
            raise TrainingError(self._no_match(sensors, targets, align))
        f, o = xs[0].shape[1], ys[0].shape[1]
        names = self.data.features or [f"f{i}" for i in range(f)]
        outs = self.data.targets or [f"y{i}" for i in range(o)]
        return Episodes(xs, ys, names, outs)

    def _no_match(self, sensors: list[tuple[str, int, int, np.ndarray, bool]],
                  targets: dict[str, list[tuple[int, int, np.ndarray]]], align: str) -> str:
        """Why no sensor message found its target, naming both sides' streams."""
        data, bag = self.data, self.data.sources and self.data.target.topic
        sensed = sorted({row[0] for row in sensors})
        what = (f"Log {str(self.path)!r}: no trigger message of [[data.sources]] has a target "
                f"on {data.target.topic!r} after it" if bag else
                f"Log {str(self.path)!r}: no sensor message on {data.sensor_topic!r} has a "
                f"matching target on {data.target_topic!r} (align = {align!r})")
        if sensed and targets and not set(sensed) & set(targets):
            fix = ("[data.target] stream_field, as the sources' stream_field" if bag else
                   "the 'stream' of the sensor or target messages")
            return (f"{what}: the sensors' streams are {sensed[:5]} and the targets' "
                    f"{sorted(targets)[:5]}; give {fix}, so that both name the same streams.")
        return f"{what} (sensor messages: {len(sensors)}, targets: " \
               f"{sum(map(len, targets.values()))})."

    @staticmethod
    def _later(rows: list[tuple[int, int, np.ndarray]], t_ns: int,
               before: int | None) -> np.ndarray | None:
        for _, t, y in rows:  # log-time order
            if t >= t_ns:
                return y if before is None or t < before else None
        return None

    @staticmethod
    def _earlier(rows: list[tuple[int, int, np.ndarray]], t_ns: int) -> np.ndarray | None:
        best = None
        for _, t, y in rows:  # log-time order
            if t > t_ns:
                break
            best = y
        return best


# ------------------------------------------------------------------ checking, splitting
