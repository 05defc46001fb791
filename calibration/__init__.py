"""Everything measured on the station to make images and decisions trustworthy (flat-field, scale, ROI, thresholds)."""
from __future__ import annotations
