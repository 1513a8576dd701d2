"""How to evaluate: :class:`EvalOptions`, plain data that workers and Ray tasks receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstm_stream.core.backends import BackendName
from lstm_stream.core.config.runner import SourceConfig
from lstm_stream.core.errors import ConfigError
from lstm_stream.core.model.names import ModelIO
from lstm_stream.logs.format import DIAGNOSTICS_TOPIC, POLICY_TOPIC

OUTPUT_SUFFIX = ".policy.mcap"
ENCODINGS = ("msgpack", "json")  # of eval's output files (json: evaluate/json_output.py)


@dataclass
class EvalOptions:
    """How to evaluate; plain data so that it can be handed to worker processes."""

    model: str
    backend: str = BackendName.ONNXRUNTIME.value
    threads: int = 1
    sensor_topics: list[str] = field(default_factory=lambda: ["sensors"])  # prefixes, as serve
    target_topic: str | None = None
    target_key: str = "y"
    # ROS bags: model output -> field path of the target message (--target-field)
    target_fields: dict[str, str] = field(default_factory=dict)
    # ROS bags: the target message's field naming its stream ("" = the bag's name)
    target_stream_field: str = ""
    output_dir: str | None = None  # None: report_dir, else beside each input log
    report_dir: str | None = None  # JSON + PNG report; None: none
    max_streams: int = 1024
    idle_timeout_s: float = 5.0
    max_gap: int = 0
    max_message_bytes: int = 65536
    output_topic: str = POLICY_TOPIC
    diagnostics_topic: str = DIAGNOSTICS_TOPIC
    io: dict[str, Any] = field(default_factory=dict)  # ModelIO fields: the model's names
    # [[input.sources]] as dicts (SourceConfig fields): several topics assembled into x
    sources: list[dict[str, Any]] = field(default_factory=list)
    stale: str = "flag"  # freshness.stale
    shard: list[int] = field(default_factory=list)  # [i, n]: only streams of shard i of n
    # (one log split over n workers, evaluate/split.py); [] = every stream
    batch: int = 64  # streams stepped in one backend call (as batching.max_batch); 1 = one
    # message per call. Outputs are the same either way (tests/evaluate/test_batched.py).
    ages: bool = False  # output.ages
    encoding: str = "msgpack"  # of the output file; "json": Foxglove JSON (json_output.py)

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"eval output encoding must be one of {', '.join(ENCODINGS)}; "
                              f"got {self.encoding!r}.", field="--encoding")

    def source_configs(self) -> list[SourceConfig]:
        return [SourceConfig(**s) for s in self.sources]

    def bag_target(self, output_names: list[str]) -> SourceConfig:
        """A ROS bag's target topic read like a source: one field path per model output,
        in the model's order (``target_fields`` must name each; evaluate/run.py checks)."""
        assert self.target_topic is not None
        return SourceConfig(self.target_topic,
                            fields={n: self.target_fields[n] for n in output_names},
                            stream_field=self.target_stream_field)

    def model_io(self) -> ModelIO:
        io = dict(self.io)
        io["extras"] = tuple(io.get("extras", ()))
        return ModelIO(**io)

    def output_path(self, log_path: Path) -> Path:
        chosen = self.output_dir or self.report_dir
        directory = Path(chosen) if chosen else log_path.parent
        stem = log_path.name.removesuffix(".mcap").removesuffix(".bag")
        return directory / (stem + OUTPUT_SUFFIX)
