"""lstm-stream log export --foxglove: JSON messages with a JSON schema per channel, read
back with the official mcap reader and validated against their schemas."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
from mcap.reader import make_reader

from lstm_stream.cli.main import main
from lstm_stream.core.wire.batch_message import encode_sensor_batch
from lstm_stream.logs.writer import LogWriter

from helpers.logs import T0, write_drive
from helpers.support import REPO

MODEL = str(REPO / "models" / "random_lstm.onnx")


def read_json_mcap(path: Path) -> list[tuple[str, str, dict, dict]]:
    """(topic, schema name, schema, message) of every message, via the official reader."""
    out = []
    with open(path, "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages():
            assert channel.message_encoding == "json"
            assert schema is not None and schema.encoding == "jsonschema"
            out.append((channel.topic, schema.name, json.loads(schema.data),
                        json.loads(message.data)))
    return out


def test_an_eval_output_and_its_drive_export_as_valid_json(tmp_path: Path) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=2, steps=30)
    assert main(["eval", str(log), "--model", MODEL, "--target-topic", "controls"]) == 0
    out = tmp_path / "drive.policy.mcap"
    assert main(["log", "export", str(out), "--foxglove", "--model", MODEL]) == 0
    messages = read_json_mcap(tmp_path / "drive.policy.foxglove.mcap")
    policy = [m for topic, _, _, m in messages if topic == "policy"]
    assert len(policy) == 60
    for _, _, schema, message in messages:
        jsonschema.validate(message, schema)
    first = policy[0]
    # y by the model's output names, what a Plot panel takes as /policy.outputs.steer
    assert first["outputs"] == {"steer": first["y"][0], "accel": first["y"][1]}
    assert first["reset_event"] == 1 and first["reset"] == "new_stream"
    assert policy[2]["reset_event"] == 0 and policy[2]["reset"] is None
    assert first["stale_count"] == 0
    # the recording itself: sensor x (bin float32) becomes numbers, targets keep y
    assert main(["log", "export", str(log), "--foxglove", "-o", str(tmp_path / "d.json.mcap")]
                ) == 0
    raw = read_json_mcap(tmp_path / "d.json.mcap")
    sensors = [m for topic, _, _, m in raw if topic == "sensors"]
    assert len(sensors) == 60 and len(sensors[0]["x"]) == 16
    assert all(isinstance(v, float) for v in sensors[0]["x"])
    for _, _, schema, message in raw:
        jsonschema.validate(message, schema)


def test_batch_outputs_export_as_rows_of_numbers(tmp_path: Path) -> None:
    log = tmp_path / "farm.mcap"
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    with LogWriter(log) as w:
        for k in range(4):
            w.write("sensors", encode_sensor_batch(["a", "b", "c"], [k] * 3, x), T0 + k)
    assert main(["eval", str(log), "--model", MODEL]) == 0
    assert main(["log", "export", str(tmp_path / "farm.policy.mcap"), "--foxglove"]) == 0
    messages = read_json_mcap(tmp_path / "farm.policy.foxglove.mcap")
    batches = [(name, m) for topic, name, _, m in messages if topic == "policy"]
    assert len(batches) == 4 and all(name == "lstm_stream.BatchOutput" for name, _ in batches)
    assert np.asarray(batches[0][1]["y"]).shape == (3, 2)
    for _, _, schema, message in messages:
        jsonschema.validate(message, schema)
