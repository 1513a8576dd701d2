"""The progress bar the CLI draws for long work (the library reports through
:class:`~lstm_stream.core.progress.Progress` and never prints).

:class:`TerminalProgress` draws a one-line bar on stderr when stderr is a
terminal and stays quiet otherwise (CI logs, pipes).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from lstm_stream.core.progress import Progress


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
