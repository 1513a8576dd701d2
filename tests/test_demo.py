"""The demo's shipped parts: the recorded drive (read without mcap), the shipped lane-keeping
model (its export parity reference, its card), and `run_demo` against a real serve process."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
import pytest

from lstm_stream.core.backends.base import step_sequences
from lstm_stream.core.backends.numpy import NumpyBackend
from lstm_stream.core.backends.onnxruntime import OnnxRuntimeBackend
from lstm_stream.core.errors import LogError
from lstm_stream.core.model.contract import load_contract
from lstm_stream.demo import (
    DemoError,
    Drive,
    DriveMessage,
    read_drive,
    run_demo,
    write_drive,
)

from helpers.support import REPO, run_python

MODEL = REPO / "models" / "lane_keep_lstm.onnx"
PARITY = REPO / "models" / "lane_keep_lstm.parity.npz"
CARD = REPO / "models" / "lane_keep_lstm.card.json"


def test_shipped_drive_is_read_without_mcap() -> None:
    code = (
        "import sys; sys.modules['mcap'] = None\n"  # any `import mcap` now raises ImportError
        "from lstm_stream.demo import read_drive\n"
        "d = read_drive()\n"
        "import collections, json\n"
        "print(json.dumps(collections.Counter(m.topic for m in d.messages)))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["sensors"] == counts["controls"] > 0


def test_shipped_drive_is_small_and_holds_wire_protocol_messages() -> None:
    path = REPO / "src" / "lstm_stream" / "data" / "lane_keep_drive.msgpack"
    assert path.stat().st_size < 300_000
    drive = read_drive()
    times = [m.log_time_ns for m in drive.messages]
    assert times == sorted(times)
    sensors = [msgpack.unpackb(m.data) for m in drive.messages if m.topic == "sensors"]
    controls = {(c["stream"], c["seq"]) for c in (msgpack.unpackb(m.data) for m in drive.messages
                                                  if m.topic == "controls")}
    for body in sensors:
        assert len(body["x"]) == 4 * 2  # two float32 features, as bin
        assert (body["stream"], body["seq"]) in controls  # every sensor has its expert command
        assert body.get("reset", False) == (body["seq"] == 0)


def test_drive_file_round_trip(tmp_path: Path) -> None:
    drive = Drive([DriveMessage("sensors", 5, b"\x81\xa3seq\x00"),
                   DriveMessage("controls", 6, b"\x80")], info={"made_by": "test"})
    path = tmp_path / "d.msgpack"
    write_drive(path, drive)
    back = read_drive(path)
    assert back.messages == drive.messages and back.info == {"made_by": "test"}


@pytest.mark.parametrize(("content", "match"), [
    (b"\xc1", "is not msgpack"),
    (msgpack.packb({"format": "something else"}), "not an lstm-stream drive file"),
    (msgpack.packb({"format": "lstm-stream drive", "version": 9}), "version 9"),
    (msgpack.packb({"format": "lstm-stream drive", "version": 1, "messages": [["t", "x", b""]]}),
     "message 0 is not"),
    (msgpack.packb({"format": "lstm-stream drive", "version": 1, "messages": []}),
     "holds no messages"),
])
def test_bad_drive_files_are_refused_clearly(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.msgpack"
    path.write_bytes(content)
    with pytest.raises(LogError, match=match):
        read_drive(path)
    with pytest.raises(LogError, match="Could not read the drive file"):
        read_drive(tmp_path / "missing.msgpack")


def test_shipped_model_matches_its_pytorch_reference() -> None:
    """The export parity check, re-run without torch: onnxruntime and numpy, stepped message by
    message with state carried, against PyTorch's outputs on whole sequences stored at export."""
    ref = np.load(PARITY, allow_pickle=False)
    xs, want = ref["x"], ref["y"]  # (B, T, F), (B, T, O)
    contract = load_contract(MODEL)
    for backend in (OnnxRuntimeBackend(contract), NumpyBackend(contract)):
        got_y, _ = step_sequences(backend.step, contract, xs)
        tol = np.maximum(1e-5, 1e-5 * np.maximum(np.abs(got_y), np.abs(want)))
        assert np.all(np.abs(got_y - want) <= tol), type(backend).__name__


def test_model_card_describes_the_shipped_model() -> None:
    card = json.loads(CARD.read_text())
    import hashlib

    assert card["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert card["bytes"] == MODEL.stat().st_size < 1_000_000
    assert card["features"] == ["lateral_offset_m", "heading_error_rad"]
    assert card["outputs"] == ["steer_rad"]
    summary = card["closed_loop"]["summary"]
    assert summary["carried"]["mean_return"] > summary["reset"]["mean_return"]
    readme = (REPO / "models" / "README.md").read_text()
    assert f"`{card['sha256'][:16]}...`" in readme  # the card's metrics block is current


def test_run_demo_serves_the_drive_and_state_beats_reset() -> None:
    report = run_demo(MODEL, rate=0)
    assert report.sent == report.received == 600
    assert report.max_parity_error <= 1e-4  # served == numpy stepped offline, state carried
    errors = report.errors()
    assert errors["served_mae"] < errors["reset_mae"]
    assert report.status["stepped"] == 600 + 0 and sum(report.status["rejected"].values()) == 0


def test_run_demo_refuses_a_model_that_does_not_fit_the_drive() -> None:
    with pytest.raises(DemoError, match=r"2 features; the model .* takes 16"):
        run_demo(REPO / "models" / "random_lstm.onnx", rate=0)
    with pytest.raises(DemoError, match="not found"):
        run_demo(REPO / "models" / "nope.onnx")
