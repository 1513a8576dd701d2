"""The runner in-process (a thread, real sockets, a real onnxruntime session).

Covers what a subprocess cannot easily provoke: a backend that fails mid-run
must not kill the runner nor touch the stream's state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import zmq

from lstm_stream.core.backends.onnxruntime import OnnxRuntimeBackend
from lstm_stream.core.config.runner import load_runner_config
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.serve.client import VehicleStack, control_request
from lstm_stream.serve.runner import Runner

from helpers.support import REPO, free_endpoint

MODEL = REPO / "models" / "random_lstm.onnx"
POISON = 12345.0  # a feature value that makes the backend below raise


class FailingOnPoison(OnnxRuntimeBackend):
    """The real onnxruntime backend, raising when any row's x[0] is POISON (a backend bug).

    In a batch, the poisoned row fails the whole call: the stepper must then step
    the rows one by one so that only the poisoned message is rejected."""

    def step(self, x: np.ndarray, states: Sequence[np.ndarray]
             ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        _refuse_poison(x)
        return super().step(x, states)

    def step_one(self, x: np.ndarray, states: Sequence[np.ndarray]
                 ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        _refuse_poison(x)
        return super().step_one(x, states)


def _refuse_poison(x: np.ndarray) -> None:
    if (x[:, 0] == POISON).any():
        raise RuntimeError("simulated backend failure")


@pytest.fixture
def served() -> Iterator[tuple[Runner, VehicleStack]]:
    ctx = zmq.Context()
    stack = VehicleStack(ctx)
    cfg = load_runner_config(None, [
        f'model.path="{MODEL}"', f'input.endpoint="{stack.sensors_endpoint}"',
        f'output.endpoint="{free_endpoint()}"', f'control.endpoint="{free_endpoint()}"'])
    contract = load_contract(MODEL)
    runner = Runner(cfg, context=ctx, contract=contract, backend=FailingOnPoison(contract))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    stack.wait_subscribed()
    stack.connect_outputs(cfg.output.endpoint, cfg.control.endpoint)
    yield runner, stack
    runner.stop()
    thread.join(5)
    runner.close()
    stack.close()
    ctx.destroy(linger=0)


def test_backend_failure_is_rejected_and_state_untouched(
        served: tuple[Runner, VehicleStack]) -> None:
    runner, stack = served
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=16).astype(np.float32) for _ in range(3)]
    poison = np.full(16, POISON, np.float32)
    stack.send(encode_sensor(0, xs[0], stream="s"))
    stack.send(encode_sensor(1, poison, stream="s"))
    stack.send(encode_sensor(1, xs[1], stream="s"))  # seq 1 again: the failed one never counted
    stack.send(encode_sensor(0, poison, stream="never"))
    got = stack.receive(4)
    assert [t for t, _ in got] == ["policy", "diagnostics", "policy", "diagnostics"]
    assert got[1][1]["reason"] == "step_failed" and "simulated" in got[1][1]["detail"]
    # the output after the failure equals an uninterrupted run of xs[0], xs[1]
    ref = OnnxRuntimeBackend(runner.contract)
    zeros = tuple(np.zeros((s.layers, 1, s.hidden), np.float32) for s in runner.contract.states)
    _, st = ref.step(xs[0].reshape(1, -1), zeros)
    y1, _ = ref.step(xs[1].reshape(1, -1), st)
    np.testing.assert_allclose(got[2][1]["y"], y1[0], atol=1e-6)
    assert got[2][1]["step"] == 2 and got[2][1]["gap"] == 0
    # a stream whose first step failed was never created
    assert "never" not in runner.store and "s" in runner.store
    assert runner.counters.rejected == {"step_failed": 2}


def test_status_reports_latency_percentiles(served: tuple[Runner, VehicleStack]) -> None:
    _runner, stack = served
    for seq in range(50):
        stack.send(encode_sensor(seq, np.zeros(16, np.float32), stream="lat"))
    stack.receive(50)
    assert stack.control_endpoint is not None
    status: dict[str, Any] = control_request(stack.control_endpoint, {"cmd": "status"})
    lat = status["latency_ns"]
    assert lat["window"] == 50
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert status["subscriptions"] == {"": 1}
