"""Fleet evaluation on a Ray cluster: ``lstm-stream eval LOG... --ray ADDRESS``.

One Ray task per log, each running :func:`~lstm_stream.evaluate.run.evaluate_log_plain`,
the function the local process pool runs, so the two paths cannot drift apart;
the caller gathers the plain results into the same report.

What crosses the network is plain data only: the log's path, the options as a
dict, the model's bytes (put once into Ray's object store, so worker nodes need
no copy of the model) and back a JSON-able dict or an error message. Ray itself
serialises task arguments and results with pickle over its own sockets, so run
it on a trusted cluster network only (docs/logs.md).

``ray`` is imported here only, and only when ``--ray`` is given: ``serve`` and a
plain ``eval`` never load it and work without the ``[cluster]`` extra.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lstm_stream.core.errors import ConfigError, EvaluationError
from lstm_stream.core.progress import Progress
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.evaluate.run import evaluate_log_plain

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lstm-stream[cluster]'"
CONNECT_TIMEOUT_S = 5.0  # a reachable head answers a TCP connect at once
TASK_RETRIES = 1  # a task lost with its node runs once more elsewhere; outputs are deterministic
PROGRESS_INTERVAL_S = 0.5  # collect what has finished this often: one wait per batch, not per log
SHARED_STORAGE = ("logs and the --report directory must be on storage every node of the Ray "
                  "cluster can read and write, mounted at the same path (the model need not: "
                  "it is shipped through Ray's object store)")

TASK_ERROR_IP = re.compile(r"\bip=([^\s,)]+)")

# A task returns {"node": "<host> (<ip>)", "result": <evaluate_log_plain's output>}.
TaskOutput = dict[str, Any]


def evaluate_on_ray(paths: Sequence[str | Path], options: EvalOptions, address: str,
                    progress: Progress) -> list[dict[str, Any] | str]:
    """Evaluate each log as one task on the Ray cluster at ``address``; outputs in log order.

    Each output is what :func:`evaluate_log_plain` returns (a result dict, or an
    error message naming the log), for :func:`~lstm_stream.evaluate.results.from_plain`.
    """
    target = parse_address(address)
    ray = _import_ray()
    _connect(ray, address, target)
    try:
        model = ray.put(Path(options.model).read_bytes())
        task = ray.remote(_evaluate_task).options(max_retries=TASK_RETRIES)
        cwd = os.getcwd()
        plain = asdict(options)
        refs = [task.remote(str(p), plain, model, cwd) for p in paths]
        return _gather(ray, refs, [str(p) for p in paths], address, progress)
    finally:
        ray.shutdown()  # disconnects this driver; the cluster keeps running


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT``; None for ``auto`` without ``RAY_ADDRESS``."""
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "")
        return _host_port(env, "RAY_ADDRESS") if env and "://" not in env else None
    return _host_port(address, "--ray")


def _host_port(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {address!r}: expected HOST:PORT of a Ray head, e.g. "
                          "127.0.0.1:6379 (what `ray start --head` prints), or auto.")
    return host, int(port)


