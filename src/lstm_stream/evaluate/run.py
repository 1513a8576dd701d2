"""One log through the runner's own code: what ``lstm-stream eval`` does per log.

The sensor messages of a log go, in log order, through
:class:`~lstm_stream.core.step.stepper.StreamStepper` (the code ``serve`` runs), with each
message's log time as the clock: no sockets, no wall clock, no threads. What is
written comes from :class:`~lstm_stream.core.step.emit.Emitter`, the code that
publishes a live runner's outputs (``latency_ns`` is 0), into an MCAP sink (msgpack,
or Foxglove JSON with ``--encoding json``: json_output.py) writing a new MCAP file
with fixed writer options, so evaluating the same log with the same model twice
gives byte-identical files. The emitter counts, per stream too; this module keeps
only what scoring and a split log's merge need (it is the emitter's listener).

Many logs are dispatched by :mod:`lstm_stream.evaluate.fleet`; a worker process or
a Ray task runs :func:`evaluate_log_plain`, plain data in and out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.core.backends import create_backend
from lstm_stream.core.config.runner import SourceConfig
from lstm_stream.core.config.sources import resolve_sources
from lstm_stream.core.errors import ConfigError, LstmStreamError
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.core.step.emit import Emitter, StreamCounts
from lstm_stream.core.step.results import Outcome, SteadyRows, Stepped
from lstm_stream.core.step.sources import SourceStepper, StalePolicy
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.protocol import Rejection
from lstm_stream.evaluate import split
from lstm_stream.evaluate.json_output import JsonSink, output_labels
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.evaluate.report import plot_predictions
from lstm_stream.evaluate.results import LogFailure, LogOutcome, LogResult, StreamResult, to_plain
from lstm_stream.evaluate.score import Scorer
from lstm_stream.logs import format as fmt
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.rosbag import RosBag, is_rosbag
from lstm_stream.logs.sink import LogSink
from lstm_stream.logs.writer import LogWriter

HOUSEKEEPING_NS = 100_000_000  # idle expiry checked this often in log time, as serve does
PROGRESS_EVERY = 1024  # messages between progress updates
PENDING_MAX = 4096  # sensor messages collected before a batched flush at the latest


class _LogEvaluation:
    """Steps one log and writes its outputs; collects targets for scoring."""

    def __init__(self, path: Path, options: EvalOptions) -> None:
        self.path = path
        self.options = options
        self.contract = load_contract(options.model, options.model_io())
        backend = create_backend(options.backend, self.contract, threads=options.threads)
        self.stepper = StreamStepper(self.contract, backend, max_streams=options.max_streams,
                                     idle_timeout_s=options.idle_timeout_s,
                                     max_gap=options.max_gap,
                                     max_message_bytes=options.max_message_bytes)
        self._step_frames: Callable[[list[bytes], int], Outcome]
        self._step_frames = self.stepper.step
        self.sources: SourceStepper | None = None
        if options.sources:  # as serve does with [[input.sources]]
            self.sources = SourceStepper(
                resolve_sources(options.source_configs(), self.contract.feature_names,
                                self.contract.n_features), self.stepper,
                stale=StalePolicy(options.stale), ages=options.ages,
                max_message_bytes=options.max_message_bytes, max_streams=options.max_streams)
            self._step_frames = self.sources.step
        out = options.output_path(path)
        if options.shard:  # a part, merged into the output by evaluate/split.py
            out = out.with_name(f"{out.name}.part{options.shard[0]}of{options.shard[1]}")
        self.result = LogResult(str(path), str(out))
        self.scorer = Scorer(str(path), options.target_topic, options.target_key,
                             self.contract.n_outputs)
        self._outputs = self.contract.n_outputs
        self._scoring = options.target_topic is not None  # outputs kept only to be scored
        # One shard of a log split over workers: only its streams are stepped, and every
        # message written gets the key that puts it back in place (evaluate/split.py).
        self._shard = tuple(options.shard) if options.shard else None
        self._keys: list[int] | None = [] if self._shard else None  # 3 per message
        self._seqs: deque[int] = deque()  # log positions of the messages being stepped
        self._last_commit: dict[str, int] = {}  # stream -> log position of its last step
        self._default_stream = options.sources[0]["topic"] if options.sources else None
        self._housekeeping_at = 0  # log position of the message that ran housekeeping
        self._at = 0  # log position of the message being emitted (a split log's keys)
        self._emitter: Emitter | None = None
        self._json: JsonSink | None = None

    def run(self, progress: Progress) -> LogResult:
        opts = self.options
        reader: LogReader | RosBag
        if not is_rosbag(self.path):
            reader = LogReader(self.path)
        else:  # ROS messages made into sensor messages by the sources
            if not opts.sources:
                raise ConfigError(f"{self.path} is a ROS bag: give [[input.sources]] with "
                                  "fields that say which message field gives which feature "
                                  "(docs/sources.md)", field="input.sources")
            reader = RosBag(self.path, opts.source_configs(), self._bag_target(),
                            "--target-field", "--target-stream-field")
        if opts.target_stream_field and not isinstance(reader, RosBag):
            raise ConfigError(f"--target-stream-field names the stream field of a ROS bag's "
                              f"target messages, but {self.path} is an lstm-stream log, whose "
                              "targets name their stream; drop --target-stream-field",
                              field="--target-stream-field")
        if opts.target_fields and not isinstance(reader, RosBag):
            raise ConfigError(f"--target-field reads targets from the fields of a ROS bag's "
                              f"messages, but {self.path} is an lstm-stream log: its targets "
                              "are maps with 'stream', 'seq' and the array --target-key "
                              "names; drop --target-field", field="--target-field")
        sensors = [t for t in reader.topics() if t.startswith(tuple(opts.sensor_topics))
                   and t != opts.target_topic]
        if not sensors:
            reader.require_topics(opts.sensor_topics)
        if opts.target_topic is not None:
            reader.require_topics([opts.target_topic])
        reader.require_msgpack([*sensors, *([opts.target_topic] if opts.target_topic else [])])
        self.result.problems = [str(p) for p in reader.problems]
        wanted = sensors + ([opts.target_topic] if opts.target_topic else [])
        progress.start(f"eval {self.path.name}", reader.message_count(wanted))
        out_path = Path(self.result.output)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        meta = output_metadata(self.path, opts, self.contract.sha256)
        sensor_set = {t: t.encode() for t in sensors}
        next_housekeeping = -1
        done = 0
        # Batched: the sensor messages up to the next housekeeping point are stepped
        # together by StreamStepper.step_many (distinct streams share a backend call, a
        # stream's messages stay in order), which gives what one at a time gives.
        batched = opts.batch > 1 and self.sources is None
        pending: list[tuple[list[bytes], int]] = []
        if opts.encoding == "json" and self._shard is None:
            meta = {**meta, "encoding": "json"}
        with LogWriter(out_path, metadata=meta) as writer:
            emitter = self._emitter = Emitter(self.contract, self._sink(writer, reader),
                                              listener=self, per_stream=True)
            emit = self._emit
            for msg in reader.messages(wanted):
                topic = sensor_set.get(msg.topic)
                if topic is not None:
                    if msg.log_time_ns >= next_housekeeping:
                        self._flush(pending, emit)
                        self._housekeeping_at = msg.sequence
                        self._housekeeping(emitter, msg.log_time_ns)
                        next_housekeeping = msg.log_time_ns + HOUSEKEEPING_NS
                    if self._shard is not None:
                        owner = split.owner(msg.data, self._default_stream or msg.topic)
                        if owner is split.BATCH:
                            self.result.unsplittable = True
                            break
                        if split.shard_of_owner(owner, self._shard[1]) != self._shard[0]:
                            continue
                        self._seqs.append(msg.sequence)
                    self.result.messages += 1
                    if batched:
                        pending.append(([topic, msg.data], msg.log_time_ns))
                        if len(pending) >= PENDING_MAX:
                            self._flush(pending, emit)
                    else:
                        emit(self._step_frames([topic, msg.data], msg.log_time_ns),
                             msg.log_time_ns)
                elif self._shard is None or split.shard_of_owner(
                        split.owner(msg.data, None), self._shard[1]) == self._shard[0]:
                    self.scorer.target(msg.data, msg.sequence, msg.log_time_ns)
                    if self._json is not None:
                        self._json.target(msg.topic, msg.data, msg.log_time_ns,
                                          msg.publish_time_ns)
                done += 1
                if done % PROGRESS_EVERY == 0:
                    progress.advance(PROGRESS_EVERY)
            self._flush(pending, emit)
        progress.advance(done % PROGRESS_EVERY)
        progress.close()
        counters = emitter.counters
        self.result.stepped = counters.stepped
        self.result.backend_calls = self.stepper.calls
        self.result.rejected = dict(counters.rejected)
        self.result.rejection_examples = dict(counters.examples)
        self.result.streams = [_stream_result(name, counts) for name, counts
                               in sorted((counters.streams or {}).items())]
        self.result.order_keys = self._keys or []
        self._score()
        return self.result

    def _bag_target(self) -> SourceConfig | None:
        """The bag's target topic read like a source: one field path per model output."""
        opts, names = self.options, output_labels(self.contract)
        if opts.target_topic is None:
            return None
        fields = opts.target_fields
        missing = [n for n in names if n not in fields]
        unknown = [n for n in fields if n not in names]
        if missing or unknown:
            example = " ".join(f"--target-field {n}=angular.z" for n in names[:2])
            raise ConfigError(
                f"{self.path} is a ROS bag: its targets on {opts.target_topic!r} come from "
                "message fields, one --target-field OUTPUT=FIELD.PATH per model output "
                f"(the model's outputs: {', '.join(names)}; e.g. {example}); "
                + (f"missing: {', '.join(missing)}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"not outputs of the model: {', '.join(unknown)}" if unknown else ""),
                field="--target-field")
        self.scorer.fields = names
        return opts.bag_target(names)

    def _sink(self, writer: LogWriter, reader: LogReader | RosBag) -> LogSink | JsonSink:
        opts = self.options
        if opts.encoding != "json" or self._shard is not None:
            return LogSink(writer, opts.output_topic, opts.diagnostics_topic)
        self._json = JsonSink(writer, opts.output_topic, opts.diagnostics_topic,
                              output_labels(self.contract), target_key=opts.target_key,
                              bag_targets=isinstance(reader, RosBag))
        return self._json

    def _flush(self, pending: list[tuple[list[bytes], int]],
               emit: Callable[[Outcome, int], None]) -> None:
        if pending:
            for outcome, t in self.stepper.step_many(pending, max_batch=self.options.batch):
                emit(outcome, t)
            pending.clear()
        if self._json is not None:
            self._json.drain()

    def _emit(self, out: Outcome, t: int) -> None:
        # What is written comes from the emitter, as serve publishes it (latency 0:
        # offline, there is no machine to measure); a split log's part also notes
        # where each message it wrote goes in the whole (evaluate/split.py).
        assert self._emitter is not None
        keys = self._keys
        if keys is None:
            self._emitter.emit(out, t)
            return
        self._at = self._seqs.popleft()
        if self._emitter.emit(out, t):
            keys += (self._at, 1, 0)

    # -- the emitter's listener: what scoring and the merge keep ----------------

    def stepped(self, result: Stepped, t: int) -> None:
        msg = result.msg
        if self._keys is not None:
            self._last_commit[msg.stream] = self._at
        if self._scoring:
            stamp = msg.stamp_ns
            self.scorer.output(msg.stream, msg.seq, t, t if stamp is None else stamp,
                               result.y[0, :self._outputs].astype(np.float64))

    def stepped_rows(self, rows: SteadyRows, t: int) -> None:
        if not self._scoring:
            return
        cols, output = rows.columns, self.scorer.output
        ys = rows.y[:, :self._outputs].astype(np.float64)
        for i, (name, seq, stamp) in enumerate(zip(cols.streams, cols.seqs, cols.stamps,
                                                   strict=True)):
            output(name, seq, t, t if stamp is None else stamp, ys[i])

    def rejected(self, rejection: Rejection, t: int) -> None:
        if self._keys is not None:
            self.result.example_seq.setdefault(rejection.reason, self._at)

    def _housekeeping(self, emitter: Emitter, now: int) -> None:
        expired = emitter.expire(self.stepper.store, now)
        if self._keys is not None:  # in the store's order: least recently stepped first
            for s in expired:
                self._keys += (self._housekeeping_at, 0, self._last_commit.get(s.name, -1))
        if self.sources is not None:
            self.sources.forget_idle(now, self.stepper.store.idle_timeout_ns)

    def _score(self) -> None:
        result = self.result
        result.targets, result.targets_rejected = self.scorer.accepted, self.scorer.rejected
        scored = self.scorer.score(result.streams)
        result.histogram, result.unmatched_outputs = scored.histogram, scored.unmatched_outputs
        if self.options.report_dir and scored.series and self._shard is None:
            result.plot = plot_predictions(self.path, scored.series, self.options,
                                           self.contract.output_names)


def _stream_result(name: str, counts: StreamCounts) -> StreamResult:
    return StreamResult(name, counts.stepped, counts.rejected, dict(counts.resets),
                        rejections=dict(counts.rejections))


def output_metadata(path: Path, opts: EvalOptions, model_sha256: str) -> dict[str, Any]:
    """The metadata of an eval output file (fixed, so that reruns give the same bytes)."""
    return {fmt.KIND: "evaluation", "source": path.name, "model": Path(opts.model).name,
            "model_sha256": model_sha256, "backend": opts.backend,
            "sensor_topics": ",".join(opts.sensor_topics),
            "idle_timeout_s": opts.idle_timeout_s, "max_gap": opts.max_gap,
            "max_streams": opts.max_streams}


def evaluate_log(path: str | Path, options: EvalOptions,
                 progress: Progress | None = None) -> LogResult:
    """Evaluate one log; writes ``options.output_path(path)`` (as Foxglove JSON with
    ``options.encoding == "json"``, unless this is a shard's part)."""
    return _LogEvaluation(Path(path), options).run(progress or NullProgress())


def evaluate_log_outcome(path: str | Path, options: EvalOptions) -> LogOutcome:
    """One log; a bad log gives a :class:`LogFailure` instead of stopping the others."""
    try:
        return evaluate_log(path, options)
    except LstmStreamError as err:
        return LogFailure(str(err))


def evaluate_log_plain(path: str, options: dict[str, Any]) -> dict[str, Any] | str:
    """One log with plain data in and out: what a worker process or a Ray task runs.

    Only a path, the options as a dict and the outcome as JSON-able data (a
    result dict, or the error's message) cross the process boundary
    (results.to_plain); the local workers and the cluster run exactly this function.
    """
    return to_plain(evaluate_log_outcome(path, EvalOptions(**options)))
