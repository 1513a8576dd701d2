"""State snapshots: the file format, restore rules, and restarts of a real `serve`.

The restart tests SIGTERM and SIGKILL real `lstm-stream serve` processes and
compare the outputs after the restart bit for bit with an uninterrupted run of
the same onnxruntime step (docs/reliability.md).
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from lstm_stream.core.backends.onnxruntime import OnnxRuntimeBackend
from lstm_stream.core.errors import SnapshotError
from lstm_stream.core.model.contract import StateSpec, load_contract
from lstm_stream.core.state import store as s
from lstm_stream.core.state.snapshot import (
    decode_snapshot,
    encode_snapshot,
    frame_snapshot,
    read_snapshot,
    restore,
)
from lstm_stream.core.state.snapshot_files import check_snapshot_path, write_atomic
from lstm_stream.core.state.store import Admission, StateStore
from lstm_stream.core.wire.protocol import SensorMessage, encode_sensor
from lstm_stream.serve.client import ControlError, control_request

from helpers.support import REPO, Served, VehicleStack, free_endpoint, serve_process

MODEL = REPO / "models" / "random_lstm.onnx"
SPECS = (StateSpec("h", "h_out", 2, 3), StateSpec("c", "c_out", 2, 3))
SEC = 1_000_000_000
SHA = "ab" * 32


def msg(stream: str, seq: int, reset: bool = False) -> SensorMessage:
    return SensorMessage("sensors", stream, seq, 7, np.zeros((1, 2), np.float32), reset)


def step(store: StateStore, m: SensorMessage, now: int, rng: np.random.Generator
         ) -> Admission:
    adm = store.admit(m, now)
    assert isinstance(adm, Admission), adm
    new = [rng.normal(size=(sp.layers, 1, sp.hidden)).astype(np.float32) for sp in SPECS]
    store.commit(adm, m, new, now)
    return adm


def filled_store(rng: np.random.Generator, names: str = "abc") -> StateStore:
    store = StateStore(SPECS, idle_timeout_s=5.0)
    for seq in range(4):
        for name in names:
            step(store, msg(name, seq), seq * SEC // 10, rng)
    return store


def save(store: StateStore, path: Path, now: int, unix: int, sha: str = SHA) -> None:
    write_atomic(path, frame_snapshot(encode_snapshot(store, sha, now, unix)))


def test_round_trip_restores_every_stream_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = filled_store(rng)
    store.request_reset("c")  # a control reset pending at snapshot time survives
    path = tmp_path / "state.snap"
    save(store, path, now=SEC, unix=100 * SEC)
    fresh = StateStore(SPECS, idle_timeout_s=5.0)
    result = restore(fresh, path, SHA, now_ns=50 * SEC, unix_ns=101 * SEC)
    assert result.restored == 3 and "restored 3 streams" in result.note
    assert [x.name for x in fresh.streams()] == [x.name for x in store.streams()]  # LRU order
    for old in store.streams():
        new = fresh.get(old.name)
        assert new is not None
        assert (new.last_seq, new.last_stamp_ns, new.step) == (old.last_seq, 7, old.step)
        for a, b in zip(old.states, new.states, strict=True):
            assert a.tobytes() == b.tobytes()
        # idle time carries over: 0.7 s idle at the snapshot + 1 s since it was written
        assert new.last_seen_ns == 50 * SEC - (SEC - old.last_seen_ns) - SEC
    # the next message is stepped from the restored state and says so
    a = fresh.get("a")
    assert a is not None
    adm = fresh.admit(msg("a", 5), 50 * SEC)
    assert isinstance(adm, Admission)
    assert adm.reset == s.ResetReason.RESTORED and adm.gap == 1 and adm.states is a.states
    fresh.commit(adm, msg("a", 5), a.states, 50 * SEC)
    assert a.step == 5  # counting goes on: the state was not zeroed
    adm_c = fresh.admit(msg("c", 4), 50 * SEC)
    assert isinstance(adm_c, Admission) and adm_c.reset == s.ResetReason.CONTROL
    assert not any(x.any() for x in adm_c.states)


def test_restored_stream_with_gap_beyond_bound_resets_as_gap(tmp_path: Path) -> None:
    store = filled_store(np.random.default_rng(1), "a")
    path = tmp_path / "s.snap"
    save(store, path, now=SEC, unix=10 * SEC)
    fresh = StateStore(SPECS, idle_timeout_s=5.0, max_gap=2)
    restore(fresh, path, SHA, now_ns=SEC, unix_ns=10 * SEC)
    adm = fresh.admit(msg("a", 10), SEC)
    assert isinstance(adm, Admission) and adm.reset == s.ResetReason.GAP and adm.gap == 6
    # a stale seq after a restore is still dropped
    assert not isinstance(fresh.admit(msg("a", 3), SEC), Admission)


@pytest.mark.parametrize(("change", "note", "aside"), [
    ("model", "was made with model sha256", "other-model"),
    ("old", "older than state.idle_timeout_s", None),
    ("future", "in the future", "future"),
    ("damaged", "damaged: its checksum", "damaged"),
    ("truncated", "damaged", "damaged"),
    ("version", "format version 7", "other-version"),
    ("shapes", "holds states", "other-shapes"),
    ("missing", "no snapshot at", None),
])
def test_unusable_snapshot_starts_clean_and_says_why(tmp_path: Path, change: str,
                                                      note: str, aside: str | None) -> None:
    store = filled_store(np.random.default_rng(2))
    path = tmp_path / "state.snap"
    save(store, path, now=SEC, unix=100 * SEC)
    data = path.read_bytes()
    unix, sha, specs = 101 * SEC, SHA, SPECS
    if change == "model":
        sha = "cd" * 32
    elif change == "old":
        unix = 106 * SEC
    elif change == "future":
        unix = 90 * SEC
    elif change == "damaged":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    elif change == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif change == "version":
        path.write_bytes(data[:8] + bytes([7]) + data[9:])
    elif change == "shapes":
        specs = (StateSpec("h", "h_out", 2, 4),)
    elif change == "missing":
        path.unlink()
    fresh = StateStore(specs, idle_timeout_s=5.0)
    before = path.read_bytes() if path.exists() else None
    result = restore(fresh, path, sha, now_ns=SEC, unix_ns=unix)
    assert result.restored == 0 and len(fresh) == 0
    assert note in result.note
    if aside is None:  # nothing worth keeping: no stream of it could be restored
        assert result.kept_aside is None and result.level == logging.INFO
    else:  # kept, never deleted, and said loudly
        assert result.kept_aside is not None and not path.exists()
        assert result.kept_aside.name.startswith(f"state.snap.{aside}-")
        assert result.kept_aside.read_bytes() == before
        assert str(result.kept_aside) in result.note and result.level == logging.WARNING


def test_a_file_that_is_not_a_snapshot_is_never_touched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.py"
    victim.write_text("print('my code')\n")
    before = victim.read_bytes()
    with pytest.raises(SnapshotError, match=r"victim.py' exists and is not an lstm-stream "
                       r"snapshot.*refusing to overwrite it. Move or remove"):
        check_snapshot_path(victim)
    with pytest.raises(SnapshotError, match="not an lstm-stream snapshot"):
        restore(StateStore(SPECS), victim, SHA)
    empty = tmp_path / "__init__.py"
    empty.write_bytes(b"")
    with pytest.raises(SnapshotError, match="not an lstm-stream snapshot"):
        check_snapshot_path(empty)
    assert victim.read_bytes() == before and empty.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["__init__.py", "victim.py"]


def test_a_snapshot_path_that_cannot_be_written_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match=r"its directory .*missing' does not exist. "
                       "Create it"):
        check_snapshot_path(tmp_path / "missing" / "state.snap")
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    with pytest.raises(SnapshotError, match=r"does not exist|cannot create"):
        check_snapshot_path(a_file / "state.snap")
    with pytest.raises(SnapshotError, match="is a directory; give the path of a file"):
        check_snapshot_path(tmp_path)
    check_snapshot_path(tmp_path / "state.snap")  # fine, and leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def test_streams_idle_too_long_by_now_are_not_restored_but_remembered(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    store = StateStore(SPECS, idle_timeout_s=5.0)
    step(store, msg("quiet", 0), 0, rng)
    step(store, msg("busy", 0), 4 * SEC, rng)
    path = tmp_path / "s.snap"
    save(store, path, now=4 * SEC, unix=100 * SEC)  # quiet idle 4 s at the snapshot
    fresh = StateStore(SPECS, idle_timeout_s=5.0)
    result = restore(fresh, path, SHA, now_ns=0, unix_ns=102 * SEC)  # 6 s by now
    assert (result.restored, result.idle) == (1, 1)
    assert "quiet" not in fresh and "busy" in fresh
    adm = fresh.admit(msg("quiet", 1), 0)
    assert isinstance(adm, Admission) and adm.reset == s.ResetReason.IDLE


def test_snapshot_format_holds_no_pickle_and_rejects_bad_values(tmp_path: Path) -> None:
    store = filled_store(np.random.default_rng(4))
    body = encode_snapshot(store, SHA, SEC, 5)
    snap = decode_snapshot(frame_snapshot(body))
    assert snap.name == ["a", "b", "c"] and snap.arrays[0].shape == (3, 2, 3)
    assert b"\x80\x04" not in frame_snapshot(body)[:2]  # not a pickle stream
    import msgpack

    raw = msgpack.unpackb(body)
    raw["arrays"][0] = np.full(18, np.nan, "<f4").tobytes()
    with pytest.raises(SnapshotError, match="NaN or Inf"):
        decode_snapshot(frame_snapshot(msgpack.packb(raw, use_bin_type=True)))
    raw = msgpack.unpackb(body)
    raw["pending_reset"][0] = "because"
    with pytest.raises(SnapshotError, match="unknown reset reason"):
        decode_snapshot(frame_snapshot(msgpack.packb(raw, use_bin_type=True)))


def test_atomic_write_replaces_whole_files_and_reports_errors(tmp_path: Path) -> None:
    path = tmp_path / "state.snap"
    write_atomic(path, b"one")
    write_atomic(path, b"two" * 1000)
    assert path.read_bytes() == b"two" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["state.snap"]  # no temp file left
    assert path.stat().st_mode & 0o077 == 0  # state is not readable by other users
    with pytest.raises(SnapshotError, match="Check that its directory exists"):
        write_atomic(tmp_path / "missing" / "state.snap", b"x")
    with pytest.raises(SnapshotError, match="Could not read snapshot"):
        read_snapshot(tmp_path / "nope.snap")


# -- restarts of a real `serve` ---------------------------------------------------------


class OrtReference:
    """An uninterrupted run: the same onnxruntime step, in this process, state per stream."""

    def __init__(self) -> None:
        contract = load_contract(MODEL)
        self.backend = OnnxRuntimeBackend(contract)
        self.zeros = tuple(np.zeros((sp.layers, 1, sp.hidden), np.float32)
                           for sp in contract.states)
        self.states: dict[str, tuple[np.ndarray, ...]] = {}

    def step(self, stream: str, x: np.ndarray) -> list[float]:
        y, new = self.backend.step(x.reshape(1, -1), self.states.get(stream, self.zeros))
        self.states[stream] = tuple(np.array(a) for a in new)
        out: list[float] = y[0].tolist()
        return out


def drive(stack: VehicleStack, served: Served, xs: np.ndarray, seqs: range,
          streams: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    for seq in seqs:
        for i, name in enumerate(streams):
            stack.send(encode_sensor(seq, xs[i, seq], stream=name, stamp_ns=seq))
    got = stack.receive(len(seqs) * len(streams))
    assert all(t == "policy" for t, _ in got), got[:3]
    return {(o["stream"], o["seq"]): o for _, o in got}


def start(stack: VehicleStack, *extra: str) -> Any:
    cm = serve_process(MODEL, stack.sensors_endpoint, *extra)
    served = cm.__enter__()
    stack.wait_subscribed()
    stack.connect_outputs(served.output, served.control)
    return cm, served


def test_sigterm_restart_continues_bit_identically(ctx: zmq.Context[Any],
                                                   tmp_path: Path) -> None:
    snap = tmp_path / "state.snap"
    opts = ("--set", f'state.snapshot_path="{snap}"', "--set", "state.snapshot_interval_s=60")
    streams = ["car/1", "trüffel"]
    xs = np.random.default_rng(5).normal(size=(2, 40, 16)).astype(np.float32)
    ref = OrtReference()
    with VehicleStack(ctx) as stack:
        cm, served = start(stack, *opts)
        try:
            drive(stack, served, xs, range(20), streams)
            served.proc.send_signal(signal.SIGTERM)
            assert served.proc.wait(10) == 0
            log = served.proc.stderr.read().decode()
        finally:
            cm.__exit__(None, None, None)
        assert "snapshot of 2 streams written" in log
        assert {n: ls for n, ls in zip(read_snapshot(snap).name, read_snapshot(snap).last_seq,
                                       strict=True)} == {"car/1": 19, "trüffel": 19}
        cm, served = start(stack, *opts)
        try:
            st = control_request(served.control, {"cmd": "status"})
            assert st["snapshot"]["restored"] == 2, st["snapshot"]
            after = drive(stack, served, xs, range(20, 40), streams)
        finally:
            cm.__exit__(None, None, None)
    for i, name in enumerate(streams):
        for seq in range(40):
            want = ref.step(name, xs[i, seq])
            if seq < 20:
                continue
            out = after[(name, seq)]
            assert out["y"] == want, (name, seq)  # bit-identical, not approximately equal
            assert out["step"] == seq + 1 and out["gap"] == 0
            assert out["reset"] == ("restored" if seq == 20 else None)


def test_sigkill_loses_at_most_the_snapshot_interval(ctx: zmq.Context[Any],
                                                      tmp_path: Path) -> None:
    snap = tmp_path / "state.snap"
    opts = ("--set", f'state.snapshot_path="{snap}"', "--set", "state.snapshot_interval_s=0.3",
            "--set", "state.idle_timeout_s=30")
    xs = np.random.default_rng(6).normal(size=(1, 60, 16)).astype(np.float32)
    with VehicleStack(ctx) as stack:
        cm, served = start(stack, *opts)
        try:
            drive(stack, served, xs, range(20), ["k"])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # a periodic snapshot has the first 20 steps
                if snap.exists() and read_snapshot(snap).last_seq == [19]:
                    break
                time.sleep(0.05)
            drive(stack, served, xs, range(20, 30), ["k"])
            served.proc.send_signal(signal.SIGKILL)
            served.proc.wait(10)
        finally:
            cm.__exit__(None, None, None)
        saved = read_snapshot(snap)
        (kept,) = saved.last_seq
        assert 19 <= kept <= 29  # what was lost is younger than the last periodic snapshot
        cm, served = start(stack, *opts)
        try:
            after = drive(stack, served, xs, range(40, 45), ["k"])
        finally:
            cm.__exit__(None, None, None)
    first = after[("k", 40)]
    assert first["reset"] == "restored" and first["gap"] == 40 - kept - 1
    assert first["step"] == kept + 2
    # the outputs continue from exactly the snapshotted state
    ref = OrtReference()
    for seq in range(kept + 1):
        ref.step("k", xs[0, seq])
    for seq in range(40, 45):
        assert after[("k", seq)]["y"] == ref.step("k", xs[0, seq])
    assert [after[("k", q)]["reset"] for q in range(41, 45)] == [None] * 4


# -- what `serve` does with the user's files ----------------------------------------------


def test_serve_refuses_to_start_on_a_file_that_is_not_a_snapshot(tmp_path: Path) -> None:
    victim = tmp_path / "victim.py"
    victim.write_text("import os\nprint(os.getcwd())\n")
    before = victim.read_bytes()
    with pytest.raises(ControlError, match=r"exited with code 1:(.|\n)*victim.py' exists and "
                       "is not an lstm-stream snapshot"), serve_process(
            MODEL, free_endpoint(), "--set", f'state.snapshot_path="{victim}"'):
        pass
    assert victim.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["victim.py"]


def test_serve_refuses_to_start_when_snapshots_cannot_be_written(tmp_path: Path) -> None:
    snap = tmp_path / "no-such-dir" / "s.snap"
    with pytest.raises(ControlError, match=r"exited with code 1:(.|\n)*no-such-dir' does not "
                       "exist. Create it"), serve_process(
            MODEL, free_endpoint(), "--set", f'state.snapshot_path="{snap}"'):
        pass


def test_a_damaged_snapshot_is_kept_aside_and_reported_at_warning(ctx: zmq.Context[Any],
                                                                  tmp_path: Path) -> None:
    snap = tmp_path / "state.snap"
    store = filled_store(np.random.default_rng(8))
    save(store, snap, now=SEC, unix=time.time_ns())
    damaged = snap.read_bytes()[:-5]
    snap.write_bytes(damaged)
    with VehicleStack(ctx) as stack:
        cm, served = start(stack, "--set", f'state.snapshot_path="{snap}"')
        try:
            st = control_request(served.control, {"cmd": "status"})
            served.proc.send_signal(signal.SIGTERM)
            assert served.proc.wait(10) == 0
            log = served.proc.stderr.read().decode()
        finally:
            cm.__exit__(None, None, None)
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("state.snap.damaged-")]
    assert aside.read_bytes() == damaged  # kept, byte for byte
    note = st["snapshot"]["restore_note"]
    assert "damaged" in note and str(aside) in note
    assert any(" WARNING " in line and "damaged" in line for line in log.splitlines()), log
    assert read_snapshot(snap).name == []  # the final snapshot of the new run


def test_a_snapshot_that_fails_later_is_reported_once_and_fails_the_exit(
        ctx: zmq.Context[Any], tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    opts = ("--set", f'state.snapshot_path="{directory / "s.snap"}"',
            "--set", "state.snapshot_interval_s=0.05")
    xs = np.random.default_rng(9).normal(size=(1, 40, 16)).astype(np.float32)
    with VehicleStack(ctx) as stack:
        cm, served = start(stack, *opts)
        try:
            shutil.rmtree(directory)  # the disk goes away under the runner
            deadline = time.monotonic() + 10
            st: dict[str, Any] = {}
            for seq in range(40):  # every message changes the state: each interval retries
                drive(stack, served, xs, range(seq, seq + 1), ["k"])
                time.sleep(0.01)
            while time.monotonic() < deadline:
                st = control_request(served.control, {"cmd": "status"})
                if st["snapshot"]["failed"] >= 2:
                    break
                time.sleep(0.05)
            assert st["snapshot"]["failed"] >= 2 and st["snapshot"]["written"] == 0, st
            assert "Could not write snapshot" in st["snapshot"]["last_error"]
            served.proc.send_signal(signal.SIGTERM)
            code = served.proc.wait(10)
            log = served.proc.stderr.read().decode()
        finally:
            cm.__exit__(None, None, None)
    assert code == 1
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Could not write snapshot" in errors[0], errors
    assert "lstm-stream serve: error: The final snapshot was not written" in log
    assert "state of 1 streams was not saved" in log
    assert "snapshot of" not in log  # never reported as written
