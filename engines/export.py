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

An export written *into its weights folder* (``weights_beside=True``: what shipped weights carry, for a station
without torch, :mod:`engines.weights_onnx`) holds the graph only: each parameter is an ONNX external-data reference
to its bytes inside ``model.safetensors`` beside it (float16 weights are cast to float32 in the graph, exactly as
torch loads them), so the export costs kilobytes, not a second copy of the weights. Such a graph keeps batch
normalisation as its own operator (the exporter's folding would compute new float32 weights); ONNX Runtime folds it
when it loads the graph.
"""
from __future__ import annotations

import json
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
                tensorrt_check: bool = True, with_weights: bool = True, weights_beside: bool = False) -> Path:
    """Export ``bundle`` (a :class:`engines.weights.WeightsBundle`) to ``out``; check the graph with
    ``onnx.checker``, shape inference and (``tensorrt_check``) TensorRT's ONNX operator list. The batch dimension
    is dynamic; the tile side is fixed, one the registry says the network's export takes (segmentation: a
    multiple of 32; VGG-16: 224·k). ``mode`` applies to networks with scoring modes (GR) only.
    ``with_weights=False`` writes the graph alone (weights become graph inputs): the same operators, checked
    cheaply, for networks as large as VGG-16 (a 0.5 GB export). ``weights_beside=True`` (``out`` must then be in
    the weights folder) makes the parameters references into the folder's ``model.safetensors`` (see the module's
    docstring)."""
    import torch

    if weights_beside and Path(out).resolve().parent != bundle.path.resolve():
        raise InputError(f"an export that reads its weights from {bundle.weights_file.name} must be written into "
                         f"the weights folder {bundle.path}, not {Path(out).parent}")

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
            # Weights read from the safetensors file must stay the tensors it holds: no folding of batch
            # normalisation into the convolutions (PRESERVE keeps the eval-mode graph as it is) and no constant
            # folding, which would bake new float32 tensors into the file.
            beside = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False} \
                if weights_beside else {}
            torch.onnx.export(module, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=opset, dynamo=False, export_params=with_weights, **beside)
        except torch.onnx.errors.OnnxExporterError as exc:
            tmp.unlink(missing_ok=True)
            raise EngineError(f"{bundle.model} cannot be exported to ONNX at {tile} px: "
                              f"{str(exc).splitlines()[0]}") from None
    try:
        if weights_beside:
            point_at_safetensors(tmp, bundle.weights_file)
        _check(tmp, tensorrt_check)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    log.info("exported %s (%s, tile %d, opset %d)", out, kind, tile, opset)
    return out


def _check(path: Path, tensorrt: bool) -> dict:
    return check_onnx(path, tensorrt=tensorrt)


#: safetensors dtypes an ONNX initializer can read as they are (float16 is cast to float32 in the graph).
_SAFETENSORS_DTYPES = {"F16": "FLOAT16", "F32": "FLOAT"}


def safetensors_index(path: Path) -> dict[str, dict]:
    """Each tensor of a safetensors file: ``{"dtype", "shape", "offset", "length"}`` with the offset counted from
    the start of the file (the format: an 8-byte little-endian header length, a JSON header, then the data)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    start = 8 + size
    return {name: {"dtype": entry["dtype"], "shape": list(entry["shape"]), "offset": start + entry["data_offsets"][0],
                   "length": entry["data_offsets"][1] - entry["data_offsets"][0]}
            for name, entry in header.items() if name != "__metadata__"}


def point_at_safetensors(onnx_path: Path, weights_file: Path, prefix: str = "net.") -> dict[str, int]:
    """Rewrite the ONNX file at ``onnx_path`` so that every float32 initializer equal to a tensor of
    ``weights_file`` (named as in the state dict, after ``prefix``, the inference wrapper's attribute) reads that
    tensor's bytes from the file (ONNX external data: location, offset, length; the file must sit beside the
    graph), through a ``Cast`` to float32 where it is stored as float16. Float16 → float32 is exact, so the graph
    computes with the very values torch loads. Returns ``{"referenced", "embedded_bytes"}``: how many initializers
    now point into the weights file, and the bytes still stored in the graph (tensors the exporter made itself)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    index = safetensors_index(weights_file)
    with open(weights_file, "rb") as handle:
        raw = handle.read()
    kept, casts, referenced, embedded = [], [], 0, 0
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        name = init.name[len(prefix):] if init.name.startswith(prefix) else init.name
        entry = index.get(name)
        stored = None
        if entry is not None and array.dtype == np.float32 and entry["dtype"] in _SAFETENSORS_DTYPES \
                and entry["shape"] == list(array.shape):
            dtype = np.float16 if entry["dtype"] == "F16" else np.float32
            stored = np.frombuffer(raw, dtype=dtype, count=int(np.prod(array.shape, dtype=np.int64)),
                                   offset=entry["offset"]).reshape(array.shape)
            if not np.array_equal(stored.astype(np.float32), array):
                stored = None  # the graph holds other values under this name: keep them in the graph
        if stored is None:
            kept.append(init)
            embedded += array.nbytes
            continue
        ref = onnx.TensorProto()
        ref.name = init.name + ("::float16" if entry["dtype"] == "F16" else "")
        ref.dims.extend(array.shape)
        ref.data_type = getattr(onnx.TensorProto, _SAFETENSORS_DTYPES[entry["dtype"]])
        ref.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", weights_file.name), ("offset", str(entry["offset"])),
                           ("length", str(entry["length"]))):
            item = ref.external_data.add()
            item.key, item.value = key, value
        kept.append(ref)
        referenced += 1
        if entry["dtype"] == "F16":
            casts.append(helper.make_node("Cast", [ref.name], [init.name], to=onnx.TensorProto.FLOAT,
                                          name=f"{init.name}::to_float32"))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(casts + nodes)
    onnx.save(model, str(onnx_path))
    return {"referenced": referenced, "embedded_bytes": int(embedded)}
