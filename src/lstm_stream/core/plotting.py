"""matplotlib for the PNG files that eval, bench, demo, train and sim write.

matplotlib is optional (the ``[logs]`` and ``[train]`` extras), so it is imported here,
when a plot is asked for, and nowhere else: an install without it runs everything but
the plots, and asking for a plot says what to install.
"""

from __future__ import annotations

from typing import Any

from lstm_stream.core.errors import LstmStreamError

INSTALL_HINT = "pip install matplotlib (or the [logs] extra: pip install 'lstm-stream[logs]')"


def pyplot(needed_by: str, error: type[LstmStreamError] = LstmStreamError, *,
           otherwise: str = "") -> Any:
    """``matplotlib.pyplot`` drawing with the Agg backend: into files, never a window
    (servers, CI and vehicles have no display).

    Without matplotlib, raises ``error``: "{needed_by} needs matplotlib: {INSTALL_HINT}",
    then ``otherwise`` (another way out, such as "or leave out --report") if given.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        tail = f", {otherwise}" if otherwise else ""
        raise error(f"{needed_by} needs matplotlib: {INSTALL_HINT}{tail}.") from err
    return plt