def _import_ray() -> Any:
    """The ``ray`` module, with usage statistics off; a clear error when it is missing.

    Typed ``Any``: ray is large and loosely typed, and mypy must pass without it.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
    try:
        return importlib.import_module("ray")
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "ray":
            raise
        raise EvaluationError("--ray needs the 'ray' package: install the cluster extra with "
                              f"`{INSTALL_HINT}` (on this machine and on every node of the "
                              "cluster), or drop --ray to evaluate here.") from err


def _connect(ray: Any, address: str, target: tuple[str, int] | None) -> None:
    """Join the running cluster; never start one (``ray.init`` would, without an address)."""
    if target is not None:
        _probe(address, target)
        _probe_dialled(ray, address, target)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
        if target is None:
            raise EvaluationError(
                f"--ray auto found no running Ray cluster ({err}). It looks at RAY_ADDRESS and "
                "for a head started on this machine: start one with `ray start --head "
                "--port 6379 --disable-usage-stats --include-dashboard false`, or give "
                "--ray HOST:PORT.") from err
        raise EvaluationError(
            f"Could not join the Ray cluster at {address!r}: {err}. Check that a Ray head "
            f"runs there (`ray status --address {address}`), that this machine runs the "
            f"same versions of ray ({ray.__version__}) and Python as the cluster, and, if "
            "the cluster requires a token (RAY_AUTH_MODE=token), that RAY_AUTH_MODE and "
            "the same token are set here.") from err
    log.info("joined the Ray cluster at %s: %s CPU(s) on %d node(s)", address,
             ray.cluster_resources().get("CPU", 0), sum(n["Alive"] for n in ray.nodes()))


def _probe(address: str, target: tuple[str, int]) -> None:
    """Fail in seconds, naming the address, where ``ray.init`` would retry for minutes."""
    host, port = target
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise EvaluationError(
            f"Could not reach a Ray head at {address!r} ({reason}). Start one on {host} with "
            f"`ray start --head --node-ip-address {host} --port {port} --disable-usage-stats "
            "--include-dashboard false` (then `ray start --address HEAD:PORT` on each worker "
            "node), or give --ray the address that `ray start --head` printed.") from err


def _probe_dialled(ray: Any, address: str, target: tuple[str, int]) -> None:
    """Ray dials a loopback address as this machine's network address (unless in its
    single-machine mode); a head bound to loopback only is not there, and ray.init
    would retry for many minutes."""
    host, port = target
    if not _is_loopback(host):
        return
    dialled = ray.util.get_node_ip_address()
    if _is_loopback(dialled):
        return
    try:
        socket.create_connection((dialled, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise EvaluationError(
            f"Ray connects to {address!r} through this machine's address {dialled}:{port}, "
            f"where nothing answers ({err.strerror or type(err).__name__}): the head listens "
            "on loopback only, as in Ray's single-machine mode. Set "
            f"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for lstm-stream eval too, as for the head, "
            "or start the head without it (docs/logs.md).") from err


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def _gather(ray: Any, refs: list[Any], paths: list[str], address: str,
            progress: Progress) -> list[dict[str, Any] | str]:
    """Collect task outputs as they finish, reporting progress; failures become messages."""
    index = {ref: i for i, ref in enumerate(refs)}
    outputs: list[dict[str, Any] | str] = [""] * len(refs)
    pending = list(refs)
    progress.start(f"eval logs on Ray {address}", len(refs))
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=PROGRESS_INTERVAL_S)
        for ref in done:
            i = index[ref]
            outputs[i] = _output(ray, ref, paths[i])
            progress.advance(1, Path(paths[i]).name)
    progress.close()
    return outputs


def _output(ray: Any, ref: Any, path: str) -> dict[str, Any] | str:
    """One task's result, or a message naming the log and the node, never an exception."""
    try:
        out: TaskOutput = ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # an exception our code did not expect
        cause = err.cause if err.cause is not None else err
        node = TASK_ERROR_IP.search(str(err))  # its header: "ray::f() (pid=.., ip=..)"
        where = f" on node {node.group(1)}" if node else ""
        return (f"Log {path!r}: its Ray task failed{where}: "
                f"{type(cause).__name__}: {_first_line(cause)}")
    except ray.exceptions.RayError as err:
        return f"Log {path!r}: its Ray task was lost ({type(err).__name__}: {_first_line(err)})"
    result: dict[str, Any] | str = out["result"]
    if isinstance(result, dict) and not os.path.exists(result["output"]):
        return (f"Log {path!r}: its output {result['output']!r} was written on node "
                f"{out['node']} but is not visible here: {SHARED_STORAGE}.")
    return result


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


# -- on a worker node -----------------------------------------------------------------


def _evaluate_task(path: str, options: dict[str, Any], model: bytes, cwd: str) -> TaskOutput:
    """A Ray task: the model from the object store, then the local path's per-log function.

    Runs in the driver's working directory when the node has it, so relative
    paths mean what they meant where ``eval`` was started.
    """
    node = _node_name()
    with _working_directory(cwd), tempfile.TemporaryDirectory(prefix="lstm-stream-") as tmp:
        problem = _unreadable(path, node, cwd)
        if problem is not None:
            return {"node": node, "result": problem}
        model_path = Path(tmp) / Path(options["model"]).name  # same name: same output metadata
        model_path.write_bytes(model)
        try:
            result = evaluate_log_plain(path, {**options, "model": str(model_path)})
        except OSError as err:  # typically the --report directory is not shared or writable
            result = (f"Log {path!r}: file error on Ray node {node} ({err.strerror or err}: "
                      f"{err.filename}): {SHARED_STORAGE}.")
        return {"node": node, "result": result}


def _node_name() -> str:
    ray = importlib.import_module("ray")  # on a worker: ray is there, it runs this task
    return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"


@contextlib.contextmanager
def _working_directory(cwd: str) -> Iterator[None]:
    """Change directory for one task: a Ray worker process runs one task at a time."""
    if not os.path.isdir(cwd):
        yield  # relative paths will not be found, and _unreadable says why
        return
    with contextlib.chdir(cwd):
        yield


def _unreadable(path: str, node: str, cwd: str) -> str | None:
    """The message for a log this node cannot open, naming the log and the node.

    Other damage (not a file, not MCAP) is left to the per-log function, which
    reports it exactly as the local path does.
    """
    try:
        with open(path, "rb"):
            return None
    except (FileNotFoundError, PermissionError) as err:
        where = "" if os.path.isabs(path) else f" (relative to {cwd!r})"
        return (f"Log {path!r}{where} cannot be read on Ray node {node} "
                f"({err.strerror}): {SHARED_STORAGE}.")
    except OSError:
        return None
