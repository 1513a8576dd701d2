"""Training configuration: typed dataclasses loaded from TOML, every field validated on load.

``lstm-stream train CONFIG.toml`` reads one :class:`TrainConfig`. Every field
has a default; a file only says what differs. Any field can be overridden as
``--set section.field=value`` (parsed as TOML, as for the runner config).
Errors name the field, the allowed values and the value given, and are raised
before any data is read or any training starts: a missing data file is a
config error, not a crash after an epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstm_stream.core.config.runner import SourceConfig
from lstm_stream.core.config.toml_load import from_dict, load_config
from lstm_stream.core.errors import ConfigError
from lstm_stream.core.model.cell import CellKind

SOURCES = ("digits", "npz", "csv", "mnist", "log")
FILE_SOURCES = ("npz", "csv", "mnist", "log")  # sources that read data.path
CELLS = (CellKind.LSTM, CellKind.GRU)
HEADS = ("linear", "mlp")
TASKS = ("classification", "regression")
LOSSES = {"classification": ("cross_entropy",), "regression": ("mse", "huber")}
CLASSIFY_ON = ("last", "every")
MODES = ("stateful", "burn_in")
SCHEDULES = ("constant", "cosine", "step")
ALIGN = ("seq", "time")


def _check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name!r} must be {rule}; got {value!r}.")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, name, "one of " + ", ".join(repr(c) for c in choices), value)


@dataclass
class TargetConfig:
    """ROS bags: the topic and fields that give the training target (``[data.target]``)."""

    topic: str = ""
    fields: dict[str, str] = field(default_factory=dict)  # output name -> field path
    stream_field: str = ""  # the field naming the stream, as a source's ("" = the bag's name)


@dataclass
class DataConfig:
    """Where sequences come from and how they are split into train/validation/test."""

    source: str = "digits"  # digits | npz | csv | mnist | log
    path: str = ""  # npz/csv/log file, or MNIST images IDX file
    labels_path: str = ""  # MNIST labels IDX file
    features: list[str] = field(default_factory=list)  # csv columns; names for npz/log
    targets: list[str] = field(default_factory=list)  # csv target columns; names elsewhere
    episode_column: str = ""  # csv: rows with the same value form one episode
    target_shift: int = 0  # csv: predict the target this many steps ahead
    split: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train/val/test
    limit: int = 0  # use only the first N episodes (0: all)
    sensor_topic: str = "sensors"  # log: topic of the sensor messages (x)
    target_topic: str = "controls"  # log: topic of the target messages (y)
    target_key: str = "y"  # log: key of the numeric array in a target message
    align: str = "seq"  # log: match targets by (stream, seq) or nearest earlier time
    max_gap: int = 0  # log: a seq jump larger than 1 + max_gap starts a new episode
    # log from a ROS bag (logs/rosbag.py): the sources whose fields give x, as the
    # runner's [[input.sources]], and [data.target] for y (aligned by time)
    sources: list[SourceConfig] = field(default_factory=list)
    target: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self) -> None:
        _one_of("data.source", self.source, SOURCES)
        if self.source in FILE_SOURCES:
            _check(bool(self.path), "data.path", f"a file path for source {self.source!r}",
                   self.path)
        if self.source == "mnist":
            _check(bool(self.labels_path), "data.labels_path",
                   "the MNIST labels IDX file (e.g. train-labels-idx1-ubyte)", self.labels_path)
        if self.source == "csv":
            _check(len(self.features) > 0, "data.features", "at least one CSV column name",
                   self.features)
            _check(len(self.targets) > 0, "data.targets", "at least one CSV column name",
                   self.targets)
        _check(0 <= self.target_shift <= 10_000, "data.target_shift", "between 0 and 10000",
               self.target_shift)
        _check(len(self.split) == 3 and all(0 <= s <= 1 for s in self.split)
               and abs(sum(self.split) - 1) < 1e-6 and self.split[0] > 0,
               "data.split", "three fractions [train, val, test] in [0, 1] summing to 1, "
               "train > 0", self.split)
        _check(self.limit >= 0, "data.limit", ">= 0 (0 uses every episode)", self.limit)
        _one_of("data.align", self.align, ALIGN)
        _check(self.max_gap >= 0, "data.max_gap", ">= 0", self.max_gap)

    def check_files(self) -> None:
        """Refuse a data file that is not there (not done for configs read from checkpoints)."""
        if self.source in FILE_SOURCES:
            _check_file("data.path", self.path)
        if self.source == "mnist":
            _check_file("data.labels_path", self.labels_path)


def _check_file(name: str, path: str) -> None:
    p = Path(path)
    if not p.is_file() and not (p.is_dir() and (p / "metadata.yaml").is_file()):  # rosbag2
        raise ConfigError(f"{name!r} must name an existing file; {path!r} does not exist "
                          f"(relative paths are relative to the current directory "
                          f"{str(Path.cwd())!r}).")


@dataclass
class NetworkConfig:
    """The network: normalisation, recurrent cell, head and task."""

    task: str = "classification"  # classification | regression
    cell: str = CellKind.LSTM.value  # lstm | gru (a plain str: checkpoints hold it)
    hidden: int = 50
    layers: int = 1
    dropout: float = 0.0  # between recurrent layers (needs layers > 1)
    head: str = "linear"  # linear | mlp (Linear-ReLU-Linear)
    head_hidden: int = 64  # width of the MLP head's hidden layer
    classes: int = 0  # classification: number of classes (0: from the data)
    loss: str = ""  # cross_entropy | mse | huber ("" : the task's default)
    classify_on: str = "last"  # classification loss on the last step or every step
    add_input: str = ""  # regression: add this raw input feature to the output (predict a delta)

    def __post_init__(self) -> None:
        _one_of("model.task", self.task, TASKS)
        _one_of("model.cell", self.cell, CELLS)
        _check(1 <= self.hidden <= 4096, "model.hidden", "between 1 and 4096", self.hidden)
        _check(1 <= self.layers <= 16, "model.layers", "between 1 and 16", self.layers)
        _check(0 <= self.dropout < 1, "model.dropout", "in [0, 1)", self.dropout)
        _check(self.dropout == 0 or self.layers > 1, "model.dropout",
               "0 when model.layers is 1 (dropout acts between recurrent layers)", self.dropout)
        _one_of("model.head", self.head, HEADS)
        _check(1 <= self.head_hidden <= 4096, "model.head_hidden", "between 1 and 4096",
               self.head_hidden)
        _check(self.classes == 0 or 2 <= self.classes <= 100_000, "model.classes",
               "0 (from the data) or between 2 and 100000", self.classes)
        if not self.loss:
            self.loss = LOSSES[self.task][0]
        _one_of("model.loss", self.loss, LOSSES[self.task])
        _one_of("model.classify_on", self.classify_on, CLASSIFY_ON)
        _check(not self.add_input or self.task == "regression", "model.add_input",
               "empty for classification", self.add_input)


@dataclass
class TrainLoopConfig:
    """Optimisation: windows, optimiser, schedule, early stopping."""

    mode: str = "stateful"  # stateful (TBPTT, state carried) | burn_in
    window: int = 0  # steps per truncated window (0: the whole episode)
    burn_in: int = 0  # burn_in mode: steps run without gradient before each window
    batch_size: int = 64  # episodes per batch (over all ranks)
    epochs: int = 30
    lr: float = 1e-2
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    schedule: str = "constant"  # constant | cosine | step
    step_epochs: int = 10  # step schedule: multiply lr by gamma every this many epochs
    gamma: float = 0.5
    patience: int = 0  # stop after this many epochs without a better val loss (0: never)
    seed: int = 0
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self) -> None:
        _one_of("train.mode", self.mode, MODES)
        _check(0 <= self.window <= 1_000_000, "train.window", "between 0 and 1000000",
               self.window)
        _check(0 <= self.burn_in <= 1_000_000, "train.burn_in", "between 0 and 1000000",
               self.burn_in)
        _check(self.burn_in == 0 or self.mode == "burn_in", "train.burn_in",
               "0 unless train.mode is 'burn_in'", self.burn_in)
        _check(self.mode != "burn_in" or self.window > 0, "train.window",
               "> 0 when train.mode is 'burn_in'", self.window)
        _check(1 <= self.batch_size <= 1_000_000, "train.batch_size", "between 1 and 1000000",
               self.batch_size)
        _check(1 <= self.epochs <= 100_000, "train.epochs", "between 1 and 100000", self.epochs)
        _check(0 < self.lr <= 10, "train.lr", "in (0, 10]", self.lr)
        _check(0 <= self.weight_decay <= 1, "train.weight_decay", "in [0, 1]",
               self.weight_decay)
        _check(self.grad_clip >= 0, "train.grad_clip", ">= 0 (0 disables clipping)",
               self.grad_clip)
        _one_of("train.schedule", self.schedule, SCHEDULES)
        _check(self.step_epochs >= 1, "train.step_epochs", ">= 1", self.step_epochs)
        _check(0 < self.gamma <= 1, "train.gamma", "in (0, 1]", self.gamma)
        _check(self.patience >= 0, "train.patience", ">= 0 (0: no early stopping)",
               self.patience)
        _check(0 <= self.seed < 2**63, "train.seed", "between 0 and 2**63-1", self.seed)
        _check(0 <= self.threads <= 256, "train.threads", "between 0 and 256", self.threads)


@dataclass
class ExportConfig:
    """The ONNX step model written at the end of training."""

    enabled: bool = True
    path: str = ""  # default: <run dir>/model.onnx
    verify_sequences: int = 16  # held-out sequences stepped through onnxruntime and numpy
    tolerance: float = 1e-5  # |a-b| <= max(tol, tol*max(|a|,|b|))

    def __post_init__(self) -> None:
        _check(1 <= self.verify_sequences <= 10_000, "export.verify_sequences",
               "between 1 and 10000", self.verify_sequences)
        _check(0 < self.tolerance <= 1, "export.tolerance", "in (0, 1]", self.tolerance)


@dataclass
class TrainConfig:
    """Everything ``lstm-stream train`` needs."""

    name: str = "run"  # the run directory is runs/<name> unless --out is given
    data: DataConfig = field(default_factory=DataConfig)
    model: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name",
               "a non-empty run name without '/'", self.name)
        if self.model.add_input and self.data.features:
            _check(self.model.add_input in self.data.features, "model.add_input",
                   f"one of data.features {self.data.features}", self.model.add_input)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """sha256 of the resolved config as canonical JSON: identifies what was trained."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load_train_config(path: str | Path | None = None,
                      overrides: list[str] | None = None) -> TrainConfig:
    """Load ``path`` (or the defaults when None) and apply ``section.field=value`` overrides.

    Data files are checked here, so a missing file fails before any training.
    """
    config = load_config(TrainConfig, path, overrides)
    try:
        config.data.check_files()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None
    return config


def config_from_dict(data: dict[str, Any], where: str) -> TrainConfig:
    """A TrainConfig from plain data, e.g. the resolved copy stored in a checkpoint."""
    return from_dict(TrainConfig, data, where)
