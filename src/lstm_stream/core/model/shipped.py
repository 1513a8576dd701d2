"""The models shipped inside the package, so that defaults work from any directory.

``serve``'s default model (``models/random_lstm.onnx``) and the demo's
(``models/lane_keep_lstm.onnx``) are package data (``lstm_stream/models/``);
the repository's ``models/`` holds symbolic links to them. The rule, applied
wherever a model path is read (:func:`lstm_stream.core.model.contract.load_contract`):

- a path that exists is used as given (a user's own ``models/random_lstm.onnx``
  wins);
- a path that does not exist and is ``models/<name>`` for a shipped ``<name>``
  is the shipped copy (logged at INFO);
- any other path is used as given, and a missing one is an error naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePath

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "models"  # lstm_stream/models
SHIPPED = ("random_lstm.onnx", "lane_keep_lstm.onnx")


def shipped_model(name: str) -> Path:
    """The packaged copy of shipped model ``name``."""
    return SHIPPED_DIR / name


def resolve_model_path(path: str | Path) -> Path:
    """``path``, or the shipped copy when ``path`` is a missing ``models/<shipped name>``."""
    given = Path(path)
    if given.exists():
        return given
    parts = PurePath(path).parts
    if len(parts) == 2 and parts[0] == "models" and parts[1] in SHIPPED:
        shipped = shipped_model(parts[1])
        if shipped.is_file():
            log.info("model: %s is not in %s; using the shipped model %s", path, Path.cwd(),
                     shipped)
            return shipped
    return given
