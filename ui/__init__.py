"""Operator panel widgets. They only display results handed to them; they never fetch frames or run models."""
from __future__ import annotations
