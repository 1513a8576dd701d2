"""`lstm-stream eval` on real MCAP files with real onnxruntime sessions: determinism,
parity with a live `serve` fed by `replay`, metrics, the reference check and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from lstm_stream.cli.main import main
from lstm_stream.core.errors import EvaluationError, LogError
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.evaluate.compare import check_reference
from lstm_stream.evaluate.fleet import evaluate
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.replay import ReplayConfig, Replayer
from lstm_stream.logs.writer import LogWriter

from helpers.logs import T0, write_drive
from helpers.support import REPO, VehicleStack, poisoned_model, serve_process
from helpers.tools import build_step_model

MODEL = str(REPO / "models" / "random_lstm.onnx")


def outputs(path: Path, topic: str = "policy") -> list[dict[str, Any]]:
    return [msgpack.unpackb(m.data) for m in LogReader(path).messages([topic])]


def test_eval_twice_gives_byte_identical_files(tmp_path: Path) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=3, steps=60)
    for name in ("a", "b"):
        assert main(["eval", str(log), "--model", MODEL, "--target-topic", "controls",
                     "--report", str(tmp_path / name)]) == 0
    a, b = (tmp_path / n / "drive.policy.mcap" for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    outs = outputs(a)
    assert len(outs) == 180 and all(o["latency_ns"] == 0 for o in outs)
    assert [o["reset"] for o in outs[:3]] == ["new_stream"] * 3


def test_metrics_match_an_independent_computation(tmp_path: Path) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=2, steps=40)
    report = evaluate([log], EvalOptions(model=MODEL, target_topic="controls",
                                         report_dir=str(tmp_path / "out")))
    preds = {(o["stream"], o["seq"]): np.array(o["y"]) for o in outputs(
        tmp_path / "out" / "drive.policy.mcap")}
    targets = {(t["stream"], t["seq"]): np.array(t["y"]) for t in (
        msgpack.unpackb(m.data) for m in LogReader(log).messages(["controls"]))}
    err = np.stack([preds[k] - targets[k] for k in sorted(preds)])
    overall = report.overall()
    assert overall["matched"] == 80
    assert overall["mae"] == pytest.approx(np.abs(err).mean())
    assert overall["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()))
    assert overall["max_error"] == pytest.approx(np.abs(err).max())
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {s["stream"] for s in data["logs"][0]["streams"]} == {"car0", "car1"}
    for name in ("error_histogram.png", "drive.predictions.png", "report.md"):
        assert (tmp_path / "out" / name).stat().st_size > 100


def test_eval_equals_live_serve_fed_by_replay(tmp_path: Path) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=3, steps=60)
    evaluate([log], EvalOptions(model=MODEL))
    offline = {(o["stream"], o["seq"]): o for o in outputs(tmp_path / "drive.policy.mcap")}
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        cfg = ReplayConfig([log], output="tcp://127.0.0.1:*", rate=0, topics=["sensors"])
        with Replayer(cfg, context=ctx) as rep, VehicleStack(ctx) as stack, \
                serve_process(MODEL, rep.endpoint) as served:
            stack.connect_outputs(served.output, served.control)
            rep.run()  # waits for serve's subscription to 'sensors'
            live = [o for topic, o in stack.receive(len(offline)) if topic == "policy"]
    finally:
        ctx.destroy(linger=0)
    assert len(live) == len(offline)
    for out in live:
        ref = offline[(out["stream"], out["seq"])]
        np.testing.assert_allclose(out["y"], ref["y"], atol=1e-5, rtol=1e-5)
        assert (out["step"], out["reset"], out["gap"], out["stamp_ns"]) == (
            ref["step"], ref["reset"], ref["gap"], ref["stamp_ns"])


def test_reference_check_passes_then_fails_when_the_model_changes(
        tmp_path: Path, model_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=2, steps=20, targets=False)
    ref = tmp_path / "ref" / "drive.policy.mcap"
    base = ["eval", str(log), "--reference", str(ref)]
    assert main([*base, "--model", MODEL, "--update-reference"]) == 0
    assert ref.exists()
    assert main([*base, "--model", MODEL]) == 0
    other = model_factory(seed=1)
    assert main([*base, "--model", str(other)]) == 1
    err = capsys.readouterr().err
    assert "differ from the reference" in err and "stream 'car0' seq 0" in err
    assert "field y[0]" in err and "--update-reference" in err
    # Ignoring the field that changed makes the check pass.
    assert main([*base, "--model", str(other), "--ignore", "y"]) == 0
    with pytest.raises(EvaluationError, match="does not exist"):
        check_reference(ref, tmp_path / "missing.mcap", atol=1e-5, rtol=1e-5)


def test_workers_give_the_same_outputs(tmp_path: Path) -> None:
    logs = [write_drive(tmp_path / f"d{i}.mcap", streams=2, steps=15, seed=i) for i in range(2)]
    serial = evaluate(logs, EvalOptions(model=MODEL, target_topic="controls",
                                        output_dir=str(tmp_path / "s")))
    parallel = evaluate(logs, EvalOptions(model=MODEL, target_topic="controls",
                                          output_dir=str(tmp_path / "p")), workers=2)
    for log in logs:
        name = log.name.replace(".mcap", ".policy.mcap")
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "p" / name).read_bytes()
    assert serial.overall() == parallel.overall()
    # the whole report, through the workers' JSON lines: equal but for the output directory
    same = json.dumps(serial.as_dict()).replace(str(tmp_path / "s"), "OUT")
    assert same == json.dumps(parallel.as_dict()).replace(str(tmp_path / "p"), "OUT")


def test_bad_messages_become_counted_rejections_and_the_rest_is_evaluated(
        tmp_path: Path) -> None:
    log = tmp_path / "bad.mcap"
    x = np.zeros(16, np.float32)
    with LogWriter(log) as w:
        for k in range(10):
            t = T0 + k * 10_000_000
            payload = b"\xc1garbage" if k == 3 else encode_sensor(k, x, stream="car")
            w.write("sensors", payload, t)
            target = b"\xc1" if k == 5 else msgpack.packb({"stream": "car", "seq": k,
                                                            "y": [0.0, 0.0]})
            w.write("controls", target, t + 1)
    report = evaluate([log], EvalOptions(model=MODEL, target_topic="controls"))
    (result,) = report.logs
    assert result.stepped == 9 and result.rejected == {"not_msgpack": 1}
    assert result.targets_rejected == 1 and report.overall()["matched"] == 8
    diags = outputs(tmp_path / "bad.policy.mcap", "diagnostics")
    assert diags[0]["reason"] == "not_msgpack" and diags[0]["topic"] == "sensors"


def test_truncated_log_is_evaluated_up_to_the_damage(tmp_path: Path) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=1, steps=300, chunk_bytes=4000)
    data = log.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 2])
    (result,) = evaluate([cut], EvalOptions(model=MODEL, target_topic="controls")).logs
    assert 0 < result.stepped < 300 and result.problems and "offset" in result.problems[0]


def test_missing_target_topic_names_file_and_topics(tmp_path: Path) -> None:
    log = write_drive(tmp_path / "drive.mcap", steps=5, targets=False)
    with pytest.raises(LogError, match=r"drive.mcap.*no messages on topic\(s\) controls"):
        evaluate([log], EvalOptions(model=MODEL, target_topic="controls"))


def _json_channel_log(path: Path) -> Path:
    """An MCAP file another tool wrote: a json-encoded sensors channel with a JSON schema,
    written with the official mcap library (not the project's writer)."""
    from mcap.writer import Writer

    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start(profile="", library="another-tool")
        schema = writer.register_schema("Sensor", "jsonschema", json.dumps(
            {"type": "object", "properties": {"seq": {"type": "integer"}}}).encode())
        channel = writer.register_channel("sensors", "json", schema)
        for k in range(5):
            writer.add_message(channel, T0 + k, json.dumps({"seq": k, "x": [0.0] * 16}).encode(),
                               T0 + k)
        writer.finish()
    return path


def test_a_json_encoded_channel_is_named_not_counted_as_rejections(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _json_channel_log(tmp_path / "other.mcap")
    with pytest.raises(LogError, match=r"channel sensors is json-encoded .schema 'Sensor', "
                       r"jsonschema.; lstm-stream reads msgpack channels"):
        evaluate([log], EvalOptions(model=MODEL))
    assert main(["eval", str(log), "--model", MODEL]) == 1
    assert "is json-encoded" in capsys.readouterr().err
    with pytest.raises(LogError, match="json-encoded"):
        Replayer(ReplayConfig([log], output="tcp://127.0.0.1:*", rate=0))
    assert main(["log", "info", str(log)]) == 0
    out = capsys.readouterr().out
    assert "json, schema Sensor (jsonschema)" in out
    assert main(["log", "info", str(log), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["topics"]["sensors"]["encoding"] == "json"
    assert info["topics"]["sensors"]["schema"] == {"name": "Sensor", "encoding": "jsonschema"}


def test_a_log_whose_messages_are_all_rejected_fails_and_names_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small.onnx"
    small.write_bytes(build_step_model(features=10).SerializeToString())
    log = write_drive(tmp_path / "drive.mcap", streams=2, steps=100)  # 16 features
    assert main(["eval", str(log), "--model", str(small), "--report", str(tmp_path / "r")]) == 1
    captured = capsys.readouterr()
    assert ("200 of 200 messages rejected: wrong_length ('x' is 64 bytes; the model takes 10 "
            "float32 features = 40 bytes)") in captured.err
    assert "lstm-stream eval: error: Nothing was stepped in" in captured.err
    # the per-stream table and its summary row show the top reasons
    assert "| 100 (wrong_length 100) |" in captured.out
    assert "| **all** | | 0 | 200 (wrong_length 200) |" in captured.out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["logs"][0]["rejection_examples"]["wrong_length"].startswith("'x' is 64 bytes")
    assert report["logs"][0]["streams"][0]["rejections"] == {"wrong_length": 100}


def test_eval_json_is_one_document_and_other_lines_go_to_stderr(tmp_path: Path) -> None:
    log = write_drive(tmp_path / "drive.mcap", streams=1, steps=20)
    done = subprocess.run([sys.executable, "-m", "lstm_stream", "eval", str(log), "--model",
                           MODEL, "--json", "--report", str(tmp_path / "out") + "/",
                           "--reference", str(tmp_path / "ref") + "/", "--update-reference"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # exactly one JSON document
    assert report["stepped"] == 20
    assert f"eval: report in {tmp_path / 'out' / 'report.json'}" in done.stderr  # no '//'
    # a trailing slash means a directory, even for one log and before it exists
    assert (tmp_path / "ref" / "drive.policy.mcap").is_file()
    assert main(["eval", str(log), "--model", MODEL, "--reference", str(tmp_path / "ref")]) == 0


def test_eval_topics_option_chooses_the_sensor_topics(tmp_path: Path) -> None:
    log = tmp_path / "lidar.mcap"
    with LogWriter(log) as w:
        for k in range(6):
            w.write("lidar", encode_sensor(k, np.zeros(16, np.float32), stream="car"), T0 + k)
    with pytest.raises(LogError, match=r"no messages on topic.*sensors.*it has: lidar. Choose "
                       "topics with --topics"):
        evaluate([log], EvalOptions(model=MODEL))
    assert main(["eval", str(log), "--model", MODEL, "--topics", "lidar"]) == 0
    assert len(outputs(tmp_path / "lidar.policy.mcap")) == 6


def test_eval_rejects_non_finite_model_outputs_as_serve_does(tmp_path: Path) -> None:
    model = poisoned_model(tmp_path / "nan.onnx", "y")
    log = tmp_path / "drive.mcap"
    with LogWriter(log) as w:
        for k in range(10):
            x = np.ones(16, np.float32)
            x[0] = -1.0 if k in (2, 7) else 1.0
            w.write("sensors", encode_sensor(k, x, stream="car"), T0 + k)
    (result,) = evaluate([log], EvalOptions(model=str(model))).logs
    assert result.stepped == 8 and result.rejected == {"bad_output": 2}
    outs = outputs(tmp_path / "drive.policy.mcap")
    assert [o["seq"] for o in outs] == [0, 1, 3, 4, 5, 6, 8, 9]
    assert all(np.isfinite(o["y"]).all() for o in outs)
    diags = outputs(tmp_path / "drive.policy.mcap", "diagnostics")
    assert [(d["reason"], d["seq"]) for d in diags] == [("bad_output", 2), ("bad_output", 7)]
