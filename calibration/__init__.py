"""Everything measured on the station to make images and decisions trustworthy.

Each step (flat-field, scale, region of interest, decision thresholds, INT8 calibration images) writes a new,
dated, immutable version of a camera's profile in a profile store (:mod:`calibration.profile`); the recipe's
``[calibration]`` table names the profile and the line applies it (:mod:`calibration.line`). See
``docs/CALIBRATION.md`` and ``calibration --help``.
"""
from __future__ import annotations
