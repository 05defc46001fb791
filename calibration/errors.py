"""The calibration package's errors; every message says what to do next."""
from __future__ import annotations


class CalibrationError(Exception):
    """Base of every error a calibration step or a profile raises on purpose (bad input, missing profile...)."""


class ProfileNotFound(CalibrationError):
    """No profile (or no such version) for a camera in the profile store."""


class ProfileMismatch(CalibrationError):
    """A profile does not fit the camera or image it is applied to (width, height or pixel format)."""


class ProfileCorrupt(CalibrationError):
    """A profile's files are missing, unreadable or do not match the SHA-256 recorded in its profile.json."""
