"""Several sensors on several topics (core/step/sources.py), with a real onnxruntime session.

Each assembled step must equal a plain StreamStepper stepped with the whole
feature vector the sources add up to, bit for bit; bad input on any source must
change nothing.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest

from lstm_stream.core.backends import create_backend
from lstm_stream.core.config.runner import RunnerConfig, SourceConfig, load_runner_config
from lstm_stream.core.config.sources import resolve_sources
from lstm_stream.core.errors import ConfigError
from lstm_stream.core.model.contract import ModelContract
from lstm_stream.core.step.results import NoOutput, Stepped
from lstm_stream.core.step.sources import SourceStepper, StalePolicy
from lstm_stream.core.step.stepper import StreamStepper
from lstm_stream.core.wire.protocol import Rejection, encode_sensor

from helpers.sources import FEATURES, ISSUE_TOML, make_model

MS = 1_000_000


@pytest.fixture
def contract(tmp_path: Path) -> ModelContract:
    return make_model(tmp_path / "six.onnx")


@pytest.fixture
def config(tmp_path: Path) -> RunnerConfig:
    path = tmp_path / "runner.toml"
    path.write_text(ISSUE_TOML)
    return load_runner_config(path)


def assembler(contract: ModelContract, config: RunnerConfig, **kwargs: object
              ) -> SourceStepper:
    stepper = StreamStepper(contract, create_backend("onnxruntime", contract))
    sources = resolve_sources(config.input.sources, contract.feature_names,
                              contract.n_features)
    return SourceStepper(sources, stepper, **kwargs)  # type: ignore[arg-type]


def reference(contract: ModelContract) -> StreamStepper:
    return StreamStepper(contract, create_backend("onnxruntime", contract))


def send(src: SourceStepper, topic: str, seq: int, x: list[float] | dict[str, float], *,
         t: int = 0, stamp: int | None = None, stream: str = "car1",
         reset: bool = False) -> Stepped | Rejection | NoOutput:
    if isinstance(x, dict):  # x as a map of the source's feature names
        body: dict[str, object] = {"stream": stream, "seq": seq, "x": x, "reset": reset}
        if stamp is not None:
            body["stamp_ns"] = stamp
        payload = msgpack.packb(body)
    else:
        payload = encode_sensor(seq, np.asarray(x, np.float32), stream=stream, stamp_ns=stamp,
                                reset=reset)
    return src.step([topic.encode(), payload], t)


def test_the_issue_file_loads_as_written(config: RunnerConfig) -> None:
    imu, wheels, gnss = config.input.sources
    assert (imu.topic, imu.features, imu.rate_hz, imu.max_age_ms, imu.trigger) == (
        "imu", ["ax", "ay", "yaw_rate"], 100.0, 30.0, True)
    assert not wheels.trigger and gnss.max_age_ms == 250.0
    assert config.freshness.stale == "flag"


def test_triggers_wait_for_every_source_then_step_the_assembled_vector(
        contract: ModelContract, config: RunnerConfig) -> None:
    src, ref = assembler(contract, config), reference(contract)
    first = send(src, "imu", 0, [0.1, 0.2, 0.3])
    assert isinstance(first, NoOutput) and first.event is not None
    assert first.event["event"] == "waiting" and first.event["missing"] == ["wheels", "gnss"]
    again = send(src, "imu", 1, [0.1, 0.2, 0.3])
    assert isinstance(again, NoOutput) and again.event is None  # said once per stream
    assert isinstance(send(src, "wheels", 0, [12.5]), NoOutput)
    assert isinstance(send(src, "gnss", 0, {"lat_err": 0.4, "heading_err": -0.1}), NoOutput)
    out = send(src, "imu", 2, {"ax": 1.0, "ay": -2.0, "yaw_rate": 0.5})
    assert isinstance(out, Stepped) and out.msg.seq == 2 and out.info == {"stale": None}
    want = ref.step([b"imu", encode_sensor(2, np.array([1, -2, 0.5, 12.5, 0.4, -0.1],
                                                       np.float32), stream="car1")], 0)
    assert isinstance(want, Stepped)
    assert np.array_equal(out.y, want.y) and out.reset == want.reset == "new_stream"
    assert src.waiting == 2


def test_features_go_where_the_model_names_them(tmp_path: Path, config: RunnerConfig) -> None:
    order = ["speed", "heading_err", "ax", "lat_err", "ay", "yaw_rate"]
    contract = make_model(tmp_path / "shuffled.onnx", order)
    src, ref = assembler(contract, config), reference(contract)
    send(src, "wheels", 0, [3.0])
    send(src, "gnss", 0, [0.25, 0.5])
    out = send(src, "imu", 0, [1.0, 2.0, 4.0])
    values = dict(zip(FEATURES, [1.0, 2.0, 4.0, 3.0, 0.25, 0.5], strict=True))
    want = ref.step([b"x", encode_sensor(0, np.array([values[n] for n in order], np.float32),
                                         stream="car1")], 0)
    assert isinstance(out, Stepped) and isinstance(want, Stepped)
    assert np.array_equal(out.y, want.y)


def test_bad_input_on_a_source_is_rejected_and_changes_nothing(
        contract: ModelContract, config: RunnerConfig) -> None:
    src, ref = assembler(contract, config), reference(contract)
    send(src, "wheels", 0, [1.0])
    send(src, "gnss", 0, [0.0, 0.0])
    bad = send(src, "wheels", 1, [1.0, 2.0])  # one feature too many
    assert isinstance(bad, Rejection) and bad.reason == "wrong_length"
    assert "source 'wheels' takes 1" in bad.detail
    nan = send(src, "gnss", 1, [float("nan"), 0.0])
    assert isinstance(nan, Rejection) and nan.reason == "non_finite"
    stale = send(src, "wheels", 0, [9.0])  # seq 0 of wheels again
    assert isinstance(stale, Rejection) and stale.reason == "stale_seq"
    unknown = src.step([b"lidar", encode_sensor(0, [1.0], stream="car1")], 0)
    assert isinstance(unknown, Rejection) and unknown.reason == "unknown_topic"
    out = send(src, "imu", 5, [0.5, 0.5, 0.5])
    want = ref.step([b"imu", encode_sensor(5, np.array([0.5, 0.5, 0.5, 1, 0, 0], np.float32),
                                           stream="car1")], 0)
    assert isinstance(out, Stepped) and isinstance(want, Stepped)
    assert np.array_equal(out.y, want.y)


def test_stale_sources_are_flagged_skipped_or_held(contract: ModelContract,
                                                   config: RunnerConfig) -> None:
    def run(policy: StalePolicy) -> list[Stepped | Rejection | NoOutput]:
        src = assembler(contract, config, stale=policy, ages=True)
        out = [send(src, "wheels", 0, [1.0], stamp=0), send(src, "gnss", 0, [0.1, 0.2], stamp=0),
               send(src, "imu", 0, [0.0, 0.0, 0.0], stamp=10 * MS)]  # all fresh
        out.append(send(src, "wheels", 1, [7.0], stamp=0))  # a late reading: stale next
        out.append(send(src, "imu", 1, [0.0, 0.0, 0.0], stamp=100 * MS))
        return out

    flagged = run(StalePolicy.FLAG)[-1]
    assert isinstance(flagged, Stepped) and flagged.info is not None
    assert flagged.info["stale"] == ["wheels"]  # 100 ms > 60; gnss 100 ms < 250
    assert flagged.info["age_ms"] == {"imu": 0.0, "wheels": 100.0, "gnss": 100.0}
    skipped = run(StalePolicy.SKIP)[-1]
    assert isinstance(skipped, NoOutput) and skipped.event is not None
    assert skipped.event == {"event": "stale_skipped", "stream": "car1", "seq": 1,
                             "stale": ["wheels"]}
    held = run(StalePolicy.HOLD)[-1]
    assert isinstance(held, Stepped) and held.info is not None and held.info["stale"] == ["wheels"]
    # hold steps with the last fresh wheels value (1.0), flag with the late one (7.0)
    ref = reference(contract)
    ref.step([b"imu", encode_sensor(0, np.array([0, 0, 0, 1, 0.1, 0.2], np.float32),
                                    stream="car1")], 0)
    want_held = ref.step([b"imu", encode_sensor(1, np.array([0, 0, 0, 1, 0.1, 0.2], np.float32),
                                                stream="car1")], 0)
    assert isinstance(want_held, Stepped) and np.array_equal(held.y, want_held.y)
    assert not np.array_equal(flagged.y, held.y)


def test_without_stamps_ages_are_receive_times(contract: ModelContract,
                                               config: RunnerConfig) -> None:
    src = assembler(contract, config, ages=True)
    send(src, "wheels", 0, [1.0], t=0)
    send(src, "gnss", 0, [0.0, 0.0], t=0)
    out = send(src, "imu", 0, [0.0, 0.0, 0.0], t=80 * MS)
    assert isinstance(out, Stepped) and out.info is not None
    assert out.info["stale"] == ["wheels"] and out.info["age_ms"]["wheels"] == 80.0


def test_several_triggers_each_with_its_own_seq(contract: ModelContract,
                                                config: RunnerConfig) -> None:
    config.input.sources[1].trigger = True  # wheels steps the model too
    src = assembler(contract, config)
    send(src, "gnss", 0, [0.0, 0.0])
    send(src, "imu", 40, [0.0, 0.0, 0.0])  # waiting for wheels
    first = send(src, "wheels", 3, [1.0])
    second = send(src, "imu", 41, [0.0, 0.0, 0.0])
    assert isinstance(first, Stepped) and isinstance(second, Stepped)
    assert (first.msg.seq, second.msg.seq) == (1, 2)  # the stream's trigger count
    assert first.info is not None and first.info["trigger"] == {"topic": "wheels", "seq": 3}
    assert second.step == 2 and second.reset is None


@pytest.mark.parametrize(("names", "sources", "message"), [
    (FEATURES, [("imu", ["ax", "ay", "yaw_rate", "speed", "lat_err"])],
     "no source gives ['heading_err']"),
    (FEATURES, [("imu", [*FEATURES, "altitude"])], "the model has no feature ['altitude']"),
    (FEATURES, [("imu", ["ax", "ay", "yaw_rate"]), ("wheels", ["ax", "speed", "lat_err",
                                                              "heading_err"])],
     "feature 'ax' is given by both 'imu' and 'wheels'"),
    (None, [("imu", ["a", "b"])], "the sources give 2 features (a, b) but the model takes 6"),
])
def test_sources_that_do_not_fit_the_model_are_refused(
        tmp_path: Path, names: list[str] | None, sources: list[tuple[str, list[str]]],
        message: str) -> None:
    contract = make_model(tmp_path / "m.onnx", names)
    specs = [SourceConfig(topic, features, trigger=True) for topic, features in sources]
    with pytest.raises(ConfigError, match=r"input\.sources") as err:
        resolve_sources(specs, contract.feature_names, contract.n_features)
    assert message in str(err.value)


@pytest.mark.parametrize(("toml", "message"), [
    ('[input]\ntopics = ["imu"]\n[[input.sources]]\ntopic = "imu"\nfeatures = ["a"]\n',
     "at least one source with trigger = true"),
    ('[input]\ntopics = ["imu"]\n[[input.sources]]\ntopic = "gps"\nfeatures = ["a"]\n'
     'trigger = true\n', "add ['gps'] to input.topics"),
    ('[input]\ntopics = ["imu"]\n[[input.sources]]\ntopic = "imu"\nfeatures = ["a"]\n'
     'trigger = true\n[[input.sources]]\ntopic = "imu"\nfeatures = ["b"]\n',
     "one [[input.sources]] per topic"),
    ('[input]\ntopics = ["imu"]\n[[input.sources]]\ntopic = "imu"\nfeatures = ["a"]\n'
     'trigger = true\nmax_age_ms = 0\n', "input.sources.max_age_ms"),
    ('[input]\ntopics = ["imu"]\n[[input.sources]]\ntopic = "imu"\nfeatures = ["a"]\n'
     'trigger = true\n[sharding]\ncount = 2\n', "sharded multi-source runners"),
    ('[input]\nsources = 3\n', "must be a list of tables"),
    ('[freshness]\nstale = "ignore"\n', "'freshness.stale' must be one of"),
])
def test_bad_source_configs_name_the_field(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_runner_config(path)
    assert message in str(err.value)
