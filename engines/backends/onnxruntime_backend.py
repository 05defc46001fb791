"""ONNX Runtime backend: the embedded default, CPU everywhere; the CUDA execution provider where it is present."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engines.errors import BackendUnavailable, EngineError
from inspection_core.engine import Engine

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


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, onnx_file: Path, model: str, weights_sha256: str, spec, tile: int, threads: int,
                 precision: str = "fp32", device: str = "cpu", kind: str = "segmentation") -> None:
        super().__init__(model, weights_sha256, spec, tile, precision, kind=kind)
        providers = providers_for(device)  # BackendUnavailable, saying what to install, before the import below
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_file), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise EngineError(f"ONNX Runtime cannot load {onnx_file}: {exc}. Rebuild it with `engines build`.") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.onnx_file = Path(onnx_file)
        self.threads = threads
        self.device = device

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        return self.session.run(None, {self.input_name: batch})[0]

    def close(self) -> None:
        self.session = None
