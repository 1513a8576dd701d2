"""`lstm-stream train` and `export` as users run them (subprocesses), then `serve` on the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zmq

from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.train.checkpoint import load_checkpoint, model_from_checkpoint
from lstm_stream.train.config import load_train_config
from lstm_stream.train.data import load_dataset

from helpers.support import REPO, VehicleStack, run_python, serve_process


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lstm_stream", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_help_works_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"  # any 'import torch' now fails
            "from lstm_stream.cli.main import main\n"
            "sys.argv = ['lstm-stream', 'train', '--help']\n"
            "main()\n")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "--resume CKPT" in proc.stdout and "torchrun" in proc.stdout


def test_trained_digits_model_is_served_like_pytorch(tmp_path: Path) -> None:
    run = tmp_path / "digits"
    proc = cli("train", "configs/digits.toml", "--out", str(run), "--set", "train.epochs=3",
               "--set", "export.verify_sequences=8")
    assert proc.returncode == 0, proc.stderr
    assert "exported" in proc.stdout and (run / "model.onnx").exists()
    model, _ = model_from_checkpoint(load_checkpoint(run / "best.pt"), "best.pt")
    from sklearn.datasets import load_digits

    images = load_digits().images[:3].astype(np.float32)  # (3, 8, 8), raw pixels 0..16
    with torch.no_grad():
        want = model(torch.from_numpy(images))[0].numpy()  # (3, 8, 10) whole sequences
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        with VehicleStack(ctx) as stack, serve_process(run / "model.onnx",
                                                       stack.sensors_endpoint) as served:
            stack.wait_subscribed()
            stack.connect_outputs(served.output, served.control)
            for row in range(8):  # each image is one stream; one message per row
                for i in range(3):
                    stack.send(encode_sensor(row, images[i, row], stream=f"img{i}"))
            outs = [body for topic, body in stack.receive(24) if topic == "policy"]
    finally:
        ctx.destroy(linger=0)
    assert len(outs) == 24
    for body in outs:
        i, row = int(body["stream"][3:]), body["seq"]
        np.testing.assert_allclose(body["y"], want[i, row], atol=1e-5)


def test_export_command_and_errors(tmp_path: Path, class_npz: Path) -> None:
    run = tmp_path / "run"
    proc = cli("train", "configs/digits.toml", "--out", str(run), "--set",
               "data.source='npz'", "--set", f"data.path='{class_npz}'", "--set",
               "train.epochs=1", "--set", "export.enabled=false")
    assert proc.returncode == 0, proc.stderr
    assert not (run / "model.onnx").exists()
    out = tmp_path / "m.onnx"
    proc = cli("export", str(run / "best.pt"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(cli("info", str(out), "--json").stdout)
    assert info["cell"] == "lstm" and info["contract"] == "ok"
    proc = cli("export", str(tmp_path / "missing.pt"), "-o", str(out))
    assert proc.returncode == 1 and "missing.pt' does not exist" in proc.stderr


@pytest.mark.slow
def test_digits_config_reaches_095(tmp_path: Path) -> None:
    """The acceptance run: the shipped config, unchanged, on the digits test split."""
    run = tmp_path / "digits"
    proc = cli("train", "configs/digits.toml", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["accuracy"] >= 0.95
    assert "accuracy" in proc.stdout and (run / "model.onnx").exists()
    # served: the test split's raw pixel rows (0..16, no scaling by the client)
    dataset = load_dataset(load_train_config(REPO / "configs" / "digits.toml"))
    images = dataset.test.x
    assert max(float(img.max()) for img in images) == 16.0
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        with VehicleStack(ctx) as stack, serve_process(run / "model.onnx",
                                                       stack.sensors_endpoint) as served:
            stack.wait_subscribed()
            stack.connect_outputs(served.output, served.control)
            for row in range(8):
                for i, img in enumerate(images):
                    stack.send(encode_sensor(row, img[row], stream=f"img{i}"))
            outs = [body for topic, body in stack.receive(8 * len(images))
                    if topic == "policy" and body["seq"] == 7]
    finally:
        ctx.destroy(linger=0)
    right = sum(int(np.argmax(o["y"])) == int(dataset.test.y[int(o["stream"][3:])][-1])
                for o in outs)
    assert len(outs) == len(images) and right / len(images) >= 0.95
