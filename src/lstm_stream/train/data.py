"""Training data: sequences of feature vectors with targets, grouped into episodes.

An *episode* is one uninterrupted sequence (one image read row by row, one
price series, one stream of a recorded log between resets). Everything here
respects episode boundaries: the split into train/validation/test assigns whole
episodes, and the training windows (``loop.py``) never cross one.

Sources (``data.source``):

- ``digits``: scikit-learn's handwritten digits, shipped with scikit-learn (no
  download); each 8x8 image is 8 time steps of 8 pixels, labelled on every step.
- ``npz``: arrays ``x`` ``[sequences, time, features]`` and ``y`` (classification:
  ``[sequences]`` or ``[sequences, time]`` integer labels; regression:
  ``[sequences, time, outputs]`` or ``[sequences, time]``).
- ``csv``: one row per time step, one column per feature, target column(s),
  optional episode column; ``target_shift`` turns a series into next-step forecasting.
- ``mnist``: MNIST IDX files (images and labels), 28 steps of 28 pixels.
- ``log``: a recorded MCAP log read through :class:`LogSource`.

Every check (shapes, non-finite values, labels out of range) runs when the data
is loaded, before training, and names the file and the value at fault.
"""

from __future__ import annotations

import csv
import gzip
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.core.errors import TrainingError
from lstm_stream.train.config import DataConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Episodes:
    """Sequences as loaded, before the split."""

    x: list[np.ndarray]  # each (T_i, F) float32
    y: list[np.ndarray]  # classification (T_i,) int64; regression (T_i, O) float32
    feature_names: list[str]
    output_names: list[str]
    naive: list[np.ndarray] | None = None  # regression (T_i, O): "tomorrow equals today"


@dataclass
class SequenceSet:
    """One split: whole episodes."""

    x: list[np.ndarray]
    y: list[np.ndarray]
    naive: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.x)

    def steps(self) -> int:
        return sum(len(a) for a in self.x)


@dataclass
class Dataset:
    """Train, validation and test splits and what the columns mean."""

    train: SequenceSet
    val: SequenceSet
    test: SequenceSet
    feature_names: list[str]
    output_names: list[str]
    task: str
    classes: int = 0  # classification only
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_outputs(self) -> int:
        return self.classes if self.task == "classification" else len(self.output_names)


def load_dataset(config: TrainConfig) -> Dataset:
    """Read the configured source, check it, and split it by episode."""
    data, task = config.data, config.model.task
    episodes = read_source(data, task)
    if data.limit:
        episodes = _take(episodes, data.limit)
    _check_episodes(episodes, task, _where(data))
    classes = 0
    if task == "classification":
        classes = _classes(episodes, config.model.classes, _where(data))
        episodes.output_names = [str(k) for k in range(classes)]
    train, val, test = split_episodes(episodes, data.split, config.train.seed)
    _check_split(train, val, data)
    log.info("data %s: %d episodes (%d train, %d val, %d test), %d features, %s",
             _where(data), len(episodes.x), len(train), len(val), len(test),
             len(episodes.feature_names),
             f"{classes} classes" if classes else f"outputs {episodes.output_names}")
    return Dataset(train, val, test, episodes.feature_names, episodes.output_names, task,
                   classes, data.source)


def read_source(data: DataConfig, task: str) -> Episodes:
    """The episodes of ``data.source``, unchecked."""
    if data.source == "digits":
        return read_digits()
    if data.source == "npz":
        return read_npz(Path(data.path), task, data.features, data.targets)
    if data.source == "csv":
        return read_csv(Path(data.path), data.features, data.targets, data.episode_column,
                        data.target_shift, task)
    if data.source == "mnist":
        return read_mnist(Path(data.path), Path(data.labels_path))
    return LogSource(data).read()


def _where(data: DataConfig) -> str:
    return f"{data.source} {data.path!r}" if data.path else data.source


# ---------------------------------------------------------------------------- sources


def read_digits() -> Episodes:
    """scikit-learn's 1797 handwritten digits: 8 steps (rows) of 8 pixels, 0..16.

    The raw pixel values, as a sensor gives them: no scaling here. Whatever the
    model needs is done by its own normalisation, which export folds into the
    graph, so the served model takes what the vehicle stack measures.
    """
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    digits = load_digits()
    images = digits.images.astype(np.float32)  # (N, 8, 8), pixel values 0..16
    return _images_as_episodes(images, digits.target.astype(np.int64))


