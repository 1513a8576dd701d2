"""Runner configuration: typed dataclasses loaded from TOML and validated on load.

Every field has a default equal to ``configs/runner.toml`` (a test keeps the two
in step), so the runner works with no file at all. Any field can be overridden
from the command line as ``--set section.field=value`` (the value is parsed as
TOML, so ``--set state.max_streams=64`` gives an int and ``--set
input.topics=["a","b"]`` a list). Errors name the field, the rule and the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstm_stream.core.backends import BACKENDS, BackendName
from lstm_stream.core.config.toml_load import check as _check
from lstm_stream.core.config.toml_load import load_config
from lstm_stream.core.model.names import ModelIO

STATE_LAYOUTS = ("", "layers_batch_hidden", "batch_layers_hidden")
STALE_POLICIES = ("flag", "skip", "hold")  # core/step/sources.py's StalePolicy

_ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")
_LOOPBACK_HOSTS = ("localhost", "::1", "[::1]", "lo")
_HEX = frozenset("0123456789abcdef")


@dataclass
class ModelIOConfig:
    """The model's own names for x, y and its state pairs, when they cannot be inferred
    (docs/model-contract.md); empty values are inferred."""

    x: str = ""  # the input that takes the feature vector
    y: str = ""  # the output that is the policy output
    states: dict[str, str] = field(default_factory=dict)  # state input -> state output
    extras: list[str] = field(default_factory=list)  # extra outputs to publish; [] = all
    state_layout: str = ""  # "" infer | "layers_batch_hidden" | "batch_layers_hidden"

    def __post_init__(self) -> None:
        _check(self.state_layout in STATE_LAYOUTS, "model.io.state_layout",
               f"one of {STATE_LAYOUTS}", self.state_layout)
        _check(len(set(self.states.values())) == len(self.states), "model.io.states",
               "pairs with distinct outputs", self.states)

    def declared(self) -> ModelIO:
        """What the contract needs: the declaration as a ModelIO."""
        return ModelIO(self.x, self.y, dict(self.states), tuple(self.extras),
                       self.state_layout)


@dataclass
class ServedModelConfig:
    """Which model to serve and how to run it."""

    path: str = "models/random_lstm.onnx"
    backend: str = BackendName.ONNXRUNTIME.value  # onnxruntime | numpy | torch
    threads: int = 1  # intra-op threads; 1 is fastest for small models
    sha256: str = ""  # pin: refuse to start when the model file's SHA-256 differs; "" = no pin
    warmup: bool = True  # step zeros at every batch size before subscribing (stepper.warm_up)
    io: ModelIOConfig = field(default_factory=ModelIOConfig)

    def __post_init__(self) -> None:
        _check(self.backend in BACKENDS, "model.backend", f"one of {sorted(BACKENDS)}",
               self.backend)
        _check(1 <= self.threads <= 256, "model.threads", "between 1 and 256", self.threads)
        _check(bool(self.path), "model.path", "a path to an .onnx file", self.path)
        _check(self.sha256 == "" or (len(self.sha256) == 64 and set(self.sha256) <= _HEX),
               "model.sha256", "64 lowercase hex digits (see `lstm-stream info MODEL`) or "
               "empty for no pin", self.sha256)


@dataclass
class SourceConfig:
    """One ``[[input.sources]]``: a topic that gives some of the model's features."""

    topic: str = ""
    features: list[str] = field(default_factory=list)  # in the order of the message's x
    rate_hz: float = 0.0  # expected rate, for health; 0 = not checked
    max_age_ms: float = 1000.0  # older than this at a trigger: stale
    trigger: bool = False  # a message on this topic steps the model
    # ROS bags (logs/rosbag.py): feature -> field path in the message, such as
    # {ax = "linear_acceleration.x"}; its keys are the features when features is empty
    fields: dict[str, str] = field(default_factory=dict)
    stream_field: str = ""  # ROS bags: the field naming the stream ("" = the bag's name)

    def __post_init__(self) -> None:
        if self.fields and not self.features:
            self.features = list(self.fields)
        _check(not self.fields or set(self.fields) == set(self.features),
               "input.sources.fields", f"one field path per feature of source {self.topic!r} "
               f"({self.features})", self.fields)
        _check(bool(self.topic), "input.sources.topic", "a non-empty topic", self.topic)
        _check(len(self.features) > 0, "input.sources.features",
               f"at least one feature name (source {self.topic!r})", self.features)
        _check(len(set(self.features)) == len(self.features), "input.sources.features",
               f"distinct names (source {self.topic!r})", self.features)
        _check(self.rate_hz >= 0, "input.sources.rate_hz",
               f">= 0 Hz (source {self.topic!r}; 0 = not checked)", self.rate_hz)
        _check(self.max_age_ms > 0, "input.sources.max_age_ms",
               f"> 0 milliseconds (source {self.topic!r})", self.max_age_ms)


