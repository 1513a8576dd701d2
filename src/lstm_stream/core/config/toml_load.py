"""Dataclass configs from TOML: loading, ``--set`` overrides, type checks, and errors
that name the field, where it was set and what it must be.

The runner's sections live in config.py, the trainer's in train/config.py; both are
plain dataclasses that validate themselves with :func:`check` in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from lstm_stream.core.errors import ConfigError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | None = None, labels: dict[str, str] | None = None) -> T:
    """Build config dataclass ``cls`` from a TOML file (or defaults) plus overrides.

    Errors name where the bad value came from: the file, or the override as the
    user typed it (``--set state.max_streams=0``; ``labels`` maps a key to the
    command-line option that set it, such as ``{"input.endpoint": "--input"}``).
    """
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        data = read_toml(path)
        origins = {key: str(path) for key in _dotted_keys(data)}
    for item in overrides or []:
        key = apply_override(data, item)
        origins[key] = (labels or {}).get(key, f"--set {item.strip()}")
    return from_dict(cls, data, "" if path is None else str(path), origins=origins)


def _dotted_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, f"{prefix}{key}."))
        keys.append(prefix + key)
    return keys


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into ConfigError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"Config file {str(path)!r} does not exist.") from None
    except OSError as err:
        raise ConfigError(f"Could not read config file {str(path)!r}: {err}.") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"Config file {str(path)!r} is not valid TOML: {err}.") from err


def apply_override(data: dict[str, Any], item: str) -> str:
    """Apply one ``a.b=value`` override to nested ``data`` in place; returns ``a.b``."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Override {item!r} is not of the form section.field=value.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: take it as a string
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item.strip()}: {part!r} is a value, not a section.")
        node = child
    node[leaf] = value
    return key.strip()


def from_dict(cls: type[T], data: dict[str, Any], where: str, prefix: str = "", *,
              origins: dict[str, str] | None = None) -> T:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types.

    ``origins`` maps dotted keys to where they were set (a file, ``--set ...``);
    an error about a key names its origin, else ``where``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    origins = origins or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            full = prefix + key
            known = [prefix + k for k in fields]
            close = difflib.get_close_matches(full, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ConfigError(_at(_origin(origins, full, where),
                                  f"unknown option {full!r}{hint} Known options: "
                                  f"{', '.join(known)}."))
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        full = prefix + name
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(_at(_origin(origins, full, where),
                                      f"{full!r} must be a table ([{full}]), got {value!r}."))
            kwargs[name] = from_dict(hint, value, where, prefix=full + ".",  # type: ignore[arg-type]
                                     origins=origins)
        else:
            kwargs[name] = _coerce(full, hint, value, _origin(origins, full, where))
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if err.located:
            raise
        raise ConfigError(_at(_origin(origins, err.field, where), str(err)),
                          located=True) from None


def _origin(origins: dict[str, str], key: str, default: str) -> str:
    """Where ``key`` (or, for a section, any key inside it) was set."""
    if key in origins:
        return origins[key]
    inside = [origin for k, origin in origins.items() if k.startswith(key + ".")]
    return inside[-1] if inside and key else default


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _coerce(name: str, hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if dataclasses.is_dataclass(item_type):  # [[section.items]]: a list of tables
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(_at(where, f"{name!r} must be a list of tables "
                                      f"([[{name}]]), got {value!r}."), located=True)
            return [from_dict(item_type, v, where, prefix=f"{name}[{i}].")  # type: ignore[arg-type]
                    for i, v in enumerate(value)]
        if isinstance(value, str):  # "a,b" from the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(_at(where, f"{name!r} must be a list, got {value!r}."),
                              located=True)
        return [_coerce(f"{name}[{i}]", item_type, v, where) for i, v in enumerate(value)]
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(_at(where, f"{name!r} must be a table such as {{h0 = \"hn\"}}, "
                                  f"got {value!r}."), located=True)
        return {_coerce(f"{name} key", key_type, k, where):
                _coerce(f"{name}.{k}", value_type, v, where) for k, v in value.items()}
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"unions are not supported in configs ({name})")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(_at(where, f"{name!r} must be true or false, got {value!r}."),
                              located=True)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(_at(where, f"{name!r} must be an integer, got {value!r}."),
                              located=True)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(_at(where, f"{name!r} must be a number, got {value!r}."),
                              located=True)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(_at(where, f"{name!r} must be a string, got {value!r}."),
                              located=True)
        return value
    raise TypeError(f"unsupported config type {hint!r} for {name}")


def check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name!r} must be {rule}; got {value!r}.", field=name)
