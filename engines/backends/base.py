"""How engines are loaded by name: the backends, the engine cache, default threads.

The interface every backend implements, :class:`~inspection_core.engine.Engine`, lives in the bottom layer
(:mod:`inspection_core.engine`) so that inspectors depend on it without depending on the engines package.
"""
from __future__ import annotations

import os
from pathlib import Path

from inspection_core.engine import Engine

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def cache_dir() -> Path:
    """Where exported ONNX files and built engines are kept: ``$STATION_CACHE`` or ``~/.cache/inspection-station``."""
    return Path(os.environ.get("STATION_CACHE", Path.home() / ".cache" / "inspection-station"))


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def load_engine(weights: str | Path, backend: str = "onnxruntime", threads: int = 0, device: str = "cpu",
                precision: str = "fp32", mode: str = "batch") -> Engine:
    """An engine for shipped or trained weights, or a built engine folder, loaded by its manifest.

    ``weights`` naming an engine folder (``engines build --out DIR``) opens that folder; its backend and precision
    must then agree with ``backend`` and ``precision``. Weights are built once into an engine folder in the cache
    (:func:`cache_dir`), reused while its manifest matches, rebuilt when it does not. ``threads=0`` uses every core
    this process may run on."""
    from engines.build import engine_for_weights

    return engine_for_weights(weights, backend=backend, threads=threads, device=device, precision=precision,
                              mode=mode)
