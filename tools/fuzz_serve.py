"""Fuzz a live `lstm-stream serve` with malformed messages between valid ones.

    .venv/bin/python tools/fuzz_serve.py --malformed 100000 --seed 1 --json out/fuzz.json

Starts `serve` as a subprocess on free loopback ports and publishes, in
batches, valid sensor messages of a few streams (unicode names, bin and array
encodings, occasional ``reset: true``) interleaved with malformed ones of every
kind: wrong frame counts, bad topics, random bytes, truncated or trailing
msgpack, deep nesting, huge array headers, long arrays, oversized payloads,
every key with every wrong type, NaN/Inf, negative and huge seq, unicode
stream names, stale seq, missing keys; and malformed control requests of every
shape on the control socket.

It checks, and reports:
- no crash and no hang: every message gets its answer (an output or a
  rejection) within a timeout, in order, and the runner still answers status;
- every valid message's output is bit-identical (y, step, reset, gap) to a
  clean run of the same valid messages through the same step code in this
  process (StreamStepper with onnxruntime), as if no garbage had been sent;
- every rejection is counted by reason, the runner's counters agree, and the
  reason is the expected one wherever the input determines it;
- memory stays bounded: the runner's RSS before and after.
Exit code 0 when all of that holds. ``tests/serve/test_fuzz.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import numpy as np
import zmq

from lstm_stream.core.backends.onnxruntime import OnnxRuntimeBackend
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.protocol import MAX_STREAM_NAME_BYTES, Rejection
from lstm_stream.serve.client import VehicleStack, control_request

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import rss_mb, start_serve

F = 16  # features of the fuzzed model (models/random_lstm.onnx)
VALID_STREAMS = ("v/0", "trüffel", "🚗-ß", "車両/2", "x" * MAX_STREAM_NAME_BYTES)
TOPIC = b"sensors"
Frames = list[bytes]


def pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def unicode_name(rng: random.Random) -> str:
    alphabet = "aß車両🚗\u200b\u202eé\u0301Ωж\U0001f680-/_ 0"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))


class Generator:
    """Valid messages (tracked per stream) and malformed messages with their expected reason."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.next_seq = dict.fromkeys(VALID_STREAMS, 0)
        self.cases: list[Callable[[], tuple[str, Frames, str | None]]] = [
            self.frames_count, self.bad_topic, self.random_bytes, self.truncated,
            self.trailing, self.deep_nesting, self.huge_header, self.long_array,
            self.oversized, self.wrong_type, self.non_finite, self.unicode_stream,
            self.stale_seq, self.missing_key, self.not_map, self.bad_utf8_str,
            self.named_features]

    # -- valid ---------------------------------------------------------------

    def valid(self) -> Frames:
        name = self.rng.choice(VALID_STREAMS)
        seq = self.next_seq[name]
        self.next_seq[name] = seq + 1
        x = self.np_rng.normal(size=F).astype("<f4")
        body: dict[str, Any] = {"stream": name, "seq": seq, "stamp_ns": seq * 1000,
                                "x": x.tobytes() if self.rng.random() < 0.5 else x.tolist()}
        if self.rng.random() < 0.02:
            body["reset"] = True
        return [TOPIC, pack(body)]

    def _body(self, **changes: Any) -> dict[str, Any]:
        """A valid-looking body for a valid stream at its next seq, with ``changes``."""
        name = self.rng.choice(VALID_STREAMS)
        body: dict[str, Any] = {"stream": name, "seq": self.next_seq[name],
                                "x": self.np_rng.normal(size=F).astype("<f4").tobytes()}
        body.update(changes)
        return body

    def malformed(self) -> tuple[str, Frames, str | None]:
        return self.rng.choice(self.cases)()

    # -- malformed: (category, frames, expected reason or None when any) --------

    def frames_count(self) -> tuple[str, Frames, str | None]:
        n = self.rng.choice([1, 3, 4, 7])
        return "frame count", [TOPIC, *([pack(self._body())] * (n - 1))][:n], "frames"

    def bad_topic(self) -> tuple[str, Frames, str | None]:
        return "topic not UTF-8", [TOPIC + b"\xff\xfe", pack(self._body())], "topic"

    def random_bytes(self) -> tuple[str, Frames, str | None]:
        raw = self.rng.randbytes(self.rng.randint(0, 300))
        return "random bytes", [TOPIC, raw], None

    def truncated(self) -> tuple[str, Frames, str | None]:
        raw = pack(self._body(stamp_ns=5))
        return "truncated msgpack", [TOPIC, raw[:self.rng.randint(1, len(raw) - 1)]], \
            "not_msgpack"

    def trailing(self) -> tuple[str, Frames, str | None]:
        return "trailing bytes", [TOPIC, pack(self._body()) + self.rng.randbytes(
            self.rng.randint(1, 20))], "not_msgpack"

    def deep_nesting(self) -> tuple[str, Frames, str | None]:
        depth = self.rng.choice([100, 1000, 5000, 30000, 60000])
        nested = b"\x91" * depth + b"\xc0"
        if self.rng.random() < 0.5:
            return "deep nesting", [TOPIC, nested], None
        head = pack({"seq": 1, "stream": "deep"})  # fixmap of 2: add x as a third key
        return "deep nesting in x", [TOPIC, b"\x83" + head[1:] + pack("x") + nested], None

    def huge_header(self) -> tuple[str, Frames, str | None]:
        kind = self.rng.choice([b"\xdd", b"\xdf", b"\xc6", b"\xdb"])  # array32 map32 bin32 str32
        raw = kind + struct.pack(">I", self.rng.choice([2**32 - 1, 2**31, 10**9])) + b"\x00" * 8
        return "huge length header", [TOPIC, raw], "not_msgpack"

    def long_array(self) -> tuple[str, Frames, str | None]:
        n = self.rng.choice([F + 1, 1000, 6000])
        return "long x array", [TOPIC, pack(self._body(x=[0.5] * n))], "wrong_length"

    def oversized(self) -> tuple[str, Frames, str | None]:
        pad = b"\x00" * self.rng.randint(65_537, 300_000)
        return "oversized", [TOPIC, pack(self._body(pad=pad))], "oversized"

    WRONG: ClassVar[dict[str, list[tuple[Any, str]]]] = {
        "stream": [(None, "bad_type"), (5, "bad_type"), (1.5, "bad_type"), (True, "bad_type"),
                   (b"bin", "bad_type"), (["a"], "bad_type"), ({"a": 1}, "bad_type"),
                   ("", "bad_value"), ("é" * 200, "bad_value"),
                   (msgpack.ExtType(5, b"x"), "bad_type")],
        "seq": [(None, "missing_key"), ("1", "bad_type"), (1.0, "bad_type"), (True, "bad_type"),
                (b"\x01", "bad_type"), ([1], "bad_type"), ({"1": 1}, "bad_type"),
                (-1, "bad_value"), (-(2**63), "bad_value"), (2**63, "bad_value"),
                (2**64 - 1, "bad_value"), (msgpack.ExtType(1, b""), "bad_type")],
        "stamp_ns": [("now", "bad_type"), (1.5, "bad_type"), (False, "bad_type"),
                     ([0], "bad_type"), (-5, "bad_value"), (2**64 - 1, "bad_value")],
        "reset": [(1, "bad_type"), ("yes", "bad_type"), (None, "bad_type"), ([], "bad_type")],
        "x": [(None, "bad_type"), (0, "bad_type"), ("x", "bad_type"), (True, "bad_type"),
              (["1"] + [0.0] * (F - 1), "bad_type"), ([[0.0]] * F, "bad_type"),
              ([None] * F, "bad_type"), ([0.0] * (F - 1), "wrong_length"), ([], "wrong_length"),
              (b"\x00" * (4 * F - 1), "wrong_length"), (b"\x00" * (8 * F), "wrong_length"),
              (msgpack.ExtType(3, b"\x00" * 64), "bad_type")],
    }

    def wrong_type(self) -> tuple[str, Frames, str | None]:
        key = self.rng.choice(list(self.WRONG))
        value, reason = self.rng.choice(self.WRONG[key])
        return f"wrong {key}", [TOPIC, pack(self._body(**{key: value}))], reason

    def non_finite(self) -> tuple[str, Frames, str | None]:
        x = self.np_rng.normal(size=F).astype("<f4")
        x[self.rng.randrange(F)] = self.rng.choice([math.nan, math.inf, -math.inf])
        if self.rng.random() < 0.5:
            return "NaN/Inf in bin x", [TOPIC, pack(self._body(x=x.tobytes()))], "non_finite"
        values = x.tolist()
        if self.rng.random() < 0.3:
            values[0] = 1e300  # finite in msgpack, not in float32
        return "NaN/Inf in array x", [TOPIC, pack(self._body(x=values))], "non_finite"

    def unicode_stream(self) -> tuple[str, Frames, str | None]:
        body = self._body(stream=unicode_name(self.rng), x=[0.0] * (F + 2))
        return "unicode stream, bad x", [TOPIC, pack(body)], "wrong_length"

    def stale_seq(self) -> tuple[str, Frames, str | None]:
        started = [n for n, s in self.next_seq.items() if s > 0]
        if not started:
            return self.frames_count()
        name = self.rng.choice(started)
        seq = self.next_seq[name] - 1 - self.rng.randint(0, min(3, self.next_seq[name] - 1))
        return "stale seq", [TOPIC, pack(self._body(stream=name, seq=seq))], "stale_seq"

    def missing_key(self) -> tuple[str, Frames, str | None]:
        body = self._body()
        del body[self.rng.choice(["seq", "x"])]
        return "missing key", [TOPIC, pack(self.rng.choice([body, {}]))], "missing_key"

    def not_map(self) -> tuple[str, Frames, str | None]:
        value = self.rng.choice([[1, 2], 7, "seq", None, b"x", 1.5, [self._body()]])
        return "not a map", [TOPIC, pack(value)], "not_map"

    def bad_utf8_str(self) -> tuple[str, Frames, str | None]:
        head = pack({"seq": 1, "x": [0.0] * F})
        # a third key whose str payload is not UTF-8: msgpack refuses the whole payload
        return "invalid UTF-8 str", [TOPIC, b"\x83" + head[1:] + b"\xa6stream\xa2\xff\xfe"], \
            "not_msgpack"

    def named_features(self) -> tuple[str, Frames, str | None]:
        names = [f"f{i:02d}" for i in range(F)]
        x: dict[str, Any] = dict.fromkeys(names, 0.5)
        choice = self.rng.randrange(3)
        if choice == 0:
            x[names[3]] = "fast"
            reason = "bad_type"
        elif choice == 1:
            del x[names[5]]
            x["nope"] = 1.0
            reason = "missing_key"
        else:
            del x[names[0]]
            reason = "wrong_length"
        return "named features", [TOPIC, pack(self._body(x=x))], reason

    # -- control ---------------------------------------------------------------

    def control(self) -> list[bytes]:
        """One malformed control request (frames after the DEALER's identity)."""
        choices: list[Any] = [
            self.rng.randbytes(self.rng.randint(0, 100)), pack([1, 2]), pack("status"),
            pack({}), pack({"command": "status"}), pack({"cmd": 1}), pack({"cmd": None}),
            pack({"cmd": ["status"]}), pack({"cmd": b"status"}), pack({"cmd": "STATUS"}),
            pack({"cmd": unicode_name(self.rng)}), pack({"cmd": "x" * 10000}),
            pack({"cmd": "reset", "stream": 7}), pack({"cmd": "reset", "stream": None}),
            pack({"cmd": "reset", "stream": ["v/0"]}), pack({"cmd": "reset", "stream": b"v/0"}),
            pack({"cmd": "reset", "stream": "ghost/" + unicode_name(self.rng)}),
            b"\x91" * 5000 + b"\xc0", b"\xdd\xff\xff\xff\xff",
        ]
        request: bytes = self.rng.choice(choices)
        shape = self.rng.randrange(3)
        if shape == 0:
            return [request]
        if shape == 1:
            return [b"", request]  # as REQ sends it
        return [b"a", b"b", request]  # extra envelope frames are echoed


