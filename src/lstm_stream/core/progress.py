"""Progress reporting for long work (training, recording, replay, evaluation).

Library code reports progress through a :class:`Progress` it is given and never
prints; the CLI decides how to show it. :class:`TerminalProgress` draws a
one-line bar on stderr when stderr is a terminal and stays quiet otherwise
(CI logs, pipes); :class:`NullProgress` shows nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


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


class TerminalProgress(Progress):
    """A single redrawn line on a terminal, at most ``fps`` times a second."""

    def __init__(self, stream: TextIO | None = None, *, fps: float = 10.0,
                 force: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.min_interval = 1.0 / fps
        self.description = ""
        self.total: int | None = None
        self.done = 0
        self.status = ""
        self._started = 0.0
        self._drawn = 0.0

    def start(self, description: str, total: int | None = None) -> None:
        self.close()
        self.description, self.total, self.done, self.status = description, total, 0, ""
        self._started = time.monotonic()
        self._drawn = 0.0
        self._draw(force=True)

    def advance(self, units: int = 1, status: str = "") -> None:
        self.done += units
        if status:
            self.status = status
        self._draw()

    def close(self) -> None:
        if self.description and self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
        self.description = ""

    def line(self) -> str:
        """The text of the bar as it would be drawn now."""
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 24)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_text = f"{eta:5.0f}s left" if eta != float("inf") else "   ?s left"
            head = (f"{self.description} [{bar:<24}] {self.done}/{self.total} "
                    f"{frac * 100:5.1f}% {eta_text}")
        else:
            head = f"{self.description} {self.done} ({rate:,.0f}/s, {elapsed:,.0f}s)"
        return f"{head}  {self.status}".rstrip()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < self.min_interval:
            return
        self._drawn = now
        self.stream.write("\r\x1b[2K" + self.line())
        self.stream.flush()
