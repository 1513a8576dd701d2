"""Issue 15's multi-source runner file, as a user writes it, and a model that fits it."""

from __future__ import annotations

from pathlib import Path

import onnx

from lstm_stream.core.model.contract import ModelContract, load_contract

from helpers.tools import build_step_model

FEATURES = ["ax", "ay", "yaw_rate", "speed", "lat_err", "heading_err"]
# The file of issue 15, as a user writes it.
ISSUE_TOML = """
[input]
topics = ["imu", "wheels", "gnss"]

[[input.sources]]            # one per topic; together they give the model's features
topic = "imu"
features = ["ax", "ay", "yaw_rate"]
rate_hz = 100                # expected rate, for health
max_age_ms = 30
trigger = true               # a message on this topic steps the model

[[input.sources]]
topic = "wheels"
features = ["speed"]
rate_hz = 50
max_age_ms = 60

[[input.sources]]
topic = "gnss"
features = ["lat_err", "heading_err"]
rate_hz = 10
max_age_ms = 250

[freshness]
stale = "flag"               # "flag": step and say so; "skip": do not step, publish a diagnostic; \
"hold": step with the last fresh value
"""


def make_model(path: Path, names: list[str] | None = FEATURES) -> ModelContract:
    model = build_step_model(features=6, hidden=16, layers=1, feature_names=names, seed=3)
    if names is None:  # a model that declares no feature names
        kept = [p for p in model.metadata_props if p.key != "feature_names"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
    onnx.save(model, path)
    return load_contract(path)
