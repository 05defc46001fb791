"""The INT8 recipe for ONNX Runtime: which tiles calibrate, which operators stay in floating point, and how far
each layer of an INT8 graph drifts from the fp32 one.

* **Calibration tiles** are real tiles cut by the station's tiler (:mod:`inspection_core.tiling`) and prepared by
  its pre-processing (:mod:`inspection_core.preprocess`). From a data folder with masks (e.g. magnetic-tile), the
  tiles are a mix of defect and defect-free tiles (:data:`DEFECT_SHARE`): activations seen only on defects (the
  high scores the verdict depends on) set the quantisation ranges too. Other sources (a calibration profile's int8
  set, a plain folder) give their images' tiles as they come.
* **Exclusions** keep operator groups in floating point (:data:`GROUPS`, found by node name in the exported graph):
  BFFN's self-attention, its sigmoid gates, its final classifier and the backbone's entry convolutions (the stem
  and the strided shortcuts, which layer sensitivity ranks first). Which groups stay float by default
  (:data:`DEFAULT_EXCLUDE`) was measured group by group on the shipped weights (docs/INT8.md).
* **The guard** (:func:`peak_drift`, :func:`guard_for`): how far a tile's highest int8 score can drift from the fp32
  one, and from it the scores below which a guarded engine keeps int8's result
  (:class:`engines.backends.onnxruntime_backend.Int8Guard`).
* **Layer sensitivity** (:func:`layer_sensitivity`) runs the fp32 and the INT8 graph on the same tiles with every
  node's output exposed, and reports each node's relative error and the error it adds to its inputs' error: the
  layers to exclude when an INT8 build is refused.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from engines.data.segmentation import DatasetError, load_dataset, spread
from engines.errors import InputError
from engines.export import INPUT_NAME
from engines.inputs import batches, network_inputs
from engines.int8_sets import calibration_images
from inspection_core.preprocess import defect_scores, normalize_tiles, prepare_image
from inspection_core.tiling import plan_tiles, tile_image

#: Share of defect tiles among the calibration tiles when the calibration folder has masks.
DEFECT_SHARE = 0.5
#: Tile overlap when cutting calibration tiles (the shipped recipe's; more tiles from few images).
CALIBRATION_OVERLAP = 32

#: Operator groups that may stay in floating point, as regular expressions over the exported graph's node names
#: (torch module paths) and operator types ``"Op:/path"``.
GROUPS: dict[str, str] = {
    "attention": r"^[A-Za-z]+:.*/attn/(?!qkv/)",                         # scores, softmax, weighted sum (not qkv conv)
    "gates": r"^(Sigmoid:.*|Mul:.*/fusion/.*|Conv:.*/(high_guide|low_guide)\.1/.*|Conv:.*/se\.3/.*)$",
    "classifier": r"^(Conv:.*/classifier/.*|Resize:/net/Resize_1|Softmax:/Softmax)$",
    # the backbone's first convolution and its strided shortcuts: the layers that add most error (sensitivity)
    "entry_convs": r"^Conv:/net/(stem/stem\.0|layer\d/layer\d\.0/downsample/downsample\.0)/Conv$",
}
#: The groups kept in floating point unless told otherwise (measured: docs/INT8.md). With the guard (the default
#: for segmentation engines) the fp32 graph scores every tile near the threshold, so what these groups still buy is a
#: smaller drift, hence a smaller guard margin; ``entry_convs`` halves the drift again but costs a tenth of the speed.
DEFAULT_EXCLUDE: tuple[str, ...] = ("attention", "gates", "classifier")

#: Operators whose outputs carry no activations worth comparing (shapes, indices, constants).
_SHAPE_OPS = {"Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Cast", "Slice", "Concat", "Reshape", "Split",
              "Transpose", "QuantizeLinear", "DequantizeLinear"}


# ------------------------------------------------------------------------------------------------ calibration tiles

def _tiles(image: np.ndarray, spec, tile: int) -> np.ndarray:
    prepared = prepare_image(image, spec)
    return tile_image(prepared, plan_tiles(prepared.shape[:2], tile, CALIBRATION_OVERLAP))


def calibration_tiles(calibration: str, count: int, kind: str, tile: int, spec, limit: int) -> tuple[np.ndarray, dict]:
    """Normalised calibration inputs from ``count`` images of ``calibration`` and where they came from. A data
    folder with masks gives ``limit`` tiles, :data:`DEFECT_SHARE` of them with defect pixels; other sources give
    their images' tiles (or resized images for classifiers), at most ``limit``."""
    if kind == "segmentation" and Path(calibration).is_dir():
        try:
            samples = load_dataset(calibration)
        except DatasetError:
            samples = []
        if samples and any(s.mask.any() for s in samples):
            x, info = _mixed_tiles(samples, count, spec, tile, limit)
            return x, {"source": calibration, **info}
    x = network_inputs(calibration_images(calibration, count), kind, tile, spec, limit=limit)
    return x, {"source": calibration, "inputs": int(len(x)), "defect_tiles": None}


