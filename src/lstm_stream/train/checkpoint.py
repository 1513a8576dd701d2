"""Checkpoints: ``best.pt`` and ``last.pt``, self-describing, loadable with ``weights_only=True``.

They hold only tensors, dicts, lists, str, int, float and bool (never a pickled
object), so ``torch.load(..., weights_only=True)`` reads them; ``last.pt`` also
holds the optimiser and torch RNG state, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstm_stream.core.errors import TrainingError
from lstm_stream.train.config import TrainConfig, config_from_dict
from lstm_stream.train.data import Dataset
from lstm_stream.train.model import ModelShape, SequenceModel

CHECKPOINT_FORMAT = "lstm-stream-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class RunState:
    """Where a run is: what resuming needs besides weights and optimiser."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    test: dict[str, float] = field(default_factory=dict)


def save_checkpoint(path: Path, model: SequenceModel, config: TrainConfig, dataset: Dataset,
                    state: RunState, optimizer: torch.optim.Optimizer | None,
                    verify_x: list[np.ndarray]) -> None:
    """Write a self-describing checkpoint (plain tensors and containers only: no pickle)."""
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.as_dict(),
        "config_sha256": config.digest(),
        "shape": {"features": model.shape.features, "outputs": model.shape.outputs,
                  "add_input_index": model.shape.add_input_index},
        "feature_names": list(dataset.feature_names),
        "output_names": list(dataset.output_names),
        "normalization": {"mean": model.x_mean.tolist(), "std": model.x_std.tolist()},
        "model": model.state_dict(),
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_loss": state.best_loss if math.isfinite(state.best_loss) else -1.0,
        "bad_epochs": state.bad_epochs,
        "history": state.history,
        "test": state.test,
        "verify_x": [torch.from_numpy(a) for a in verify_x],
        "torch_rng": torch.get_rng_state(),
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
        if state.best_weights is not None:
            ckpt["best_model"] = state.best_weights
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint behind


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check it is one of ours."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"Checkpoint {str(path)!r} does not exist.") from None
    except Exception as err:  # torch raises untyped errors for corrupt or unsafe files
        raise TrainingError(f"Could not load checkpoint {str(path)!r} (weights only, no "
                            f"pickled objects): {err}.") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{str(path)!r} is not an lstm-stream checkpoint (no "
                            f"'format': {CHECKPOINT_FORMAT!r}).")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{str(path)!r} is checkpoint version {ckpt.get('version')!r}; "
                            f"this lstm-stream reads version {CHECKPOINT_VERSION}.")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], where: str) -> tuple[SequenceModel,
                                                                     TrainConfig]:
    """Rebuild the model stored in a loaded checkpoint."""
    config = config_from_dict(ckpt["config"], where)
    shape = ModelShape(**ckpt["shape"])
    model = SequenceModel(config.model, shape)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, config


def restore(path: Path, config: TrainConfig, model: SequenceModel,
            optimizer: torch.optim.Optimizer) -> RunState:
    """Load ``last.pt`` into ``model`` and ``optimizer``; refuse one from another model."""
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt:
        raise TrainingError(f"{str(path)!r} has no optimiser state (best.pt is for export); "
                            "resume from last.pt.")
    mine, theirs = config.as_dict()["model"], ckpt["config"]["model"]
    if mine != theirs:
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        raise TrainingError(f"Cannot resume from {str(path)!r}: its model differs from the "
                            f"config's (field: (checkpoint, config)) {diff}.")
    if ckpt["shape"] != {"features": model.shape.features, "outputs": model.shape.outputs,
                         "add_input_index": model.shape.add_input_index}:
        raise TrainingError(f"Cannot resume from {str(path)!r}: it was trained on data of "
                            f"shape {ckpt['shape']}, this data gives {model.shape}.")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["torch_rng"])
    return RunState(epoch=ckpt["epoch"], history=list(ckpt["history"]),
                    best_loss=ckpt["best_loss"] if ckpt["best_loss"] >= 0 else math.inf,
                    best_epoch=ckpt["best_epoch"], bad_epochs=ckpt["bad_epochs"],
                    best_weights=ckpt.get("best_model"))
