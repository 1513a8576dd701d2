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
- ``log``: a recorded MCAP log read through :class:`~lstm_stream.train.log_data.LogSource`.

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
from lstm_stream.train.episodes import Episodes
from lstm_stream.train.log_data import LogSource

log = logging.getLogger(__name__)


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