@dataclass
class FuzzReport:
    malformed: int = 0
    valid: int = 0
    control: int = 0
    control_errors: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    by_category: Counter[str] = field(default_factory=Counter)
    mismatched_outputs: list[str] = field(default_factory=list)
    wrong_reasons: list[str] = field(default_factory=list)
    hang: str | None = None
    crashed: str | None = None
    counters_agree: bool = False
    rss_mb_start: float = 0.0
    rss_mb_end: float = 0.0
    rss_mb_max: float = 0.0
    seconds: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (not self.mismatched_outputs and not self.wrong_reasons and self.hang is None
                and self.crashed is None and self.counters_agree
                and self.control_errors == self.control)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "malformed": self.malformed, "valid": self.valid,
                "control_requests": self.control, "control_error_replies": self.control_errors,
                "rejected_by_reason": dict(sorted(self.rejected.items())),
                "malformed_by_category": dict(sorted(self.by_category.items())),
                "valid_outputs_not_bit_identical": len(self.mismatched_outputs),
                "unexpected_reasons": self.wrong_reasons[:20], "hang": self.hang,
                "crashed": self.crashed, "runner_counters_agree": self.counters_agree,
                "rss_mb": {"start": round(self.rss_mb_start, 1),
                           "end": round(self.rss_mb_end, 1), "max": round(self.rss_mb_max, 1)},
                "seconds": round(self.seconds, 1)}


