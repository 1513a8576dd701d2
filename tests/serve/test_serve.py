"""`lstm-stream serve` end to end: a real subprocess, real sockets, real onnxruntime.

Outputs are checked against the numpy backend stepped offline over the same
sequences (the numpy backend is itself checked against the reference cell and
onnxruntime in tests/backends).
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.serve.client import control_request

from helpers.support import (
    REPO,
    Reference,
    Served,
    VehicleStack,
    poisoned_model,
    run_python,
    serve_process,
)
from helpers.tools import build_step_model

MODEL = REPO / "models" / "random_lstm.onnx"


@pytest.fixture
def stack(ctx: zmq.Context[Any]) -> Iterator[VehicleStack]:
    vs = VehicleStack(ctx)
    yield vs
    vs.close()


@pytest.fixture
def runner(stack: VehicleStack, request: pytest.FixtureRequest) -> Iterator[Served]:
    extra = getattr(request, "param", ())
    with serve_process(MODEL, stack.sensors_endpoint, *extra) as ends:
        stack.wait_subscribed()
        stack.connect_outputs(ends.output, ends.control)
        yield ends


def status(ends: Served) -> dict[str, Any]:
    return control_request(ends.control, {"cmd": "status"})


def features(rng: np.random.Generator, n: int = 16) -> np.ndarray:
    return rng.normal(size=n).astype(np.float32)


def test_interleaved_streams_equal_the_reference(stack: VehicleStack,
                                                 runner: Served) -> None:
    rng = np.random.default_rng(1)
    ref = Reference(MODEL)
    streams = ["car/1", "car/2", "trüffel-3"]
    order = [s for s in streams for _ in range(40)]
    rng.shuffle(order)
    seqs = dict.fromkeys(streams, 0)
    expected = []
    for i, name in enumerate(order):
        x = features(rng)
        reset = name == "car/2" and seqs[name] == 20  # a mid-sequence reset
        # alternate the two encodings of x
        payload = encode_sensor(seqs[name], x if i % 2 else x.tolist(), stream=name,
                                stamp_ns=1000 + i, reset=reset)
        stack.send(payload)
        expected.append((name, seqs[name], ref.step(name, x, reset), reset))
        seqs[name] += 1
    got = stack.receive(len(expected))
    steps = dict.fromkeys(streams, 0)
    for (topic, out), (name, seq, y, reset) in zip(got, expected, strict=True):
        assert topic == "policy"
        assert (out["stream"], out["seq"]) == (name, seq)
        np.testing.assert_allclose(out["y"], y, atol=1e-5, rtol=1e-5)
        steps[name] = 1 if (reset or steps[name] == 0) else steps[name] + 1
        assert out["step"] == steps[name]
        want = "new_stream" if seq == 0 else ("requested" if reset else None)
        assert out["reset"] == want
        assert out["gap"] == 0 and out["latency_ns"] > 0 and out["stamp_ns"] >= 1000
    st = status(runner)
    assert st["stepped"] == len(expected) and st["streams"] == 3
    assert st["resets"] == {"new_stream": 3, "requested": 1}
    assert st["latency_ns"]["p50"] > 0


def test_gap_is_reported_and_stale_seq_dropped(stack: VehicleStack,
                                               runner: Served) -> None:
    rng = np.random.default_rng(2)
    ref = Reference(MODEL)
    xs = [features(rng) for _ in range(4)]
    for seq, x in zip([0, 1, 5, 5], xs, strict=True):  # gap of 3, then a duplicate
        stack.send(encode_sensor(seq, x, stream="g"))
    stack.send(encode_sensor(6, xs[0], stream="g"))
    got = stack.receive(5)
    topics = [t for t, _ in got]
    assert topics == ["policy", "policy", "policy", "diagnostics", "policy"]
    assert [o.get("gap") for t, o in got if t == "policy"] == [0, 0, 3, 0]
    diag = got[3][1]
    assert diag["reason"] == "stale_seq" and diag["stream"] == "g" and diag["seq"] == 5
    # the state carries across the gap and ignores the duplicate
    want = [ref.step("g", x) for x in (xs[0], xs[1], xs[2], xs[0])]
    ys = [o["y"] for t, o in got if t == "policy"]
    np.testing.assert_allclose(ys, want, atol=1e-5)
    assert status(runner)["rejected"] == {"stale_seq": 1}


def test_control_reset_one_stream_and_all(stack: VehicleStack, runner: Served) -> None:
    rng = np.random.default_rng(3)
    ref = Reference(MODEL)
    seq = 0

    def round_trip(reset_streams: set[str]) -> list[dict[str, Any]]:
        nonlocal seq
        outs = []
        for name in ("a", "b"):
            x = features(rng)
            stack.send(encode_sensor(seq, x, stream=name))
            out = stack.receive(1)[0][1]
            np.testing.assert_allclose(out["y"], ref.step(name, x, name in reset_streams),
                                       atol=1e-5)
            outs.append(out)
        seq += 1
        return outs

    round_trip(set())
    round_trip(set())
    assert control_request(runner.control, {"cmd": "reset", "stream": "b"}) == {
        "ok": True, "reset": 1}
    a, b = round_trip({"b"})
    assert a["reset"] is None and b["reset"] == "control" and b["step"] == 1
    assert control_request(runner.control, {"cmd": "reset"}) == {"ok": True, "reset": 2}
    a, b = round_trip({"a", "b"})
    assert a["reset"] == b["reset"] == "control"
    streams = control_request(runner.control, {"cmd": "streams"})["streams"]
    assert {s["stream"]: s["last_seq"] for s in streams} == {"a": 3, "b": 3}


@pytest.mark.parametrize("runner", [("--set", "state.idle_timeout_s=0.3")], indirect=True)
def test_idle_stream_expires_and_resets(stack: VehicleStack, runner: Served) -> None:
    x = np.ones(16, np.float32)
    stack.send(encode_sensor(0, x, stream="sleepy"))
    stack.send(encode_sensor(1, x, stream="sleepy"))
    assert [o["reset"] for _, o in stack.receive(2)] == ["new_stream", None]
    topic, event = stack.receive(1, timeout_s=5)[0]  # expiry is announced
    assert topic == "diagnostics" and event["event"] == "stream_expired"
    assert event["stream"] == "sleepy" and event["last_seq"] == 1
    stack.send(encode_sensor(2, x, stream="sleepy"))
    (_, out), = stack.receive(1)
    assert out["reset"] == "idle" and out["step"] == 1
    st = status(runner)
    assert st["expired"] == 1 and st["resets"] == {"new_stream": 1, "idle": 1}


@pytest.mark.parametrize("runner", [("--set", "state.max_gap=2")], indirect=True)
def test_gap_beyond_bound_resets(stack: VehicleStack, runner: Served) -> None:
    rng = np.random.default_rng(4)
    ref = Reference(MODEL)
    xs = [features(rng) for _ in range(3)]
    for seq, x in zip([0, 3, 7], xs, strict=True):
        stack.send(encode_sensor(seq, x, stream="lossy"))
    outs = [o for _, o in stack.receive(3)]
    assert [(o["gap"], o["reset"]) for o in outs] == [(0, "new_stream"), (2, None), (3, "gap")]
    want = [ref.step("lossy", xs[0]), ref.step("lossy", xs[1]), ref.step("lossy", xs[2], True)]
    np.testing.assert_allclose([o["y"] for o in outs], want, atol=1e-5)


@pytest.mark.parametrize("runner", [("--set", "state.max_streams=2")], indirect=True)
def test_stream_cap_evicts_least_recently_used(stack: VehicleStack,
                                               runner: Served) -> None:
    x = np.zeros(16, np.float32)
    for seq, name in enumerate(["a", "b", "c"]):
        stack.send(encode_sensor(seq, x, stream=name))
    stack.receive(3)
    st = status(runner)
    assert st["streams"] == 2 and st["evicted"] == 1
    stack.send(encode_sensor(10, x, stream="a"))
    (_, out), = stack.receive(1)
    assert out["reset"] == "evicted"


def _bad_inputs() -> list[tuple[str, list[bytes], str]]:
    good_x = np.zeros(16, np.float32)

    def body(**kw: Any) -> bytes:
        return msgpack.packb({"stream": "bad", "seq": 1000, "x": good_x.tobytes(), **kw},
                             use_bin_type=True)

    return [
        ("garbage bytes", [b"sensors", b"\xc1\x00\xff garbage"], "not_msgpack"),
        ("truncated msgpack", [b"sensors", body()[:-5]], "not_msgpack"),
        ("not a map", [b"sensors", msgpack.packb([1, 2, 3])], "not_map"),
        ("one frame", [b"sensors"], "frames"),
        ("three frames", [b"sensors", body(), b"extra"], "frames"),
        ("missing seq", [b"sensors", msgpack.packb({"x": good_x.tobytes()})], "missing_key"),
        ("missing x", [b"sensors", msgpack.packb({"seq": 1})], "missing_key"),
        ("seq as string", [b"sensors", body(seq="7")], "bad_type"),
        ("stream as int", [b"sensors", body(stream=3)], "bad_type"),
        ("wrong length", [b"sensors", body(x=[0.0] * 15)], "wrong_length"),
        ("float64 x", [b"sensors", body(x=np.zeros(16).tobytes())], "wrong_length"),
        ("text in x", [b"sensors", body(x=["a"] * 16)], "bad_type"),
        ("NaN", [b"sensors", body(x=[math.nan] + [0.0] * 15)], "non_finite"),
        ("Inf", [b"sensors", body(x=np.full(16, np.inf, "<f4").tobytes())], "non_finite"),
        ("oversized", [b"sensors", body(pad=b"\x00" * 70_000)], "oversized"),
        ("bad topic", [b"sensors\xff", body()], "topic"),
    ]


def test_bad_input_is_rejected_and_valid_outputs_are_unchanged(
        stack: VehicleStack, runner: Served) -> None:
    rng = np.random.default_rng(5)
    ref = Reference(MODEL)
    bad = _bad_inputs()
    expected = []
    for seq, (_, frames, _) in enumerate(bad):
        x = features(rng)
        stack.send(encode_sensor(seq, x, stream="ok"))
        expected.append(ref.step("ok", x))
        stack.send_frames(frames)
    x = features(rng)
    stack.send(encode_sensor(len(bad), x, stream="ok"))
    expected.append(ref.step("ok", x))
    got = stack.receive(2 * len(bad) + 1)
    outputs = [o for t, o in got if t == "policy"]
    diags = [o for t, o in got if t == "diagnostics"]
    np.testing.assert_allclose([o["y"] for o in outputs], expected, atol=1e-5)
    assert [o["seq"] for o in outputs] == list(range(len(bad) + 1))
    assert [d["reason"] for d in diags] == [reason for _, _, reason in bad]
    for d, (case, _, _) in zip(diags, bad, strict=True):
        assert d["event"] == "rejected" and d["detail"], case
    st = status(runner)
    want: dict[str, int] = {}
    for _, _, reason in bad:
        want[reason] = want.get(reason, 0) + 1
    assert st["rejected"] == want
    assert st["stepped"] == len(bad) + 1 and st["streams"] == 1  # "bad" never created


def test_named_features_are_accepted(stack: VehicleStack, runner: Served) -> None:
    contract = load_contract(MODEL)
    assert contract.feature_names is not None
    ref = Reference(MODEL)
    x = features(np.random.default_rng(6))
    named = {name: float(v) for name, v in zip(contract.feature_names, x, strict=True)}
    stack.send(msgpack.packb({"stream": "named", "seq": 0, "x": named}))
    (_, out), = stack.receive(1)
    np.testing.assert_allclose(out["y"], ref.step("named", x), atol=1e-5)


def test_malformed_control_requests_get_error_replies(ctx: zmq.Context[Any],
                                                      runner: Served) -> None:
    requests = [b"\xc1", msgpack.packb([1]), msgpack.packb({"cmd": 5}),
                msgpack.packb({"cmd": "explode"}), msgpack.packb({"cmd": "reset", "stream": 3}),
                msgpack.packb({"cmd": "reset", "stream": "ghost"})]
    matches = ["not msgpack", "must be a map", "must be a map", "unknown cmd 'explode'",
               "'stream' must be a string", "unknown stream 'ghost'"]
    for raw, match in zip(requests, matches, strict=True):
        with ctx.socket(zmq.REQ) as req:
            req.connect(runner.control)
            req.send(raw)
            assert req.poll(5000), "no reply"
            reply = msgpack.unpackb(req.recv())
        assert reply["ok"] is False and match in reply["error"]
    # a DEALER peer with no delimiter frame and an empty message also gets answers
    with ctx.socket(zmq.DEALER) as dealer:
        dealer.connect(runner.control)
        dealer.send(msgpack.packb({"cmd": "status"}))
        assert dealer.poll(5000)
        assert msgpack.unpackb(dealer.recv())["ok"] is True
    assert status(runner)["ok"] is True


def test_an_oversized_control_request_is_answered_with_the_limit(ctx: zmq.Context[Any],
                                                                 runner: Served) -> None:
    big = msgpack.packb({"cmd": "status", "padding": "x" * 100_000})
    with ctx.socket(zmq.REQ) as req:
        req.connect(runner.control)
        req.send(big)
        assert req.poll(5000), "no reply to a 100 kB request"
        reply = msgpack.unpackb(req.recv())
        assert reply["ok"] is False
        assert f"request is {len(big)} bytes, more than the control limit of 65536" in (
            reply["error"])
        req.send(msgpack.packb({"cmd": "status"}))  # the same client goes on
        assert req.poll(5000) and msgpack.unpackb(req.recv())["ok"] is True
    assert status(runner)["control_errors"] == 1  # counted


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_exit_on_signal(stack: VehicleStack, sig: signal.Signals) -> None:
    with serve_process(MODEL, stack.sensors_endpoint) as served:
        served.proc.send_signal(sig)
        assert served.proc.wait(timeout=10) == 0
        log = served.proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "stopping:" in log


def test_runtime_imports_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"  # any 'import torch' now fails
            "import lstm_stream.serve.runner, lstm_stream.cli.main\n"
            "import lstm_stream.core.backends.onnxruntime\n"
            "import lstm_stream.core.backends.numpy, lstm_stream.cli.info\n"
            "from lstm_stream.cli.main import main\n"
            "assert main(['info', 'models/random_lstm.onnx']) == 0\n")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert "x [batch, 16]" in done.stdout


def test_serve_refuses_a_model_that_breaks_the_contract(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx file")
    done = subprocess.run([sys.executable, "-m", "lstm_stream", "serve", str(broken)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "broken.onnx" in done.stderr and "error" in done.stderr


def test_a_gru_without_metadata_serves(stack: VehicleStack, tmp_path: Path) -> None:
    """Any model that follows the contract serves, here a GRU with a single state."""
    from helpers.tools import build_step_model

    model = build_step_model(cell="gru", layers=2, hidden=8, features=5, outputs=3, seed=4)
    del model.metadata_props[:]
    path = tmp_path / "gru.onnx"
    path.write_bytes(model.SerializeToString())
    contract = load_contract(path)
    assert [s.input for s in contract.states] == ["h"] and contract.feature_names is None
    ref = Reference(path)
    rng = np.random.default_rng(7)
    with serve_process(path, stack.sensors_endpoint) as served:
        stack.wait_subscribed()
        stack.connect_outputs(served.output, served.control)
        xs = [rng.normal(size=5).astype(np.float32) for _ in range(10)]
        for seq, x in enumerate(xs):
            stack.send(encode_sensor(seq, x, stream="gru"))
        outs = [o for _, o in stack.receive(10)]
    np.testing.assert_allclose([o["y"] for o in outs], [ref.step("gru", x) for x in xs],
                               atol=1e-5)
    assert [o["step"] for o in outs] == list(range(1, 11))


@pytest.mark.parametrize("runner", [("--set", "input.busy_poll_us=20000")], indirect=True)
def test_busy_polling_changes_timing_not_outputs(stack: VehicleStack, runner: Served) -> None:
    rng = np.random.default_rng(8)
    ref = Reference(MODEL)
    xs = [features(rng) for _ in range(30)]
    for seq, x in enumerate(xs):
        stack.send(encode_sensor(seq, x, stream="spin"))
        if seq == 15:
            time.sleep(0.05)  # let the spin window run out: the loop must sleep and wake
    outs = [o for _, o in stack.receive(30)]
    np.testing.assert_allclose([o["y"] for o in outs], [ref.step("spin", x) for x in xs],
                               atol=1e-5)
    assert status(runner)["stepped"] == 30


def test_a_burst_of_many_streams_is_batched_in_order_and_exact(stack: VehicleStack,
                                                                runner: Served) -> None:
    """3000 messages of 100 streams sent as fast as possible: the runner steps them in
    batches (status: fewer backend calls than steps), every stream's outputs arrive
    in seq order, and each equals, bit for bit, stepping one message at a time."""
    from lstm_stream.core.backends import create_backend
    from lstm_stream.core.step.results import Stepped
    from lstm_stream.core.step.stepper import StreamStepper

    contract = load_contract(MODEL)
    unbatched = StreamStepper(contract, create_backend("onnxruntime", contract))
    rng = np.random.default_rng(7)
    frames = []
    for k in range(30):
        for i in rng.permutation(100):
            payload = encode_sensor(k, features(rng), stream=f"sim-{i}")
            frames.append([b"sensors", payload])
            if i == 3:  # one stream twice in a row: must never share a batch
                for seq in (2 * k, 2 * k + 1):
                    frames.append([b"sensors",
                                   encode_sensor(seq, features(rng), stream="twice")])
    for f in frames:
        stack.send_frames(f)
    expected: dict[str, list[tuple[int, list[float]]]] = {}
    for t, f in enumerate(frames):
        result = unbatched.step(f, t)
        assert isinstance(result, Stepped)
        expected.setdefault(result.msg.stream, []).append((result.msg.seq, result.y[0].tolist()))
    got: dict[str, list[tuple[int, list[float]]]] = {}
    for topic, out in stack.receive(len(frames), timeout_s=30):
        assert topic == "policy"
        got.setdefault(out["stream"], []).append((out["seq"], out["y"]))
    assert got == expected  # per stream: same order, same floats
    st = status(runner)
    assert st["stepped"] == len(frames) and st["batches"] < st["stepped"]


@pytest.mark.parametrize("runner", [("--set", "batching.max_wait_us=300000")], indirect=True)
def test_max_wait_gathers_messages_that_arrive_later(stack: VehicleStack,
                                                     runner: Served) -> None:
    rng = np.random.default_rng(5)
    ref = Reference(MODEL)
    want = []
    for i in range(4):  # 20 ms apart, all within the 300 ms wait of the first
        x = features(rng)
        stack.send(encode_sensor(0, x, stream=f"v{i}"))
        want.append(ref.step(f"v{i}", x))
        time.sleep(0.02)
    got = stack.receive(4)
    for (_, out), y in zip(got, want, strict=True):
        np.testing.assert_allclose(out["y"], y, atol=1e-5)
    st = status(runner)
    assert st["stepped"] == 4 and st["batches"] == 1
    assert min(out["latency_ns"] for _, out in got) >= 10_000_000  # the last one waited too


@pytest.mark.parametrize("runner", [("--set", "batching.max_batch=1")], indirect=True)
def test_max_batch_one_steps_every_message_alone(stack: VehicleStack, runner: Served) -> None:
    rng = np.random.default_rng(6)
    for k in range(50):
        for i in range(10):
            stack.send(encode_sensor(k, features(rng), stream=f"v{i}"))
    stack.receive(500)
    st = status(runner)
    assert st["stepped"] == st["batches"] == 500


@pytest.mark.parametrize("target", ["y", "c_out"])
def test_non_finite_model_outputs_never_reach_policy(stack: VehicleStack, tmp_path: Path,
                                                     target: str) -> None:
    """A model that returns NaN for some inputs: those messages are rejected as
    bad_output, never published, and the stream goes on from the state before them."""
    path = poisoned_model(tmp_path / "nan.onnx", target)
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(build_step_model().SerializeToString())  # the same weights, no poison
    ref = Reference(plain)
    rng = np.random.default_rng(13)
    poisoned = {3, 4, 8}
    expected = []
    with serve_process(path, stack.sensors_endpoint) as served:
        stack.wait_subscribed()
        stack.connect_outputs(served.output, served.control)
        for seq in range(12):
            x = np.abs(features(rng))
            if seq in poisoned:
                x[0] = -1.0
            else:
                expected.append(ref.step("car", x))
            stack.send(encode_sensor(seq, x, stream="car"))
        got = stack.receive(12)
        st = status(served)
    outputs = [o for t, o in got if t == "policy"]
    diags = [o for t, o in got if t == "diagnostics"]
    assert [o["seq"] for o in outputs] == [s for s in range(12) if s not in poisoned]
    assert all(np.isfinite(o["y"]).all() for o in outputs)
    np.testing.assert_allclose([o["y"] for o in outputs], expected, atol=1e-5)
    assert [(d["reason"], d["stream"], d["seq"]) for d in diags] == [
        ("bad_output", "car", s) for s in sorted(poisoned)]
    assert ("output y" if target == "y" else "new state 'c_out'") in diags[0]["detail"]
    assert st["rejected"] == {"bad_output": 3} and st["stepped"] == 9


def test_a_model_with_a_nan_weight_publishes_nothing(stack: VehicleStack,
                                                     tmp_path: Path) -> None:
    path = poisoned_model(tmp_path / "nan_weight.onnx", "weight")
    with serve_process(path, stack.sensors_endpoint) as served:
        stack.wait_subscribed()
        stack.connect_outputs(served.output, served.control)
        for seq in range(5):
            stack.send(encode_sensor(seq, np.ones(16, np.float32), stream="car"))
        got = stack.receive(5)
        st = status(served)
    assert [t for t, _ in got] == ["diagnostics"] * 5
    assert {d["reason"] for _, d in got} == {"bad_output"}
    assert st["stepped"] == 0 and st["published"] == 0 and st["streams"] == 0
    assert st["rejected"] == {"bad_output": 5}
