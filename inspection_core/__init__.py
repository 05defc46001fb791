"""The bottom layer every stage shares: records, tile plan, tiling and stitching, pre- and post-processing,
verdict rules, image reading, hashing and the engine protocol.

It imports nothing else of this repository (only numpy, OpenCV and the standard library), so ``station``,
``engines``, ``calibration`` and ``ui`` can all depend on it and never on each other through it. The import-linter
contracts in ``setup.cfg`` (``lint-imports``, part of ``make test``) keep it that way.
"""
from __future__ import annotations
