"""eval --workers' process pool: JSON text through a ProcessPoolExecutor, real processes.

A worker that dies must cost only the item it was working on; a call that raises
fails alone with its error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lstm_stream.evaluate import parallel
from lstm_stream.evaluate.fleet import evaluate
from lstm_stream.evaluate.options import EvalOptions

from helpers.logs import write_eventful_log
from helpers.support import REPO

MODEL = str(REPO / "models" / "random_lstm.onnx")


def test_a_worker_that_dies_costs_only_its_log() -> None:
    done: list[int] = []
    results = parallel.run("os:_exit", [(0,), (3,), (0,)], workers=1, on_done=done.append)
    # os._exit never returns: each call kills its worker, which is replaced for the next
    assert all(isinstance(r, str) and "exited" in r for r in results)
    assert sorted(done) == [0, 1, 2]
    assert parallel.run("math:hypot", [(3, 4), (5, 12)], workers=2) == [5.0, 13.0]


def test_a_dying_worker_among_several_costs_only_its_own_item() -> None:
    done: list[int] = []
    results = parallel.run("helpers.workers:double_or_die", [(i, 3) for i in range(7)],
                           workers=2, on_done=done.append)
    # the items in flight with the dying one are run again alone; the rest go on
    assert results[:3] == [0, 2, 4] and results[4:] == [8, 10, 12]
    assert isinstance(results[3], str) and "exited" in results[3] and "3" in results[3]
    assert sorted(done) == list(range(7))


def test_a_call_that_raises_fails_alone_with_its_error() -> None:
    results = parallel.run("math:sqrt", [(4,), (-1,), (9,)], workers=2)
    assert results[0] == 2.0 and results[2] == 3.0
    assert results[1] == "ValueError while working on -1: math domain error"


@pytest.mark.parametrize("seed", [0, 1])
def test_one_log_split_over_two_workers_equals_one_process(tmp_path: Path, seed: int) -> None:
    log = write_eventful_log(tmp_path / "drive.mcap", seed, streams=24, messages=2500)
    common = {"model": MODEL, "target_topic": "controls", "max_streams": 32,
              "idle_timeout_s": 0.5, "max_gap": 1}
    one = evaluate([log], EvalOptions(**common, output_dir=str(tmp_path / "one")))
    two = evaluate([log], EvalOptions(**common, output_dir=str(tmp_path / "two")), workers=2)
    a, b = (tmp_path / d / "drive.policy.mcap" for d in ("one", "two"))
    assert a.read_bytes() == b.read_bytes()
    assert list((tmp_path / "two").iterdir()) == [b]  # the parts are gone
    (first,), (second,) = one.logs, two.logs
    first.backend_calls = second.backend_calls = 0  # two processes make their own batches
    assert json.dumps(one.as_dict()).replace("/one/", "/") == json.dumps(
        two.as_dict()).replace("/two/", "/")


def test_a_log_with_more_streams_than_the_store_is_evaluated_in_one_piece(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = write_eventful_log(tmp_path / "drive.mcap", 3, streams=24, messages=600)
    common = {"model": MODEL, "max_streams": 8, "idle_timeout_s": 0.5}
    one = evaluate([log], EvalOptions(**common, output_dir=str(tmp_path / "one")))
    with caplog.at_level("WARNING"):
        two = evaluate([log], EvalOptions(**common, output_dir=str(tmp_path / "two")),
                       workers=2)
    assert "evaluated in one process" in caplog.text and "state.max_streams" in caplog.text
    assert (tmp_path / "one" / "drive.policy.mcap").read_bytes() == (
        tmp_path / "two" / "drive.policy.mcap").read_bytes()
    assert one.logs[0].stepped == two.logs[0].stepped
