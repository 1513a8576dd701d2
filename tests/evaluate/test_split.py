"""The merge order of a split log's parts: one sort of every key gives what a k-way
merge of the parts gives, and parts whose keys are out of order are refused."""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lstm_stream.core.errors import EvaluationError
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.evaluate.results import LogResult
from lstm_stream.evaluate.split import merge, merge_order
from lstm_stream.logs.writer import LogWriter

# A key per message: (log position, 0 for an idle expiry / 1 for an answer, last step).
keys = st.tuples(st.integers(0, 50), st.integers(0, 1), st.integers(-1, 50))
parts = st.lists(st.lists(keys, max_size=30).map(sorted), min_size=1, max_size=4)


@given(parts)
def test_the_order_is_a_k_way_merge_of_the_parts(part_keys: list[list[tuple[int, int, int]]]
                                                 ) -> None:
    flat = [[v for key in p for v in key] for p in part_keys]
    merged = heapq.merge(*[[(key, i) for key in p] for i, p in enumerate(part_keys)])
    assert merge_order(flat).tolist() == [i for _, i in merged]


def test_parts_whose_keys_go_backwards_are_refused() -> None:
    with pytest.raises(EvaluationError, match="worker 1's part are out of order"):
        merge_order([[0, 1, 0, 5, 1, 0], [4, 1, 0, 2, 1, 0]])
    assert merge_order([]).tolist() == [] and merge_order([[], []]).dtype == np.int64


def test_a_part_with_fewer_messages_than_keys_is_refused(tmp_path: Path) -> None:
    part = tmp_path / "drive.policy.mcap.part0of1"
    with LogWriter(part) as writer:
        writer.write("policy", b"\x80", 1)
    result = LogResult(str(tmp_path / "drive.mcap"), str(part), order_keys=[0, 1, 0, 1, 1, 0])
    with pytest.raises(EvaluationError, match=r"part .* holds 1 messages but 2 merge keys"):
        merge(tmp_path / "drive.mcap", EvalOptions(model="m.onnx"), [result], {})
