"""INT8 that keeps verdicts: calibration on real (defect and defect-free) tiles, operators kept in floating point,
layer sensitivity, and a build that refuses to write an engine that misses the int8 tolerances."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.build import BuildSettings, build
from engines.errors import EngineError
from engines.inputs import network_inputs, read_images
from engines.manifest import MANIFEST
from engines.quantize import calibration_tiles, group_nodes, layer_sensitivity
from inspection_core.preprocess import InputSpec

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "station" / "samples" / "magnetic-tile"  # real magnetic-tile frames, no masks
LENIENT = {"verdict_agreement": 0.0, "min_mask_iou": 0.0, "mean_mask_iou": 0.0, "mean_abs": 1.0}


def _settings(weights: Path, out: Path, **kw) -> BuildSettings:
    return BuildSettings(weights=str(weights), backend="onnxruntime", precision="int8", out=str(out),
                         batch=(1, 8, 8), calibration=str(SAMPLES), calibration_images=4, parity_images=2,
                         threads=1, **kw)


@pytest.fixture(scope="module")
def int8_folder(untrained_bffn, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8") / "bffn-int8"
    return out, build(_settings(untrained_bffn, out), tolerances=LENIENT)


def test_calibration_from_a_folder_with_masks_mixes_defect_and_clean_tiles(magnetic_tile, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for folder in ("MT_Crack", "MT_Free"):
        for image in sorted((magnetic_tile / folder).glob("*.jpg"))[:2]:
            shutil.copy(image, tmp_path / "images" / image.name)
            if folder != "MT_Free":
                shutil.copy(image.with_suffix(".png"), tmp_path / "masks" / f"{image.stem}.png")
    x, info = calibration_tiles(str(tmp_path), 4, "segmentation", 128, InputSpec(), limit=12)
    assert x.shape == (12, 1, 128, 128) and x.dtype == np.float32
    assert info["images"] == 4 and info["defect_tiles"] == 6 and info["source"] == str(tmp_path)
    plain, plain_info = calibration_tiles(str(SAMPLES), 2, "segmentation", 128, InputSpec(), limit=5)
    assert len(plain) == 5 and plain_info["defect_tiles"] is None, "no masks: the images' tiles as they come"


def test_accepted_int8_build_records_its_exclusions_and_inspector_parity(int8_folder):
    out, m = int8_folder
    assert json.loads((out / MANIFEST).read_text())["parity"] == json.loads(json.dumps(m["parity"]))
    excluded = m["int8_excluded"]
    assert excluded["groups"] == ["attention", "gates", "classifier", "entry_convs"]
    assert "/net/stem/stem.0/Conv" in excluded["nodes"]["entry_convs"]
    assert "/net/sam4/attn/Softmax" in excluded["nodes"]["attention"]
    assert {"/net/fusion/Sigmoid", "/net/fusion/se/se.4/Sigmoid"} <= set(excluded["nodes"]["gates"])
    assert excluded["nodes"]["classifier"] == ["/net/classifier/Conv", "/net/Resize_1", "/Softmax"]
    import onnx

    graph = onnx.load(str(out / m["engine"]["file"])).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    node = {n.name: n for n in graph.node}
    assert node["/net/classifier/Conv"].input[1] not in dequantized, "excluded: float weights"
    assert not set(node["/net/sam4/attn/Softmax"].input) & dequantized, "excluded: float inputs"
    assert node["/net/decoder/decoder.1/decoder.1.0/Conv"].input[1] in dequantized, "the rest is quantised"
    parity = m["parity"]
    assert parity["images"] == 2 and 0.0 <= parity["verdict_agreement"] <= 1.0
    assert "station inspector" in parity["source"] and parity["tolerances"]["verdict_agreement"] == 0.0
    assert parity["layers"] and all(r["node"].startswith("/") for r in parity["layers"])
    assert m["int8_calibration"]["inputs"] == 39, "the 4 frames cut by the station's tiler (overlap 32)"


def test_int8_build_below_tolerance_is_refused_naming_layers_and_leaves_nothing(untrained_bffn, tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(EngineError) as caught:
        build(_settings(untrained_bffn, out), tolerances={"verdict_agreement": 1.01})
    text = str(caught.value)
    assert "int8 engine not written" in text and "verdict_agreement" in text and "< 1.01" in text
    named = text.split("The layers that diverged most: ")[1].split(". What to do")[0]
    assert named.count("relative error") == 3 and named.count("/net/") >= 3
    assert "--calibration" in text and "--precision fp32" in text
    assert not out.exists() and list(tmp_path.iterdir()) == [], "no engine folder, no work folder left"


def test_layer_sensitivity_reports_each_node(int8_folder):
    out, m = int8_folder
    x = network_inputs(read_images(sorted(SAMPLES.glob("crack*.jpg"))), "segmentation", 128, InputSpec(), limit=8)
    rows = layer_sensitivity(out / "model.onnx", out / m["engine"]["file"], x)
    by_node = {r["node"]: r for r in rows}
    conv = by_node["/net/layer1/layer1.0/conv1/Conv"]
    assert conv["op"] == "Conv+Relu", "the Relu folded into the quantisation is reported with its conv"
    assert conv["quantized"] and conv["rel_error"] > 0, "a quantised conv drifts"
    assert not by_node["/net/classifier/Conv"]["quantized"]
    assert not by_node["/net/layer2/layer2.0/downsample/downsample.0/Conv"]["quantized"], "entry_convs stay float"
    assert all(set(r) == {"node", "op", "rel_error", "added", "quantized"} for r in rows)
    assert [r["added"] for r in rows] == sorted((r["added"] for r in rows), reverse=True)
    same = layer_sensitivity(out / "model.onnx", out / "model.onnx", x[:2])
    assert max(r["rel_error"] for r in same) == 0.0, "a graph against itself does not drift"


def test_unknown_exclusion_group_names_the_known_ones(int8_folder):
    with pytest.raises(ValueError, match="unknown int8 exclusion group.*attention, gates, classifier"):
        group_nodes(int8_folder[0] / "model.onnx", ["attention", "heads"])
