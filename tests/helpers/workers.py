"""Functions for evaluate.parallel's workers to run: they import it by name."""

from __future__ import annotations

import os


def double_or_die(value: int, fatal: int) -> int:
    """Twice ``value``; the worker process dies (no exception, no result) on ``fatal``."""
    if value == fatal:
        os._exit(3)
    return 2 * value
