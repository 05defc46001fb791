"""The inspection layer's errors; every message says what to do next.

They derive from :class:`inspection_core.errors.InspectionCoreError`, which the line and every command treat as
an expected error (one line, no traceback).
"""
from __future__ import annotations

from inspection_core.errors import InspectionCoreError


class InspectionError(InspectionCoreError):
    """An inspector is set up wrongly (no stage at all, a batch of 0 tiles) or a stage gave what does not fit."""
