"""Comparison servers, each a process with the runner's socket pattern (SUB in, PUB out).

``echo`` is floor (a): receive, decode, encode, send, no model. ``naive-ort``
and ``naive-torch`` are what a user would write instead of lstm-stream: a
Python loop around a default ``InferenceSession`` (state fed back through a
dict) or around ``torch.nn.LSTM`` keeping ``(h, c)`` per stream.

``decode`` is floor (a') of the throughput suite: the most messages per second
a Python process can take off a ZeroMQ socket and msgpack-decode. It drains
its socket in bursts with the cheapest pyzmq calls, and, only so that the load
generator can count and time every message, answers each one with the same
output map as ``echo`` (no model, no state, no validation).

Run as ``python -m lstm_stream.bench.servers --impl echo --model M --input EP
--output EP``; the load generator in :mod:`.e2e` drives them all the same way.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import onnxruntime as ort
import zmq

from lstm_stream.core.model.contract import load_contract

Step = Callable[[str, np.ndarray], list[float]]
IMPLS = ("echo", "decode", "naive-ort", "naive-torch")
MAX_BURST = 256  # messages the decode server receives between checks for SIGTERM


def echo_step(n_outputs: int) -> Step:
    zeros = [0.0] * n_outputs

    def step(stream: str, x: np.ndarray) -> list[float]:
        return zeros

    return step


def naive_ort_step(model: str) -> Step:
    contract = load_contract(model)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    zero = {s.input: np.zeros((s.layers, 1, s.hidden), np.float32) for s in contract.states}
    states: dict[str, dict[str, np.ndarray]] = {}

    def step(stream: str, x: np.ndarray) -> list[float]:
        state = states.setdefault(stream, dict(zero))
        outs = sess.run(None, {"x": x.reshape(1, -1), **state})
        for s, value in zip(contract.states, outs[1:], strict=True):
            state[s.input] = value
        y: list[float] = outs[0][0].tolist()
        return y

    return step


def naive_torch_step(model: str) -> Step:
    import torch

    torch.set_num_threads(1)
    contract = load_contract(model)
    layers, hidden = contract.states[0].layers, contract.states[0].hidden
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(contract.n_features, hidden, num_layers=layers)
    head = torch.nn.Linear(hidden, contract.n_outputs)
    states: dict[str, Any] = {}

    def step(stream: str, x: np.ndarray) -> list[float]:
        with torch.inference_mode():
            xt = torch.from_numpy(x.copy()).view(1, 1, -1)  # (T=1, B=1, F)
            out, states[stream] = lstm(xt, states.get(stream))
            y: list[float] = head(out[0])[0].tolist()
        return y

    return step


def _sockets(input_endpoint: str, output_endpoint: str
             ) -> tuple[zmq.Context[Any], zmq.Socket[Any], zmq.Socket[Any], list[bool]]:
    """The runner's socket pattern (SUB in, PUB out) and a flag SIGTERM clears."""
    ctx: zmq.Context[Any] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"sensors")
    sub.setsockopt(zmq.RCVHWM, 10000)
    sub.connect(input_endpoint)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 10000)
    pub.bind(output_endpoint)
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    return ctx, sub, pub, running


def serve(step: Step, input_endpoint: str, output_endpoint: str, topic: bytes,
          busy_poll_us: int = 0) -> None:
    """The loop every comparison server runs until SIGTERM (busy polling as the runner's)."""
    ctx, sub, pub, running = _sockets(input_endpoint, output_endpoint)
    packer = msgpack.Packer(use_bin_type=True)
    clock = time.monotonic_ns
    busy_ns, spin_until = busy_poll_us * 1000, 0
    while running[0]:
        spinning = busy_ns and clock() < spin_until
        if not sub.poll(0 if spinning else 100):
            continue
        if busy_ns:
            spin_until = clock() + busy_ns
        _, payload = sub.recv_multipart()
        t0 = clock()
        body = msgpack.unpackb(payload, raw=False)
        x = np.frombuffer(body["x"], dtype="<f4")
        stream = body.get("stream", "sensors")
        y = step(stream, x)
        out = {"stream": stream, "seq": body["seq"], "stamp_ns": body.get("stamp_ns"), "y": y,
               "step": 0, "reset": None, "gap": 0, "latency_ns": clock() - t0}
        pub.send_multipart((topic, packer.pack(out)))
    sub.close(0)
    pub.close(0)
    ctx.term()


def serve_decode(n_outputs: int, input_endpoint: str, output_endpoint: str, topic: bytes,
                 busy_poll_us: int = 0) -> None:
    """Floor (a'): receive and decode as fast as Python can, answering like ``echo``.

    Unlike :func:`serve` it does not poll before every message: after one poll
    it receives until the socket is empty (at most ``MAX_BURST`` messages, so
    SIGTERM is seen), with two ``recv``/``send`` calls instead of the slower
    ``*_multipart`` helpers. Both are what a throughput-minded server does, so
    its rate is the ceiling a Python server behind these sockets can expect.
    """
    ctx, sub, pub, running = _sockets(input_endpoint, output_endpoint)
    pack, unpack = msgpack.Packer(use_bin_type=True).pack, msgpack.unpackb
    recv, send, more, noblock = sub.recv, pub.send, zmq.SNDMORE, zmq.NOBLOCK
    clock = time.monotonic_ns
    zeros = [0.0] * n_outputs
    busy_ns, spin_until = busy_poll_us * 1000, 0
    while running[0]:
        spinning = busy_ns and clock() < spin_until
        if not sub.poll(0 if spinning else 100):
            continue
        for _ in range(MAX_BURST):
            try:
                recv(noblock)  # the topic frame
            except zmq.Again:
                break
            payload = recv()
            t0 = clock()
            body = unpack(payload)
            send(topic, more)
            send(pack({"stream": body.get("stream", "sensors"), "seq": body["seq"],
                       "stamp_ns": body.get("stamp_ns"), "y": zeros, "step": 0,
                       "reset": None, "gap": 0, "latency_ns": clock() - t0}))
        if busy_ns:
            spin_until = clock() + busy_ns
    sub.close(0)
    pub.close(0)
    ctx.term()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--impl", choices=IMPLS, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--busy-poll-us", type=int, default=0)
    args = p.parse_args(argv)
    if args.impl == "decode":
        serve_decode(load_contract(args.model).n_outputs, args.input, args.output, b"policy",
                     args.busy_poll_us)
        return 0
    if args.impl == "echo":
        step = echo_step(load_contract(args.model).n_outputs)
    elif args.impl == "naive-ort":
        step = naive_ort_step(args.model)
    else:
        step = naive_torch_step(args.model)
    serve(step, args.input, args.output, b"policy", args.busy_poll_us)
    return 0


if __name__ == "__main__":
    sys.exit(main())
