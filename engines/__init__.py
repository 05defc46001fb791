"""Networks (BFFN, GR, baselines), data sets, training, export and inference backends; the `engines` command.

Heavy imports (torch, onnxruntime, tensorrt) happen inside the modules that need them, so `import engines`
works everywhere.
"""
from __future__ import annotations
