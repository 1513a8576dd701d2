"""ONNX export: the step model matches PyTorch through every backend, or is not written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lstm_stream.core.backends import create_backend
from lstm_stream.core.backends.base import step_sequences
from lstm_stream.core.errors import ExportError
from lstm_stream.core.model.contract import load_contract
from lstm_stream.train.config import TrainConfig, load_train_config
from lstm_stream.train.data import load_dataset
from lstm_stream.train.export import (
    ExportInfo,
    build_step_graph,
    export_checkpoint,
    write_verified,
)
from lstm_stream.train.loop import TrainResult, fit

pytest.importorskip("onnx")


def trained(tmp_path: Path, npz: Path, *overrides: str) -> tuple[TrainResult, TrainConfig]:
    config = load_train_config(None, ["data.source='npz'", f"data.path='{npz}'",
                                      "model.hidden=12", "train.epochs=2", "train.threads=1",
                                      *overrides])
    return fit(config, load_dataset(config), tmp_path / "run"), config


def stepped(model_path: Path, backend: str, xs: np.ndarray) -> np.ndarray:
    """Serve-style stepping: one step per row, state carried; xs (B, T, F) -> (B, T, O)."""
    contract = load_contract(model_path)
    return step_sequences(create_backend(backend, contract).step, contract, xs)[0]


@pytest.mark.parametrize("overrides", [
    ("model.cell='lstm'",),
    ("model.cell='gru'", "model.layers=2", "model.head='mlp'"),
    ("model.layers=3", "model.classify_on='every'"),
])
def test_classifier_export_matches_pytorch(tmp_path: Path, class_npz: Path,
                                           overrides: tuple[str, ...]) -> None:
    result, config = trained(tmp_path, class_npz, *overrides)
    out = tmp_path / "m.onnx"
    worst = export_checkpoint(result.best_path, out)
    assert worst < 1e-5
    contract = load_contract(out)
    assert contract.cell == config.model.cell and contract.n_outputs == 3
    assert contract.states[0].layers == config.model.layers
    meta = contract.metadata
    assert json.loads(meta["output_names"]) == ["0", "1", "2"]
    assert json.loads(meta["normalization"])["folded"] is True
    assert meta["training_config_sha256"] == config.digest()
    assert "accuracy" in json.loads(meta["validation_metrics"]) and meta["created"]
    xs = np.load(class_npz)["x"][:5]
    with torch.no_grad():
        want = result.model(torch.from_numpy(xs))[0].numpy()  # whole sequences at once
    for backend in ("onnxruntime", "numpy", "torch"):
        np.testing.assert_allclose(stepped(out, backend, xs), want, atol=1e-5)


def test_regression_export_with_added_input(tmp_path: Path, memory_npz: Path) -> None:
    result, _ = trained(tmp_path, memory_npz, "model.task='regression'", "data.features="
                        "['cue','noise']", "model.add_input='noise'", "model.loss='huber'",
                        "train.window=10")
    out = tmp_path / "r.onnx"
    export_checkpoint(result.best_path, out)
    xs = np.load(memory_npz)["x"][:4]
    with torch.no_grad():
        want = result.model(torch.from_numpy(xs))[0].numpy()
    np.testing.assert_allclose(stepped(out, "onnxruntime", xs), want, atol=1e-5, rtol=1e-5)
    assert json.loads(load_contract(out).metadata["feature_names"]) == ["cue", "noise"]


def test_the_export_log_says_how_many_sequences_were_checked(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from helpers.data import write_class_npz

    npz = write_class_npz(tmp_path / "few.npz", sequences=24)  # test split: 2 sequences
    result, _ = trained(tmp_path, npz, "data.split=[0.8, 0.1, 0.1]", "model.hidden=4",
                        "train.epochs=1", "export.verify_sequences=16")
    with caplog.at_level("INFO", logger="lstm_stream.train.export"):
        export_checkpoint(result.best_path, tmp_path / "m.onnx")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("exported")]
    assert len(said) == 1 and said[0].endswith(" over 16 sequences)"), said


def _graph(tmp_path: Path, npz: Path) -> tuple[object, TrainResult, list[np.ndarray]]:
    result, config = trained(tmp_path, npz)
    info = ExportInfo(["a", "b", "c"], ["0", "1", "2"], config.digest(), {}, {})
    seqs = [np.load(npz)["x"][i] for i in range(8)]
    return build_step_graph(result.model, info), result, seqs


def test_perturbed_weight_is_refused(tmp_path: Path, class_npz: Path) -> None:
    from onnx import numpy_helper

    proto, result, seqs = _graph(tmp_path, class_npz)
    init = next(t for t in proto.graph.initializer if t.name == "R_0")  # type: ignore[attr-defined]
    r = numpy_helper.to_array(init).copy()
    r[0, 5, 3] += 0.05  # one recurrent weight
    init.CopyFrom(numpy_helper.from_array(r, "R_0"))
    out = tmp_path / "broken.onnx"
    with pytest.raises(ExportError, match=r"onnxruntime step model differs from the PyTorch "
                       r"model by [0-9.e-]+ \(tolerance 1e-05\) at held-out sequence \d+, "
                       r"step \d+, output '(y|h_out|c_out)'\[\d+\].*not written"):
        write_verified(proto, result.model, seqs, out)
    assert not out.exists()


def test_swapped_gate_order_is_refused(tmp_path: Path, class_npz: Path) -> None:
    from onnx import numpy_helper

    proto, result, seqs = _graph(tmp_path, class_npz)
    hidden = 12
    for name in ("W_0", "R_0"):  # PyTorch order i, f, g, o written as if it were ONNX's
        init = next(t for t in proto.graph.initializer if t.name == name)  # type: ignore[attr-defined]
        a = numpy_helper.to_array(init)
        blocks = [a[:, k * hidden:(k + 1) * hidden] for k in range(4)]  # i, o, f, c
        swapped = np.concatenate([blocks[0], blocks[2], blocks[3], blocks[1]], axis=1)
        init.CopyFrom(numpy_helper.from_array(swapped, name))
    out = tmp_path / "swapped.onnx"
    with pytest.raises(ExportError, match="differs from the PyTorch model by"):
        write_verified(proto, result.model, seqs, out)
    assert not out.exists()


def test_export_refuses_a_non_checkpoint(tmp_path: Path) -> None:
    from lstm_stream.core.errors import TrainingError

    bogus = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(TrainingError, match="is not an lstm-stream checkpoint"):
        export_checkpoint(bogus, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
