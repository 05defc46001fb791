"""torch backend: the reference (CPU, fp32) and the GPU path without TensorRT (CUDA, fp16, channels-last, CUDA
graphs for the fixed batch the station uses)."""
from __future__ import annotations

import logging

import numpy as np

from engines.errors import BackendUnavailable, EngineError
from engines.export import inference_module
from engines.models import model_kind
from engines.weights import load_model
from inspection_core.engine import Engine
from inspection_core.extras import missing_train_message

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16")


def check_available(device: str = "cpu") -> None:
    """The registry's availability check (:mod:`engines.backends.registry`): torch installed and, for ``cuda``, a
    CUDA device it sees; else :class:`BackendUnavailable` saying what to do."""
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable(missing_train_message("the torch backend") + " (or use the onnxruntime backend)") \
            from exc
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable("torch sees no CUDA device here; use --device cpu or the onnxruntime backend")


class TorchEngine(Engine):
    """``module`` maps a normalised float32 batch to probabilities (see :func:`engines.export.inference_module`).

    On CUDA the module runs in ``precision`` (fp16 halves weights and activations; inputs are cast on the device
    and outputs cast back to float32) with channels-last memory layout, and a batch of exactly ``graph_batch``
    tiles is replayed from a captured CUDA graph (captured on first use; other batch sizes run eagerly). On the
    CPU fp16 is accepted for parity checks only: it is correct but many times slower than fp32."""

    backend = "torch"

    def __init__(self, module, model: str, weights_sha256: str, spec, tile: int, device: str = "cpu",
                 precision: str = "fp32", graph_batch: int = 0, kind: str = "segmentation") -> None:
        import torch

        super().__init__(model, weights_sha256, spec, tile, precision, kind=kind)
        if precision not in PRECISIONS:
            raise EngineError(f"the torch backend runs {' or '.join(PRECISIONS)}, not {precision}; for int8 build "
                              "an onnxruntime or tensorrt engine")
        check_available(device)
        self.device = torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        module = module.eval().to(self.device, self.dtype)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.graph_batch = graph_batch if self.cuda else 0
        self._graph = None
        self._static_in = self._static_out = None

    @classmethod
    def from_bundle(cls, bundle, threads: int, device: str = "cpu", precision: str = "fp32", graph_batch: int = 0,
                    mode: str = "batch") -> "TorchEngine":
        import torch

        if device == "cpu" and threads:
            torch.set_num_threads(threads)
        kind = model_kind(bundle.model)
        module = inference_module(load_model(bundle), kind, mode)
        return cls(module, bundle.model, bundle.sha256(), bundle.input_spec(), bundle.tile, device, precision,
                   graph_batch, kind)

    def _to_device(self, batch: np.ndarray):
        import torch

        x = torch.from_numpy(batch).to(self.device, non_blocking=True).to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x

    def _capture(self, x) -> None:
        """Capture the module for ``x``'s shape into a CUDA graph (warm-up on a side stream first, as the CUDA
        graphs API requires)."""
        import torch

        self._static_in = x.clone()
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                self.module(self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            self._static_out = self.module(self._static_in)
        self._graph = graph
        log.info("%s: captured a CUDA graph for batches of %d", self.engine_id, x.shape[0])

    def infer_device(self, x):
        """Probabilities for a batch already on the device (in this engine's dtype and layout); the output is
        a new tensor on the device."""
        import torch

        if self.graph_batch and x.shape[0] == self.graph_batch:
            if self._graph is None:
                self._capture(x)
            self._static_in.copy_(x)
            self._graph.replay()
            return self._static_out.clone()
        with torch.inference_mode():
            return self.module(x)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        out = self.infer_device(self._to_device(batch))
        return out.float().cpu().numpy()

    def close(self) -> None:
        self._graph = self._static_in = self._static_out = None
