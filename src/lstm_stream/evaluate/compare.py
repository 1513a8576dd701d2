"""The regression check: an eval output file against a reference file, message by message."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from lstm_stream.core.errors import EvaluationError
from lstm_stream.logs.reader import LogReader

LATENCY_FIELDS = ("latency_ns",)  # never compared: they measure the machine, not the model


@dataclass(frozen=True)
class Difference:
    """One difference between an output file and its reference."""

    index: int  # message position among the compared messages
    topic: str
    stream: str | None
    seq: int | None
    field: str
    value: Any
    reference: Any

    def __str__(self) -> str:
        where = f"stream {self.stream!r} seq {self.seq}" if self.stream is not None else (
            f"message {self.index}")
        return (f"{where} ({self.topic}) field {self.field}: {self.value!r} vs reference "
                f"{self.reference!r}")


def compare_outputs(output: str | Path, reference: str | Path, *, atol: float = 1e-5,
                    rtol: float = 1e-5, ignore: Iterable[str] = (),
                    limit: int = 10) -> tuple[int, list[Difference]]:
    """Compare two eval output files message by message.

    A number differs when ``|a - b| > max(atol, rtol * max(|a|, |b|))``; other
    values must be equal. Latency fields and ``ignore`` are skipped. Returns the
    number of differing messages and the first ``limit`` differences.
    """
    skip = set(LATENCY_FIELDS) | set(ignore)
    new = LogReader(output).messages()
    ref_reader = LogReader(reference)
    ref = ref_reader.messages()
    count, found, index = 0, [], 0
    while True:
        a, b = next(new, None), next(ref, None)
        if a is None and b is None:
            break
        if a is None or b is None:
            extra = a or b
            assert extra is not None
            rest = 1 + sum(1 for _ in (new if a is not None else ref))
            body = _map(extra.data)
            side = "the outputs have" if a is not None else "the reference has"
            found.append(Difference(index, extra.topic, body.get("stream"), body.get("seq"),
                                    "<message count>", f"{side} {rest} more message(s)", None))
            count += rest
            break
        diffs = _diff_message(index, a.topic, a.data, b.topic, b.data, atol, rtol, skip)
        if diffs:
            count += 1
            found.extend(diffs[: max(0, limit - len(found))])
        index += 1
    return count, found[:limit]


def _map(data: bytes) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(data, raw=False)
    except Exception:
        return {}
    return body if isinstance(body, dict) else {}


def _diff_message(index: int, topic_a: str, data_a: bytes, topic_b: str, data_b: bytes,
                  atol: float, rtol: float, skip: set[str]) -> list[Difference]:
    a, b = _map(data_a), _map(data_b)
    stream, seq = b.get("stream", a.get("stream")), b.get("seq", a.get("seq"))
    if topic_a != topic_b:
        return [Difference(index, topic_a, stream, seq, "<topic>", topic_a, topic_b)]
    out: list[Difference] = []
    for key in sorted(set(a) | set(b), key=str):
        if key in skip:
            continue
        out.extend(Difference(index, topic_a, stream, seq, name, va, vb)
                   for name, va, vb in _diff_value(str(key), a.get(key), b.get(key), atol, rtol))
    return out


def _diff_value(name: str, a: Any, b: Any, atol: float,
                rtol: float) -> list[tuple[str, Any, Any]]:
    numbers = (int, float)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [(f"{name} (length)", len(a), len(b))]
        out: list[tuple[str, Any, Any]] = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out.extend(_diff_value(f"{name}[{i}]", x, y, atol, rtol))
        return out
    if (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool)):
        if abs(a - b) > max(atol, rtol * max(abs(a), abs(b))) or (
                math.isnan(a) != math.isnan(b)):
            return [(name, a, b)]
        return []
    return [] if a == b else [(name, a, b)]


def check_reference(output: str | Path, reference: str | Path, *, atol: float, rtol: float,
                    ignore: Iterable[str] = ()) -> None:
    """Raise EvaluationError naming the first differences when ``output`` differs."""
    ref = Path(reference)
    if not ref.exists():
        raise EvaluationError(f"Reference {str(ref)!r} does not exist. Create it with "
                              "--update-reference (and commit it).")
    count, diffs = compare_outputs(output, ref, atol=atol, rtol=rtol, ignore=ignore)
    if count:
        lines = "\n  ".join(str(d) for d in diffs)
        raise EvaluationError(
            f"{count} output message(s) of {str(output)!r} differ from the reference "
            f"{str(ref)!r} (atol {atol:g}, rtol {rtol:g}); first differences:\n  {lines}\n"
            "If the change is intended, rerun with --update-reference and commit the result.")
