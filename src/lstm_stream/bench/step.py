"""In-process step latency: each backend, the bare ``run`` floor, the naive loops.

Every measurement is the same loop: one call per iteration, timed with the
monotonic clock around the call only, after a discarded warm-up.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import onnxruntime as ort

from lstm_stream.bench.stats import summarize_ns
from lstm_stream.core.backends import BackendName, create_backend
from lstm_stream.core.backends.onnxruntime import session_options
from lstm_stream.core.errors import BackendError
from lstm_stream.core.model.contract import ModelContract
from lstm_stream.core.step.results import Stepped
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.protocol import encode_output, encode_sensor

RUNNER_PATH = "runner in process: decode + state + step + encode"
FLOOR_B_PACED = "bare InferenceSession.run, 1 ms apart"


def time_calls(call: Callable[[], object], steps: int, warmup: int,
               idle_s: float = 0.0) -> np.ndarray:
    """Latency in ns of ``steps`` calls of ``call`` after ``warmup`` discarded calls.

    ``idle_s`` > 0 sleeps that long before each timed call, as a server does
    between messages: the call then starts with colder caches and clock.
    """
    for _ in range(warmup):
        call()
    out = np.empty(steps, np.int64)
    clock = time.perf_counter_ns
    for i in range(steps):
        if idle_s:
            time.sleep(idle_s)
        t0 = clock()
        call()
        out[i] = clock() - t0
    return out


def _inputs(contract: ModelContract, batch: int, seed: int = 0
            ) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, contract.n_features)).astype(np.float32)
    states = [np.zeros((s.layers, batch, s.hidden), np.float32) for s in contract.states]
    return x, states


def backend_step(contract: ModelContract, name: str, batch: int, steps: int, warmup: int,
                 threads: int = 1) -> np.ndarray:
    """A backend's ``step`` with its state fed back, as the runner does."""
    backend = create_backend(name, contract, threads=threads)
    x, states = _inputs(contract, batch)
    holder = [tuple(states)]

    def call() -> None:
        _, holder[0] = backend.step(x, holder[0])

    return time_calls(call, steps, warmup)


def bare_run(contract: ModelContract, steps: int, warmup: int, threads: int = 1,
             idle_s: float = 0.0) -> np.ndarray:
    """Floor (b): ``InferenceSession.run`` alone, latency-tuned options, state fed back
    (``idle_s``: sleep before each call, see :func:`time_calls`)."""
    sess = ort.InferenceSession(str(contract.path), sess_options=session_options(threads),
                                providers=["CPUExecutionProvider"])
    x, states = _inputs(contract, 1)
    names = [s.input for s in contract.states]
    outs = ["y", *(s.output for s in contract.states)]
    feeds: dict[str, Any] = {"x": x, **dict(zip(names, states, strict=True))}

    def call() -> None:
        result = sess.run(outs, feeds)
        for name, value in zip(names, result[1:], strict=True):
            feeds[name] = value

    return time_calls(call, steps, warmup, idle_s)


def runner_path(contract: ModelContract, steps: int, warmup: int,
                threads: int = 1) -> np.ndarray:
    """The runner's own per-message work in process: decode, state, step, encode.

    Exactly what ``Runner.handle`` does between receive and send, on pre-encoded
    wire messages of one stream, so that its difference to :func:`bare_run` is
    the runner's overhead measured under the same conditions as the floor.
    """
    backend = create_backend(BackendName.ONNXRUNTIME, contract, threads=threads)
    stepper = StreamStepper(contract, backend, max_streams=16, idle_timeout_s=1e6)
    packer = msgpack.Packer(use_bin_type=True)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(64, contract.n_features)).astype(np.float32)
    total = steps + warmup
    frames = [[b"sensors", encode_sensor(k, xs[k % 64], stream="bench", stamp_ns=k)]
              for k in range(total)]
    counter = [0]

    def call() -> None:
        k = counter[0]
        counter[0] = k + 1
        result = stepper.step(frames[k], k)
        assert isinstance(result, Stepped), result
        encode_output(packer, result.msg, result.y[0].tolist(), result.step, result.reset,
                      result.gap, 0)

    return time_calls(call, steps, warmup)


def naive_ort(contract: ModelContract, steps: int, warmup: int) -> np.ndarray:
    """What a user writes first: a default ``InferenceSession`` and a feed dict per call."""
    sess = ort.InferenceSession(str(contract.path), providers=["CPUExecutionProvider"])
    x, states = _inputs(contract, 1)
    holder = {s.input: a for s, a in zip(contract.states, states, strict=True)}

    def call() -> None:
        result = sess.run(None, {"x": x, **holder})
        for s, value in zip(contract.states, result[1:], strict=True):
            holder[s.input] = value

    return time_calls(call, steps, warmup)


def naive_torch(contract: ModelContract, steps: int, warmup: int) -> np.ndarray:
    """A Python loop around ``torch.nn.LSTM`` (same shape) keeping ``(h, c)`` itself."""
    torch = _import_torch()
    layers, hidden = contract.states[0].layers, contract.states[0].hidden
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(contract.n_features, hidden, num_layers=layers)
    head = torch.nn.Linear(hidden, contract.n_outputs)
    x = torch.randn(1, 1, contract.n_features)  # (T=1, B=1, F)
    state = [(torch.zeros(layers, 1, hidden), torch.zeros(layers, 1, hidden))]

    def call() -> None:
        with torch.inference_mode():
            out, state[0] = lstm(x, state[0])
            head(out[0]).numpy()

    return time_calls(call, steps, warmup)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise BackendError("torch is not installed") from err
    torch.set_num_threads(1)
    return torch


def step_suite(contract: ModelContract, *, steps: int, warmup: int, batches: tuple[int, ...],
               threads: int = 1, with_torch: bool = True) -> dict[str, Any]:
    """Step latency of every backend at every batch size, plus floor (b) and naive loops."""
    results: dict[str, Any] = {}
    backends = [BackendName.ONNXRUNTIME, BackendName.NUMPY]
    if with_torch and has_torch():
        backends.append(BackendName.TORCH)
    for name in backends:
        for batch in batches:
            n = steps if name == BackendName.ONNXRUNTIME else max(200, steps // 10)
            samples = backend_step(contract, name, batch, n, min(warmup, n), threads)
            results[f"{name} batch {batch}"] = summarize_ns(samples)
    results["floor b: bare InferenceSession.run"] = summarize_ns(
        bare_run(contract, steps, warmup, threads))
    results[RUNNER_PATH] = summarize_ns(runner_path(contract, steps, warmup, threads))
    # The same run 1 ms after the previous one, as at 1 kHz: what waking up costs
    # onnxruntime alone on this machine (floor (b) above is back to back).
    results[FLOOR_B_PACED] = summarize_ns(
        bare_run(contract, max(200, steps // 10), warmup, threads, idle_s=0.001))
    results["naive: default InferenceSession loop"] = summarize_ns(
        naive_ort(contract, steps, warmup))
    if with_torch and has_torch():
        results["naive: torch.nn.LSTM loop"] = summarize_ns(
            naive_torch(contract, max(200, steps // 2), warmup))
    return results


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None
