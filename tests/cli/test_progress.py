"""Progress bars: drawn on a terminal, silent in pipes and CI logs."""

from __future__ import annotations

import io

from lstm_stream.cli.progress import TerminalProgress


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_is_drawn_on_a_terminal() -> None:
    out = FakeTty()
    bar = TerminalProgress(out, fps=1e9)
    bar.start("eval", total=4)
    bar.advance(2, status="loss 0.5")
    assert "eval [" in bar.line() and "2/4" in bar.line() and "50.0%" in bar.line()
    bar.close()
    text = out.getvalue()
    assert "loss 0.5" in text and text.endswith("\n")


def test_unknown_total_shows_count_and_rate() -> None:
    bar = TerminalProgress(FakeTty(), fps=1e9)
    bar.start("record")
    bar.advance(10)
    assert bar.line().startswith("record 10 (")


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = TerminalProgress(out)
    bar.start("train", total=3)
    bar.advance(3)
    bar.close()
    assert out.getvalue() == ""
