"""The training loop with real torch: stateful TBPTT, burn-in, reproducibility, resume, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lstm_stream.train.checkpoint import load_checkpoint
from lstm_stream.train.config import TrainConfig, load_train_config
from lstm_stream.train.data import load_dataset
from lstm_stream.train.loop import evaluate, fit

REPO = Path(__file__).resolve().parents[2]


def memory_config(tmp_path: Path, npz: Path, *overrides: str) -> TrainConfig:
    path = tmp_path / "memory.toml"
    path.write_text(f"""
[data]
source = "npz"
path = "{npz}"
split = [0.5, 0.5, 0.0]
[model]
task = "regression"
hidden = 16
[train]
window = 5
batch_size = 8
epochs = 12
lr = 0.02
threads = 1
""")
    return load_train_config(path, list(overrides))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_checkpoint(path)["model"])


def test_stateful_windows_carry_state_across_windows(tmp_path: Path, memory_npz: Path) -> None:
    # The target is a cue seen only at step 0 of a 30-step episode, trained in 5-step windows:
    # only windows that start from the carried state can know the cue after step 4.
    stateful = memory_config(tmp_path, memory_npz, "train.mode='stateful'")
    ds = load_dataset(stateful)
    carried = fit(stateful, ds, tmp_path / "stateful")
    # The same windows, each warmed up by one step from zero: the state is cut.
    cut = fit(memory_config(tmp_path, memory_npz, "train.mode='burn_in'", "train.burn_in=1"),
              ds, tmp_path / "cut")
    # Training loss in normalised units: 1.0 is what predicting the mean (0) scores.
    assert carried.history[-1]["train_loss"] < 0.2, carried.history[-1]
    assert cut.history[-1]["train_loss"] > 0.6, cut.history[-1]
    # Served (whole episode from a zero state) the stateful model recalls the cue.
    assert evaluate(carried.model, ds.val, "last")["rmse"] ** 2 < 0.2


def test_burn_in_reaching_the_cue_learns_it(tmp_path: Path, memory_npz: Path) -> None:
    # A burn-in as long as the episode warms every window up from step 0.
    config = memory_config(tmp_path, memory_npz, "train.mode='burn_in'", "train.burn_in=30")
    ds = load_dataset(config)
    result = fit(config, ds, tmp_path / "burn")
    assert evaluate(result.model, ds.val, "last")["rmse"] ** 2 < 0.2


def test_same_seed_same_weights(tmp_path: Path, class_npz: Path) -> None:
    config = load_train_config(None, ["data.source='npz'", f"data.path='{class_npz}'",
                                      "model.hidden=8", "train.epochs=3", "train.batch_size=8"])
    ds = load_dataset(config)
    a = fit(config, ds, tmp_path / "a")
    b = fit(config, ds, tmp_path / "b")
    wa, wb = weights(a.best_path), weights(b.best_path)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.history == [dict(r, seconds=s["seconds"]) for r, s in zip(b.history, a.history,
                                                                       strict=True)]


@pytest.mark.parametrize("mode", ["stateful", "burn_in"])
def test_resume_equals_uninterrupted(tmp_path: Path, memory_npz: Path, mode: str) -> None:
    extra = ["train.burn_in=5"] if mode == "burn_in" else []
    full = memory_config(tmp_path, memory_npz, f"train.mode='{mode}'", "train.epochs=4",
                         "train.schedule='cosine'", *extra)
    ds = load_dataset(full)
    whole = fit(full, ds, tmp_path / "whole")
    fit(full, ds, tmp_path / "parts", until_epoch=2)  # interrupted after epoch 2
    resumed = fit(full, ds, tmp_path / "parts", resume=tmp_path / "parts" / "last.pt")
    assert len(resumed.history) == 4
    w1, w2 = weights(whole.last_path), weights(resumed.last_path)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in whole.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == strip


def test_resume_refuses_another_model(tmp_path: Path, class_npz: Path) -> None:
    from lstm_stream.core.errors import TrainingError

    base = ["data.source='npz'", f"data.path='{class_npz}'", "train.epochs=1"]
    config = load_train_config(None, [*base, "model.hidden=8"])
    ds = load_dataset(config)
    fit(config, ds, tmp_path / "r")
    other = load_train_config(None, [*base, "model.hidden=9"])
    with pytest.raises(TrainingError, match=r"its model differs.*'hidden': \(8, 9\)"):
        fit(other, ds, tmp_path / "r", resume=tmp_path / "r" / "last.pt")


def test_run_outputs_and_checkpoint_contents(tmp_path: Path, class_npz: Path) -> None:
    config = load_train_config(None, ["data.source='npz'", f"data.path='{class_npz}'",
                                      "model.hidden=8", "train.epochs=3", "model.layers=2",
                                      "model.dropout=0.1", "model.head='mlp'"])
    ds = load_dataset(config)
    result = fit(config, ds, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(json.loads(lines[0]))
    assert (tmp_path / "run" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(result.best_path, weights_only=True)  # no pickled objects
    assert ckpt["config"] == config.as_dict() and ckpt["config_sha256"] == config.digest()
    assert np.allclose(ckpt["normalization"]["mean"], np.concatenate(ds.train.x).mean(0),
                       atol=1e-5)
    assert ckpt["test"] == result.test and 0 <= result.test["accuracy"] <= 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"] == result.test


def test_early_stopping_stops(tmp_path: Path, class_npz: Path) -> None:
    # lr 10 diverges at once, so the validation loss never improves after epoch 1.
    config = load_train_config(None, ["data.source='npz'", f"data.path='{class_npz}'",
                                      "model.hidden=8", "train.epochs=30", "train.lr=10",
                                      "train.grad_clip=0", "train.patience=2"])
    result = fit(config, load_dataset(config), tmp_path / "run")
    assert len(result.history) < 30
    assert result.best_epoch == min(result.history, key=lambda r: r["val_loss"])["epoch"]


def test_forecast_reports_naive_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    config = load_train_config(REPO / "configs" / "forecast.toml", ["train.epochs=2"])
    ds = load_dataset(config)
    result = fit(config, ds, tmp_path / "fc")
    # The naive forecast, computed here from the raw test series: tomorrow equals today.
    err = np.concatenate([x[:, 0] - y[:, 0] for x, y in zip(ds.test.x, ds.test.y,
                                                              strict=True)])
    assert result.test["naive_mae"] == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert result.test["naive_rmse"] == pytest.approx(np.sqrt((err ** 2).mean()), rel=1e-5)
    assert result.test["mae"] > 0


@pytest.mark.parametrize(("episodes", "asked", "kept", "says"), [
    (24, 16, 16, "16 sequences kept for the export's self-check (2 test, 2 val, 12 train)"),
    (12, 16, 12, "asks for 16 sequences but the data has 12"),
])
def test_the_export_check_uses_the_number_of_sequences_asked_for(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, episodes: int, asked: int,
        kept: int, says: str) -> None:
    from helpers.data import write_class_npz

    npz = write_class_npz(tmp_path / "few.npz", sequences=episodes)
    config = load_train_config(None, ["data.source='npz'", f"data.path='{npz}'",
                                      "data.split=[0.8, 0.1, 0.1]", "model.hidden=4",
                                      "train.epochs=1", f"export.verify_sequences={asked}"])
    with caplog.at_level("INFO", logger="lstm_stream.train.loop"):
        result = fit(config, load_dataset(config), tmp_path / "run")
    assert len(load_checkpoint(result.best_path)["verify_x"]) == kept
    assert any(says in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records]
    if kept < asked:
        assert any(r.levelname == "WARNING" for r in caplog.records if says in r.getMessage())
