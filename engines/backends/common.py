"""What the backends and the engine builder share: the engine cache folder, default threads (the backends
themselves are declared in :mod:`engines.backends.registry`)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where exported ONNX files and built engines are kept: ``$STATION_CACHE`` or ``~/.cache/inspection-station``."""
    return Path(os.environ.get("STATION_CACHE", Path.home() / ".cache" / "inspection-station"))


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
