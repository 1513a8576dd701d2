"""Progress reporting for long work (training, recording, replay, evaluation).

Library code reports progress through a :class:`Progress` it is given and never
prints; the CLI decides how to show it (cli/progress.py draws a bar on a
terminal). :class:`NullProgress` shows nothing.
"""

from __future__ import annotations


class Progress:
    """Interface: ``start`` a task of ``total`` units (None: unknown), ``advance``, ``close``."""

    def start(self, description: str, total: int | None = None) -> None:
        """Begin a new task; the previous one, if any, is finished."""

    def advance(self, units: int = 1, status: str = "") -> None:
        """``units`` more done; ``status`` is a short text shown beside the bar."""

    def close(self) -> None:
        """Finish the current task."""


class NullProgress(Progress):
    """Reports nothing."""
