"""What a replay is asked to do (:class:`ReplayConfig`) and how it went (:class:`ReplayReport`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstm_stream.core.config.runner import SourceConfig
from lstm_stream.core.errors import ConfigError


@dataclass
class ReplayConfig:
    """What to replay and how; validated on creation."""

    paths: list[Path]
    output: str = "tcp://127.0.0.1:5555"
    connect: bool = False  # connect the XPUB to a bound SUB instead of binding
    rate: float = 1.0  # 0: as fast as possible
    loop: bool = False
    start_s: float = 0.0  # skip this much of the log
    duration_s: float | None = None  # play only this much log time
    topics: list[str] | None = None  # None: every topic
    remap: dict[str, str] = field(default_factory=dict)  # recorded topic -> published topic
    wait_subscribers: int = 1  # 0: do not wait
    wait_timeout_s: float = 10.0
    control: str | None = None  # ROUTER endpoint for pause/resume/step/status
    start_paused: bool = False
    spin_us: float = 200.0  # busy-wait this close to a send time (sleep is coarser)
    # ROS bags (logs/rosbag.py): the sources whose fields make sensor messages of them
    sources: list[SourceConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        checks = [
            (bool(self.paths), "at least one log file", "paths", self.paths),
            (self.rate >= 0, ">= 0 (0: as fast as possible)", "--rate", self.rate),
            (self.start_s >= 0, ">= 0 seconds", "--start", self.start_s),
            (self.duration_s is None or self.duration_s > 0, "> 0 seconds", "--duration",
             self.duration_s),
            (self.wait_subscribers >= 0, ">= 0", "--wait-subscribers", self.wait_subscribers),
            (self.wait_timeout_s > 0, "> 0 seconds", "--wait-timeout", self.wait_timeout_s),
            (self.spin_us >= 0, ">= 0", "spin_us", self.spin_us),
        ]
        for ok, rule, name, value in checks:
            if not ok:
                raise ConfigError(f"{name} must be {rule}; got {value!r}.")
        for old, new in self.remap.items():
            if not old or not new:
                raise ConfigError(f"--remap needs OLD=NEW with both topics non-empty; got "
                                  f"{old!r}={new!r}.")


@dataclass
class ReplayReport:
    """How a replay went. Schedule errors are None at rate 0 (there is no schedule)."""

    published: int = 0
    topics: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0  # from the first to the last send, pauses excluded
    loops: int = 0  # complete passes over the log
    log_span_s: float = 0.0  # log time covered by what was published
    achieved_rate: float = 0.0  # messages per second actually sent
    target_rate: float | None = None  # what the schedule asked for (None at rate 0)
    schedule_error_us: dict[str, float] | None = None  # p50, p99, max of send - scheduled
    resyncs: int = 0  # times the schedule was re-anchored after falling behind
    paused_s: float = 0.0
    subscribers: int = 0  # subscriptions seen before the first message

    def as_dict(self) -> dict[str, Any]:
        return {"published": self.published, "topics": dict(self.topics),
                "elapsed_s": self.elapsed_s, "loops": self.loops, "log_span_s": self.log_span_s,
                "achieved_rate": self.achieved_rate, "target_rate": self.target_rate,
                "schedule_error_us": self.schedule_error_us, "resyncs": self.resyncs,
                "paused_s": self.paused_s, "subscribers": self.subscribers}