def run_fuzz(model: str, malformed: int, *, seed: int = 0, batch: int = 400,
             valid_fraction: float = 0.2, timeout_s: float = 20.0,
             progress: Callable[[FuzzReport], None] | None = None) -> FuzzReport:
    """Fuzz a fresh `serve` of ``model`` with ``malformed`` bad messages; see the module doc."""
    gen = Generator(seed)
    report = FuzzReport()
    contract = load_contract(model)
    clean = StreamStepper(contract, OnnxRuntimeBackend(contract))  # the clean run
    clock = 0
    ctx = zmq.Context()
    stack = VehicleStack(ctx)
    proc, output, control = start_serve(model, stack.sensors_endpoint)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(control)
    start = time.monotonic()
    try:
        stack.wait_subscribed()
        stack.connect_outputs(output, control)
        report.rss_mb_start = report.rss_mb_max = rss_mb(proc.pid)
        while report.malformed < malformed:
            sent: list[tuple[str, Frames, str | None]] = []
            while len(sent) < batch and report.malformed < malformed:
                if gen.rng.random() < valid_fraction:
                    sent.append(("valid", gen.valid(), None))
                    continue
                category, frames, reason = gen.malformed()
                sent.append((category, frames, reason))
                report.malformed += 1
                report.by_category[category] += 1
            for _, frames, _ in sent:
                stack.send_frames(frames)
            controls = [gen.control() for _ in range(max(1, batch // 50))]
            for frames in controls:
                dealer.send_multipart(frames)
            try:
                got = stack.receive(len(sent), timeout_s=timeout_s)
            except Exception as err:
                report.hang = f"after {report.malformed} malformed messages: {err}"
                break
            for (category, frames, reason), (topic, body) in zip(sent, got, strict=True):
                if category == "valid":
                    report.valid += 1
                    clock += 1000
                    want = clean.step(frames, clock)
                    assert not isinstance(want, Rejection), want
                    expected = {"stream": want.msg.stream, "seq": want.msg.seq,
                                "y": want.y[0].tolist(), "step": want.step,
                                "reset": want.reset, "gap": want.gap}
                    actual = {k: body.get(k) for k in expected}
                    if topic != "policy" or actual != expected:
                        report.mismatched_outputs.append(f"{topic} {actual} != {expected}")
                    continue
                if topic != "diagnostics" or body.get("event") != "rejected":
                    report.wrong_reasons.append(f"{category}: answered {topic} {body}")
                    continue
                report.rejected[body["reason"]] += 1
                if reason is not None and body["reason"] != reason:
                    report.wrong_reasons.append(f"{category}: {body['reason']} != {reason}")
            for _ in controls:
                if not dealer.poll(int(timeout_s * 1000)):
                    report.hang = "a control request got no reply"
                    break
                reply = msgpack.unpackb(dealer.recv_multipart()[-1], raw=False)
                report.control += 1
                report.control_errors += reply.get("ok") is False
            if report.hang:
                break
            report.rss_mb_max = max(report.rss_mb_max, rss_mb(proc.pid))
            if progress is not None:
                progress(report)
        if proc.poll() is not None:
            report.crashed = f"serve exited with code {proc.returncode}"
        else:
            report.rss_mb_end = rss_mb(proc.pid)
            report.status = control_request(control, {"cmd": "status"}, timeout_s=timeout_s,
                                            context=ctx)
            st = report.status
            report.counters_agree = (st["rejected"] == dict(report.rejected)
                                     and st["stepped"] == report.valid
                                     and st["received"] == report.valid + report.malformed
                                     and st["streams"] == len(clean.store))
            proc.send_signal(signal.SIGTERM)
            if proc.wait(20) != 0:
                report.crashed = f"serve exited with code {proc.returncode} on SIGTERM"
    finally:
        report.seconds = time.monotonic() - start
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        dealer.close(linger=0)
        stack.close()
        ctx.destroy(linger=0)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/random_lstm.onnx")
    parser.add_argument("--malformed", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args()
    last = [0.0]

    def progress(r: FuzzReport) -> None:
        if time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            print(f"  {r.malformed} malformed, {r.valid} valid, {r.control} control, "
                  f"RSS {r.rss_mb_max:.1f} MB", flush=True)

    report = run_fuzz(args.model, args.malformed, seed=args.seed, progress=progress)
    out = report.as_dict()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    for line in report.mismatched_outputs[:5] + report.wrong_reasons[:5]:
        print("  ", line[:300])
    print("fuzz: OK" if report.ok else "fuzz: FAILED")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
