"""torch backend: the reference (CPU, or CUDA when present)."""
from __future__ import annotations

import numpy as np

from engines.backends.base import Engine


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, module, model: str, weights_sha256: str, spec, tile: int, device: str) -> None:
        super().__init__(model, weights_sha256, spec, tile)
        self.module = module
        self.device = device

    @classmethod
    def from_bundle(cls, bundle, threads: int, device: str = "cpu") -> "TorchEngine":
        import torch

        from engines.export import inference_module
        from engines.weights import load_model

        if device.startswith("cuda") and not torch.cuda.is_available():
            from engines.errors import BackendUnavailable

            raise BackendUnavailable("torch sees no CUDA device here; use --device cpu or the onnxruntime backend")
        if device == "cpu":
            torch.set_num_threads(threads)
        module = inference_module(load_model(bundle)).to(device)
        return cls(module, bundle.model, bundle.sha256(), bundle.input_spec(), bundle.tile, device)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        self.check_batch(batch)
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
