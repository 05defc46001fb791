"""One exception hierarchy for the bottom layer; every message says what to do next.

Packages above re-use these classes under their own names where their users expect them (``station.errors``
imports :class:`TilingError`), so ``except TilingError`` works whichever module it is imported from.
"""
from __future__ import annotations

from pathlib import Path


class InspectionCoreError(Exception):
    """Base of every error the bottom layer raises on purpose."""


class TilingError(InspectionCoreError):
    """A tile plan or a batch of tiles does not fit the image it was made for."""


class ImageReadError(InspectionCoreError):
    """An image file is missing, unreadable, empty or not a decodable image.

    ``path`` is the file, ``reason`` says what is wrong with it in a few words (``"empty file"``), and
    ``os_error`` is the operating system's error when the file could not be read at all (missing, a folder, no
    permission), ``None`` when its bytes were read but are not an image.
    """

    def __init__(self, path: str | Path, reason: str, os_error: OSError | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        self.os_error = os_error
        super().__init__(f"cannot read image {self.path}: {reason}")
