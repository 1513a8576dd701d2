"""`torchrun --nproc_per_node 2` trains the same model as a single process, within tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lstm_stream.train.checkpoint import load_checkpoint

from helpers.support import REPO


@pytest.mark.slow
def test_two_process_run_matches_single_process(tmp_path: Path, class_npz: Path) -> None:
    overrides = ["--set", "data.source='npz'", "--set", f"data.path='{class_npz}'",
                 "--set", "model.hidden=16", "--set", "train.epochs=3",
                 "--set", "train.batch_size=8", "--set", "train.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "lstm_stream", "train", "configs/digits.toml",
                           "--out", str(single), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    double = tmp_path / "double"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           "2", "--standalone", "-m", "lstm_stream", "train",
                           "configs/digits.toml", "--out", str(double), *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2" in proc.stderr  # two ranks really trained
    a, b = load_checkpoint(single / "last.pt"), load_checkpoint(double / "last.pt")
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=1e-4, rtol=1e-4)
    ha, hb = (json.loads((d / "summary.json").read_text()) for d in (single, double))
    assert hb["test"]["loss"] == pytest.approx(ha["test"]["loss"], rel=1e-3)
    assert (double / "model.onnx").exists()  # rank 0 exported
