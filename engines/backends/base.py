"""How engines are loaded by name: :func:`load_engine`, over the engine folders of :mod:`engines.folders`
(built by :mod:`engines.build`, cached by :mod:`engines.cache`).

The interface every backend implements, :class:`~inspection_core.engine.Engine`, lives in the bottom layer
(:mod:`inspection_core.engine`) so that inspectors depend on it without depending on the engines package. The
backends are declared in :mod:`engines.backends.registry`; the engine cache and the default thread count are in
:mod:`engines.backends.common` (all re-exported here).
"""
from __future__ import annotations

from pathlib import Path

from engines.backends.common import cache_dir, default_threads
from engines.backends.registry import BACKENDS
from engines.cache import engine_for_weights
from inspection_core.engine import Engine

__all__ = ["BACKENDS", "Engine", "cache_dir", "default_threads", "load_engine"]


def load_engine(weights: str | Path, backend: str = "onnxruntime", threads: int = 0, device: str = "cpu",
                precision: str = "fp32", mode: str = "batch") -> Engine:
    """An engine for shipped or trained weights, or a built engine folder, loaded by its manifest.

    ``weights`` naming an engine folder (``engines build --out DIR``) opens that folder; its backend and precision
    must then agree with ``backend`` and ``precision``. Weights are built once into an engine folder in the cache
    (:func:`cache_dir`), reused while its manifest matches, rebuilt when it does not. ``threads=0`` uses every core
    this process may run on."""
    return engine_for_weights(weights, backend=backend, threads=threads, device=device, precision=precision,
                              mode=mode)
