"""``lstm-stream eval``: the offline, deterministic path through the runner's own code.

The sensor messages of a log go, in log order, through
:class:`~lstm_stream.core.stepper.StreamStepper` (the code ``serve`` runs), with each
message's log time as the clock: no sockets, no wall clock, no threads. The
outputs are encoded exactly as the runner encodes them (``latency_ns`` is 0)
and written to a new MCAP file with fixed writer options, so evaluating the
same log with the same model twice gives byte-identical files.

With a target topic the outputs are scored (MAE, RMSE, max error per stream and
overall) against targets aligned by (stream, seq); :func:`check_reference` is the
regression check of an output file against a reference file.
Many logs are evaluated in parallel processes (spawned; only paths and small
dicts cross the process boundary), or with ``ray_address`` as one task per log
on a Ray cluster (:mod:`lstm_stream.evaluate.ray`); both run :func:`evaluate_log_plain`
and gather with :func:`results_from_plain`, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from lstm_stream import __version__
from lstm_stream.core.errors import EvaluationError, LstmStreamError
from lstm_stream.core.model_io import ModelIO
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.evaluate import parallel

log = logging.getLogger(__name__)

HOUSEKEEPING_NS = 100_000_000  # idle expiry checked this often in log time, as serve does
LATENCY_FIELDS = ("latency_ns",)  # never compared: they measure the machine, not the model
OUTPUT_SUFFIX = ".policy.mcap"
# |error| histogram bins: fixed, so that histograms of many logs (and workers) add up.
HIST_EDGES = np.concatenate([[0.0], np.logspace(-7, 2, 55)])
MAX_PLOTTED_STREAMS = 8


@dataclass
class EvalOptions:
    """How to evaluate; plain data so that it can be handed to worker processes."""

    model: str
    backend: str = "onnxruntime"
    threads: int = 1
    sensor_topics: list[str] = field(default_factory=lambda: ["sensors"])  # prefixes, as serve
    target_topic: str | None = None
    target_key: str = "y"
    output_dir: str | None = None  # None: report_dir, else beside each input log
    report_dir: str | None = None  # JSON + PNG report; None: none
    max_streams: int = 1024
    idle_timeout_s: float = 5.0
    max_gap: int = 0
    max_message_bytes: int = 65536
    output_topic: str = "policy"
    diagnostics_topic: str = "diagnostics"
    io: dict[str, Any] = field(default_factory=dict)  # ModelIO fields: the model's names

    def model_io(self) -> ModelIO:
        io = dict(self.io)
        io["extras"] = tuple(io.get("extras", ()))
        return ModelIO(**io)

    def output_path(self, log_path: Path) -> Path:
        chosen = self.output_dir or self.report_dir
        directory = Path(chosen) if chosen else log_path.parent
        return directory / (log_path.name.removesuffix(".mcap") + OUTPUT_SUFFIX)


@dataclass
class ErrorSums:
    """Running sums for MAE/RMSE/max that add up across streams, logs and workers."""

    count: int = 0  # matched messages
    values: int = 0  # matched scalar values (messages x outputs)
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    max_abs: float = 0.0

    def add(self, err: np.ndarray) -> None:
        self.count += err.shape[0]
        self.values += err.size
        self.abs_sum += float(np.abs(err, dtype=np.float64).sum())
        self.sq_sum += float(np.square(err, dtype=np.float64).sum())
        self.max_abs = max(self.max_abs, float(np.abs(err).max(initial=0.0)))

    def merge(self, other: ErrorSums) -> None:
        self.count += other.count
        self.values += other.values
        self.abs_sum += other.abs_sum
        self.sq_sum += other.sq_sum
        self.max_abs = max(self.max_abs, other.max_abs)

    def metrics(self) -> dict[str, float | int | None]:
        if not self.values:
            return {"matched": 0, "mae": None, "rmse": None, "max_error": None}
        return {"matched": self.count, "mae": self.abs_sum / self.values,
                "rmse": math.sqrt(self.sq_sum / self.values), "max_error": self.max_abs}


@dataclass
class StreamResult:
    """One stream of one log (an episode)."""

    stream: str
    stepped: int = 0
    rejected: int = 0
    resets: dict[str, int] = field(default_factory=dict)
    errors: ErrorSums = field(default_factory=ErrorSums)
    rejections: dict[str, int] = field(default_factory=dict)  # by reason


@dataclass
class LogResult:
    """What evaluating one log produced; small, so it can come back from a worker."""

    log: str
    output: str
    messages: int = 0  # sensor messages read
    stepped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rejection_examples: dict[str, str] = field(default_factory=dict)  # first detail per reason
    targets: int = 0
    targets_rejected: int = 0
    unmatched_outputs: int = 0  # outputs without a target (when a target topic is given)
    problems: list[str] = field(default_factory=list)  # file damage found while reading
    streams: list[StreamResult] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)
    plot: str | None = None

    def errors(self) -> ErrorSums:
        total = ErrorSums()
        for s in self.streams:
            total.merge(s.errors)
        return total

    def rejection_summary(self, top: int = 3) -> str:
        """``"200 of 200 messages rejected: wrong_length ('x' has 16 values; ...)"``, or ""."""
        total = sum(self.rejected.values())
        if not total:
            return ""
        reasons = sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0]))
        parts = []
        for reason, n in reasons[:top]:
            count = f" {n}" if len(reasons) > 1 else ""
            example = self.rejection_examples.get(reason)
            parts.append(f"{reason}{count}" + (f" ({example})" if example else ""))
        more = len(reasons) - top
        return (f"{total} of {self.messages} messages rejected: " + "; ".join(parts)
                + (f"; and {more} other reason(s)" if more > 0 else ""))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["streams"] = [{"stream": s.stream, "stepped": s.stepped, "rejected": s.rejected,
                           "rejections": s.rejections, "resets": s.resets,
                           **s.errors.metrics()} for s in self.streams]
        out["metrics"] = self.errors().metrics()
        del out["histogram"]
        return out


@dataclass
class EvalReport:
    """Every log's result and the overall metrics."""

    logs: list[LogResult]
    options: EvalOptions
    model_sha256: str = ""

    def overall(self) -> dict[str, float | int | None]:
        total = ErrorSums()
        for r in self.logs:
            total.merge(r.errors())
        return total.metrics()

    def as_dict(self) -> dict[str, Any]:
        return {"lstm_stream": __version__, "model": self.options.model,
                "model_sha256": self.model_sha256, "target_topic": self.options.target_topic,
                "target_key": self.options.target_key, "overall": self.overall(),
                "stepped": sum(r.stepped for r in self.logs),
                "rejected": sum(sum(r.rejected.values()) for r in self.logs),
                "logs": [r.as_dict() for r in self.logs]}


