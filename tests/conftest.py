"""Shared fixtures: ONNX step models built by tools/make_model.py, written to real files.

Helpers that tests import live in the ``helpers`` package beside this file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from helpers.tools import build_step_model

REPO = Path(__file__).resolve().parents[1]

ModelFactory = Callable[..., Path]


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    """A ZeroMQ context of the test's own, destroyed (linger 0) when it ends."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def model_factory(tmp_path: Path) -> ModelFactory:
    """``model_factory(**build_step_model_kwargs) -> path`` of the model written to tmp_path."""
    count = 0

    def make(name: str | None = None, **kwargs: Any) -> Path:
        nonlocal count
        count += 1
        path = tmp_path / (name or f"model_{count}.onnx")
        path.write_bytes(build_step_model(**kwargs).SerializeToString())
        return path

    return make


_DIRECTORY_MARKERS = {"train": "torch", "sim": "sim"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/train as `torch` and under tests/sim as `sim`,
    so that `-m "not torch"` runs the suite as on an edge box without torch."""
    for item in items:
        parts = Path(str(item.path)).relative_to(REPO / "tests").parts
        marker = _DIRECTORY_MARKERS.get(parts[0]) if len(parts) > 1 else None
        if marker is not None:
            item.add_marker(marker)
