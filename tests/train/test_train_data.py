"""Data sources and the split: real files written by the tests, read back and checked."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest

from lstm_stream.core.errors import TrainingError
from lstm_stream.train.config import TrainConfig, load_train_config
from lstm_stream.train.data import load_dataset, read_csv, read_idx

REPO = Path(__file__).resolve().parents[2]


def config_for(tmp_path: Path, text: str, *overrides: str) -> TrainConfig:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_train_config(path, list(overrides))


def test_digits_are_rows_of_images() -> None:
    ds = load_dataset(TrainConfig())
    total = len(ds.train) + len(ds.val) + len(ds.test)
    assert total == 1797 and ds.classes == 10 and ds.n_features == 8
    assert ds.train.x[0].shape == (8, 8)
    # raw pixel values, as the sensor gives them: the model's own normalisation scales
    assert max(float(x.max()) for x in ds.train.x) == 16.0
    assert (ds.train.y[0] == ds.train.y[0][0]).all()  # one label per image, on every row


def test_split_is_by_episode_and_seeded(class_npz: Path, tmp_path: Path) -> None:
    text = f"[data]\nsource = 'npz'\npath = '{class_npz}'\nsplit = [0.5, 0.25, 0.25]\n"
    a = load_dataset(config_for(tmp_path, text))
    b = load_dataset(config_for(tmp_path, text))
    keys = [{s.tobytes() for s in part.x} for part in (a.train, a.val, a.test)]
    assert (len(keys[0]), len(keys[1]), len(keys[2])) == (32, 16, 16)
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert all(np.array_equal(x, y) for x, y in zip(a.train.x, b.train.x, strict=True))
    c = load_dataset(config_for(tmp_path, text, "train.seed=1"))
    assert not all(np.array_equal(x, y) for x, y in zip(a.train.x, c.train.x, strict=True))


def test_csv_episodes_shift_and_naive(tmp_path: Path) -> None:
    csv = tmp_path / "s.csv"
    csv.write_text("ep,a,b\n" + "".join(f"{e},{t},{10 * e + t}\n" for e in (1, 2)
                                           for t in range(5)))
    eps = read_csv(csv, ["a"], ["b"], "ep", 1, "regression")
    assert len(eps.x) == 2 and eps.x[1].shape == (4, 1)
    assert eps.y[1][:, 0].tolist() == [21, 22, 23, 24]  # b one step ahead, within episode 2
    assert eps.naive is not None and eps.naive[1][:, 0].tolist() == [20, 21, 22, 23]
    assert eps.output_names == ["b[t+1]"]


@pytest.mark.parametrize(("body", "match"), [
    ("a,b\n1,x\n", r"line 2, column 'b': 'x' is not a number"),
    ("a,c\n1,2\n", r"has no column\(s\) \['b'\]; its columns are \['a', 'c'\]"),
    ("a,b\n1,2,3\n", r"line 2: 3 fields, the header has 2"),
])
def test_csv_errors_name_the_place(tmp_path: Path, body: str, match: str) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(body)
    with pytest.raises(TrainingError, match=match) as info:
        read_csv(csv, ["a"], ["b"], "", 0, "regression")
    assert "bad.csv" in str(info.value)


def test_forecast_csv_is_shipped_and_reproducible(tmp_path: Path) -> None:
    import subprocess
    import sys

    shipped = REPO / "src" / "lstm_stream" / "data" / "forecast.csv"
    assert shipped.stat().st_size < 200_000
    out = tmp_path / "f.csv"
    subprocess.run([sys.executable, str(REPO / "tools" / "make_series.py"), "-o", str(out)],
                   check=True, capture_output=True, timeout=60)
    assert out.read_bytes() == shipped.read_bytes()


def test_npz_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 4, 2), np.float32), y=np.array([0, 1, 5]))
    text = f"[data]\nsource = 'npz'\npath = '{bad}'\n[model]\nclasses = 3\n"
    with pytest.raises(TrainingError, match=r"labels range from 0 to 5; they must be in 0..2"):
        load_dataset(config_for(tmp_path, text))
    nan = tmp_path / "nan.npz"
    x = np.zeros((3, 4, 2), np.float32)
    x[1, 2, 1] = np.nan
    np.savez(nan, x=x, y=np.array([0, 1, 1]))
    text = f"[data]\nsource = 'npz'\npath = '{nan}'\nsplit = [1.0, 0.0, 0.0]\n"
    with pytest.raises(TrainingError, match=r"episode 1, step 2, feature 'f1' is nan"):
        load_dataset(config_for(tmp_path, text))


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """An IDX file as the MNIST distribution writes it (unsigned bytes, big-endian dims)."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 28, 28)).astype(np.uint8)
    labels = np.arange(20) % 10
    suffix = ".gz" if compress else ""
    img = write_idx(tmp_path / f"images-idx3-ubyte{suffix}", images, compress)
    lab = write_idx(tmp_path / f"labels-idx1-ubyte{suffix}", labels, compress)
    assert np.array_equal(read_idx(img), images)
    text = (f"[data]\nsource = 'mnist'\npath = '{img}'\nlabels_path = '{lab}'\n"
            "split = [0.5, 0.25, 0.25]\n")
    ds = load_dataset(config_for(tmp_path, text))
    assert ds.n_features == 28 and ds.classes == 10 and ds.train.x[0].shape == (28, 28)
    seen = {x.tobytes(): int(y[0]) for part in (ds.train, ds.val, ds.test)
            for x, y in zip(part.x, part.y, strict=True)}
    for i in range(20):  # every image, raw pixels 0..255 (not rescaled), keeps its label
        assert seen[images[i].astype(np.float32).tobytes()] == labels[i]


