"""StateStore: resets by reason, gaps, stale messages, LRU cap and idle expiry."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_stream.core.model.contract import StateSpec
from lstm_stream.core.state import store as s
from lstm_stream.core.state.store import Admission, StateStore
from lstm_stream.core.wire.protocol import Rejection, RejectReason, SensorMessage

SPECS = (StateSpec("h", "h_out", 2, 3), StateSpec("c", "c_out", 2, 3))
SEC = 1_000_000_000


def msg(stream: str, seq: int, reset: bool = False) -> SensorMessage:
    return SensorMessage("sensors", stream, seq, None, np.zeros((1, 2), np.float32), reset)


def admit_and_commit(store: StateStore, m: SensorMessage, now: int,
                     value: float = 1.0) -> Admission:
    """Admit ``m`` and commit a new state filled with ``value``, as the runner does."""
    adm = store.admit(m, now)
    assert isinstance(adm, Admission), adm
    new = [np.full((sp.layers, 1, sp.hidden), value, np.float32) for sp in SPECS]
    store.commit(adm, m, new, now)
    return adm


def test_first_message_starts_from_zeros_and_is_a_new_stream() -> None:
    store = StateStore(SPECS)
    adm = admit_and_commit(store, msg("a", 10), 0)
    assert adm.reset == s.ResetReason.NEW_STREAM and adm.gap == 0
    assert all(not st.any() for st in adm.states)
    stream = store.get("a")
    assert stream is not None and stream.last_seq == 10 and stream.step == 1
    assert all((st == 1.0).all() for st in stream.states)


def test_state_carries_and_steps_count() -> None:
    store = StateStore(SPECS)
    admit_and_commit(store, msg("a", 0), 0, value=1.0)
    adm = store.admit(msg("a", 1), 1)
    assert isinstance(adm, Admission) and adm.reset is None and adm.gap == 0
    assert all((st == 1.0).all() for st in adm.states)  # fed the previous state
    admit_and_commit(store, msg("a", 1), 1, value=2.0)
    stream = store.get("a")
    assert stream is not None and stream.step == 2


def test_state_arrays_are_allocated_once() -> None:
    store = StateStore(SPECS)
    admit_and_commit(store, msg("a", 0), 0)
    stream = store.get("a")
    assert stream is not None
    ids = [id(a) for a in stream.states]
    for seq in range(1, 5):
        admit_and_commit(store, msg("a", seq), seq, value=float(seq))
    assert [id(a) for a in stream.states] == ids


def test_gap_is_reported_and_state_kept_by_default() -> None:
    store = StateStore(SPECS)
    admit_and_commit(store, msg("a", 0), 0)
    adm = admit_and_commit(store, msg("a", 4), 1)
    assert adm.gap == 3 and adm.reset is None


def test_gap_larger_than_bound_resets() -> None:
    store = StateStore(SPECS, max_gap=2)
    admit_and_commit(store, msg("a", 0), 0)
    assert admit_and_commit(store, msg("a", 3), 1).reset is None  # gap 2: within bound
    adm = admit_and_commit(store, msg("a", 7), 2)
    assert adm.reset == s.ResetReason.GAP and adm.gap == 3
    assert all(not st.any() for st in adm.states)


@pytest.mark.parametrize("seq", [5, 4])
def test_duplicate_or_older_seq_is_rejected_and_changes_nothing(seq: int) -> None:
    store = StateStore(SPECS)
    admit_and_commit(store, msg("a", 5), 0, value=7.0)
    got = store.admit(msg("a", seq), 1)
    assert isinstance(got, Rejection) and got.reason == RejectReason.STALE_SEQ
    assert f"seq {seq}" in got.detail and "last stepped seq 5" in got.detail
    stream = store.get("a")
    assert stream is not None and stream.last_seq == 5
    assert all((st == 7.0).all() for st in stream.states)


def test_requested_reset_zeroes_and_restarts_the_sequence() -> None:
    store = StateStore(SPECS)
    admit_and_commit(store, msg("a", 5), 0)
    adm = admit_and_commit(store, msg("a", 0, reset=True), 1)  # a restarted publisher
    assert adm.reset == s.ResetReason.REQUESTED and all(not st.any() for st in adm.states)
    stream = store.get("a")
    assert stream is not None and stream.step == 1 and stream.last_seq == 0


def test_control_reset_of_one_stream_and_of_all() -> None:
    store = StateStore(SPECS)
    for name in "abc":
        admit_and_commit(store, msg(name, 0), 0)
    assert store.request_reset("b") == 1
    assert store.request_reset("nope") == 0
    b = store.get("b")
    assert b is not None and all(not st.any() for st in b.states)
    adm_b = admit_and_commit(store, msg("b", 1), 1)
    adm_a = admit_and_commit(store, msg("a", 1), 1)
    assert adm_b.reset == s.ResetReason.CONTROL and adm_a.reset is None
    assert store.request_reset() == 3
    assert all(admit_and_commit(store, msg(n, 2), 2).reset == s.ResetReason.CONTROL for n in "abc")


def test_idle_stream_is_reset_on_its_next_message() -> None:
    store = StateStore(SPECS, idle_timeout_s=1.0)
    admit_and_commit(store, msg("a", 9), 0)
    adm = admit_and_commit(store, msg("a", 3), 2 * SEC)  # any seq after idle
    assert adm.reset == s.ResetReason.IDLE


def test_expiry_forgets_idle_streams_and_reports_them_as_idle_later() -> None:
    store = StateStore(SPECS, idle_timeout_s=1.0)
    admit_and_commit(store, msg("old", 0), 0)
    admit_and_commit(store, msg("new", 0), int(1.5 * SEC))
    expired = store.expire(2 * SEC)
    assert [e.name for e in expired] == ["old"] and store.expired == 1
    assert "old" not in store and "new" in store
    assert admit_and_commit(store, msg("old", 1), 2 * SEC).reset == s.ResetReason.IDLE


def test_stream_cap_evicts_least_recently_used() -> None:
    store = StateStore(SPECS, max_streams=2)
    admit_and_commit(store, msg("a", 0), 0)
    admit_and_commit(store, msg("b", 0), 1)
    admit_and_commit(store, msg("a", 1), 2)  # a is now the most recent
    admit_and_commit(store, msg("c", 0), 3)
    assert "b" not in store and {"a", "c"} <= {x.name for x in store.streams()}
    assert store.evicted == 1 and len(store) == 2
    assert admit_and_commit(store, msg("b", 1), 4).reset == s.ResetReason.EVICTED


def test_uncommitted_admission_changes_nothing() -> None:
    """A failed step (no commit) leaves no trace: a new stream is not created."""
    store = StateStore(SPECS)
    adm = store.admit(msg("a", 0), 0)
    assert isinstance(adm, Admission) and "a" not in store and len(store) == 0


def test_shared_zero_state_cannot_be_written() -> None:
    store = StateStore(SPECS)
    adm = store.admit(msg("a", 0), 0)
    assert isinstance(adm, Admission)
    with pytest.raises(ValueError, match="read-only"):
        adm.states[0][0, 0, 0] = 1.0


def _row(value: float) -> list[np.ndarray]:
    return [np.full((sp.layers, 1, sp.hidden), value, np.float32) for sp in SPECS]


def test_pool_grows_and_every_stream_keeps_its_state() -> None:
    store = StateStore(SPECS, max_streams=1000)
    n = s.INITIAL_SLOTS * 3 + 5  # two doublings
    for i in range(n):
        admit_and_commit(store, msg(f"s{i}", 0), i, value=float(i))
    for i in range(n):
        stream = store.get(f"s{i}")
        assert stream is not None
        assert all((st == float(i)).all() for st in stream.states), i
        assert all(st.shape == (2, 1, 3) and st.flags.c_contiguous for st in stream.states)
    assert len({store.get(f"s{i}").slot for i in range(n)}) == n  # type: ignore[union-attr]


def test_a_reused_slot_starts_from_zeros() -> None:
    store = StateStore(SPECS, max_streams=1)
    admit_and_commit(store, msg("a", 0), 0, value=5.0)
    adm = admit_and_commit(store, msg("b", 0), 1, value=0.0)  # evicts a, takes its row
    assert all(not st.any() for st in adm.states)
    adm = store.admit(msg("c", 0), 2)
    assert isinstance(adm, Admission) and all(not st.any() for st in adm.states)
    store.commit(adm, msg("c", 0), _row(3.0), 2)
    stream = store.get("c")
    assert stream is not None and all((st == 3.0).all() for st in stream.states)


def test_gather_and_commit_many_equal_one_at_a_time() -> None:
    batched, single = StateStore(SPECS), StateStore(SPECS)
    for store in (batched, single):
        admit_and_commit(store, msg("a", 0), 0, value=1.0)
        admit_and_commit(store, msg("b", 0), 0, value=2.0)
        store.request_reset("b")
    msgs = [msg("b", 1), msg("new", 0), msg("a", 1)]
    admissions = [batched.admit(m, 5) for m in msgs]
    assert all(isinstance(a, Admission) for a in admissions)
    gathered = batched.gather(admissions)  # type: ignore[arg-type]
    for arr in gathered:
        assert arr.shape == (2, 3, 3) and arr.flags.c_contiguous
        np.testing.assert_array_equal(arr[:, 0], 0.0)  # b: control reset
        np.testing.assert_array_equal(arr[:, 1], 0.0)  # new stream
        np.testing.assert_array_equal(arr[:, 2], 1.0)  # a carries its state
    new = [np.stack([np.full((2, 3), 10.0 + i, np.float32) for i in range(3)], axis=1)
           for _ in SPECS]  # row i holds 10 + i
    batched.commit_many(admissions, msgs, new, [5, 5, 5])  # type: ignore[arg-type]
    for i, m in enumerate(msgs):
        adm = single.admit(m, 5)
        assert isinstance(adm, Admission)
        single.commit(adm, m, _row(10.0 + i), 5)
    for name in ("a", "b", "new"):
        x, y = batched.get(name), single.get(name)
        assert x is not None and y is not None
        assert (x.last_seq, x.step, x.pending_reset) == (y.last_seq, y.step, y.pending_reset)
        for p, q in zip(x.states, y.states, strict=True):
            np.testing.assert_array_equal(p, q)
    assert [st.name for st in batched.streams()] == [st.name for st in single.streams()]
