"""The files of state snapshots: the path check at start, atomic writes, keeping aside.

What :mod:`lstm_stream.core.state.snapshot` does to the file system, so that no
snapshot ever costs a user a file: ``serve`` refuses a path that is a
directory, a file that is not a snapshot, or a directory where it cannot
atomically replace a file (:func:`check_snapshot_path`); snapshots are written
atomically (:func:`write_atomic`); and an unusable snapshot is renamed aside,
never deleted (:func:`keep_aside`).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from lstm_stream.core.errors import SnapshotError

MAGIC = b"LSTMSNAP"  # every snapshot file starts with it


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new, never half.

    Temporary file in the same directory, fsync, rename over ``path``, fsync the directory.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise SnapshotError(f"Could not write snapshot {str(path)!r}: {err.strerror or err}. "
                            "Check that its directory exists and is writable.") from err


def check_snapshot_path(path: str | Path) -> None:
    """Refuse, before serving, a ``state.snapshot_path`` that would lose data or fail later.

    The path must not be a directory or a file that is not an lstm-stream
    snapshot (it would be overwritten by the first snapshot), and its directory
    must let this process create a file and atomically replace another one,
    which is what every snapshot does. Raises SnapshotError naming the path
    and what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise SnapshotError(f"state.snapshot_path {str(path)!r} is a directory; give the path "
                            f"of a file in it, such as {str(path / 'state.snap')!r}.")
    if path.exists():
        require_snapshot_file(path)
    _probe_directory(path)


def require_snapshot_file(path: Path) -> None:
    """Raise unless the existing file at ``path`` starts with the snapshot header."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as err:
        raise SnapshotError(f"state.snapshot_path {str(path)!r} exists but cannot be read "
                            f"({err.strerror or err}), so it cannot be checked before it "
                            "would be overwritten. Fix its permissions or choose another "
                            "path.") from err
    if head != MAGIC:
        raise SnapshotError(f"state.snapshot_path {str(path)!r} exists and is not an "
                            f"lstm-stream snapshot (it does not start with {MAGIC!r}); "
                            "refusing to overwrite it. Move or remove that file, or choose "
                            "another path with --set state.snapshot_path=PATH.")


def _probe_directory(path: Path) -> None:
    """Create a file beside ``path`` and atomically replace another with it, then clean up."""
    directory = path.parent
    if not directory.is_dir():
        raise SnapshotError(f"state.snapshot_path {str(path)!r}: its directory "
                            f"{str(directory)!r} does not exist. Create it (mkdir -p) or "
                            "choose another path.")
    probe = directory / f".{path.name}.{os.getpid()}.probe"
    target = directory / f".{path.name}.{os.getpid()}.probe-target"
    try:
        for name in (target, probe):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(probe, target)
        os.unlink(target)
    except OSError as err:
        for name in (probe, target):
            with contextlib.suppress(OSError):
                name.unlink(missing_ok=True)
        raise SnapshotError(f"state.snapshot_path {str(path)!r}: cannot create and atomically "
                            f"replace a file in {str(directory)!r} "
                            f"({err.strerror or err}). Make that directory writable by this "
                            "user, or choose another path.") from err


def keep_aside(path: Path, why: str, unix_ns: int | None = None) -> Path:
    """Rename ``path`` to ``<path>.<why>-<UTC time>`` (never overwriting); returns the new path.

    An unusable snapshot is kept, not deleted, so that nothing that might still
    be wanted (a damaged file for inspection, another model's state) is lost.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ",
                          time.gmtime((time.time_ns() if unix_ns is None else unix_ns) / 1e9))
    aside = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
        n += 1
    try:
        os.rename(path, aside)
    except OSError as err:
        raise SnapshotError(f"Snapshot {str(path)!r} cannot be used ({why}) and could not be "
                            f"moved aside to {str(aside)!r} ({err.strerror or err}); refusing "
                            "to overwrite it. Move it away yourself, or choose another "
                            "state.snapshot_path.") from err
    return aside
