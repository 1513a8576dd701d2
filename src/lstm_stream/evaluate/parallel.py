"""Worker processes for ``eval --workers``: a ``ProcessPoolExecutor`` that sees only text.

Arguments and results cross the pool's pipes as JSON documents: the pool pickles
strings only (the function's ``"module:name"``, one JSON array of arguments in,
one JSON result out), so nothing read from a file or a socket is ever
unpickled, and what a worker returns is plain data by construction. Workers are
spawned, never forked: the parent may hold onnxruntime and ZeroMQ threads.

A worker that dies (killed, out of memory, a crash in native code) breaks a
``ProcessPoolExecutor``: every call in flight fails with ``BrokenProcessPool``.
So at most ``workers`` calls are in flight at once; when the pool breaks, each of
those is run again alone in a fresh one-worker pool (the one that kills its
worker again is reported as such and costs only its own item), and a fresh pool
takes over the rest.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

Done = Callable[[int], None]  # called with an item's index when it has finished

_SPAWN = multiprocessing.get_context("spawn")


def run(function: str, items: Sequence[Sequence[Any]], workers: int,
        on_done: Done | None = None) -> list[Any]:
    """Call ``function`` (``"module:name"``, JSON-able arguments and result) on each
    argument list of ``items`` in ``workers`` processes; results in the order of ``items``.

    A call whose worker dies, or that raises, leaves an error message (a string)
    as its result; the other items are unaffected.
    """
    results: list[Any] = [None] * len(items)
    done = on_done or (lambda _: None)
    todo = deque(range(len(items)))
    while todo:
        for index in _run_until_broken(function, items, todo, workers, results, done):
            if _run_until_broken(function, items, deque([index]), 1, results, done):
                results[index] = (f"the worker process exited (killed, out of memory or "
                                  f"crashed) while working on {_first(items[index])!r}")
                done(index)
    return results


def _run_until_broken(function: str, items: Sequence[Sequence[Any]], todo: deque[int],
                      workers: int, results: list[Any], done: Done) -> list[int]:
    """Run items taken from ``todo`` in one pool until ``todo`` is empty or a worker
    dies; returns the items that were in flight when it died."""
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo))),
                             mp_context=_SPAWN) as pool:
        flight: dict[Future[str], int] = {}
        while todo or flight:
            while todo and len(flight) < workers:
                index = todo.popleft()
                flight[pool.submit(call, function, json.dumps(list(items[index])))] = index
            finished, _ = wait(flight, return_when=FIRST_COMPLETED)
            lost = []
            for future in finished:
                index = flight.pop(future)
                try:
                    results[index] = json.loads(future.result())
                except BrokenProcessPool:
                    lost.append(index)
                    continue
                except Exception as err:  # the call raised: its item fails, the rest go on
                    results[index] = (f"{type(err).__name__} while working on "
                                      f"{_first(items[index])!r}: {err}")
                done(index)
            if lost:
                return sorted([*lost, *flight.values()])  # the pool took them all down
    return []


def call(function: str, arguments: str) -> str:
    """What a worker runs: ``function`` on the JSON ``arguments``, its result as JSON."""
    module, _, name = function.partition(":")
    result = getattr(importlib.import_module(module), name)(*json.loads(arguments))
    return json.dumps(result)


def _first(arguments: Sequence[Any]) -> Any:
    return arguments[0] if arguments else None
