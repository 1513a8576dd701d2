"""core/plotting.py: matplotlib drawing into files, and a clear error without it."""

from __future__ import annotations

from pathlib import Path

from helpers.support import run_python


def test_pyplot_draws_into_files_with_the_agg_backend(tmp_path: Path) -> None:
    from lstm_stream.core.plotting import pyplot

    plt = pyplot("this test")
    assert plt.get_backend().lower() == "agg"  # never a window: no display in CI or vehicles
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "line.png")
    plt.close(fig)
    assert (tmp_path / "line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_callers_error_says_what_to_install() -> None:
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # any import of it now fails
            "from lstm_stream.core.errors import EvaluationError\n"
            "from lstm_stream.core.plotting import pyplot\n"
            "try:\n"
            "    pyplot('--report', EvaluationError, otherwise='or leave out --report')\n"
            "except EvaluationError as err:\n"
            "    print(err)\n")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("--report needs matplotlib: pip install matplotlib (or the [logs] "
                           "extra: pip install 'lstm-stream[logs]'), or leave out --report.\n")
