"""``[[input.sources]]`` resolved against a model: which columns of ``x`` each topic fills."""

from __future__ import annotations

from collections.abc import Sequence

from lstm_stream.core.config.runner import SourceConfig
from lstm_stream.core.errors import ConfigError
from lstm_stream.core.step.sources import Source


def resolve_sources(specs: Sequence[SourceConfig], model_features: tuple[str, ...] | None,
                    n_features: int) -> list[Source]:
    """Map each ``[[input.sources]]``'s features onto the model's ``x``; every problem
    is a ConfigError that names the field and the fix."""
    names = [f for spec in specs for f in spec.features]
    seen: dict[str, str] = {}
    for spec in specs:
        for name in spec.features:
            if name in seen:
                raise ConfigError(f"input.sources: feature {name!r} is given by both "
                                  f"{seen[name]!r} and {spec.topic!r}; each feature must come "
                                  "from one source.", field="input.sources")
            seen[name] = spec.topic
    if model_features is not None:
        missing = [f for f in model_features if f not in seen]
        unknown = [f for f in names if f not in model_features]
        if missing or unknown:
            raise ConfigError(
                "input.sources: the sources' features must be the model's features "
                f"({', '.join(model_features)}); " + "; ".join(
                    part for part in (
                        f"no source gives {missing}" if missing else "",
                        f"the model has no feature {unknown}" if unknown else "") if part)
                + ". Fix the features lists (`lstm-stream info MODEL` shows the model's).",
                field="input.sources")
        order = list(model_features)
    else:
        if len(names) != n_features:
            raise ConfigError(f"input.sources: the sources give {len(names)} features "
                              f"({', '.join(names)}) but the model takes {n_features}, and it "
                              "declares no feature_names to match them by; list exactly "
                              f"{n_features} features, in the model's order.",
                              field="input.sources")
        order = names
    return [Source(spec.topic, tuple(spec.features), tuple(order.index(f) for f in spec.features),
                   spec.rate_hz, int(spec.max_age_ms * 1e6), spec.trigger) for spec in specs]
