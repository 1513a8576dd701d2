"""ROS bags as logs: bags written with `rosbags` (rosbag2 sqlite3 and mcap, ROS 1),
an IMU at 100 Hz and odometry at 50 Hz, evaluated through [[input.sources]] fields.

`eval` of a bag must equal `eval` of the same readings written as an lstm-stream
MCAP log by hand; a field path the message type lacks is refused naming its fields.
Twist commands on /cmd_vel, scored with --target-field, give the scores of the same
commands written as lstm-stream targets.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import onnx
import pytest
import zmq
from mcap.reader import make_reader

from lstm_stream.cli.main import main
from lstm_stream.core.config.runner import SourceConfig, load_runner_config
from lstm_stream.core.errors import ConfigError, EvaluationError
from lstm_stream.evaluate.fleet import evaluate
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.logs.reader import LogReader
from lstm_stream.logs.replay import ReplayConfig, Replayer
from lstm_stream.logs.rosbag import RosBag, is_rosbag
from lstm_stream.logs.writer import LogWriter

from helpers.support import VehicleStack, serve_process
from helpers.tools import build_step_model

rosbags = pytest.importorskip("rosbags", reason="needs the [ros] extra")
from rosbags.rosbag1 import Writer as Ros1Writer  # noqa: E402
from rosbags.rosbag2 import StoragePlugin  # noqa: E402
from rosbags.rosbag2 import Writer as Ros2Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

T0 = 1_700_000_000_000_000_000
FEATURES = ["ax", "ay", "yaw_rate", "speed"]
CONFIG = """
[input]
topics = ["/imu/data", "/odom"]

[[input.sources]]
topic = "/imu/data"
fields = { ax = "linear_acceleration.x", ay = "linear_acceleration.y", \
yaw_rate = "angular_velocity.z" }
max_age_ms = 30
trigger = true

