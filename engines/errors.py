"""The engines package's errors; each message says what to do next."""
from __future__ import annotations

from calibration.errors import CalibrationError
from engines.data.segmentation import DatasetError
from engines.weights import WeightsError


class EngineError(Exception):
    """An inference engine cannot be built, loaded or run."""


class BackendUnavailable(EngineError):
    """The requested backend's library is not installed or cannot run on this machine."""


USER_ERRORS = (EngineError, WeightsError, DatasetError, CalibrationError, FileNotFoundError, ValueError)