@dataclass
class InputConfig:
    """The SUB socket that receives sensor messages from the vehicle stack."""

    endpoint: str = "tcp://127.0.0.1:5555"
    bind: bool = False  # the vehicle stack binds its PUB; the runner connects
    topics: list[str] = field(default_factory=lambda: ["sensors"])
    max_message_bytes: int = 65536  # larger payloads are rejected and counted
    zmq_max_message_bytes: int = 1048576  # ZMQ_MAXMSGSIZE: peer disconnected above this
    rcvhwm: int = 10000
    busy_poll_us: int = 0  # keep polling this long after a message instead of sleeping
    # several sensors on several topics, assembled into the model's x (core/step/sources.py);
    # [] = every message carries the whole feature vector
    sources: list[SourceConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_endpoint("input.endpoint", self.endpoint)
        _check(0 <= self.busy_poll_us <= 10_000_000, "input.busy_poll_us",
               "between 0 and 10000000 microseconds", self.busy_poll_us)
        _check(len(self.topics) > 0, "input.topics", "at least one topic", self.topics)
        _check(256 <= self.max_message_bytes <= 1 << 30, "input.max_message_bytes",
               "between 256 and 2**30", self.max_message_bytes)
        _check(self.zmq_max_message_bytes == -1
               or self.zmq_max_message_bytes >= self.max_message_bytes,
               "input.zmq_max_message_bytes", ">= input.max_message_bytes, or -1 for no limit",
               self.zmq_max_message_bytes)
        _check(self.rcvhwm >= 0, "input.rcvhwm", ">= 0 (0 means no limit)", self.rcvhwm)
        if self.sources:
            self._check_sources()

    def _check_sources(self) -> None:
        topics = [s.topic for s in self.sources]
        twice = sorted({t for t in topics if topics.count(t) > 1})
        _check(not twice, "input.sources", "one [[input.sources]] per topic; given twice: "
               f"{twice}", topics)
        _check(any(s.trigger for s in self.sources), "input.sources",
               "at least one source with trigger = true (a message on it steps the model)",
               topics)
        unheard = [t for t in topics if not t.startswith(tuple(self.topics))]
        _check(not unheard, "input.topics", f"subscribed to every source's topic: add {unheard} "
               "to input.topics", self.topics)


@dataclass
class OutputConfig:
    """The PUB socket that publishes policy outputs and diagnostics."""

    endpoint: str = "tcp://127.0.0.1:5556"
    bind: bool = True
    topic: str = "policy"
    diagnostics_topic: str = "diagnostics"
    sndhwm: int = 10000
    ages: bool = False  # with input.sources: each output carries age_ms per source
    deadline_ms: float = 0.0  # outputs later than this after the sensor carry late: true; 0 = off

    def __post_init__(self) -> None:
        _check_endpoint("output.endpoint", self.endpoint)
        _check(self.deadline_ms >= 0, "output.deadline_ms", ">= 0 milliseconds (0 = off)",
               self.deadline_ms)
        _check(bool(self.topic), "output.topic", "a non-empty topic", self.topic)
        _check(bool(self.diagnostics_topic), "output.diagnostics_topic", "a non-empty topic",
               self.diagnostics_topic)
        _check(self.sndhwm >= 0, "output.sndhwm", ">= 0 (0 means no limit)", self.sndhwm)


@dataclass
class FreshnessConfig:
    """What a trigger does when a source is older than its max_age_ms (core/step/sources.py)."""

    stale: str = "flag"  # flag: step and say so | skip: do not step | hold: last fresh value

    def __post_init__(self) -> None:
        _check(self.stale in STALE_POLICIES, "freshness.stale", f"one of {STALE_POLICIES}",
               self.stale)


@dataclass
class HealthConfig:
    """The health topic: every input's rate and age, and the runner's own figures."""

    topic: str = "health"
    rate_hz: float = 2.0  # health messages per second; 0 = none

    def __post_init__(self) -> None:
        _check(bool(self.topic), "health.topic", "a non-empty topic", self.topic)
        _check(0 <= self.rate_hz <= 100, "health.rate_hz", "between 0 and 100 (0 = off)",
               self.rate_hz)


@dataclass
class VizConfig:
    """The live view in Foxglove (serve --foxglove, serve/liveview.py)."""

    foxglove_port: int = 0  # Foxglove WebSocket server port; 0 = off
    foxglove_host: str = "127.0.0.1"  # loopback unless told otherwise
    max_rate_hz: float = 50.0  # messages per topic sent to viewers at most; 0 = every one

    def __post_init__(self) -> None:
        _check(0 <= self.foxglove_port <= 65535, "viz.foxglove_port",
               "a TCP port (1-65535), or 0 for no live view", self.foxglove_port)
        _check(bool(self.foxglove_host), "viz.foxglove_host", "a host to bind", self.foxglove_host)
        _check(self.max_rate_hz >= 0, "viz.max_rate_hz", ">= 0 (0 = every message)",
               self.max_rate_hz)


@dataclass
class ControlConfig:
    """The ROUTER socket that answers status and reset requests."""

    endpoint: str = "tcp://127.0.0.1:5557"
    bind: bool = True
    # Without CURVE keys the control socket must be on loopback (or ipc/inproc): anyone
    # who can reach it can read and reset state. true lifts that rule (docs/security.md).
    allow_insecure_remote: bool = False

    def __post_init__(self) -> None:
        _check_endpoint("control.endpoint", self.endpoint)


@dataclass
class StateConfig:
    """How per-stream state is kept, reset and bounded."""

    max_streams: int = 1024  # least recently used stream evicted beyond this
    idle_timeout_s: float = 5.0  # a stream silent for longer is reset (and forgotten)
    max_gap: int = 0  # reset when more than this many seq are missed; 0 = never, only report
    snapshot_path: str = ""  # state snapshot file, restored at start; "" = no snapshots
    snapshot_interval_s: float = 1.0  # periodic snapshots; also written on SIGTERM/SIGINT

    def __post_init__(self) -> None:
        _check(1 <= self.max_streams <= 1_000_000, "state.max_streams",
               "between 1 and 1000000", self.max_streams)
        _check(self.idle_timeout_s > 0, "state.idle_timeout_s", "> 0 seconds",
               self.idle_timeout_s)
        _check(self.max_gap >= 0, "state.max_gap", ">= 0 (0 disables gap resets)", self.max_gap)
        _check(0.01 <= self.snapshot_interval_s <= 86400, "state.snapshot_interval_s",
               "between 0.01 and 86400 seconds", self.snapshot_interval_s)


@dataclass
class BatchingConfig:
    """Stepping waiting messages of different streams in one inference call."""

    max_batch: int = 64  # messages (of distinct streams) stepped in one call; 1 = never batch
    max_wait_us: int = 0  # after the first message, wait this long for more; 0 = no waiting,
    # take only what is already queued (a lone message is never delayed)

    def __post_init__(self) -> None:
        _check(1 <= self.max_batch <= 65536, "batching.max_batch", "between 1 and 65536",
               self.max_batch)
        _check(0 <= self.max_wait_us <= 1_000_000, "batching.max_wait_us",
               "between 0 and 1000000 microseconds", self.max_wait_us)


@dataclass
class ShardingConfig:
    """Which share of the streams this runner serves, when several runners share one
    sensor endpoint (shard.py, docs/architecture.md)."""

    count: int = 1  # runners sharing the streams; 1 = this runner serves every stream
    index: int = 0  # this runner's shard, 0 .. count-1

    def __post_init__(self) -> None:
        _check(1 <= self.count <= 65536, "sharding.count", "between 1 and 65536", self.count)
        _check(0 <= self.index < self.count, "sharding.index",
               f"between 0 and sharding.count - 1 = {self.count - 1}", self.index)


@dataclass
class SecurityConfig:
    """ZeroMQ CURVE: encryption and an allow-list of client keys (docs/security.md)."""

    server_key: str = ""  # the runner's secret key file (lstm-stream keys generate); "" = off
    authorized_keys: str = ""  # directory of allowed clients' public keys (*.key)
    secure_data: bool = False  # also require CURVE on the input and output sockets

    def __post_init__(self) -> None:
        _check(bool(self.server_key) == bool(self.authorized_keys), "security.authorized_keys",
               "set together with security.server_key (both or neither)",
               {"server_key": self.server_key, "authorized_keys": self.authorized_keys})
        _check(not self.secure_data or bool(self.server_key), "security.secure_data",
               "false unless security.server_key is set", self.secure_data)

    @property
    def enabled(self) -> bool:
        return bool(self.server_key)


@dataclass
class RunnerConfig:
    """Everything ``lstm-stream serve`` needs."""

    model: ServedModelConfig = field(default_factory=ServedModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    state: StateConfig = field(default_factory=StateConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    freshness: FreshnessConfig = field(default_factory=FreshnessConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    viz: VizConfig = field(default_factory=VizConfig)

    def __post_init__(self) -> None:
        _check(not (self.input.sources and self.sharding.count > 1), "input.sources",
               "empty when sharding.count > 1 (sharded multi-source runners are not "
               "supported yet: run one multi-source runner, or send whole feature vectors)",
               [s.topic for s in self.input.sources])
        topics = {self.output.topic, self.output.diagnostics_topic, self.health.topic}
        _check(len(topics) == 3, "health.topic", "distinct from output.topic and "
               "output.diagnostics_topic", self.health.topic)
        endpoints = [self.input.endpoint, self.output.endpoint, self.control.endpoint]
        bound = [e for e, b in zip(endpoints, [self.input.bind, self.output.bind,
                                               self.control.bind], strict=True) if b]
        _check(len(set(bound)) == len(bound), "endpoints",
               "distinct endpoints for the sockets that bind", bound)
        _check(self.security.enabled or self.control.allow_insecure_remote
               or is_loopback(self.control.endpoint), "control.endpoint",
               "on loopback (127.0.0.1, ::1, ipc://, inproc://) when no CURVE keys are set: "
               "anyone who reaches it can read and reset state. Set security.server_key and "
               "security.authorized_keys (docs/security.md), or control.allow_insecure_remote"
               " = true to accept that risk", self.control.endpoint)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_runner_config(path: str | Path | None = None, overrides: list[str] | None = None,
                       labels: dict[str, str] | None = None) -> RunnerConfig:
    """Load ``path`` (or the defaults when None), apply ``section.field=value`` overrides."""
    return load_config(RunnerConfig, path, overrides, labels)


def is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint can only be reached from this machine."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.removeprefix("tcp://").rpartition(":")[0]
    host = host.rpartition(";")[2]  # "tcp://src;dst:port" connects from src to dst
    return host.startswith("127.") or host in _LOOPBACK_HOSTS


def _check_endpoint(name: str, value: str) -> None:
    _check(isinstance(value, str) and value.startswith(_ENDPOINT_SCHEMES), name,
           "a ZeroMQ endpoint such as tcp://127.0.0.1:5555 or ipc:///tmp/x", value)
