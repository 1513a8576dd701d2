"""The exception hierarchy of lstm-stream.

Every error a user can meet derives from :class:`LstmStreamError`. Messages say
what happened, with which value, and what to do. The CLI turns them into a
one-line message and the exit code carried by the class (1 for errors, 2 for
usage mistakes such as a bad configuration).
"""

from __future__ import annotations


class LstmStreamError(Exception):
    """Base class of every error raised on purpose by lstm-stream."""

    exit_code: int = 1


class ConfigError(LstmStreamError):
    """A configuration file or command-line override is invalid.

    ``field`` is the dotted option the message is about (so that the loader can
    say where it was set); ``located`` is true once the message says where.
    """

    exit_code = 2

    def __init__(self, message: str, *, field: str = "", located: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.located = located


class ModelFormatError(LstmStreamError):
    """A file could not be parsed as an ONNX model."""


class ModelContractError(LstmStreamError):
    """An ONNX model does not follow the model contract (see docs/model-contract.md)."""


class BackendError(LstmStreamError):
    """A step backend could not be created or could not run a step."""


class UnsupportedOperatorError(BackendError):
    """The numpy or torch backend met an ONNX operator it does not implement."""


class TrainingError(LstmStreamError):
    """Training could not start or continue (bad data, bad checkpoint, ...)."""


class ExportError(LstmStreamError):
    """An ONNX export failed, or failed its own parity check and was not written."""


class LogError(LstmStreamError):
    """A recorded log could not be written, read or replayed."""


class EvaluationError(LstmStreamError):
    """Offline evaluation failed, or its outputs differ from the reference."""


class ModelIntegrityError(LstmStreamError):
    """A model file's SHA-256 differs from the one pinned in the configuration."""


class SnapshotError(LstmStreamError):
    """A state snapshot could not be written or read (the runner starts clean instead)."""


class SecurityError(LstmStreamError):
    """CURVE keys are missing, unreadable or malformed."""