def _images_as_episodes(images: np.ndarray, labels: np.ndarray) -> Episodes:
    """Each image (rows, cols) becomes rows time steps of cols features, labelled per step."""
    rows, cols = images.shape[1], images.shape[2]
    xs = [np.ascontiguousarray(img) for img in images]
    ys = [np.full(rows, int(label), dtype=np.int64) for label in labels]
    return Episodes(xs, ys, [f"px{c}" for c in range(cols)], [])


def read_npz(path: Path, task: str, features: list[str], targets: list[str]) -> Episodes:
    """Arrays ``x`` (N, T, F) and ``y`` from an .npz file (no pickled objects allowed)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise TrainingError(f"Could not read {str(path)!r} as .npz arrays: {err}.") from err
    for key in ("x", "y"):
        if key not in arrays:
            raise TrainingError(f"{str(path)!r} has no array {key!r} (it has "
                                f"{sorted(arrays)}); it needs 'x' [sequences, time, features] "
                                "and 'y'.")
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 3:
        raise TrainingError(f"{str(path)!r}: 'x' has shape {x.shape}; it must be "
                            "[sequences, time, features].")
    n, t, f = x.shape
    y = _npz_targets(path, y, task, n, t)
    names = features or [f"f{i}" for i in range(f)]
    if len(names) != f:
        raise TrainingError(f"{str(path)!r}: data.features lists {len(names)} names but 'x' "
                            f"has {f} features.")
    outs = targets or ([] if task == "classification" else [f"y{i}" for i in range(y.shape[2])])
    if task == "regression" and len(outs) != y.shape[2]:
        raise TrainingError(f"{str(path)!r}: data.targets lists {len(outs)} names but 'y' "
                            f"has {y.shape[2]} outputs.")
    return Episodes([x[i].astype(np.float32) for i in range(n)], list(y), names, outs)


def _npz_targets(path: Path, y: np.ndarray, task: str, n: int, t: int) -> np.ndarray:
    if y.shape[:1] != (n,):
        raise TrainingError(f"{str(path)!r}: 'y' has shape {y.shape}; its first dimension "
                            f"must be the {n} sequences of 'x'.")
    if task == "classification":
        if not np.issubdtype(y.dtype, np.integer):
            raise TrainingError(f"{str(path)!r}: 'y' has dtype {y.dtype}; classification "
                                "labels must be integers.")
        if y.ndim == 1:
            y = np.repeat(y[:, None], t, axis=1)
        if y.shape != (n, t):
            raise TrainingError(f"{str(path)!r}: 'y' has shape {y.shape}; labels must be "
                                f"[{n}] or [{n}, {t}].")
        return y.astype(np.int64)
    if y.ndim == 2:
        y = y[:, :, None]
    if y.ndim != 3 or y.shape[1] != t:
        raise TrainingError(f"{str(path)!r}: 'y' has shape {y.shape}; regression targets "
                            f"must be [{n}, {t}, outputs] or [{n}, {t}].")
    return y.astype(np.float32)


def read_csv(path: Path, features: list[str], targets: list[str], episode_column: str,
             shift: int, task: str) -> Episodes:
    """A time series in CSV: one row per step, grouped into episodes by ``episode_column``."""
    columns, rows = _csv_rows(path)
    wanted = [*features, *targets, *([episode_column] if episode_column else [])]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise TrainingError(f"{str(path)!r} has no column(s) {missing}; its columns are "
                            f"{columns}. Fix data.features, data.targets or "
                            "data.episode_column.")
    fidx = [columns.index(c) for c in features]
    tidx = [columns.index(c) for c in targets]
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        key = row[columns.index(episode_column)] if episode_column else ""
        groups.setdefault(key, []).append(i)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    naive: list[np.ndarray] = []
    for key, idx in groups.items():
        x = _csv_floats(path, rows, idx, fidx, columns)  # (T, F)
        y = _csv_floats(path, rows, idx, tidx, columns)  # (T, O) at the same step
        if len(idx) <= shift:
            raise TrainingError(f"{str(path)!r}: episode {key!r} has {len(idx)} rows; "
                                f"data.target_shift {shift} needs more than {shift}.")
        end = len(idx) - shift
        xs.append(x[:end])
        naive.append(y[:end])  # the target's value now: the naive forecast of its future
        ys.append(y[shift:])
    if task == "classification":
        if len(targets) != 1:
            raise TrainingError(f"{str(path)!r}: classification takes one target column "
                                f"(the class), data.targets lists {targets}.")
        labels = [y[:, 0] for y in ys]
        bad = [float(v) for v in np.concatenate(labels) if v != int(v)]
        if bad:
            raise TrainingError(f"{str(path)!r}: class column {targets[0]!r} holds "
                                f"{bad[0]!r}; classes must be whole numbers 0..classes-1.")
        return Episodes(xs, [lab.astype(np.int64) for lab in labels], features, [])
    names = [f"{t}[t+{shift}]" if shift else t for t in targets]
    return Episodes(xs, ys, list(features), names, naive if shift else None)


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [row for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise TrainingError(f"Could not read CSV file {str(path)!r}: {err}.") from err
    if not header or not rows:
        raise TrainingError(f"CSV file {str(path)!r} needs a header row and at least one "
                            "data row.")
    columns = [c.strip() for c in header]
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise TrainingError(f"{str(path)!r} line {i + 2}: {len(row)} fields, the header "
                                f"has {len(columns)}.")
    return columns, rows


def _csv_floats(path: Path, rows: list[list[str]], idx: list[int], cols: list[int],
                columns: list[str]) -> np.ndarray:
    out = np.empty((len(idx), len(cols)), dtype=np.float32)
    for r, i in enumerate(idx):
        for c, j in enumerate(cols):
            try:
                out[r, c] = float(rows[i][j])
            except ValueError:
                raise TrainingError(f"{str(path)!r} line {i + 2}, column {columns[j]!r}: "
                                    f"{rows[i][j]!r} is not a number.") from None
    return out


# ------------------------------------------------------------------------------ MNIST

_IDX_TYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
              0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), optionally gzipped: magic 0 0 type ndim, dims, data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, gzip.BadGzipFile) as err:
        raise TrainingError(f"Could not read IDX file {str(path)!r}: {err}.") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise TrainingError(f"{str(path)!r} is not an IDX file: it must start with bytes "
                            f"0, 0, a type code and the number of dimensions; got {raw[:4]!r}.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise TrainingError(f"{str(path)!r}: truncated IDX header.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    want = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != want:
        raise TrainingError(f"{str(path)!r}: the header says shape {list(dims)} "
                            f"({want} bytes of data) but the file holds {len(raw) - header}.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_mnist(images_path: Path, labels_path: Path) -> Episodes:
    """MNIST images (N, 28, 28) as 28 steps of 28 raw pixels 0..255, labels (N,)."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise TrainingError(f"{str(images_path)!r}: images must have 3 dimensions "
                            f"(count, rows, cols), got shape {images.shape}.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise TrainingError(f"{str(labels_path)!r}: labels have shape {labels.shape}; "
                            f"expected ({len(images)},), one per image in "
                            f"{str(images_path)!r}.")
    # raw values, as for digits: the model's folded normalisation scales them
    return _images_as_episodes(images.astype(np.float32), labels.astype(np.int64))


