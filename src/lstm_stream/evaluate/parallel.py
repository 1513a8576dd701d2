"""Worker processes that exchange JSON lines: a process pool without pickle.

``multiprocessing`` pools send arguments and results through pickle. Nothing
untrusted travels there, but the project's rule is no pickle on any path that
reads a file or a socket, and a pool's pipes are such a path. Here each worker
is ``python -m lstm_stream.evaluate.parallel MODULE:FUNCTION``: it reads one JSON
array of arguments per line on stdin, calls the function, and writes its
JSON-able result as one line on stdout (the library never prints; logging goes
to stderr). One thread per worker feeds it items from a shared queue.
"""

from __future__ import annotations

import importlib
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

Done = Callable[[int], None]  # called with an item's index when it has finished


def run(function: str, items: Sequence[Sequence[Any]], workers: int,
        on_done: Done | None = None) -> list[Any]:
    """Call ``function`` (``"module:name"``) on each argument list of ``items`` in
    ``workers`` processes; results in the order of ``items``.

    A worker that dies leaves an error message (a string) as the result of the
    item it held, and a fresh worker takes over the rest.
    """
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(items)):
        todo.put(index)
    results: list[Any] = [None] * len(items)
    lock = threading.Lock()

    def feed() -> None:
        proc: subprocess.Popen[str] | None = None
        try:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                if proc is None or proc.poll() is not None:
                    proc = _start(function)
                result = _call(proc, items[index])
                with lock:
                    results[index] = result
                    if on_done is not None:
                        on_done(index)
        finally:
            if proc is not None:
                _stop(proc)

    threads = [threading.Thread(target=feed, daemon=True)
               for _ in range(max(1, min(workers, len(items))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _start(function: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lstm_stream.evaluate.parallel", function],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _call(proc: subprocess.Popen[str], args: Sequence[Any]) -> Any:
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(list(args)) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
    except (BrokenPipeError, OSError):
        line = ""
    if not line:
        code = proc.wait()
        return f"the worker process exited (code {code}) while working on {args[0]!r}"
    return json.loads(line)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def serve(function: str, lines: IO[str], out: IO[str]) -> None:
    """The worker's loop: one JSON argument array in, one JSON result out, per line."""
    module, _, name = function.partition(":")
    call = getattr(importlib.import_module(module), name)
    for line in lines:
        out.write(json.dumps(call(*json.loads(line))) + "\n")
        out.flush()


if __name__ == "__main__":
    serve(sys.argv[1], sys.stdin, sys.stdout)
