"""Fixtures for the training tests: small real data files written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.data import write_class_npz, write_memory_npz

pytest.importorskip("torch")


@pytest.fixture
def memory_npz(tmp_path: Path) -> Path:
    return write_memory_npz(tmp_path / "memory.npz")


@pytest.fixture
def class_npz(tmp_path: Path) -> Path:
    return write_class_npz(tmp_path / "classes.npz")