# ------------------------------------------------------------------------ recorded logs


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
        from lstm_stream.logs.reader import LogReader  # the [logs] extra, only when used

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

    def _fail(self, sequence: int, what: str) -> TrainingError:
        return TrainingError(f"Log {str(self.path)!r}, message {sequence}: {what}.")

    def _map(self, payload: bytes, sequence: int) -> dict[str, Any]:
        import msgpack

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
                  targets: dict[str, list[tuple[int, int, np.ndarray]]]) -> Episodes:
        by_seq = {(s, seq): y for s, rows in targets.items() for seq, _, y in rows}
        current: dict[str, tuple[list[np.ndarray], list[np.ndarray], int]] = {}
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []

        def close(stream: str) -> None:
            ex, ey, _ = current.pop(stream)
            if ex:
                xs.append(np.stack(ex))
                ys.append(np.stack(ey))

        for stream, seq, t_ns, x, reset in sensors:
            y = by_seq.get((stream, seq)) if self.data.align == "seq" else \
                self._earlier(targets.get(stream, []), t_ns)
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
            raise TrainingError(f"Log {str(self.path)!r}: no sensor message on "
                                f"{self.data.sensor_topic!r} has a matching target on "
                                f"{self.data.target_topic!r} (align = {self.data.align!r}).")
        f, o = xs[0].shape[1], ys[0].shape[1]
        names = self.data.features or [f"f{i}" for i in range(f)]
        outs = self.data.targets or [f"y{i}" for i in range(o)]
        return Episodes(xs, ys, names, outs)

    @staticmethod
    def _earlier(rows: list[tuple[int, int, np.ndarray]], t_ns: int) -> np.ndarray | None:
        best = None
        for _, t, y in rows:  # log-time order
            if t > t_ns:
                break
            best = y
        return best


