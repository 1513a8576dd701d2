"""Training sets as `.npz` files with a signal a small model can learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_memory_npz(path: Path, sequences: int = 48, steps: int = 30, seed: int = 0) -> Path:
    """A recall task: a cue of +-1 at step 0 (feature 0), noise after; the target is the cue.

    Only a model whose state carries the cue from the first step can predict it later.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, size=(sequences, steps, 2)).astype(np.float32)
    cue = rng.choice([-1.0, 1.0], size=sequences).astype(np.float32)
    x[:, 0, 0] = cue
    x[:, 1:, 0] = 0.0
    y = np.repeat(cue[:, None, None], steps, axis=1).astype(np.float32)  # (N, T, 1)
    np.savez(path, x=x, y=y)
    return path


def write_class_npz(path: Path, sequences: int = 64, steps: int = 6, seed: int = 0) -> Path:
    """Three classes told apart by the mean of feature 0 over the sequence."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=sequences)
    x = rng.normal(0.0, 1.0, size=(sequences, steps, 3)).astype(np.float32)
    x[:, :, 0] += (labels[:, None] - 1.0) * 1.5
    np.savez(path, x=x, y=labels.astype(np.int64))
    return path