def test_idx_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + b"\x00" * 10)
    with pytest.raises(TrainingError, match=r"x-idx3-ubyte.*shape \[2, 28, 28\].*holds 10"):
        read_idx(bad)
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(TrainingError, match="is not an IDX file"):
        read_idx(bad)


def write_mcap(path: Path, messages: list[tuple[str, int, dict[str, object]]]) -> Path:
    """A real MCAP log written with the mcap library: msgpack payloads, one channel per topic."""
    from mcap.writer import Writer

    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start()
        schema = writer.register_schema(name="msgpack-map", encoding="", data=b"")
        channels: dict[str, int] = {}
        for seq, (topic, t_ns, body) in enumerate(messages):
            if topic not in channels:
                channels[topic] = writer.register_channel(topic=topic, message_encoding="msgpack",
                                                          schema_id=schema)
            writer.add_message(channel_id=channels[topic], log_time=t_ns, publish_time=t_ns,
                               data=msgpack.packb(body, use_bin_type=True), sequence=seq)
        writer.finish()
    return path


def test_log_source_aligns_targets_and_splits_episodes(tmp_path: Path) -> None:
    pytest.importorskip("lstm_stream.logs.reader")
    msgs: list[tuple[str, int, dict[str, object]]] = []
    t = 0
    for stream in ("car1", "car2"):
        for seq in range(12):
            t += 1000
            x = np.array([seq, 1.0 if stream == "car1" else 2.0], "<f4").tobytes()
            body: dict[str, object] = {"stream": stream, "seq": seq, "stamp_ns": t, "x": x}
            if stream == "car2" and seq == 6:
                body["reset"] = True  # a new episode starts here
            msgs.append(("sensors", t, body))
            if not (stream == "car1" and seq == 3):  # no label: dropped, ends the episode
                msgs.append(("controls", t + 10, {"stream": stream, "seq": seq,
                                                  "y": [seq * 0.5]}))
    log = write_mcap(tmp_path / "drive.mcap", msgs)
    text = (f"[data]\nsource = 'log'\npath = '{log}'\nsplit = [1.0, 0.0, 0.0]\n"
            "[model]\ntask = 'regression'\n")
    ds = load_dataset(config_for(tmp_path, text))
    lengths = sorted(len(x) for x in ds.train.x)
    assert lengths == [3, 6, 6, 8]  # car1: 0-2 | 4-11; car2: 0-5 | 6-11
    for x, y in zip(ds.train.x, ds.train.y, strict=True):
        assert np.allclose(y[:, 0], x[:, 0] * 0.5)  # each target met its own sensor message
    by_time = load_dataset(config_for(tmp_path, text, "data.align='time'"))
    # Targets are logged 10 ns after their sensor message, so by time each sensor message
    # meets the previous step's target, and the first message of each stream has none.
    assert sum(len(x) for x in by_time.train.x) == 22
    for x, y in zip(by_time.train.x, by_time.train.y, strict=True):
        car2 = x[:, 1] == 2.0
        assert np.allclose(y[car2, 0], (x[car2, 0] - 1) * 0.5)
