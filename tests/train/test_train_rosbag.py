"""Training from a ROS bag: features from message fields ([[data.sources]]), the target
from another topic's field ([data.target]); the exported model passes `lstm-stream check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lstm_stream.cli.main import main
from lstm_stream.core.errors import ConfigError, TrainingError
from lstm_stream.train.config import load_train_config
from lstm_stream.train.data import load_dataset

pytest.importorskip("rosbags", reason="needs the [ros] extra")
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Ros2Writer
from rosbags.typesys import Stores, get_typestore

T0 = 1_700_000_000_000_000_000
CONFIG = """
name = "bag"

[data]
source = "log"
path = "{bag}"
split = [1.0, 0.0, 0.0]

[[data.sources]]
topic = "/imu/data"
fields = {{ ax = "linear_acceleration.x", yaw_rate = "angular_velocity.z" }}
trigger = true

[[data.sources]]
topic = "/odom"
fields = {{ speed = "twist.twist.linear.x" }}

[data.target]
topic = "/cmd_vel"
fields = {{ steer = "angular.z" }}

[model]
task = "regression"
hidden = 8
layers = 1
loss = "mse"

[train]
epochs = 2
batch_size = 1
"""


def write_driving_bag(path: Path, steps: int = 120, stamped: bool = False) -> Path:
    """IMU and odometry at 50 Hz, a steering command after each IMU message (``stamped``:
    as geometry_msgs/msg/TwistStamped with the sensors' header)."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    t = store.types
    vec = t["geometry_msgs/msg/Vector3"]
    quat = t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)
    rng = np.random.default_rng(4)
    kinds = {"/imu/data": "sensor_msgs/msg/Imu", "/odom": "nav_msgs/msg/Odometry",
             "/cmd_vel": "geometry_msgs/msg/TwistStamped" if stamped
             else "geometry_msgs/msg/Twist"}
    with Ros2Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as bag:
        conns = {k: bag.add_connection(k, m, typestore=store) for k, m in kinds.items()}
        for k in range(steps):
            now = T0 + k * 20_000_000
            header = t["std_msgs/msg/Header"](
                stamp=t["builtin_interfaces/msg/Time"](sec=now // 10**9, nanosec=now % 10**9),
                frame_id="base_link")
            speed, yaw = float(rng.normal(10, 1)), float(rng.normal(0, 0.2))
            odom = t["nav_msgs/msg/Odometry"](
                header=header, child_frame_id="base",
                pose=t["geometry_msgs/msg/PoseWithCovariance"](
                    pose=t["geometry_msgs/msg/Pose"](
                        position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
                        orientation=quat), covariance=np.zeros(36)),
                twist=t["geometry_msgs/msg/TwistWithCovariance"](
                    twist=t["geometry_msgs/msg/Twist"](linear=vec(x=speed, y=0.0, z=0.0),
                                                       angular=vec(x=0.0, y=0.0, z=0.0)),
                    covariance=np.zeros(36)))
            imu = t["sensor_msgs/msg/Imu"](
                header=header, orientation=quat, orientation_covariance=np.zeros(9),
                angular_velocity=vec(x=0.0, y=0.0, z=yaw), angular_velocity_covariance=np.zeros(9),
                linear_acceleration=vec(x=float(rng.normal()), y=0.0, z=9.81),
                linear_acceleration_covariance=np.zeros(9))
            cmd = t["geometry_msgs/msg/Twist"](linear=vec(x=speed, y=0.0, z=0.0),
                                               angular=vec(x=0.0, y=0.0, z=-0.5 * yaw))
            if stamped:
                cmd = t["geometry_msgs/msg/TwistStamped"](header=header, twist=cmd)
            bag.write(conns["/odom"], now, store.serialize_cdr(odom, kinds["/odom"]))
            bag.write(conns["/imu/data"], now + 1, store.serialize_cdr(imu, kinds["/imu/data"]))
            bag.write(conns["/cmd_vel"], now + 2, store.serialize_cdr(cmd, kinds["/cmd_vel"]))
    return path


def test_a_bag_gives_one_episode_of_assembled_features_and_aligned_targets(
        tmp_path: Path) -> None:
    bag = write_driving_bag(tmp_path / "drive")
    (tmp_path / "train.toml").write_text(CONFIG.format(bag=bag))
    dataset = load_dataset(load_train_config(tmp_path / "train.toml"))
    (x,), (y,) = dataset.train.x, dataset.train.y
    assert x.shape == (120, 3) and y.shape == (120, 1)  # every IMU message, one episode
    # the target of a step is the command that followed it: -0.5 x that step's yaw rate
    np.testing.assert_allclose(y[:, 0], -0.5 * x[:, 1], rtol=1e-5, atol=1e-6)
    assert dataset.feature_names == ["ax", "yaw_rate", "speed"]
    assert dataset.output_names == ["steer"]


def test_a_bags_target_takes_its_stream_from_a_field_as_the_sources_do(
        tmp_path: Path) -> None:
    bag = write_driving_bag(tmp_path / "drive", stamped=True)
    framed = CONFIG.replace("trigger = true", 'trigger = true\nstream_field = "header.frame_id"')
    framed = framed.replace("fields = {{ speed",
                            'stream_field = "header.frame_id"\nfields = {{ speed')
    framed = framed.replace('fields = {{ steer = "angular.z" }}',
                            'fields = {{ steer = "twist.angular.z" }}\n'
                            'stream_field = "header.frame_id"')
    (tmp_path / "train.toml").write_text(framed.format(bag=bag))
    dataset = load_dataset(load_train_config(tmp_path / "train.toml"))
    (x,), (y,) = dataset.train.x, dataset.train.y  # the one vehicle, base_link
    assert x.shape == (120, 3) and y.shape == (120, 1)
    np.testing.assert_allclose(y[:, 0], -0.5 * x[:, 1], rtol=1e-5, atol=1e-6)
    apart = framed.replace('"twist.angular.z" }}\nstream_field = "header.frame_id"',
                           '"twist.angular.z" }}')
    (tmp_path / "apart.toml").write_text(apart.format(bag=bag))
    with pytest.raises(TrainingError, match=r"the sensors' streams are \['base_link'\] and "
                       r"the targets' \['drive'\]; give \[data.target\] stream_field"):
        load_dataset(load_train_config(tmp_path / "apart.toml"))
    wrong = framed.replace('"twist.angular.z" }}\nstream_field = "header.frame_id"',
                           '"twist.angular.z" }}\nstream_field = "header.frame"')
    assert wrong != framed
    (tmp_path / "wrong.toml").write_text(wrong.format(bag=bag))
    with pytest.raises(ConfigError, match="has no field 'frame'") as err:
        load_dataset(load_train_config(tmp_path / "wrong.toml"))
    assert err.value.field == "data.target.stream_field"


def test_training_from_a_bag_exports_a_model_that_check_passes(tmp_path: Path) -> None:
    bag = write_driving_bag(tmp_path / "drive")
    (tmp_path / "train.toml").write_text(CONFIG.format(bag=bag))
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "train.toml"), "--out", str(out)]) == 0
    assert main(["check", str(out / "model.onnx")]) == 0