# -- one log ----------------------------------------------------------------------


class _LogEvaluation:
    """Steps one log and writes its outputs; collects targets for scoring."""

    def __init__(self, path: Path, options: EvalOptions) -> None:
        from lstm_stream.core.backends import create_backend
        from lstm_stream.core.contract import load_contract
        from lstm_stream.core.stepper import StreamStepper

        self.path = path
        self.options = options
        self.contract = load_contract(options.model, options.model_io())
        backend = create_backend(options.backend, self.contract, threads=options.threads)
        self.stepper = StreamStepper(self.contract, backend, max_streams=options.max_streams,
                                     idle_timeout_s=options.idle_timeout_s,
                                     max_gap=options.max_gap,
                                     max_message_bytes=options.max_message_bytes)
        self.packer = msgpack.Packer(use_bin_type=True)
        self.result = LogResult(str(path), str(options.output_path(path)))
        self.streams: dict[str, StreamResult] = {}
        self.outputs: dict[str, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        self.targets: dict[tuple[str, int], deque[np.ndarray]] = defaultdict(deque)
        self._warned = 0

    def run(self, progress: Progress) -> LogResult:
        from lstm_stream.logs import format as fmt
        from lstm_stream.logs.reader import LogReader
        from lstm_stream.logs.writer import LogWriter

        opts = self.options
        reader = LogReader(self.path)
        sensors = [t for t in reader.topics() if t.startswith(tuple(opts.sensor_topics))]
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
        meta = {fmt.KIND: "evaluation", "source": self.path.name, "model": Path(opts.model).name,
                "model_sha256": self.contract.sha256, "backend": opts.backend,
                "sensor_topics": ",".join(opts.sensor_topics),
                "idle_timeout_s": opts.idle_timeout_s, "max_gap": opts.max_gap,
                "max_streams": opts.max_streams}
        sensor_set = set(sensors)
        next_housekeeping = -1
        done = 0
        with LogWriter(out_path, metadata=meta) as writer:
            writer.channel(opts.output_topic)
            writer.channel(opts.diagnostics_topic)
            for msg in reader.messages(wanted):
                if msg.topic in sensor_set:
                    if msg.log_time_ns >= next_housekeeping:
                        self._expire(writer, msg.log_time_ns)
                        next_housekeeping = msg.log_time_ns + HOUSEKEEPING_NS
                    self._step(writer, msg.topic, msg.data, msg.log_time_ns)
                else:
                    self._target(msg.data, msg.sequence, msg.log_time_ns)
                done += 1
                if done % 1024 == 0:
                    progress.advance(1024)
        progress.advance(done % 1024)
        progress.close()
        self._score()
        return self.result

    def _step(self, writer: Any, topic: str, data: bytes, t: int) -> None:
        from lstm_stream.core.protocol import Rejection, encode_output

        self.result.messages += 1
        out = self.stepper.step([topic.encode(), data], t)
        if type(out) is Rejection:
            assert isinstance(out, Rejection)
            result = self.result
            result.rejected[out.reason] = result.rejected.get(out.reason, 0) + 1
            result.rejection_examples.setdefault(out.reason, out.detail)
            if out.stream is not None:
                s = self._stream(out.stream)
                s.rejected += 1
                s.rejections[out.reason] = s.rejections.get(out.reason, 0) + 1
            writer.write(self.options.diagnostics_topic, self.packer.pack(out.to_wire()), t)
            return
        assert not isinstance(out, Rejection)
        y, extra = self.stepper.values(out)
        payload = encode_output(self.packer, out.msg, y, out.step, out.reset, out.gap, 0, extra)
        writer.write(self.options.output_topic, payload, t)
        self.result.stepped += 1
        s = self._stream(out.msg.stream)
        s.stepped += 1
        if out.reset is not None:
            s.resets[out.reset] = s.resets.get(out.reset, 0) + 1
        self.outputs[out.msg.stream].append((out.msg.seq, t, np.asarray(y, np.float64)))

    def _expire(self, writer: Any, now: int) -> None:
        for stream in self.stepper.store.expire(now):
            event = {"event": "stream_expired", "stream": stream.name,
                     "last_seq": stream.last_seq,
                     "idle_s": round((now - stream.last_seen_ns) / 1e9, 3)}
            writer.write(self.options.diagnostics_topic, self.packer.pack(event), now)

    def _stream(self, name: str) -> StreamResult:
        s = self.streams.get(name)
        if s is None:
            s = self.streams[name] = StreamResult(name)
        return s

    def _target(self, data: bytes, sequence: int, t: int) -> None:
        key = self.options.target_key
        try:
            body = msgpack.unpackb(data, raw=False)
            stream, seq, y = body["stream"], body["seq"], body[key]
            if not isinstance(stream, str) or type(seq) is not int:
                raise TypeError("'stream' must be a string and 'seq' an integer")
            value = np.asarray(y, dtype=np.float64).reshape(-1)
            if value.size != self.contract.n_outputs:
                raise ValueError(f"{key!r} has {value.size} values, the model outputs "
                                 f"{self.contract.n_outputs}")
        except Exception as err:  # any undecodable target is counted, reported, skipped
            self.result.targets_rejected += 1
            if self._warned < 10:
                self._warned += 1
                log.warning("%s: topic %r, message %d (log time %d): target not usable: "
                            "%s: %s (expected a map with 'stream', 'seq' and %r)", self.path,
                            self.options.target_topic, sequence, t, type(err).__name__,
                            str(err)[:200], key)
            return
        self.targets[(stream, seq)].append(value)
        self.result.targets += 1

    def _score(self) -> None:
        scoring = self.options.target_topic is not None
        hist = np.zeros(len(HIST_EDGES) - 1, np.int64)
        series: dict[str, tuple[list[int], list[np.ndarray], list[np.ndarray]]] = {}
        for name in sorted(self.streams):
            s = self.streams[name]
            times: list[int] = []
            preds: list[np.ndarray] = []
            targets: list[np.ndarray] = []
            for seq, t, y in self.outputs.get(name, []):
                queue = self.targets.get((name, seq))
                if not queue:
                    self.result.unmatched_outputs += scoring
                    continue
                times.append(t)
                preds.append(y)
                targets.append(queue.popleft())
            if preds:
                err = np.stack(preds) - np.stack(targets)
                s.errors.add(err)
                hist += np.histogram(np.abs(err), HIST_EDGES)[0]
                series[name] = (times, preds, targets)
            self.result.streams.append(s)
        self.result.histogram = hist.tolist()
        if self.options.report_dir and series:
            self.result.plot = _plot_predictions(self.path, series, self.options,
                                                 self.contract.output_names)


def evaluate_log(path: str | Path, options: EvalOptions,
                 progress: Progress | None = None) -> LogResult:
    """Evaluate one log; writes ``options.output_path(path)``."""
    return _LogEvaluation(Path(path), options).run(progress or NullProgress())


def evaluate_log_plain(path: str, options: dict[str, Any]) -> dict[str, Any] | str:
    """One log with plain data in and out: what a worker process or a Ray task runs.

    Only a path, the options as a dict and the result as a JSON-able dict (or the
    error's message, so that one bad log does not stop the others) cross the
    process boundary: the local pool sends them as JSON lines (evaluate/parallel.py, no
    pickle), and the local pool and the cluster run exactly this function.
    """
    try:
        return asdict(evaluate_log(path, EvalOptions(**options)))
    except LstmStreamError as err:
        return str(err)


def _result_from_dict(data: dict[str, Any]) -> LogResult:
    data = dict(data)
    streams = [StreamResult(s["stream"], s["stepped"], s["rejected"], s["resets"],
                            ErrorSums(**s["errors"]), s["rejections"])
               for s in data.pop("streams")]
    return LogResult(**data, streams=streams)


def results_from_plain(outputs: Sequence[dict[str, Any] | str]) -> list[LogResult]:
    """The results of :func:`evaluate_log_plain`, in order; one error naming every failed log.

    Raised only after every log has run, so that a damaged log costs the run its
    report but not the outputs of the others.
    """
    errors = [out for out in outputs if isinstance(out, str)]
    if errors:
        raise EvaluationError("; ".join(errors))
    return [_result_from_dict(out) for out in outputs if not isinstance(out, str)]


def evaluate(paths: Sequence[str | Path], options: EvalOptions, *, workers: int = 1,
             progress: Progress | None = None, ray_address: str | None = None) -> EvalReport:
    """Evaluate every log and write the report.

    Logs run in this process, in ``workers`` local processes when > 1, or with
    ``ray_address`` (``HOST:PORT`` or ``auto``) as one task per log on that Ray
    cluster; the report is the same whichever way they ran.
    """
    from lstm_stream.core.contract import load_contract

    progress = progress or NullProgress()
    if not paths:
        raise EvaluationError("No log to evaluate: give at least one .mcap file.")
    names = [options.output_path(Path(p)) for p in paths]
    if len(set(names)) != len(names):
        raise EvaluationError("Two logs have the same file name, so their outputs would "
                              "overwrite each other; rename one or evaluate them separately.")
    # fail early on a bad model, in this process
    sha = load_contract(options.model, options.model_io()).sha256
    if ray_address is not None:
        from lstm_stream.evaluate.ray import evaluate_on_ray  # imports ray: only when asked for

        results = results_from_plain(evaluate_on_ray(paths, options, ray_address, progress))
    elif workers > 1 and len(paths) > 1:
        results = _evaluate_parallel(paths, options, workers, progress)
    else:
        results = [evaluate_log(p, options, progress) for p in paths]
    report = EvalReport(results, options, sha)
    if options.report_dir:
        write_report(report, Path(options.report_dir))
    return report


def _evaluate_parallel(paths: Sequence[str | Path], options: EvalOptions, workers: int,
                       progress: Progress) -> list[LogResult]:
    # Worker processes that speak JSON lines (evaluate/parallel.py): no pickle on the pipes.
    progress.start("eval logs", len(paths))
    plain = asdict(options)
    outputs = parallel.run("lstm_stream.evaluate.run:evaluate_log_plain",
                             [(str(p), plain) for p in paths], workers,
                             on_done=lambda _: progress.advance(1))
    progress.close()
    return results_from_plain(outputs)


# -- the report --------------------------------------------------------------------


def write_report(report: EvalReport, directory: Path) -> Path:
    """``report.json``, ``report.md`` (per-stream table) and ``error_histogram.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    data = report.as_dict()
    path = directory / "report.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (directory / "report.md").write_text(render_table(report))
    hist = np.zeros(len(HIST_EDGES) - 1, np.int64)
    for r in report.logs:
        if r.histogram:
            hist += np.asarray(r.histogram)
    if hist.any():
        _plot_histogram(hist, directory / "error_histogram.png")
    return path


def render_table(report: EvalReport) -> str:
    """The per-stream (per-episode) table as Markdown."""
    lines = ["| log | stream | stepped | rejected | resets | matched | MAE | RMSE | max |",
             "|---|---|---|---|---|---|---|---|---|"]
    rejected: dict[str, int] = {}
    for r in report.logs:
        for reason, n in r.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + n
        for s in r.streams:
            m = s.errors.metrics()
            resets = ", ".join(f"{k} {v}" for k, v in sorted(s.resets.items()))
            lines.append(f"| {Path(r.log).name} | {s.stream} | {s.stepped} | "
                         f"{_reasons(s.rejected, s.rejections)} | {resets} | {m['matched']} | "
                         f"{_num(m['mae'])} | {_num(m['rmse'])} | {_num(m['max_error'])} |")
    o = report.overall()
    lines.append(f"| **all** | | {sum(r.stepped for r in report.logs)} | "
                 f"{_reasons(sum(rejected.values()), rejected)} | | {o['matched']} | "
                 f"{_num(o['mae'])} | {_num(o['rmse'])} | {_num(o['max_error'])} |")
    return "\n".join(lines) + "\n"


def _reasons(total: int, by_reason: dict[str, int], top: int = 3) -> str:
    """``"12 (wrong_length 10, stale_seq 2)"``: the count and its top reasons."""
    if not total:
        return "0"
    reasons = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{k} {v}" for k, v in reasons[:top])
    return f"{total} ({shown}{', ...' if len(reasons) > top else ''})"


def _num(v: float | int | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _plot_predictions(path: Path, series: dict[str, tuple[list[int], list[np.ndarray],
                                                           list[np.ndarray]]],
                      options: EvalOptions, output_names: tuple[str, ...] | None) -> str:
    plt = _pyplot()
    names = sorted(series)[:MAX_PLOTTED_STREAMS]  # a readable figure; the JSON has them all
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.5 * len(names)), squeeze=False)
    t0 = min(series[n][0][0] for n in names)
    for ax, name in zip(axes[:, 0], names, strict=True):
        times, preds, targets = series[name]
        t = (np.asarray(times) - t0) / 1e9
        p, y = np.stack(preds), np.stack(targets)
        for k in range(p.shape[1]):
            label = output_names[k] if output_names else f"y{k}"
            line = ax.plot(t, p[:, k], lw=1, label=f"{label} predicted")[0]
            ax.plot(t, y[:, k], lw=1, ls="--", color=line.get_color(), label=f"{label} target")
        ax.set_title(f"{path.name}: {name}", fontsize=9)
        ax.set_xlabel("log time (s)")
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    assert options.report_dir is not None
    out = Path(options.report_dir) / f"{path.name.removesuffix('.mcap')}.predictions.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return str(out)


def _plot_histogram(hist: np.ndarray, out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    edges = HIST_EDGES.copy()
    edges[0] = edges[1] / 10  # log axis: show the zero bin just left of the first edge
    ax.stairs(hist, edges, fill=True)
    ax.set_xscale("log")
    ax.set_xlabel("|predicted - target|")
    ax.set_ylabel("values")
    ax.set_title("error histogram (all streams, all outputs)")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


# -- the regression check ------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One difference between an output file and its reference."""

    index: int  # message position among the compared messages
    topic: str
    stream: str | None
    seq: int | None
    field: str
    value: Any
    reference: Any

    def __str__(self) -> str:
        where = f"stream {self.stream!r} seq {self.seq}" if self.stream is not None else (
            f"message {self.index}")
        return (f"{where} ({self.topic}) field {self.field}: {self.value!r} vs reference "
                f"{self.reference!r}")


def compare_outputs(output: str | Path, reference: str | Path, *, atol: float = 1e-5,
                    rtol: float = 1e-5, ignore: Iterable[str] = (),
                    limit: int = 10) -> tuple[int, list[Difference]]:
    """Compare two eval output files message by message.

    A number differs when ``|a - b| > max(atol, rtol * max(|a|, |b|))``; other
    values must be equal. Latency fields and ``ignore`` are skipped. Returns the
    number of differing messages and the first ``limit`` differences.
    """
    from lstm_stream.logs.reader import LogReader

    skip = set(LATENCY_FIELDS) | set(ignore)
    new = LogReader(output).messages()
    ref_reader = LogReader(reference)
    ref = ref_reader.messages()
    count, found, index = 0, [], 0
    while True:
        a, b = next(new, None), next(ref, None)
        if a is None and b is None:
            break
        if a is None or b is None:
            extra = a or b
            assert extra is not None
            rest = 1 + sum(1 for _ in (new if a is not None else ref))
            body = _map(extra.data)
            side = "the outputs have" if a is not None else "the reference has"
            found.append(Difference(index, extra.topic, body.get("stream"), body.get("seq"),
                                    "<message count>", f"{side} {rest} more message(s)", None))
            count += rest
            break
        diffs = _diff_message(index, a.topic, a.data, b.topic, b.data, atol, rtol, skip)
        if diffs:
            count += 1
            found.extend(diffs[: max(0, limit - len(found))])
        index += 1
    return count, found[:limit]


def _map(data: bytes) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(data, raw=False)
    except Exception:
        return {}
    return body if isinstance(body, dict) else {}


def _diff_message(index: int, topic_a: str, data_a: bytes, topic_b: str, data_b: bytes,
                  atol: float, rtol: float, skip: set[str]) -> list[Difference]:
    a, b = _map(data_a), _map(data_b)
    stream, seq = b.get("stream", a.get("stream")), b.get("seq", a.get("seq"))
    if topic_a != topic_b:
        return [Difference(index, topic_a, stream, seq, "<topic>", topic_a, topic_b)]
    out: list[Difference] = []
    for key in sorted(set(a) | set(b), key=str):
        if key in skip:
            continue
        out.extend(Difference(index, topic_a, stream, seq, name, va, vb)
                   for name, va, vb in _diff_value(str(key), a.get(key), b.get(key), atol, rtol))
    return out


def _diff_value(name: str, a: Any, b: Any, atol: float,
                rtol: float) -> list[tuple[str, Any, Any]]:
    numbers = (int, float)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [(f"{name} (length)", len(a), len(b))]
        out: list[tuple[str, Any, Any]] = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out.extend(_diff_value(f"{name}[{i}]", x, y, atol, rtol))
        return out
    if (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool)):
        if abs(a - b) > max(atol, rtol * max(abs(a), abs(b))) or (
                math.isnan(a) != math.isnan(b)):
            return [(name, a, b)]
        return []
    return [] if a == b else [(name, a, b)]


def check_reference(output: str | Path, reference: str | Path, *, atol: float, rtol: float,
                    ignore: Iterable[str] = ()) -> None:
    """Raise EvaluationError naming the first differences when ``output`` differs."""
    ref = Path(reference)
    if not ref.exists():
        raise EvaluationError(f"Reference {str(ref)!r} does not exist. Create it with "
                              "--update-reference (and commit it).")
    count, diffs = compare_outputs(output, ref, atol=atol, rtol=rtol, ignore=ignore)
    if count:
        lines = "\n  ".join(str(d) for d in diffs)
        raise EvaluationError(
            f"{count} output message(s) of {str(output)!r} differ from the reference "
            f"{str(ref)!r} (atol {atol:g}, rtol {rtol:g}); first differences:\n  {lines}\n"
            "If the change is intended, rerun with --update-reference and commit the result.")
