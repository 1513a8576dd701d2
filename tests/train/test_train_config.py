"""Training configs: every bad value is refused on load, naming field, rule and value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lstm_stream.core.errors import ConfigError
from lstm_stream.train.config import TrainConfig, load_train_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_shipped_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # data paths are relative to the repository root
    digits = load_train_config(REPO / "configs" / "digits.toml")
    forecast = load_train_config(REPO / "configs" / "forecast.toml")
    assert (digits.model.hidden, digits.model.cell, digits.data.source) == (50, "lstm", "digits")
    assert forecast.data.target_shift == 1 and forecast.model.task == "regression"


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[model]\nhidden = 20\n")
    config = load_train_config(path, ["train.epochs=3", "model.cell=gru",
                                      "data.split=[0.5, 0.25, 0.25]"])
    assert (config.model.hidden, config.train.epochs, config.model.cell) == (20, 3, "gru")
    assert config.data.split == [0.5, 0.25, 0.25]
    assert config.model.loss == "cross_entropy"  # the task's default loss


@pytest.mark.parametrize(("text", "overrides", "match"), [
    ("[model]\nhiden = 20\n", [], r"unknown option 'model\.hiden'.*model\.hidden"),
    ("[model]\nhidden = 'big'\n", [], r"'model\.hidden' must be an integer, got 'big'"),
    ("[model]\nhidden = 0\n", [], r"'model\.hidden' must be between 1 and 4096; got 0"),
    ("", ["train.lr=-1"], r"'train\.lr' must be in \(0, 10\]; got -1\.0"),
    ("", ["train.mode=tbptt"], r"'train\.mode' must be one of 'stateful', 'burn_in'; got "
                               r"'tbptt'"),
    ("", ["model.dropout=0.5"], r"'model\.dropout' must be 0 when model\.layers is 1"),
    ("", ["train.burn_in=5"], r"'train\.burn_in' must be 0 unless train\.mode is 'burn_in'"),
    ("", ["data.split=[0.5, 0.5, 0.5]"], r"'data\.split' must be three fractions"),
    ("", ["model.loss=huber"], r"'model\.loss' must be one of 'cross_entropy'; got 'huber'"),
    ("[data]\nsource = 'csv'\npath = 'nowhere.csv'\nfeatures = ['a']\ntargets = ['b']\n", [],
     r"'data\.path' must name an existing file; 'nowhere\.csv' does not exist"),
    ("[data]\nsource = 'mnist'\n", [], r"'data\.path' must be a file path for source 'mnist'"),
    ("[data]\nsource = 'csv'\npath = 'c.toml'\n", [], r"'data\.features' must be at least one"),
    ("name = 3\n", [], r"'name' must be a string, got 3"),
])
def test_bad_configs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                 overrides: list[str], match: str) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_train_config(path, overrides)
    assert str(path) in str(info.value)  # the message says which file


def test_digest_identifies_the_resolved_config() -> None:
    a, b = TrainConfig(), TrainConfig()
    assert a.digest() == b.digest() and len(a.digest()) == 64
    b.train.epochs += 1
    assert a.digest() != b.digest()


def test_cli_refuses_bad_config_before_training(tmp_path: Path) -> None:
    path = write(tmp_path, "[train]\nepochs = 0\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "lstm_stream", "train", str(path), "--out",
                           str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "'train.epochs' must be between 1 and 100000; got 0" in proc.stderr
    assert not out.exists()  # nothing trained, nothing written
