"""ONNX export for inference, for every network in the registry: principal head only, the output activation inside
the graph, dynamic batch, fixed tile (or patch) side.

* Segmentation networks (BFFN and its baselines) map ``tiles (N, C, t, t)`` to class ``probabilities (N, K, t, t)``
  (softmax over classes; the auxiliary heads are left out).
* Multi-label classifiers (GR and its baselines) map ``tiles (N, C, s, s)`` to per-label ``probabilities (N, K)``
  (sigmoid). GR is exported in one of its two scoring modes: ``"batch"`` (image-wise relations span the batch the
  engine is given, so the station feeds the patches of one part together) or ``"bank"`` (relations span the
  reference bank stored with the weights, so every patch is scored alone and deterministically).

Every export is checked with ``onnx.checker`` and strict shape inference, and its operators against the list
TensorRT's ONNX parser supports (:mod:`engines.onnx_check`), so an ONNX file that TensorRT would refuse is caught
on the machine that exports it, not on the GPU station.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

from engines.errors import EngineError, InputError
from engines.models import SCORING_MODES, Task, has_bank, has_relations, model_spec
from engines.onnx_check import check_onnx
from engines.weights import load_model

log = logging.getLogger(__name__)
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "tiles", "probabilities"
SEGMENTATION, CLASSIFICATION = Task.SEGMENTATION.value, Task.CLASSIFICATION.value


def inference_module(model, kind: str = SEGMENTATION, mode: str = "batch"):
    """Wrap a network so it returns probabilities (eval mode, no auxiliary heads): softmax over classes for a
    segmentation network, sigmoid per label for a classifier (GR scored over the batch or against its bank)."""
    import torch

    if kind == CLASSIFICATION:
        if mode not in SCORING_MODES:  # a classifier without image-wise relations scores the same in both
            raise InputError(f"mode must be one of {', '.join(SCORING_MODES)}, got {mode!r}")
        use_bank = mode == "bank" and has_relations(model)
        if use_bank and not has_bank(model):
            raise InputError("mode 'bank' needs the reference bank stored with GR weights (engines train gr stores "
                             "one); build with --mode batch")

        class LabelProbabilities(torch.nn.Module):
            def __init__(self, net: torch.nn.Module) -> None:
                super().__init__()
                self.net = net.eval()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                logits = self.net(x, reference=self.net.reference_bank) if use_bank else self.net(x)
                return torch.sigmoid(logits)

        return LabelProbabilities(model).eval()

    class Probabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net.eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).softmax(dim=1)

    return Probabilities(model).eval()


def check_export_side(model_name: str, tile: int) -> None:
    """Refuse, before anything is exported, a side the network (``ValueError``) or its ONNX export
    (:class:`EngineError`) cannot take, naming the sides that would work (the registry's capabilities)."""
    spec = model_spec(model_name)
    spec.check_side(tile)
    sides = spec.onnx_sides
    if not sides.accepts(tile):
        raise EngineError(f"{model_name} cannot be exported to ONNX at {tile} px ({sides.why or sides.describe()}); "
                          f"try {' or '.join(map(str, sides.nearest(tile)))}")


def export_onnx(bundle, out: Path, tile: int | None = None, opset: int = OPSET, mode: str = "batch",
                tensorrt_check: bool = True, with_weights: bool = True) -> Path:
    """Export ``bundle`` (a :class:`engines.weights.WeightsBundle`) to ``out``; check the graph with
    ``onnx.checker``, shape inference and (``tensorrt_check``) TensorRT's ONNX operator list. The batch dimension
    is dynamic; the tile side is fixed, one the registry says the network's export takes (segmentation: a
    multiple of 32; VGG-16: 224·k). ``mode`` applies to networks with scoring modes (GR) only.
    ``with_weights=False`` writes the graph alone (weights become graph inputs): the same operators, checked
    cheaply, for networks as large as VGG-16 (a 0.5 GB export)."""
    import torch

    kind = model_spec(bundle.model).task.value
    tile = tile or bundle.tile
    check_export_side(bundle.model, tile)
    module = inference_module(load_model(bundle), kind, mode)
    channels = bundle.input_spec().channels
    example = torch.zeros(2, channels, tile, tile)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that the relative-position index tables become constants: that is the intent.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(module, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=opset, dynamo=False, export_params=with_weights)
        except torch.onnx.errors.OnnxExporterError as exc:
            tmp.unlink(missing_ok=True)
            raise EngineError(f"{bundle.model} cannot be exported to ONNX at {tile} px: "
                              f"{str(exc).splitlines()[0]}") from None
    try:
        _check(tmp, tensorrt_check)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    log.info("exported %s (%s, tile %d, opset %d)", out, kind, tile, opset)
    return out


def _check(path: Path, tensorrt: bool) -> dict:
    return check_onnx(path, tensorrt=tensorrt)
