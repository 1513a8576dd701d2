"""Episodes: sequences as a source loaded them, before the split into train, val, test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Episodes:
    """Sequences as loaded, before the split."""

    x: list[np.ndarray]  # each (T_i, F) float32
    y: list[np.ndarray]  # classification (T_i,) int64; regression (T_i, O) float32
    feature_names: list[str]
    output_names: list[str]
    naive: list[np.ndarray] | None = None  # regression (T_i, O): "tomorrow equals today"
