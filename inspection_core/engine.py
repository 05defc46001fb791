"""The one interface every inference engine (runner) implements, whatever its backend.

An engine maps a normalised batch ``(N, C, t, t)`` float32 (:func:`inspection_core.preprocess.normalize_tiles`)
to probabilities. How engines are built and loaded (ONNX Runtime, torch, TensorRT, manifests) lives above, in
:mod:`engines.backends` and :mod:`engines.folders`; this module holds only the contract the inspectors rely on.
"""
from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from inspection_core.preprocess import InputSpec


def weights_of(engine_id: str) -> str:
    """The weights part of an :attr:`Engine.engine_id` (``bffn-1a2b3c4d`` of ``bffn-1a2b3c4d@onnxruntime-fp32``):
    two engines with the same weights on other backends or precisions judge with the same network.

    >>> weights_of("bffn-1a2b3c4d@onnxruntime-fp32"), weights_of("bffn-1a2b3c4d")
    ('bffn-1a2b3c4d', 'bffn-1a2b3c4d')
    """
    return str(engine_id).partition("@")[0]


class Engine(abc.ABC):
    """A loaded network that maps a normalised batch ``(N, C, t, t)`` float32 to probabilities, float32: per class
    and pixel ``(N, K, t, t)`` for a segmentation network, per label ``(N, K)`` for a multi-label classifier.
    Pre- and post-processing live in :mod:`inspection_core.preprocess`, shared by all backends.

    ``manifest`` and ``folder`` are set when the engine was opened from a built engine folder
    (:func:`engines.folders.open_engine`)."""

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

    def threshold_problem(self, threshold: float) -> str | None:
        """Why this engine's scores cannot be judged at the decision ``threshold``, or None (an int8 engine's guard
        is built for one threshold: :class:`engines.backends.onnxruntime_backend.Int8Guard`)."""
        return None

    def guard_share(self) -> float | None:
        """The share of tiles an int8 engine's guard sent to its fp32 graph so far; None for engines without one."""
        return None

    def close(self) -> None:
        """Release sessions and device memory."""
