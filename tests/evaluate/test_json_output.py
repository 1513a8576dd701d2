"""eval --encoding json: the output file is JSON with a JSON schema per channel and the
log's targets on their own topic, read back with the official mcap reader and
validated with jsonschema; its values are those of the msgpack output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import msgpack
import numpy as np
import pytest
from mcap.reader import make_reader

from lstm_stream.cli.main import main
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.writer import LogWriter

from helpers.logs import write_drive
from helpers.support import REPO

MODEL = str(REPO / "models" / "random_lstm.onnx")  # outputs steer, accel


def read_json_mcap(path: Path) -> tuple[dict[str, str], list[tuple[str, int, dict[str, Any]]]]:
    """(lstm_stream metadata, [(topic, log time, message)]) after validating every
    message against its channel's schema, with the official mcap reader."""
    with open(path, "rb") as f:
        reader = make_reader(f)
        meta = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
    out = []
    with open(path, "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages(log_time_order=True):
            assert channel.message_encoding == "json"
            assert schema is not None and schema.encoding == "jsonschema"
            body = json.loads(message.data)
            jsonschema.validate(body, json.loads(schema.data))
            out.append((channel.topic, message.log_time, body))
    return meta["lstm_stream"], out


def test_json_output_carries_outputs_by_name_and_the_targets(tmp_path: Path) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=2, steps=30)
    assert main(["eval", str(log), "--model", MODEL, "--target-topic", "controls",
                 "--report", str(tmp_path / "plain")]) == 0
    # a file of the user's where the conversion could have staged its msgpack copy
    (tmp_path / "json").mkdir()
    theirs = tmp_path / "json" / "drive.policy.mcap.msgpack"
    theirs.write_bytes(b"not ours")
    assert main(["eval", str(log), "--model", MODEL, "--target-topic", "controls",
                 "--report", str(tmp_path / "json"), "--encoding", "json"]) == 0
    meta, messages = read_json_mcap(tmp_path / "json" / "drive.policy.mcap")
    assert meta["encoding"] == "json" and meta["kind"] == "evaluation"
    assert len(meta["model_sha256"]) == 64 and meta["source"] == "drive.mcap"
    # the staged copy is gone, the user's file untouched
    assert list((tmp_path / "json").glob("*.msgpack")) == [theirs]
    assert theirs.read_bytes() == b"not ours"
    policy = [(t, m) for topic, t, m in messages if topic == "policy"]
    targets = [(t, m) for topic, t, m in messages if topic == "controls"]
    assert len(policy) == 60 and len(targets) == 60
    # the same outputs as the msgpack file, at the same log times
    plain = [(m.log_time_ns, msgpack.unpackb(m.data)) for m in
             LogReader(tmp_path / "plain" / "drive.policy.mcap").messages(["policy"])]
    assert [t for t, _ in policy] == [t for t, _ in plain]
    for (_, j), (_, p) in zip(policy, plain, strict=True):
        assert (j["stream"], j["seq"], j["step"], j["reset"]) == (
            p["stream"], p["seq"], p["step"], p["reset"])
        np.testing.assert_array_equal(np.float32(j["y"]), np.float32(p["y"]))
        assert j["outputs"] == {"steer": j["y"][0], "accel": j["y"][1]}
        assert j["reset_event"] == int(p["reset"] is not None) and j["stale_count"] == 0
    recorded = [msgpack.unpackb(m.data) for m in LogReader(log).messages(["controls"])]
    assert [m["y"] for _, m in targets] == [r["y"] for r in recorded]
    assert targets[0][1]["outputs"] == {"steer": recorded[0]["y"][0],
                                        "accel": recorded[0]["y"][1]}
    # the report is the same whichever encoding the outputs have
    a = json.loads((tmp_path / "plain" / "report.json").read_text())["overall"]
    b = json.loads((tmp_path / "json" / "report.json").read_text())["overall"]
    assert a == b and a["matched"] == 60


def test_a_target_key_other_than_y_gets_outputs_by_name(tmp_path: Path) -> None:
    log = tmp_path / "cmd.mcap"
    write_drive(tmp_path / "d.mcap", streams=1, steps=5)
    with LogWriter(log) as w:
        for m in LogReader(tmp_path / "d.mcap").messages():
            body = msgpack.unpackb(m.data)
            if m.topic == "controls":
                body = {"stream": body["stream"], "seq": body["seq"], "cmd": body["y"]}
            w.write(m.topic, msgpack.packb(body), m.log_time_ns)
    assert main(["eval", str(log), "--model", MODEL, "--target-topic", "controls",
                 "--target-key", "cmd", "--encoding", "json"]) == 0
    _, messages = read_json_mcap(tmp_path / "cmd.policy.mcap")
    targets = [m for topic, _, m in messages if topic == "controls"]
    assert len(targets) == 5
    assert all(m["outputs"] == {"steer": m["cmd"][0], "accel": m["cmd"][1]} for m in targets)


def test_json_output_of_one_log_over_two_workers_equals_one_worker(tmp_path: Path) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=6, steps=40)
    for name, workers in (("one", "1"), ("two", "2")):
        assert main(["eval", str(log), "--model", MODEL, "--target-topic", "controls",
                     "--report", str(tmp_path / name), "--encoding", "json",
                     "--workers", workers]) == 0
    one = (tmp_path / "one" / "drive.policy.mcap").read_bytes()
    assert one == (tmp_path / "two" / "drive.policy.mcap").read_bytes()
    assert len([m for topic, _, m in read_json_mcap(tmp_path / "one" / "drive.policy.mcap")[1]
                if topic == "policy"]) == 240


def test_json_outputs_cannot_be_compared_with_a_reference(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=1, steps=5)
    assert main(["eval", str(log), "--model", MODEL, "--encoding", "json", "--reference",
                 str(tmp_path / "ref.mcap")]) == 2
    err = capsys.readouterr().err
    assert "--reference compares msgpack outputs" in err and "drop --encoding json" in err
    assert not (tmp_path / "drive.policy.mcap").exists()  # refused before anything ran
