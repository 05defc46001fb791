"""The engines package's errors; each message says what to do next.

:class:`EnginesError` is the package's user-error root (:func:`inspection_core.errors.user_error_root`): the
commands report it and its subclasses (``EngineError``, ``WeightsError``, ``DatasetError``, ``InputError``,
``TrainingDiverged``...) in one line, exit status 2. A built-in exception is a bug and shows its traceback.
"""
from __future__ import annotations

import math

from inspection_core.errors import user_error_root


@user_error_root
class EnginesError(Exception):
    """Base of every error the engines package raises on purpose (bad weights, data, flags, files)."""


class InputError(EnginesError, ValueError):
    """A flag, a model or training setting, a split file, a data set's share or an output folder given to an engines
    command (or its Python API) is not valid. Also a ``ValueError`` for callers that catch that."""


class MissingFile(EnginesError, FileNotFoundError):
    """A file an engines command was pointed at is not there (an ONNX file, a TensorRT engine). Also a
    ``FileNotFoundError`` for callers that catch that."""


class EngineError(EnginesError):
    """An inference engine cannot be built, loaded or run."""


class BackendUnavailable(EngineError):
    """The requested backend's library is not installed or cannot run on this machine."""


class TrainingDiverged(EnginesError):
    """The training loss became NaN or infinite: the weights are garbage from there on."""


def check_loss(value: float, where: str, lr: float) -> None:
    """Stop training at the first non-finite loss, before it is stepped into the weights or checkpointed."""
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"training diverged: the loss became {value} at {where}; nothing from this epoch was saved (the last "
            f"checkpoint, if any, is kept). Train again with a lower learning rate (--lr, now {lr:g}), e.g. a "
            f"tenth of it, in a new --out folder")

