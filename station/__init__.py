"""The running line: sources, tiling, pipeline, verdict rules, recipes, reject log and the `station` command."""
from __future__ import annotations

__version__ = "0.1.0"
