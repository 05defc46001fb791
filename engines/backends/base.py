"""The one interface every inference backend implements, and how engines are loaded by name."""
from __future__ import annotations

import abc
import os
from pathlib import Path

import numpy as np

from engines.preprocess import InputSpec

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def cache_dir() -> Path:
    """Where exported ONNX files and built engines are kept: ``$STATION_CACHE`` or ``~/.cache/inspection-station``."""
    return Path(os.environ.get("STATION_CACHE", Path.home() / ".cache" / "inspection-station"))


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Engine(abc.ABC):
    """A loaded network that maps a normalised batch ``(N, C, t, t)`` float32 to probabilities, float32: per class
    and pixel ``(N, K, t, t)`` for a segmentation network, per label ``(N, K)`` for a multi-label classifier.
    Pre- and post-processing live in :mod:`engines.preprocess`, shared by all backends.

    ``manifest`` and ``folder`` are set when the engine was opened from a built engine folder
    (:func:`engines.build.open_engine`)."""

    backend: str = ""

    def __init__(self, model: str, weights_sha256: str, spec: InputSpec, tile: int, precision: str = "fp32",
                 kind: str = "segmentation") -> None:
        self.model = model
        self.weights_sha256 = weights_sha256
        self.spec = spec
        self.tile = tile
        self.precision = precision
        self.kind = kind
        self.manifest: dict | None = None
        self.folder: Path | None = None

    @property
    def engine_id(self) -> str:
        """Short, stable name of what is running: ``bffn-1a2b3c4d@onnxruntime-fp32``."""
        return f"{self.model}-{self.weights_sha256[:8]}@{self.backend}-{self.precision}"

    def check_batch(self, batch: np.ndarray) -> None:
        expected = (self.spec.channels, self.tile, self.tile)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or batch.dtype != np.float32:
            raise ValueError(f"{self.engine_id} takes float32 batches of shape (N, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}), got {batch.dtype} {tuple(batch.shape)}; cut tiles of {self.tile} px")

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a normalised batch."""

    def close(self) -> None:
        """Release sessions and device memory."""


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
