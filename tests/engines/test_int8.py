"""INT8 that keeps verdicts: calibration on real (defect and defect-free) tiles, operators kept in floating point,
layer sensitivity, and a build that refuses to write an engine that misses the int8 tolerances."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.backends.onnxruntime_backend import Int8Guard, OnnxRuntimeEngine
from engines.build import BuildSettings, build
from engines.cli import build_parser
from engines.commands import int8_groups
from engines.errors import EngineError
from engines.folders import open_engine
from engines.inputs import network_inputs, read_images
from engines.manifest import MANIFEST
from engines.quantize import (DEFAULT_EXCLUDE, MIN_GUARD_MARGIN, calibration_tiles, group_nodes, guard_for,
                              layer_sensitivity)
from engines.verify import verify_segmentation
from inspection.judging import Judging
from inspection.errors import InspectionError
from inspection.inspector import Inspector
from inspection_core.preprocess import InputSpec, defect_scores
from inspection_core.verdict import DecisionRules

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
    assert excluded["groups"] == ["attention", "gates", "classifier"]
    entry = group_nodes(out / "model.onnx", ["entry_convs"])["entry_convs"]
    assert "/net/stem/stem.0/Conv" in entry and len(entry) == 4, "the stem and the three strided shortcuts"
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
    assert "judged by the station's inspector" in parity["source"] and parity["tolerances"]["verdict_agreement"] == 0.0
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
    assert by_node["/net/layer2/layer2.0/downsample/downsample.0/Conv"]["quantized"], "entry_convs: int8 by default"
    assert all(set(r) == {"node", "op", "rel_error", "added", "quantized"} for r in rows)
    assert [r["added"] for r in rows] == sorted((r["added"] for r in rows), reverse=True)
    same = layer_sensitivity(out / "model.onnx", out / "model.onnx", x[:2])
    assert max(r["rel_error"] for r in same) == 0.0, "a graph against itself does not drift"


def test_unknown_exclusion_group_names_the_known_ones(int8_folder):
    with pytest.raises(ValueError, match="unknown int8 exclusion group.*attention, gates, classifier"):
        group_nodes(int8_folder[0] / "model.onnx", ["attention", "heads"])


# ------------------------------------------------------------------------------------------------ the guard

def _tiles(count: int = 16) -> np.ndarray:
    return network_inputs(read_images(sorted(SAMPLES.glob("*.jpg"))[:4]), "segmentation", 128, InputSpec(),
                          limit=count)


def _guarded(folder: Path, below: float) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(folder / "model.int8.onnx", "bffn", "0" * 64, InputSpec(), 128, 1, "int8",
                             guard=Int8Guard(folder / "model.onnx", below, threshold=below + 0.1, margin=0.1))


def test_guarded_build_records_its_guard_and_opens_with_it(int8_folder):
    out, m = int8_folder
    guard = m["int8_guard"]
    assert guard["fallback"] == "model.onnx" and guard["threshold"] == 0.5, "no recipe: the default rules' 0.5"
    assert guard["margin"] >= MIN_GUARD_MARGIN and guard["margin"] >= 2 * guard["drift_max"] - 1e-9
    assert guard["below"] == pytest.approx(guard["threshold"] - guard["margin"])
    assert guard["drift_tiles"] == m["int8_calibration"]["inputs"]
    engine = open_engine(out, threads=1)
    assert engine.guard == Int8Guard(out / "model.onnx", guard["below"], 0.5, guard["margin"])
    assert engine.engine_id.endswith("@onnxruntime-int8-guarded")
    assert m["parity"]["guard_share"] is not None and 0.0 <= m["parity"]["guard_share"] <= 1.0


def test_guard_rescores_in_fp32_exactly_the_tiles_that_come_near_the_threshold(int8_folder):
    out, _ = int8_folder
    x = _tiles()
    fp32 = OnnxRuntimeEngine(out / "model.onnx", "bffn", "0" * 64, InputSpec(), 128, 1)
    bare = OnnxRuntimeEngine(out / "model.int8.onnx", "bffn", "0" * 64, InputSpec(), 128, 1, "int8")
    want, raw = fp32.infer(x), bare.infer(x)
    peaks = defect_scores(raw).reshape(len(x), -1).max(axis=1)
    below = float(np.median(peaks))  # half the tiles come near it: those get the fp32 scores
    near = peaks >= below
    assert 0 < near.sum() < len(x)
    engine = _guarded(out, below)
    got = engine.infer(x)
    np.testing.assert_array_equal(got[near], want[near])
    np.testing.assert_array_equal(got[~near], raw[~near])
    assert not np.array_equal(raw[near], want[near]), "int8 alone drifts: the guard made the difference"
    assert engine.guard_share() == pytest.approx(near.mean())
    assert bare.guard_share() is None and bare.threshold_problem(0.1) is None


def test_guard_at_zero_makes_the_int8_engine_judge_as_fp32_through_the_inspector(int8_folder):
    out, _ = int8_folder
    images = [(p.name, im) for p, im in zip(sorted(SAMPLES.glob("*.jpg"))[:2],
                                            read_images(sorted(SAMPLES.glob("*.jpg"))[:2]))]
    judging = Judging(DecisionRules(score_threshold=0.5), overlap=32, batch=8)
    fp32 = OnnxRuntimeEngine(out / "model.onnx", "bffn", "0" * 64, InputSpec(), 128, 1)
    report = verify_segmentation(_guarded(out, 0.0), fp32, images, judging)
    assert report["verdict_agreement"] == 1.0 and report["max_abs"] == 0.0 and report["guard_share"] == 1.0
    assert report["seconds"]["engine"] > 0 and report["seconds"]["reference"] > 0 and report["seconds"]["speedup"]


def test_inspector_refuses_a_guarded_engine_at_a_threshold_its_guard_was_not_built_for(int8_folder):
    out, m = int8_folder
    engine = open_engine(out, threads=1)
    Inspector(engine, overlap=32, batch=8, rules=DecisionRules(score_threshold=0.6))  # higher: still safe
    with pytest.raises(InspectionError, match=r"cannot judge at score >= 0.45.*int8 guard keeps int8 scores below "
                                              r".*built for a decision threshold of 0.50.*--recipe"):
        Inspector(engine, overlap=32, batch=8, rules=DecisionRules(score_threshold=0.45))


def test_guard_margin_is_twice_the_drift_in_steps_and_never_below_the_minimum():
    assert guard_for(0.55, 0.01) == {"below": 0.45, "threshold": 0.55, "margin": 0.1, "drift_max": 0.01}
    assert guard_for(0.55, 0.055)["margin"] == pytest.approx(0.15)
    assert guard_for(0.55, 0.075)["margin"] == pytest.approx(0.15)
    assert guard_for(0.3, 0.2)["below"] == 0.0


def test_int8_float_groups_from_the_command_line():
    assert int8_groups(None) == DEFAULT_EXCLUDE
    assert int8_groups("none") == ()
    assert int8_groups("attention, classifier") == ("attention", "classifier")
    with pytest.raises(ValueError, match="unknown group.*heads.*choose from attention"):
        int8_groups("attention,heads")
    args = build_parser().parse_args(["build", "--weights", "w", "--out", "o", "--no-int8-guard",
                                      "--int8-float", "none"])
    assert args.no_int8_guard and args.int8_float == "none"


def _station_recipe(tmp_path: Path, engine_folder: Path, threshold: float) -> Path:
    from station.recipe import shipped_recipe_path

    text = shipped_recipe_path("magnetic_tile").read_text()
    text = text.replace('path = "../samples/magnetic-tile"', f'path = "{SAMPLES}"').replace("loop = true", "loop = false")
    text = text.replace('weights = "bffn-magnetic-tile"', f'weights = "{engine_folder}"')
    text = text.replace('precision = "fp32"', 'precision = "int8"').replace("threads = 0 ", "threads = 1 ")
    text, n = re.subn(r"(?m)^score_threshold = [0-9.]+", f"score_threshold = {threshold}", text)
    assert n == 1, "the shipped recipe's [rules] score_threshold line moved: update this helper"
    text = text.replace('db = "station-data/rejects.db"', f'db = "{tmp_path / "rejects.db"}"')
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    return recipe


def test_station_runs_a_guarded_int8_engine_and_says_how_much_went_to_fp32(int8_folder, tmp_path):
    """The line on a guarded int8 engine folder: every row names the guarded engine, the summary the share of
    tiles scored again in fp32; a recipe whose threshold the guard was not built for is refused before any frame."""
    import sqlite3

    from station.app import build_inspector, run_station
    from station.recipe import load_recipe

    out, _ = int8_folder
    summary = run_station(load_recipe(_station_recipe(tmp_path, out, 0.55)), headless=True, max_frames=3)
    assert summary.stats.inspected == 3
    shown = summary.to_dict()
    assert 0.0 <= shown["int8_guard_rescored"] <= 1.0 and "int8 guard:" in summary.text()
    with sqlite3.connect(tmp_path / "rejects.db") as con:
        engines_ = {r[0] for r in con.execute("SELECT DISTINCT engine_id FROM inspections")}
    assert len(engines_) == 1 and engines_.pop().endswith("@onnxruntime-int8-guarded")
    (tmp_path / "low").mkdir()
    low = load_recipe(_station_recipe(tmp_path / "low", out, 0.4))
    with pytest.raises(InspectionError, match="cannot judge at score >= 0.4.*Rebuild it with `engines build"):
        build_inspector(low)


def test_bench_says_how_much_a_guarded_engine_sent_to_fp32(int8_folder):
    from engines.benchmark import bench_engines

    out, _ = int8_folder
    report = bench_engines({"int8": lambda: open_engine(out, threads=1),
                            "fp32": lambda: OnnxRuntimeEngine(out / "model.onnx", "bffn", "0" * 64, InputSpec(), 128,
                                                              1)}, batch=2, seconds=0.1)
    assert 0.0 <= report["int8"]["int8_guard_rescored"] <= 1.0 and "engines verify" in report["int8"]["note"]
    assert "int8_guard_rescored" not in report["fp32"]


def test_build_command_records_the_int8_choices():
    from engines.build import build_command

    plain = build_command(BuildSettings(weights="w", precision="int8", calibration="c", out="o"))
    assert "--int8-float" not in plain and "--no-int8-guard" not in plain
    chosen = build_command(BuildSettings(weights="w", precision="int8", calibration="c", out="o", int8_exclude=(),
                                         int8_guard=False))
    assert chosen.endswith("--int8-float none --no-int8-guard")
    assert build_parser().parse_args(chosen.split()[1:]).int8_float == "none"
