"""ONNX export for inference: principal head only, softmax inside the graph, dynamic batch, fixed tile size."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "tiles", "probabilities"


def inference_module(model):
    """Wrap a network so it returns class probabilities ``(N, K, H, W)`` (eval mode, no auxiliary heads)."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net.eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).softmax(dim=1)

    return Probabilities(model).eval()


def export_onnx(bundle, out: Path, tile: int | None = None, opset: int = OPSET) -> Path:
    """Export ``bundle`` (a :class:`engines.weights.WeightsBundle`) to ``out`` and check the graph with
    ``onnx.checker`` and shape inference. The batch dimension is dynamic; the tile side is fixed."""
    import onnx
    import torch

    from engines.weights import load_model

    tile = tile or bundle.tile
    if tile % 32:
        raise ValueError(f"tile {tile} is not a multiple of 32 (the backbone's stride); try {tile - tile % 32 or 32}")
    module = inference_module(load_model(bundle))
    channels = bundle.input_spec().channels
    example = torch.zeros(2, channels, tile, tile)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that the relative-position index tables become constants: that is the intent.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    graph = onnx.load(str(tmp))
    onnx.checker.check_model(graph, full_check=True)
    onnx.shape_inference.infer_shapes(graph, strict_mode=True)
    tmp.replace(out)
    log.info("exported %s (tile %d, opset %d)", out, tile, opset)
    return out
