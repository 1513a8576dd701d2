"""``lstm-stream eval`` over many logs: here, in local worker processes, or on Ray.

However the logs ran, each ran :func:`~lstm_stream.evaluate.run.evaluate_log_plain`
(or, here, the same function without the plain-data edge), and the report is
the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from lstm_stream.core.errors import EvaluationError
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.evaluate import parallel, split
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.evaluate.report import write_report
from lstm_stream.evaluate.results import EvalReport, LogResult, from_plain, gather
from lstm_stream.evaluate.run import evaluate_log, output_metadata

log = logging.getLogger(__name__)

WORKER_FUNCTION = "lstm_stream.evaluate.run:evaluate_log_plain"


def evaluate(paths: Sequence[str | Path], options: EvalOptions, *, workers: int = 1,
             progress: Progress | None = None, ray_address: str | None = None) -> EvalReport:
    """Evaluate every log and write the report.

    Logs run in this process, in ``workers`` local processes when > 1, or with
    ``ray_address`` (``HOST:PORT`` or ``auto``) as one task per log on that Ray
    cluster (``ray`` is imported only then); the report is the same whichever
    way they ran.
    """
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
        # the one module that imports ray (the optional [cluster] extra, whose install
        # hint it gives): loaded only when asked for
        from lstm_stream.evaluate.ray import evaluate_on_ray

        outputs = evaluate_on_ray(paths, options, ray_address, progress)
        results = gather([from_plain(out) for out in outputs])
    elif workers > 1 and len(paths) > 1:
        results = _evaluate_parallel(paths, options, workers, progress)
    elif workers > 1 and options.encoding != "json":  # one log: its streams over the workers
        results = [_evaluate_split(Path(paths[0]), options, workers, progress, sha)]
    elif workers > 1:
        log.info("eval: %s is evaluated in one process: --encoding json writes the outputs "
                 "and the log's targets in one pass", paths[0])
        results = [evaluate_log(paths[0], options, progress)]
    else:
        results = [evaluate_log(p, options, progress) for p in paths]
    report = EvalReport(results, options, sha)
    if options.report_dir:
        write_report(report, Path(options.report_dir))
    return report


def _evaluate_split(path: Path, options: EvalOptions, workers: int, progress: Progress,
                    sha: str) -> LogResult:
    progress.start(f"eval {path.name} ({workers} workers)", workers)
    plain = asdict(options)
    outputs = parallel.run(WORKER_FUNCTION,
                           [(str(path), {**plain, "shard": [i, workers]}) for i in range(workers)],
                           workers, on_done=lambda _: progress.advance(1))
    progress.close()
    parts = gather([from_plain(out) for out in outputs])
    reason = split.needs_one_piece(parts, options)
    if reason is None:
        return split.merge(path, options, parts, output_metadata(path, options, sha))
    for part in parts:
        Path(part.output).unlink(missing_ok=True)
    log.warning("eval: %s is evaluated in one process: %s", path, reason)
    return evaluate_log(path, options, progress)


def _evaluate_parallel(paths: Sequence[str | Path], options: EvalOptions, workers: int,
                       progress: Progress) -> list[LogResult]:
    progress.start("eval logs", len(paths))
    plain = asdict(options)
    outputs = parallel.run(WORKER_FUNCTION, [(str(p), plain) for p in paths], workers,
                           on_done=lambda _: progress.advance(1))
    progress.close()
    return gather([from_plain(out) for out in outputs])