[[input.sources]]
topic = "/odom"
fields = { speed = "twist.twist.linear.x" }
max_age_ms = 60
"""


def readings(seconds: float = 1.0) -> list[tuple[int, str, dict[str, float]]]:
    """(log time, topic, values): the IMU every 10 ms, odometry every 20 ms."""
    rng = np.random.default_rng(7)
    out = []
    for k in range(int(seconds * 100)):
        t = T0 + k * 10_000_000
        if k % 2 == 0:
            out.append((t, "/odom", {"speed": float(rng.normal(10, 1))}))
        out.append((t + 1000, "/imu/data", {"ax": float(rng.normal()), "ay": float(rng.normal()),
                                            "yaw_rate": float(rng.normal(0, 0.1))}))
    return out


def ros_messages(store: Any, topic: str, values: dict[str, float], t: int) -> Any:
    types = store.types
    stamp = types["builtin_interfaces/msg/Time"](sec=t // 1_000_000_000,
                                                 nanosec=t % 1_000_000_000)
    extra = {"seq": 0} if any(n == "seq" for n, _ in store.fielddefs["std_msgs/msg/Header"][1]) \
        else {}  # ROS 1 headers have a seq
    header = types["std_msgs/msg/Header"](stamp=stamp, frame_id="base_link", **extra)
    vec = types["geometry_msgs/msg/Vector3"]
    zeros9, zeros36 = np.zeros(9), np.zeros(36)
    if topic == "/imu/data":
        return types["sensor_msgs/msg/Imu"](
            header=header, orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0,
                                                                            w=1.0),
            orientation_covariance=zeros9,
            angular_velocity=vec(x=0.0, y=0.0, z=values["yaw_rate"]),
            angular_velocity_covariance=zeros9,
            linear_acceleration=vec(x=values["ax"], y=values["ay"], z=9.81),
            linear_acceleration_covariance=zeros9)
    pose = types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
        orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    twist = types["geometry_msgs/msg/Twist"](linear=vec(x=values["speed"], y=0.0, z=0.0),
                                             angular=vec(x=0.0, y=0.0, z=0.0))
    return types["nav_msgs/msg/Odometry"](
        header=header, child_frame_id="base_footprint",
        pose=types["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=zeros36),
        twist=types["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=zeros36))


TYPES = {"/imu/data": "sensor_msgs/msg/Imu", "/odom": "nav_msgs/msg/Odometry",
         "/cmd_vel": "geometry_msgs/msg/Twist"}
TARGET_FIELDS = {"steer": "angular.z", "accel": "linear.x"}


def commands() -> list[tuple[int, str, dict[str, float]]]:
    """(log time, "/cmd_vel", values): the command a policy answered each IMU message
    with, 1 us after it (a Twist has no header: its time is the bag's log time)."""
    rng = np.random.default_rng(11)
    return [(t + 1000, "/cmd_vel", {"steer": float(rng.normal(0, 0.2)),
                                    "accel": float(rng.normal())})
            for t, topic, _ in readings() if topic == "/imu/data"]


def twist(store: Any, values: dict[str, float]) -> Any:
    vec = store.types["geometry_msgs/msg/Vector3"]
    return store.types["geometry_msgs/msg/Twist"](linear=vec(x=values["accel"], y=0.0, z=0.0),
                                                  angular=vec(x=0.0, y=0.0, z=values["steer"]))


def write_bag(path: Path, kind: str, targets: bool = False, stamped: bool = False) -> Path:
    """``stamped``: the commands as geometry_msgs/msg/TwistStamped, stamped and framed
    like the sensors (header.frame_id "base_link"); rosbag2 only."""
    data = sorted(readings() + (commands() if targets else []), key=lambda row: row[0])
    types = {**TYPES, "/cmd_vel": "geometry_msgs/msg/TwistStamped"} if stamped else TYPES
    topics = {t: m for t, m in types.items() if targets or t != "/cmd_vel"}
    if kind == "ros1":
        store = get_typestore(Stores.ROS1_NOETIC)
        with Ros1Writer(path) as bag:
            conns = {t: bag.add_connection(t, m, typestore=store) for t, m in topics.items()}
            for t, topic, values in data:
                msg = twist(store, values) if topic == "/cmd_vel" else ros_messages(
                    store, topic, values, t)
                bag.write(conns[topic], t, store.serialize_ros1(msg, TYPES[topic]))
        return path
    store = get_typestore(Stores.ROS2_HUMBLE)
    plugin = StoragePlugin.MCAP if kind == "mcap" else StoragePlugin.SQLITE3
    with Ros2Writer(path, version=9, storage_plugin=plugin) as bag:
        conns = {t: bag.add_connection(t, m, typestore=store) for t, m in topics.items()}
        for t, topic, values in data:
            msg = twist(store, values) if topic == "/cmd_vel" else ros_messages(
                store, topic, values, t)
            if stamped and topic == "/cmd_vel":
                header = ros_messages(store, "/imu/data", {"ax": 0.0, "ay": 0.0,
                                                           "yaw_rate": 0.0}, t).header
                msg = store.types["geometry_msgs/msg/TwistStamped"](header=header, twist=msg)
            bag.write(conns[topic], t, store.serialize_cdr(msg, types[topic]))
    return path


def write_same_readings_as_mcap(path: Path, stream: str, targets: bool = False) -> Path:
    """The bag's readings as a vehicle stack would have sent them to lstm-stream; the
    targets as lstm-stream targets on 'controls', naming the IMU message they answer."""
    seqs: dict[str, int] = {}
    with LogWriter(path) as log:
        for t, topic, values in readings():
            seq = seqs[topic] = seqs.get(topic, -1) + 1
            payload = msgpack.packb({"stream": stream, "seq": seq, "stamp_ns": t, "x": values})
            log.write(topic, payload, t)
        for seq, (t, _, values) in enumerate(commands() if targets else []):
            payload = msgpack.packb({"stream": stream, "seq": seq,
                                     "y": [values["steer"], values["accel"]]})
            log.write("controls", payload, t)
    return path


@pytest.fixture
def model(tmp_path: Path) -> str:
    path = tmp_path / "four.onnx"
    onnx.save(build_step_model(features=4, hidden=16, layers=1, feature_names=FEATURES,
                               seed=2), path)
    return str(path)


def options(tmp_path: Path, model: str, out: str, config: str = CONFIG) -> EvalOptions:
    (tmp_path / "ros.toml").write_text(config)
    cfg = load_runner_config(tmp_path / "ros.toml")
    return EvalOptions(model=model, sensor_topics=list(cfg.input.topics), output_dir=out,
                       sources=[vars(s) for s in cfg.input.sources], ages=True)


def policy(path: Path) -> list[bytes]:
    return [m.data for m in LogReader(path).messages(["policy"])]


@pytest.mark.parametrize("kind", ["sqlite3", "mcap", "ros1"])
def test_eval_of_a_bag_equals_eval_of_the_same_readings_as_an_mcap_log(
        tmp_path: Path, model: str, kind: str) -> None:
    bag = write_bag(tmp_path / ("drive.bag" if kind == "ros1" else "drive"), kind)
    assert is_rosbag(bag)
    mcap = write_same_readings_as_mcap(tmp_path / "same.mcap", stream="drive")
    from_bag = evaluate([bag], options(tmp_path, model, str(tmp_path / "bag")))
    from_mcap = evaluate([mcap], options(tmp_path, model, str(tmp_path / "mcap")))
    a = policy(tmp_path / "bag" / "drive.policy.mcap")
    b = policy(tmp_path / "mcap" / "same.policy.mcap")
    assert len(a) == 100 and a == b  # every IMU message, byte for byte the same output
    assert from_bag.logs[0].stepped == from_mcap.logs[0].stepped == 100
    first = msgpack.unpackb(a[1])
    assert first["stream"] == "drive" and first["stamp_ns"] == T0 + 10_000_000 + 1000


@pytest.fixture
def steering_model(tmp_path: Path) -> str:
    path = tmp_path / "steer.onnx"
    onnx.save(build_step_model(features=4, hidden=16, layers=1, feature_names=FEATURES,
                               outputs=2, output_names=["steer", "accel"], seed=3), path)
    return str(path)


@pytest.mark.parametrize("kind", ["sqlite3", "mcap", "ros1"])
def test_eval_scores_a_bags_twist_targets_as_the_same_targets_in_an_mcap_log(
        tmp_path: Path, steering_model: str, kind: str) -> None:
    bag = write_bag(tmp_path / ("drive.bag" if kind == "ros1" else "drive"), kind, targets=True)
    mcap = write_same_readings_as_mcap(tmp_path / "same.mcap", "drive", targets=True)
    on_bag = dataclasses.replace(options(tmp_path, steering_model, str(tmp_path / "bag")),
                                 target_topic="/cmd_vel", target_fields=TARGET_FIELDS)
    on_mcap = dataclasses.replace(options(tmp_path, steering_model, str(tmp_path / "mcap")),
                                  target_topic="controls")
    a, b = evaluate([bag], on_bag).logs[0], evaluate([mcap], on_mcap).logs[0]
    assert (a.stepped, a.targets, a.unmatched_outputs) == (100, 100, 0)
    assert (b.stepped, b.targets, b.unmatched_outputs) == (100, 100, 0)
    assert a.histogram == b.histogram
    assert a.errors().metrics() == b.errors().metrics()
    # and the errors are those of the outputs against the commands, worked out here
    ys = np.array([msgpack.unpackb(d)["y"] for d in policy(tmp_path / "bag" /
                                                              "drive.policy.mcap")])
    want = np.array([[v["steer"], v["accel"]] for _, _, v in commands()])
    assert a.streams[0].errors.abs_sum == pytest.approx(np.abs(ys - want).sum(), rel=1e-9)


def test_json_output_of_a_bag_carries_its_twist_targets_by_output_name(
        tmp_path: Path, steering_model: str) -> None:
    bag = write_bag(tmp_path / "drive", "mcap", targets=True)
    opts = dataclasses.replace(options(tmp_path, steering_model, str(tmp_path / "out")),
                               target_topic="/cmd_vel", target_fields=TARGET_FIELDS,
                               encoding="json")
    assert evaluate([bag], opts).logs[0].targets == 100
    with open(tmp_path / "out" / "drive.policy.mcap", "rb") as f:
        messages = [(c.topic, m.log_time, json.loads(m.data))
                    for _, c, m in make_reader(f).iter_messages(log_time_order=True)]
    cmds = [(t, m) for topic, t, m in messages if topic == "/cmd_vel"]
    assert [(t, m["outputs"]) for t, m in cmds] == [(t, v) for t, _, v in commands()]
    outputs = [m for topic, _, m in messages if topic == "policy"]
    assert len(outputs) == 100 and set(outputs[0]["outputs"]) == {"steer", "accel"}


def test_a_bags_targets_need_one_field_per_model_output(
        tmp_path: Path, steering_model: str) -> None:
    bag = write_bag(tmp_path / "drive", "sqlite3", targets=True)
    base = dataclasses.replace(options(tmp_path, steering_model, str(tmp_path / "out")),
                               target_topic="/cmd_vel")
    with pytest.raises(ConfigError, match="missing: steer, accel") as err:
        evaluate([bag], base)
    assert "--target-field" in str(err.value) and "steer, accel" in str(err.value)
    with pytest.raises(ConfigError, match="not outputs of the model: yaw"):
        evaluate([bag], dataclasses.replace(base, target_fields={**TARGET_FIELDS,
                                                                 "yaw": "angular.x"}))
    with pytest.raises(ConfigError, match="geometry_msgs/msg/Vector3 has no field 'q'") as err:
        evaluate([bag], dataclasses.replace(base, target_fields={**TARGET_FIELDS,
                                                                 "steer": "angular.q"}))
    assert err.value.field == "--target-field"
    mcap = write_same_readings_as_mcap(tmp_path / "same.mcap", "drive", targets=True)
    with pytest.raises(ConfigError, match="drop --target-field"):
        evaluate([mcap], dataclasses.replace(base, target_topic="controls",
                                             target_fields=TARGET_FIELDS))


def test_a_bags_targets_take_their_stream_from_a_field_as_the_sources_do(
        tmp_path: Path, steering_model: str) -> None:
    # a stack that names its vehicles in header.frame_id, for readings and commands alike
    bag = write_bag(tmp_path / "drive", "mcap", targets=True, stamped=True)
    mcap = write_same_readings_as_mcap(tmp_path / "same.mcap", "base_link", targets=True)
    framed = CONFIG.replace("trigger = true", 'trigger = true\nstream_field = "header.frame_id"')
    framed = framed.replace("max_age_ms = 60", 'max_age_ms = 60\nstream_field = "header.frame_id"')
    base = dataclasses.replace(options(tmp_path, steering_model, str(tmp_path / "bag"), framed),
                               target_topic="/cmd_vel",
                               target_fields={n: f"twist.{p}" for n, p in TARGET_FIELDS.items()})
    # without it the commands are the bag's stream ("drive"): none meets an output
    apart = evaluate([bag], base).logs[0]
    assert (apart.stepped, apart.targets, apart.unmatched_outputs) == (100, 100, 100)
    together = evaluate([bag], dataclasses.replace(
        base, target_stream_field="header.frame_id")).logs[0]
    assert (together.stepped, together.targets, together.unmatched_outputs) == (100, 100, 0)
    on_mcap = dataclasses.replace(options(tmp_path, steering_model, str(tmp_path / "mcap")),
                                  target_topic="controls")
    same = evaluate([mcap], on_mcap).logs[0]
    assert together.histogram == same.histogram
    assert together.errors().metrics() == same.errors().metrics()
    with pytest.raises(ConfigError, match="has no field 'frame'") as err:
        evaluate([bag], dataclasses.replace(base, target_stream_field="header.frame"))
    assert err.value.field == "--target-stream-field"
    with pytest.raises(ConfigError, match="drop --target-stream-field"):
        evaluate([mcap], dataclasses.replace(on_mcap, target_stream_field="header.frame_id"))


def test_eval_cli_scores_a_bag_with_target_fields(
        tmp_path: Path, steering_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_bag(tmp_path / "drive", "mcap", targets=True)
    (tmp_path / "ros.toml").write_text(CONFIG)
    assert main(["eval", str(bag), "--model", steering_model, "--config",
                 str(tmp_path / "ros.toml"), "--target-topic", "/cmd_vel", "--target-field",
                 "steer=angular.z", "--target-field", "accel=linear.x", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["logs"][0]["targets"] == 100 and report["logs"][0]["unmatched_outputs"] == 0
    assert report["overall"]["mae"] > 0
    assert main(["eval", str(bag), "--model", steering_model, "--config",
                 str(tmp_path / "ros.toml"), "--target-topic", "/cmd_vel", "--target-field",
                 "steer"]) == 2
    assert "give OUTPUT=FIELD.PATH" in capsys.readouterr().err


def test_a_field_path_the_type_lacks_is_refused_with_its_fields(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "drive", "sqlite3")
    wrong = SourceConfig("/imu/data", fields={"ax": "linear_acceleration.q"}, trigger=True)
    with pytest.raises(ConfigError) as err:
        RosBag(bag, [wrong])
    text = str(err.value)
    assert "geometry_msgs/msg/Vector3 has no field 'q'" in text
    assert "x (float64), y (float64), z (float64)" in text
    for path, words in (("orientation_covariance", "is an array: give an index"),
                        ("header.frame_id", "not a number"),
                        ("linear_acceleration", "ends at a message")):
        with pytest.raises(ConfigError, match=r"input\.sources") as err:
            RosBag(bag, [SourceConfig("/imu/data", fields={"ax": path}, trigger=True)])
        assert words in str(err.value)
    with pytest.raises(ConfigError, match="not in ROS bag"):
        RosBag(bag, [SourceConfig("/gps", fields={"ax": "x"}, trigger=True)])


def test_array_fields_and_a_stream_field_are_read(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "drive", "mcap")
    source = SourceConfig("/imu/data", fields={"ax": "linear_acceleration_covariance[0]",
                                               "az": "linear_acceleration.z"},
                          stream_field="header.frame_id", trigger=True)
    messages = list(RosBag(bag, [source]).messages(["/imu/data"]))
    assert len(messages) == 100
    body = msgpack.unpackb(messages[0].data)
    assert body["stream"] == "base_link" and body["x"] == {"ax": 0.0, "az": 9.81}
    assert [msgpack.unpackb(m.data)["seq"] for m in messages[:3]] == [0, 1, 2]


def test_a_bag_without_sources_is_refused_with_the_fix(tmp_path: Path, model: str) -> None:
    bag = write_bag(tmp_path / "drive", "sqlite3")
    with pytest.raises((ConfigError, EvaluationError), match=r"\[\[input.sources\]\] with fields"):
        evaluate([bag], EvalOptions(model=model, sensor_topics=["/imu"]))


def test_log_info_lists_a_bags_topics_types_counts_and_rates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_bag(tmp_path / "drive", "sqlite3")
    assert main(["log", "info", str(bag), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "rosbag2" and info["messages"] == 150
    imu, odom = info["topics"]["/imu/data"], info["topics"]["/odom"]
    assert (imu["type"], imu["messages"], odom["type"], odom["messages"]) == (
        "sensor_msgs/msg/Imu", 100, "nav_msgs/msg/Odometry", 50)
    assert imu["rate_hz"] == pytest.approx(100, rel=0.03)
    assert odom["rate_hz"] == pytest.approx(50, rel=0.03)
    assert main(["log", "info", str(bag)]) == 0
    assert "/imu/data" in capsys.readouterr().out


def test_eval_of_a_bag_equals_serve_fed_by_replay_of_it(tmp_path: Path, model: str) -> None:
    bag = write_bag(tmp_path / "drive", "mcap")
    config = tmp_path / "ros.toml"
    config.write_text(CONFIG + "\n[output]\nages = true\n")
    assert main(["eval", str(bag), "--model", model, "--config", str(config)]) == 0
    offline = [msgpack.unpackb(d) for d in policy(tmp_path / "drive.policy.mcap")]
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        sources = list(load_runner_config(config).input.sources)
        cfg = ReplayConfig([bag], output="tcp://127.0.0.1:*", rate=0, wait_subscribers=2,
                           sources=sources)
        with Replayer(cfg, context=ctx) as rep, VehicleStack(ctx) as stack, \
                serve_process(model, rep.endpoint, "--config", str(config)) as served:
            stack.connect_outputs(served.output, served.control)
            rep.run()
            live: list[dict[str, Any]] = []
            while len(live) < len(offline):
                live += [o for topic, o in stack.receive(1) if topic == "policy"]
    finally:
        ctx.destroy(linger=0)
    assert len(live) == len(offline) == 100
    for out, ref in zip(live, offline, strict=True):
        assert (out["stream"], out["seq"], out["stamp_ns"]) == (
            ref["stream"], ref["seq"], ref["stamp_ns"])
        np.testing.assert_allclose(out["y"], ref["y"], atol=1e-5, rtol=1e-5)
        assert (out["step"], out["reset"], out["stale"], out["age_ms"]) == (
            ref["step"], ref["reset"], ref["stale"], ref["age_ms"])
