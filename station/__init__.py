"""The running line: sources, the inspector, pipeline, recipes, reject log and the `station` command.

Records, tiling, pre- and post-processing and verdict rules are shared with the other packages from the bottom
layer, :mod:`inspection_core`.
"""
from __future__ import annotations

__version__ = "0.1.0"
