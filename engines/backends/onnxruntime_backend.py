"""ONNX Runtime backend: the embedded default, CPU everywhere; the CUDA execution provider where it is present.

An int8 segmentation engine may carry a **guard** (:class:`Int8Guard`, written by ``engines build``): the int8
graph scores every tile, and only the tiles it finds clearly empty (every pixel's defect score below
``Int8Guard.below``, well under the decision threshold) keep its scores; every other tile is scored again by the
fp32 graph in the same folder. The int8 graph then decides nothing but "this tile holds nothing", where its
drift cannot change a verdict; tiles that could hold a defect get the fp32 scores, to the bit.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.errors import BackendUnavailable, EngineError
from inspection_core.engine import Engine
from inspection_core.preprocess import defect_scores

log = logging.getLogger(__name__)


def providers_for(device: str) -> list[str]:
    """The execution providers for ``device`` ("cpu" or "cuda[:N]"), or :class:`BackendUnavailable`."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from exc
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("this onnxruntime has no CUDA execution provider (providers: "
                                     f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use "
                                     "--device cpu")
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass(frozen=True)
class Int8Guard:
    """Which tiles an int8 segmentation engine may score alone: those whose highest defect score is below
    ``below``; the others are scored by ``fallback`` (the fp32 graph). ``below`` is the decision threshold the
    engine was built for (``threshold``) less ``margin``, at least twice the largest drift of a tile's highest
    score measured between the two graphs at build."""

    fallback: Path
    below: float
    threshold: float
    margin: float

    def problem(self, threshold: float) -> str | None:
        """Why decisions at ``threshold`` cannot trust this guard, or None: the int8 scores it keeps must stay
        ``margin`` below the threshold."""
        if threshold - self.below >= self.margin - 1e-9:
            return None
        return (f"its int8 guard keeps int8 scores below {self.below:.2f}, built for a decision threshold of "
                f"{self.threshold:.2f} (margin {self.margin:.2f}); at a threshold of {threshold:.2f} the int8 drift "
                "could change verdicts. Rebuild it with `engines build --precision int8 --recipe RECIPE` for this "
                "recipe's rules, or use fp32")


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, onnx_file: Path, model: str, weights_sha256: str, spec, tile: int, threads: int,
                 precision: str = "fp32", device: str = "cpu", kind: str = "segmentation",
                 guard: Int8Guard | None = None) -> None:
        super().__init__(model, weights_sha256, spec, tile, precision, kind=kind)
        self.providers = providers_for(device)  # BackendUnavailable, saying what to install, before any import
        self.threads = threads
        self.device = device
        self.session = self._open(onnx_file)
        self.input_name = self.session.get_inputs()[0].name
        self.onnx_file = Path(onnx_file)
        self.guard = guard
        self.fallback = self._open(guard.fallback) if guard is not None else None
        self.tiles_scored = 0  # tiles through infer, and those the guard sent to the fp32 graph
        self.tiles_rescored = 0

    def _open(self, onnx_file: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(str(onnx_file), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise EngineError(f"ONNX Runtime cannot load {onnx_file}: {exc}. Rebuild it with `engines build`.") from exc

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        out = self.session.run(None, {self.input_name: batch})[0]
        if self.fallback is not None:
            peak = defect_scores(out).reshape(len(out), -1).max(axis=1)
            doubtful = np.flatnonzero(peak >= self.guard.below)
            self.tiles_scored += len(out)
            self.tiles_rescored += len(doubtful)
            if len(doubtful):
                out[doubtful] = self.fallback.run(None, {self.input_name: batch[doubtful]})[0]
        return out

    @property
    def engine_id(self) -> str:
        """``bffn-1a2b3c4d@onnxruntime-int8``, with ``-guarded`` when an :class:`Int8Guard` is on (the reject log
        and the panel say which arithmetic judged the part)."""
        return super().engine_id + ("-guarded" if self.guard is not None else "")

    def threshold_problem(self, threshold: float) -> str | None:
        return self.guard.problem(threshold) if self.guard is not None else None

    def guard_share(self) -> float | None:
        if self.guard is None:
            return None
        return self.tiles_rescored / self.tiles_scored if self.tiles_scored else 0.0

    def close(self) -> None:
        self.session = None
        self.fallback = None
