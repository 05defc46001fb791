"""One exception hierarchy for the running line; every message says what to do next.

Errors of the shared bottom layer that station users meet by name are imported from :mod:`inspection_core.errors`
(one class, two names): ``station.errors.TilingError is inspection_core.errors.TilingError``. They derive from
:class:`~inspection_core.errors.InspectionCoreError`, not from :class:`StationError`; the line and the ``station``
command treat both bases alike. :class:`StationError` is the package's user-error root
(:func:`~inspection_core.errors.user_error_root`): a command reports it in one line (exit status 2), and a
built-in exception as a bug (its traceback, exit status 1).
"""
from __future__ import annotations

from inspection_core.errors import TilingError, user_error_root

__all__ = ["CameraLostError", "DiskSpaceError", "EvidenceError", "LedgerError", "LedgerInUseError", "RecipeError",
           "RejectLogError", "SourceError", "StationError", "TilingError"]


@user_error_root
class StationError(Exception):
    """Base of every error the station raises on purpose."""


class SourceError(StationError):
    """A frame source cannot be opened or read (missing folder, no camera, bad .cti file)."""


class CameraLostError(SourceError):
    """The camera vanished while streaming; the source reconnects unless told not to."""


class RecipeError(StationError):
    """A recipe file is missing, malformed, or names something that does not exist."""


class RejectLogError(StationError):
    """The reject log cannot be opened, written or exported."""


class LedgerError(RejectLogError):
    """The reject log (the part ledger) cannot be written: disk full, read-only file, I/O error, or locked by another
    program beyond the timeout. The line stops on it: an inspection without a record is worth nothing."""


class DiskSpaceError(LedgerError):
    """Free space where the ledger lives is below the recipe's ``[station] min_free_mb``."""


class EvidenceError(LedgerError):
    """A FAIL part's row is committed, but its evidence (the reject image and its overlay) could not be written: a
    full disk, a read-only or missing folder. The row's ``detail`` names the error; ``row`` is the committed row.
    The line stops on it as on a row that cannot be written."""

    def __init__(self, message: str, row: dict | None = None) -> None:
        super().__init__(message)
        self.row = row


class LedgerInUseError(RejectLogError):
    """Another ``station run`` holds the reject log (its lock file beside it): two stations must never write one log.
    Bad input (exit status 2), not a failure of the line."""
