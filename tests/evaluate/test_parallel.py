"""eval --workers' process pool: JSON text through a ProcessPoolExecutor, real processes.

A worker that dies must cost only the item it was working on; a call that raises
fails alone with its error.
"""

from __future__ import annotations

from lstm_stream.evaluate import parallel


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
