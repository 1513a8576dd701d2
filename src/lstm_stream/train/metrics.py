"""A run's metrics: ``metrics.jsonl`` (one JSON object per epoch) and ``metrics.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lstm_stream.core.errors import TrainingError
from lstm_stream.core.plotting import pyplot


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """One JSON object per epoch (rewritten whole, so a resumed run has one clean file)."""
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in history))


def plot_metrics(path: Path, history: list[dict[str, Any]], task: str) -> None:
    """Loss and the task's metric per epoch, as a PNG."""
    plt = pyplot("metrics.png", TrainingError)
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        if history and key in history[0]:
            ax1.plot(epochs, [r[key] for r in history], label=key)
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.legend()
    metrics = ["val_accuracy"] if task == "classification" else ["val_mae", "val_naive_mae"]
    for key in metrics:
        if history and key in history[0]:
            ax2.plot(epochs, [r[key] for r in history], label=key)
    ax2.set_xlabel("epoch")
    ax2.set_title(metrics[0])
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
