"""Batched eval (streams stepped together) equals one message per backend call.

Generated logs carry every kind of event that changes state or is refused: new
streams, resets, seq gaps, stale and repeated seq, idle expiry, evictions (more
streams than state.max_streams), garbage payloads, NaN features and wrong
lengths. The output files must be byte for byte the same and the reports equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from lstm_stream.core.wire.batch_message import decode_batch_output, encode_sensor_batch
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.evaluate.fleet import evaluate
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.replay import ReplayConfig, Replayer
from lstm_stream.logs.writer import LogWriter

from helpers.logs import T0, write_eventful_log
from helpers.support import REPO, VehicleStack, serve_process

MODEL = str(REPO / "models" / "random_lstm.onnx")
MS = 1_000_000
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_eval_equals_one_message_per_call(tmp_path: Path, seed: int) -> None:
    log = write_eventful_log(tmp_path / "drive.mcap", seed)
    common = {"model": MODEL, "target_topic": "controls", "max_streams": 16,
              "idle_timeout_s": 0.5, "max_gap": 1}
    one = evaluate([log], EvalOptions(**common, batch=1, output_dir=str(tmp_path / "one")))
    many = evaluate([log], EvalOptions(**common, batch=64, output_dir=str(tmp_path / "many")))
    a, b = (tmp_path / d / "drive.policy.mcap" for d in ("one", "many"))
    assert a.read_bytes() == b.read_bytes()
    (first,), (second,) = one.logs, many.logs
    assert second.backend_calls < first.backend_calls / 3  # it did batch
    first.backend_calls = second.backend_calls = 0
    assert json.dumps(one.as_dict()).replace("/one/", "/") == json.dumps(
        many.as_dict()).replace("/many/", "/")
    # the log really holds every kind of event
    (result,) = one.logs
    assert {"stale_seq", "not_msgpack", "non_finite", "wrong_length"} <= set(result.rejected)
    resets = {r for s in result.streams for r in s.resets}
    assert {"new_stream", "requested", "gap", "evicted"} <= resets
    events = [msgpack.unpackb(m.data)["event"] for m in LogReader(a).messages(["diagnostics"])]
    assert "stream_expired" in events and result.stepped > 1500


def test_eval_of_batch_messages_equals_the_same_readings_one_by_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    names = [f"sim/{i}" for i in range(20)]
    batch_log, single_log = tmp_path / "farm.mcap", tmp_path / "solo.mcap"
    with LogWriter(batch_log) as farm, LogWriter(single_log) as solo:
        for tick in range(50):
            t = T0 + tick * 10 * MS
            x = rng.normal(size=(20, 16)).astype(np.float32)
            if tick == 30:
                x[4, 0] = np.inf
            resets = [tick == 20 and i < 3 for i in range(20)]
            farm.write("sensors", encode_sensor_batch(names, [tick] * 20, x, resets=resets,
                                                      stamps=[t] * 20), t)
            for i, name in enumerate(names):
                solo.write("sensors", encode_sensor(tick, x[i], stream=name, stamp_ns=t,
                                                    reset=resets[i]), t)
            for log in (farm, solo):  # a target for every reading, by (stream, seq)
                for i, name in enumerate(names):
                    log.write("controls", msgpack.packb({"stream": name, "seq": tick,
                                                         "y": x[i, :2].tolist()}), t + 1)
    report = evaluate([batch_log, single_log], EvalOptions(model=MODEL,
                                                           target_topic="controls"))
    farm_result, solo_result = report.logs
    assert farm_result.stepped == solo_result.stepped == 20 * 50 - 1
    assert farm_result.rejected == solo_result.rejected == {"non_finite": 1}
    # the scores and each stream's counts too, whichever path a tick took
    assert farm_result.targets == solo_result.targets == 1000
    assert farm_result.histogram == solo_result.histogram
    assert farm_result.errors().metrics() == solo_result.errors().metrics()
    assert [(s.stream, s.stepped, s.resets, s.rejected, s.errors) for s in farm_result.streams] == [
        (s.stream, s.stepped, s.resets, s.rejected, s.errors) for s in solo_result.streams]
    singles = {(o["stream"], o["seq"]): o for o in map(
        msgpack.unpackb, (m.data for m in LogReader(tmp_path / "solo.policy.mcap").messages()))
        if "y" in o}
    rows = 0
    for m in LogReader(tmp_path / "farm.policy.mcap").messages(["policy"]):
        out = msgpack.unpackb(m.data)
        y = decode_batch_output(out, 2)
        for k, stream in enumerate(out["streams"]):
            one = singles[(stream, out["seq"][k])]
            assert np.array_equal(y[k], np.asarray(one["y"], np.float32))
            assert (out["step"][k], out["reset"][k], out["gap"][k]) == (
                one["step"], one["reset"], one["gap"])
            rows += 1
    assert rows == len(singles) == 999


def test_a_batch_message_log_replayed_into_serve_gives_what_eval_writes(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    names = [f"sim/{i}" for i in range(30)]
    log = tmp_path / "farm.mcap"
    with LogWriter(log) as farm:
        for tick in range(20):
            t = T0 + tick * 10 * MS
            x = rng.normal(size=(30, 16)).astype(np.float32)
            farm.write("sensors", encode_sensor_batch(names, [tick] * 30, x,
                                                      stamps=[t] * 30), t)
    evaluate([log], EvalOptions(model=MODEL))
    offline = [msgpack.unpackb(m.data)
               for m in LogReader(tmp_path / "farm.policy.mcap").messages(["policy"])]
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        cfg = ReplayConfig([log], output="tcp://127.0.0.1:*", rate=0, topics=["sensors"])
        with Replayer(cfg, context=ctx) as rep, VehicleStack(ctx) as stack, \
                serve_process(MODEL, rep.endpoint) as served:
            stack.connect_outputs(served.output, served.control)
            rep.run()
            live = [o for topic, o in stack.receive(len(offline)) if topic == "policy"]
    finally:
        ctx.destroy(linger=0)
    assert len(live) == len(offline) == 20
    for out, ref in zip(live, offline, strict=True):
        assert out["streams"] == ref["streams"] == names
        np.testing.assert_allclose(decode_batch_output(out, 2), decode_batch_output(ref, 2),
                                   atol=1e-6)
        assert (out["step"], out["reset"], out["gap"]) == (ref["step"], ref["reset"], ref["gap"])
