"""The engines package's errors; each message says what to do next."""
from __future__ import annotations

import math

from engines.data.segmentation import DatasetError
from engines.weights import WeightsError


class EngineError(Exception):
    """An inference engine cannot be built, loaded or run."""


class BackendUnavailable(EngineError):
    """The requested backend's library is not installed or cannot run on this machine."""


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite: the weights are garbage from there on."""


def check_loss(value: float, where: str, lr: float) -> None:
    """Stop training at the first non-finite loss, before it is stepped into the weights or checkpointed."""
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"training diverged: the loss became {value} at {where}; nothing from this epoch was saved (the last "
            f"checkpoint, if any, is kept). Train again with a lower learning rate (--lr, now {lr:g}), e.g. a "
            f"tenth of it, in a new --out folder")


# The errors a command reports in one line (exit 2) instead of a traceback; the station's and calibration's
# commands add their own packages' errors to these.
USER_ERRORS = (EngineError, WeightsError, DatasetError, FileNotFoundError, ValueError)