# ------------------------------------------------------------------ checking, splitting


def _take(episodes: Episodes, n: int) -> Episodes:
    naive = episodes.naive[:n] if episodes.naive is not None else None
    return Episodes(episodes.x[:n], episodes.y[:n], episodes.feature_names,
                    episodes.output_names, naive)


def _check_episodes(episodes: Episodes, task: str, where: str) -> None:
    if not episodes.x:
        raise TrainingError(f"{where}: no episodes to train on.")
    f = len(episodes.feature_names)
    for i, (x, y) in enumerate(zip(episodes.x, episodes.y, strict=True)):
        if x.ndim != 2 or x.shape[1] != f or len(x) == 0:
            raise TrainingError(f"{where}: episode {i} has x of shape {x.shape}; every "
                                f"episode must be [time > 0, {f} features].")
        if len(y) != len(x):
            raise TrainingError(f"{where}: episode {i} has {len(x)} steps of x but "
                                f"{len(y)} targets.")
        if not np.isfinite(x).all():
            step, feat = np.argwhere(~np.isfinite(x))[0]
            raise TrainingError(f"{where}: episode {i}, step {step}, feature "
                                f"{episodes.feature_names[feat]!r} is {x[step, feat]}; "
                                "inputs must be finite.")
        if task == "regression" and (y.ndim != 2 or not np.isfinite(y).all()):
            raise TrainingError(f"{where}: episode {i} has targets of shape {y.shape} or "
                                "non-finite targets; they must be finite [time, outputs].")


def _classes(episodes: Episodes, configured: int, where: str) -> int:
    labels = np.concatenate(episodes.y)
    low, high = int(labels.min()), int(labels.max())
    classes = configured or high + 1
    if low < 0 or high >= classes:
        raise TrainingError(f"{where}: class labels range from {low} to {high}; they must be "
                            f"in 0..{classes - 1} (model.classes = {configured}).")
    if classes < 2:
        raise TrainingError(f"{where}: only one class ({low}) in the labels; classification "
                            "needs at least two.")
    return classes


def split_episodes(episodes: Episodes, fractions: list[float],
                   seed: int) -> tuple[SequenceSet, SequenceSet, SequenceSet]:
    """Shuffle whole episodes with ``seed`` and cut them into train/val/test."""
    n = len(episodes.x)
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(fractions[1] * n)
    n_test = round(fractions[2] * n)
    n_train = n - n_val - n_test
    cuts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])

    def subset(idx: np.ndarray) -> SequenceSet:
        naive = [episodes.naive[i] for i in idx] if episodes.naive is not None else None
        return SequenceSet([episodes.x[i] for i in idx], [episodes.y[i] for i in idx], naive)

    return subset(cuts[0]), subset(cuts[1]), subset(cuts[2])


def _check_split(train: SequenceSet, val: SequenceSet, data: DataConfig) -> None:
    if len(train) == 0:
        raise TrainingError(f"{_where(data)}: data.split {data.split} leaves no training "
                            "episode; use more episodes or a larger train fraction.")
    if len(val) == 0 and data.split[1] > 0:
        raise TrainingError(f"{_where(data)}: data.split {data.split} leaves no validation "
                            "episode (an episode is never split); use more episodes.")