def _mixed_tiles(samples, count: int, spec, tile: int, limit: int) -> tuple[np.ndarray, dict]:
    defective = [s for s in samples if s.mask.any()]
    clean = [s for s in samples if not s.mask.any()]
    half = max(1, count // 2)
    picked = [defective[i] for i in spread(len(defective), half)] + \
             [clean[i] for i in spread(len(clean), max(count - half, 1))] if clean else \
             [defective[i] for i in spread(len(defective), count)]
    defect_tiles, clean_tiles = [], []
    for s in picked:
        tiles = _tiles(s.image, spec, tile)
        masks = tile_image(s.mask.astype(np.uint8), plan_tiles(s.mask.shape[:2], tile, CALIBRATION_OVERLAP))
        hit = masks.reshape(len(masks), -1).any(axis=1)
        defect_tiles.extend(tiles[hit])
        clean_tiles.extend(tiles[~hit])
    want_defect = min(len(defect_tiles), int(round(limit * DEFECT_SHARE)))
    want_clean = min(len(clean_tiles), limit - want_defect)
    chosen = [defect_tiles[i] for i in spread(len(defect_tiles), want_defect)][:want_defect] + \
             [clean_tiles[i] for i in spread(len(clean_tiles), want_clean)][:want_clean]
    x = normalize_tiles(np.stack(chosen), spec)
    return x, {"images": len(picked), "inputs": int(len(x)), "defect_tiles": int(want_defect)}


# ------------------------------------------------------------------------------------------------ exclusions

def _key(node) -> str:
    return f"{node.op_type}:{node.name}"


def group_nodes(model_path: str | Path, groups) -> dict[str, list[str]]:
    """The node names of each of ``groups`` (names of :data:`GROUPS`) in the ONNX graph at ``model_path``."""
    import onnx

    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InputError(f"unknown int8 exclusion group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    nodes = onnx.load(str(model_path), load_external_data=False).graph.node
    return {g: [n.name for n in nodes if re.search(GROUPS[g], _key(n))] for g in groups}


def quantize(src: Path, dst: Path, inputs: np.ndarray, batch: int, exclude: list[str], method: str = "minmax") -> None:
    """Static int8 quantisation of ``src`` into ``dst``: QDQ, per-channel int8 weights, uint8 activations
    calibrated on ``inputs`` (``method``: ``"minmax"``, or ``"percentile"``: the 99.999th percentile of each
    activation's magnitude); the nodes named in ``exclude`` stay in floating point."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches(inputs, batch))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {INPUT_NAME: x}

    prepared = dst.with_name(dst.stem + ".prep.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(exclude),
                        calibrate_method=CalibrationMethod.Percentile if method == "percentile" else
                        CalibrationMethod.MinMax, extra_options={"CalibPercentile": 99.999})
    finally:
        prepared.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ the guard

#: The smallest distance between the decision threshold and the int8 scores a guarded engine keeps.
MIN_GUARD_MARGIN = 0.1


def _cpu_session(model: str | Path | bytes, threads: int):
    """An ONNX Runtime CPU session on ``model`` (a file or serialised bytes) with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def peak_drift(fp32_path: str | Path, int8_path: str | Path, inputs: np.ndarray, threads: int = 1,
               batch: int = 16) -> float:
    """The largest difference, over ``inputs``, between a tile's highest defect score in the int8 graph and in
    the fp32 graph: how far the int8 graph can misjudge whether a tile holds anything."""
    sessions = [_cpu_session(p, threads) for p in (fp32_path, int8_path)]
    worst = 0.0
    for x in batches(inputs, batch):
        a, b = (defect_scores(s.run(None, {INPUT_NAME: x})[0]).reshape(len(x), -1).max(axis=1) for s in sessions)
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def guard_for(threshold: float, drift: float) -> dict[str, float]:
    """The guard of an int8 engine judged at ``threshold`` whose tile peaks drifted up to ``drift``: int8 scores
    are kept only ``margin`` (twice the drift, at least :data:`MIN_GUARD_MARGIN`, in steps of 0.05) below it."""
    margin = max(MIN_GUARD_MARGIN, float(np.ceil(2 * drift / 0.05 - 1e-9)) * 0.05)
    return {"below": round(max(threshold - margin, 0.0), 4), "threshold": threshold, "margin": round(margin, 4),
            "drift_max": round(drift, 5)}


# ------------------------------------------------------------------------------------------------ layer sensitivity

def _exposed(model_path: Path, names: list[str]):
    import onnx

    model = onnx.load(str(model_path))
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString()


def layer_sensitivity(fp32_path: str | Path, int8_path: str | Path, inputs: np.ndarray, threads: int = 1,
                      batch: int = 16) -> list[dict[str, Any]]:
    """Each compute node's drift in the INT8 graph against the fp32 graph on the same ``inputs``: ``rel_error``
    (‖int8 − fp32‖ / ‖fp32‖ of its output) and ``added`` (its relative error less the largest of its inputs',
    i.e. what the node itself adds), sorted by ``added``, largest first. Nodes kept in floating point show the
    error they receive, not add."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    q_graph = onnx.load(str(int8_path), load_external_data=False).graph
    q_outputs = {o for n in q_graph.node for o in n.output}
    # what the INT8 graph's consumers read for a tensor: its Q/DQ round trip where it has one (a Relu folded into
    # the quantisation leaves its output name on the raw convolution, clamped only by the quantisation)
    quantized_as = {n.input[0]: n.output[0] for n in q_graph.node if n.op_type == "QuantizeLinear"}
    read_as = {t: n.output[0] for n in q_graph.node if n.op_type == "DequantizeLinear"
               for t, q in quantized_as.items() if q == n.input[0]}
    nodes = [n for n in graph.node if n.op_type not in _SHAPE_OPS and n.output and n.output[0] in q_outputs]
    names = [n.output[0] for n in nodes]
    q_names = [read_as.get(name, name) for name in names]
    sums = {name: [0.0, 0.0] for name in names}
    sessions = [_cpu_session(_exposed(Path(p), exposed), threads)
                for p, exposed in ((fp32_path, names), (int8_path, q_names))]
    for x in batches(inputs, batch):
        want = dict(zip(names, sessions[0].run(names, {INPUT_NAME: x})))
        got = dict(zip(names, sessions[1].run(q_names, {INPUT_NAME: x})))
        for name in names:
            w = want[name].astype(np.float64)
            sums[name][0] += float(((got[name] - w) ** 2).sum())
            sums[name][1] += float((w ** 2).sum())
    rel = {name: (d / max(r, 1e-30)) ** 0.5 for name, (d, r) in sums.items()}
    producer = {o: n for n in graph.node for o in n.output}

    def carried(tensor: str, depth: int = 0) -> float:  # error reaching a tensor through shape-only nodes
        if tensor in rel:
            return rel[tensor]
        node = producer.get(tensor)
        if node is None or depth > 50:
            return 0.0
        return max((carried(i, depth + 1) for i in node.input), default=0.0)

    # int8: a convolution's weights are quantised; another node's output is quantised (ORT then runs it as an
    # integer kernel); or the node was folded into the quantisation (a Relu after a convolution)
    dequantized = {o for n in q_graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    in_q = {n.name for n in q_graph.node}
    quantized = {n.name for n in q_graph.node if (n.input[1] in dequantized if n.op_type in ("Conv", "Gemm")
                                                 else bool(n.output) and n.output[0] in quantized_as)}
    quantized |= {n.name for n in nodes if n.name not in in_q}
    rows = []
    for node, name in zip(nodes, names):
        label, op, feeding = node.name, node.op_type, node.input
        source = producer.get(node.input[0]) if node.input else None
        if source is not None and node.input[0] not in q_outputs:  # folded into the node before (Conv+Relu)
            label, op, feeding = source.name, f"{source.op_type}+{node.op_type}", source.input
        before = max((carried(i) for i in feeding), default=0.0)
        rows.append({"node": label, "op": op, "rel_error": round(rel[name], 5),
                     "added": round(rel[name] - before, 5), "quantized": node.name in quantized})
    return sorted(rows, key=lambda r: -r["added"])


def top_layers(rows: list[dict[str, Any]], n: int = 3) -> str:
    """The first ``n`` quantised layers of :func:`layer_sensitivity`'s ``rows`` (those that can still be kept in
    floating point), in words."""
    quantized = [r for r in rows if r["quantized"]] or rows
    return ", ".join(f"{r['node']} ({r['op']}, adds {r['added']:.3f}, relative error {r['rel_error']:.3f})"
                     for r in quantized[:n])
