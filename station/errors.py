"""One exception hierarchy for the running line; every message says what to do next."""
from __future__ import annotations


class StationError(Exception):
    """Base of every error the station raises on purpose."""


class SourceError(StationError):
    """A frame source cannot be opened or read (missing folder, no camera, bad .cti file)."""


class CameraLostError(SourceError):
    """The camera vanished while streaming; the source reconnects unless told not to."""


class RecipeError(StationError):
    """A recipe file is missing, malformed, or names something that does not exist."""


class TilingError(StationError):
    """A tile plan or a batch of tiles does not fit the image it was made for."""


class RejectLogError(StationError):
    """The reject log cannot be opened, written or exported."""
