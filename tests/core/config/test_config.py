"""Runner configuration: defaults, TOML loading, overrides and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from lstm_stream.core.config.runner import RunnerConfig, load_runner_config
from lstm_stream.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_shipped_runner_toml_equals_the_builtin_defaults() -> None:
    assert load_runner_config(REPO / "configs" / "runner.toml") == RunnerConfig()


def test_overrides_are_typed_by_toml() -> None:
    cfg = load_runner_config(None, ["state.max_streams=8", "state.idle_timeout_s=2",
                                    "input.topics=[\"a\", \"b\"]", "model.backend=numpy",
                                    "input.bind=true"])
    assert cfg.state.max_streams == 8
    assert cfg.state.idle_timeout_s == 2.0
    assert cfg.input.topics == ["a", "b"]
    assert cfg.model.backend == "numpy"
    assert cfg.input.bind is True


def test_comma_separated_list_override() -> None:
    assert load_runner_config(None, ["input.topics=a,b"]).input.topics == ["a", "b"]


@pytest.mark.parametrize(("override", "match"), [
    ("state.max_streams=0", r"'state.max_streams' must be between 1 and 1000000; got 0"),
    ("state.max_streams=\"many\"", r"'state.max_streams' must be an integer, got 'many'"),
    ("state.idle_timeout_s=-1", r"'state.idle_timeout_s' must be > 0 seconds; got -1.0"),
    ("model.backend=tensorflow", r"'model.backend' must be one of .*got 'tensorflow'"),
    ("input.endpoint=localhost:5555", r"'input.endpoint' must be a ZeroMQ endpoint"),
    ("input.bind=1", r"'input.bind' must be true or false"),
    ("state.colour=1", r"unknown option 'state.colour'. Known options: state.max_streams"),
    ("nosuch.x=1", r"unknown option 'nosuch'"),
    ("model=1", r"'model' must be a table"),
    ("noequals", r"not of the form section.field=value"),
    ("state.snapshot_interval_s=0", r"'state.snapshot_interval_s' must be between 0.01 and "
                                    r"86400 seconds; got 0.0"),
    ("control.allow_insecure_remote=\"yes\"",
     r"'control.allow_insecure_remote' must be true or false"),
])
def test_bad_values_name_the_field_and_the_rule(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_runner_config(None, [override])


def test_bound_endpoints_must_differ() -> None:
    with pytest.raises(ConfigError, match="distinct endpoints"):
        load_runner_config(None, ["output.endpoint=\"tcp://127.0.0.1:5557\""])


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_runner_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[state\nmax_streams = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_runner_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[state]\nmax_streams = 3.5\n")
    with pytest.raises(ConfigError, match=r"wrong.toml: 'state.max_streams' must be an integer"):
        load_runner_config(wrong)
