"""Faults around a real `serve`: publisher restart, subscriber churn, bursts, stream churn,
messages cut by ZMQ_MAXMSGSIZE. Real processes, real sockets on loopback.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.serve.client import control_request

from helpers.support import REPO, Reference, Served, VehicleStack, free_endpoint, serve_process

MODEL = REPO / "models" / "random_lstm.onnx"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def status(served: Served) -> dict[str, Any]:
    return control_request(served.control, {"cmd": "status"})


def wait_for(predicate: Any, timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def wait_subscribed(pub: zmq.Socket[Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pub.poll(100) and pub.recv() == b"\x01sensors":
            return
    raise AssertionError("the runner did not (re)subscribe")


def xpub(ctx: zmq.Context[Any], endpoint: str, sndhwm: int = 0) -> zmq.Socket[Any]:
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, sndhwm)
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    pub.bind(endpoint)
    return pub


def outputs(sub: zmq.Socket[Any], count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0 and sub.poll(int(left * 1000) + 1), f"{len(got)} of {count} outputs"
        topic, payload = sub.recv_multipart()
        if topic == b"policy":
            got.append(msgpack.unpackb(payload))
    return got


def subscribe(ctx: zmq.Context[Any], served: Served) -> zmq.Socket[Any]:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(served.output)
    wait_for(lambda: status(served)["subscriptions"], what="the output subscription")
    return sub


def test_publisher_restart_reconnects_and_streams_continue_with_gaps(
        ctx: zmq.Context[Any]) -> None:
    endpoint = free_endpoint()
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(2, 20, 16)).astype(np.float32)
    ref = Reference(MODEL)
    pub = xpub(ctx, endpoint)
    with serve_process(MODEL, endpoint) as served:
        wait_subscribed(pub)
        sub = subscribe(ctx, served)

        def send(seqs: range) -> list[dict[str, Any]]:
            for seq in seqs:
                for i, name in enumerate(("a", "b")):
                    pub.send_multipart([b"sensors", encode_sensor(seq, xs[i, seq], stream=name)])
            return outputs(sub, 2 * len(seqs))

        before = send(range(10))
        pub.close(linger=0)  # the vehicle stack's publisher dies; seq 10..14 are never sent
        time.sleep(0.3)
        pub = xpub(ctx, endpoint)  # ... and comes back on the same address
        wait_subscribed(pub)
        after = send(range(15, 20))
        st = status(served)
        pub.close(linger=0)
        sub.close(linger=0)
    for i, name in enumerate(("a", "b")):
        want = [ref.step(name, xs[i, seq]) for seq in [*range(10), *range(15, 20)]]
        got = [o for o in before + after if o["stream"] == name]
        np.testing.assert_allclose([o["y"] for o in got], want, atol=1e-5)  # state carried
        assert [o["gap"] for o in got] == [0] * 10 + [5, 0, 0, 0, 0]
        assert [o["reset"] for o in got][1:] == [None] * 14
    assert st["resets"] == {"new_stream": 2} and st["stepped"] == 30


def test_output_subscriber_leaving_and_returning(ctx: zmq.Context[Any]) -> None:
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(15, 16)).astype(np.float32)
    ref = Reference(MODEL)
    with VehicleStack(ctx) as stack, serve_process(MODEL, stack.sensors_endpoint) as served:
        stack.wait_subscribed()
        sub = subscribe(ctx, served)
        for seq in range(5):
            stack.send(encode_sensor(seq, xs[seq], stream="s"))
        first = outputs(sub, 5)
        sub.close(linger=0)
        wait_for(lambda: not status(served)["subscriptions"], what="the unsubscription")
        for seq in range(5, 10):  # nobody listens: the runner steps on, never blocks
            stack.send(encode_sensor(seq, xs[seq], stream="s"))
        wait_for(lambda: status(served)["stepped"] == 10, what="steps without a subscriber")
        sub = subscribe(ctx, served)
        for seq in range(10, 15):
            stack.send(encode_sensor(seq, xs[seq], stream="s"))
        last = outputs(sub, 5)
        sub.close(linger=0)
        st = status(served)
    want = [ref.step("s", x) for x in xs]
    np.testing.assert_allclose([o["y"] for o in first + last], want[:5] + want[10:], atol=1e-5)
    assert [o["step"] for o in last] == list(range(11, 16)) and last[0]["gap"] == 0
    assert st["stepped"] == st["published"] == 15 and st["rejected"] == {}


@pytest.mark.slow
def test_burst_of_ten_times_the_rate_drops_only_visibly(ctx: zmq.Context[Any]) -> None:
    """10 streams at 100 Hz nominal (1 kHz), then 10 kHz for 2 s with small high-water
    marks. To make drops certain on any machine the runner is also paused (SIGSTOP)
    for 1 s in the burst. Every message is either stepped or counted in a later
    output's gap; the runner's memory stays bounded by the high-water marks."""
    streams = [f"burst/{i}" for i in range(10)]
    pad = b"\x00" * 2000  # unknown keys are ignored: big messages overflow kernel buffers
    x = np.zeros(16, np.float32)
    with VehicleStack(ctx, sndhwm=50) as stack, serve_process(
            MODEL, stack.sensors_endpoint, "--set", "input.rcvhwm=50") as served:
        stack.wait_subscribed()
        sub = subscribe(ctx, served)
        received: dict[str, list[dict[str, Any]]] = defaultdict(list)
        done = threading.Event()

        def receive() -> None:
            while not done.is_set() or sub.poll(500):
                if sub.poll(50):
                    topic, payload = sub.recv_multipart()
                    if topic == b"policy":
                        out = msgpack.unpackb(payload)
                        received[out["stream"]].append(out)

        thread = threading.Thread(target=receive)
        thread.start()
        seq = 0

        def run(rate_hz: float, seconds: float, pause: tuple[float, float] | None = None
                ) -> None:
            """Publish every stream at ``rate_hz`` in all; pause the runner (start, length)."""
            nonlocal seq
            start, k, paused, resumed = time.perf_counter(), 0, False, False
            while (elapsed := time.perf_counter() - start) < seconds:
                if pause and not paused and elapsed >= pause[0]:
                    os.kill(served.proc.pid, signal.SIGSTOP)
                    paused = True
                if paused and not resumed and elapsed >= pause[0] + pause[1]:
                    os.kill(served.proc.pid, signal.SIGCONT)
                    resumed = True
                if k / rate_hz > elapsed:
                    time.sleep(0.0005)
                    continue
                for name in streams:
                    body = {"stream": name, "seq": seq, "x": x.tobytes(), "pad": pad}
                    stack.send(msgpack.packb(body, use_bin_type=True))
                seq += 1
                k += len(streams)
            if paused and not resumed:
                os.kill(served.proc.pid, signal.SIGCONT)

        run(1000, 1.0)
        rss_before = rss_mb(served.proc.pid)
        run(10_000, 2.0, pause=(0.5, 1.0))
        time.sleep(1.0)
        rss_after = rss_mb(served.proc.pid)
        final = seq
        for name in streams:  # one last message per stream surfaces any trailing loss
            stack.send(encode_sensor(final, x, stream=name))
        wait_for(lambda: all(received[n] and received[n][-1]["seq"] == final for n in streams),
                 timeout_s=20, what="the final outputs")
        done.set()
        thread.join()
        st = status(served)
        sub.close(linger=0)
    dropped = 0
    for name in streams:
        outs = received[name]
        # every seq 0..final is either an output or inside a reported gap
        assert len(outs) + sum(o["gap"] for o in outs) == final + 1, name
        assert [o["reset"] for o in outs] == ["new_stream"] + [None] * (len(outs) - 1)
        dropped += sum(o["gap"] for o in outs)
    assert dropped > 0  # the burst did overflow, and it was surfaced
    assert st["stepped"] == sum(len(v) for v in received.values())  # no output was lost
    assert rss_after - rss_before < 50  # backlog bounded by the high-water marks


def test_thousands_of_short_lived_streams_stay_within_the_cap(ctx: zmq.Context[Any]) -> None:
    x = np.zeros(16, np.float32)
    opts = ("--set", "state.max_streams=64", "--set", "state.idle_timeout_s=1.0")
    with VehicleStack(ctx) as stack, serve_process(MODEL, stack.sensors_endpoint,
                                                   *opts) as served:
        stack.wait_subscribed()
        stack.connect_outputs(served.output, served.control)
        rss = []
        total = 3000
        for start in range(0, total, 250):
            for i in range(start, start + 250):
                stack.send(encode_sensor(0, x, stream=f"short/{i}"))
                stack.send(encode_sensor(1, x, stream=f"short/{i}"))
            got = stack.receive(500)
            assert all(t == "policy" for t, _ in got) or any(
                t == "diagnostics" and o["event"] == "stream_expired" for t, o in got)
            rss.append(rss_mb(served.proc.pid))
        st = status(served)
        assert st["streams"] <= 64
        assert st["streams"] + st["evicted"] + st["expired"] == total
        assert st["evicted"] > 0
        assert st["resets"] == {"new_stream": total}
        wait_for(lambda: status(served)["streams"] == 0, what="idle expiry")
        st = status(served)
        assert st["evicted"] + st["expired"] == total
        stack.send(encode_sensor(2, x, stream=f"short/{total - 1}"))
        while True:  # expiry events come first
            topic, out = stack.receive(1)[0]
            if topic == "policy":
                break
        assert out["reset"] == "idle"  # a forgotten stream's return is reported as such
    assert max(rss) - rss[1] < 20  # memory does not grow with the number of streams seen


def test_messages_above_zmq_maxmsgsize_are_cut_by_zeromq(ctx: zmq.Context[Any]) -> None:
    endpoint = free_endpoint()
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(6, 16)).astype(np.float32)
    ref = Reference(MODEL)
    pub = xpub(ctx, endpoint)
    with serve_process(MODEL, endpoint, "--set", "input.zmq_max_message_bytes=100000") as served:
        wait_subscribed(pub)
        sub = subscribe(ctx, served)
        for seq in range(3):
            pub.send_multipart([b"sensors", encode_sensor(seq, xs[seq], stream="m")])
        first = outputs(sub, 3)
        huge = msgpack.packb({"stream": "m", "seq": 3, "x": xs[3].tobytes(),
                              "pad": b"\x00" * 300_000}, use_bin_type=True)
        pub.send_multipart([b"sensors", huge])  # ZeroMQ drops the connection ...
        wait_subscribed(pub)  # ... and the runner, which connects, comes back
        for seq in range(4, 6):
            pub.send_multipart([b"sensors", encode_sensor(seq, xs[seq], stream="m")])
        last = outputs(sub, 2)
        st = status(served)
        pub.close(linger=0)
        sub.close(linger=0)
    want = [ref.step("m", xs[q]) for q in (0, 1, 2, 4, 5)]
    np.testing.assert_allclose([o["y"] for o in first + last], want, atol=1e-5)
    assert last[0]["gap"] == 1  # the cut message is reported as missed
    assert st["received"] == 5 and st["rejected"] == {}  # never seen by the runner
    assert st["input_reconnects"] == 1  # libzmq gives up on the connection; the runner doesn't
