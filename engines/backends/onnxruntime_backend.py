"""ONNX Runtime backend: the embedded default, CPU everywhere."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engines.backends.base import Engine, cache_dir
from engines.errors import BackendUnavailable, EngineError

log = logging.getLogger(__name__)


def onnx_path_for(bundle, tile: int) -> Path:
    """The cached ONNX export of ``bundle`` (exported on first use, keyed by the weights' SHA-256)."""
    return cache_dir() / "onnx" / f"{bundle.model}-{bundle.sha256()[:16]}-t{tile}.onnx"


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, onnx_file: Path, model: str, weights_sha256: str, spec, tile: int, threads: int) -> None:
        super().__init__(model, weights_sha256, spec, tile)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise EngineError(f"ONNX Runtime cannot load {onnx_file}: {exc}. Delete it to have it exported again.") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.onnx_file = onnx_file
        self.threads = threads

    @classmethod
    def from_bundle(cls, bundle, threads: int, tile: int | None = None) -> "OnnxRuntimeEngine":
        tile = tile or bundle.tile
        path = onnx_path_for(bundle, tile)
        if not path.exists():
            from engines.export import export_onnx

            log.info("exporting %s to %s (first use of these weights)", bundle.path, path)
            export_onnx(bundle, path, tile=tile)
        return cls(path, bundle.model, bundle.sha256(), bundle.input_spec(), tile, threads)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        return self.session.run(None, {self.input_name: batch})[0]
