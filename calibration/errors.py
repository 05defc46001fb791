"""The calibration package's errors; every message says what to do next.

:class:`CalibrationError` is the package's user-error root (:func:`inspection_core.errors.user_error_root`): the
commands report it in one line, exit status 2; a built-in exception is a bug and shows its traceback.
"""
from __future__ import annotations

from inspection_core.errors import user_error_root


@user_error_root
class CalibrationError(Exception):
    """Base of every error a calibration step or a profile raises on purpose (bad input, missing profile...)."""


class ProfileNotFound(CalibrationError):
    """No profile (or no such version) for a camera in the profile store."""


class ProfileMismatch(CalibrationError):
    """A profile does not fit the camera or image it is applied to (width, height or pixel format)."""


class ProfileCorrupt(CalibrationError):
    """A profile's files are missing, unreadable or do not match the SHA-256 recorded in its profile.json."""
