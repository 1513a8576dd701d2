"""A missing optional dependency (an extra) as one clear error, raised when a command needs it.

Every CLI module is imported when ``lstm-stream`` starts, so none imports an optional
dependency at module level: a handler imports the library modules that need one
(torch, mcap, ...) itself, inside ``needs_extra``. ``lstm-stream --help`` then works
on an edge install, and running a command whose extra is missing says what to install.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager

from lstm_stream.core.errors import LogError, LstmStreamError

LOGS_EXTRA = ("mcap", "zstandard", "lz4", "matplotlib")  # what [logs] installs, and needs


@contextmanager
def needs_extra(packages: Collection[str],
                error: Callable[[str], LstmStreamError]) -> Iterator[None]:
    """Raise ``error(package)`` from a ``ModuleNotFoundError`` of one of ``packages`` (top-level
    names such as ``"mcap"``) in the body; any other missing module is a bug and propagates."""
    try:
        yield
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing in packages:
            raise error(missing) from err
        raise


def logs_extra() -> AbstractContextManager[None]:
    """Around the import of a module that needs the [logs] extra (record, replay, eval,
    log): a clear error when it is missing."""
    return needs_extra(LOGS_EXTRA, lambda missing: LogError(
        f"This command needs the {missing!r} package: install the logs extra with "
        "`pip install 'lstm-stream[logs]'`."))
