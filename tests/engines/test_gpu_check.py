"""benchmarks/gpu_check.sh --dry-run: the GPU check of issue 17 run on the CPU with tiny settings, so that the script
cannot rot between the rare times a GPU is at hand. It runs as the GPU machine runs it (the shell wrapper, from the
source tree, with the packages that machine may lack hidden) and every JSON file it writes is checked."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
# What the GPU machine may lack (it has torch, torchvision, onnxruntime, numpy and opencv); onnx stays, so that
# the ONNX Runtime stand-in exercises the export.
HIDDEN = "safetensors,onnxscript,tqdm,matplotlib,segmentation_models_pytorch,harvesters,PyQt6"
CPU_STANDINS = {"bffn": "onnxruntime-cpu-fp32", "gr": "torch-cpu-fp32"}
# Generous: the figures are taken on a shared 2-core machine; the dry run needs ~40 CPU seconds.
BUDGET_S = 1500


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def _run(out: Path, work: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), "--out", str(out), "--work", str(work), "--dry-run", "--threads", "2",
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: run the full check (bash benchmarks/gpu_check.sh --out DIR)")
    root = tmp_path_factory.mktemp("gpu-check")
    out = root / "out"
    done = _run(out, root / "work", "--budget", str(BUDGET_S), "--without", HIDDEN, timeout=BUDGET_S + 120)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, done


def _load(out: Path, name: str) -> dict:
    path = out / f"{name}.json"
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text())


def _fraction(value) -> bool:
    return isinstance(value, (int, float)) and 0.0 <= value <= 1.0


def test_summary_records_the_environment_and_every_step(dry_run):
    import onnxruntime
    import torch

    out, done = dry_run
    summary = _load(out, "summary")
    env = summary["environment"]
    assert summary["dry_run"] is True and summary["budget_s"] == BUDGET_S
    assert env["torch"] == torch.__version__ and env["onnxruntime"] == onnxruntime.__version__
    assert env["cuda_available"] is False and env["gpu"] is None
    assert env["tensorrt"]["importable"] is False and env["tensorrt"]["reason"]
    assert env["optional"]["safetensors"] is None and env["optional"]["tqdm"] is None
    assert env["safetensors_reader"].startswith("built-in")  # the weights were read without the package
    assert set(env["hidden_with_without"]) == set(HIDDEN.split(","))
    assert set(summary["steps"]) == {"bffn", "gr", "train", "gr_bench"}
    for name, step in summary["steps"].items():
        assert step["status"] == "ran", (name, step)
        assert step["seconds"] > 0 and step["budget_s"] > 0 and step["cpu_s"] >= 0
        assert (out / step["file"]).is_file()
    assert summary["wall_s"] >= sum(s["seconds"] for s in summary["steps"].values())
    assert json.loads(done.stdout)["steps"] == summary["steps"]  # the same summary on stdout, for a short tail


def _candidates(out: Path, step: str) -> dict[str, dict]:
    records = _load(out, step)["candidates"]
    for r in records:
        assert r["status"] in ("ran", "skipped"), r  # a failure would have made the exit status 1
        if r["status"] == "skipped":
            assert r["reason"], r
        if r["device"] == "cuda":
            assert r["status"] == "skipped" and r["reason"].startswith("no CUDA device"), r
    return {r["label"]: r for r in records}


@pytest.mark.parametrize("step", ["bffn", "gr"])
def test_cuda_engines_are_skipped_and_the_cpu_standin_is_built_and_verified(dry_run, step):
    out, _ = dry_run
    records = _candidates(out, step)
    assert {"torch-cuda-fp16-graph", "onnxruntime-cuda-fp32", "onnxruntime-cuda-fp16", "tensorrt-fp16"} <= set(records)
    assert ("tensorrt-int8" in records) == (step == "bffn")  # calibrated on magnetic-tile frames: BFFN only
    standin = records[CPU_STANDINS[step]]
    assert standin["status"] == "ran" and standin["build_seconds"] > 0
    assert _fraction(standin["build_parity"]["decision_agreement"]) and standin["build_parity"]["inputs"] > 0
    verify = standin["verify"]
    assert verify["images"] >= 1
    keys = ["verdict_agreement"] if step == "bffn" else ["label_agreement", "label_set_agreement"]
    for key in keys:
        assert _fraction(verify[key]), verify
    for key in ("min_mask_iou", "mean_mask_iou"):
        assert verify.get(key) is None or _fraction(verify[key]), verify
    # fp32 against the fp32 reference on the same CPU: the same decisions, tiny score differences, passed
    assert verify[keys[0]] == 1.0 and verify["mean_abs"] <= standin["tolerances"]["mean_abs"]
    assert standin["passed"] is True and standin["failed"] == []


def _check_points(bench: dict, labels: set[str]) -> None:
    assert set(bench["points"]) == {"batch_1", "batch_2"}
    for point in bench["points"].values():
        assert point["status"] == "ran", point
        assert set(point["engines"]) == labels
        for figures in point["engines"].values():
            assert figures["tiles_per_s"] > 0 and 0 < figures["p50_ms"] <= figures["p99_ms"]
            assert figures["batches"] >= 3 and figures["ratio_to_first"] > 0


def test_benchmarks_time_every_built_engine_at_each_batch(dry_run):
    out, _ = dry_run
    _check_points(_load(out, "bffn")["bench"], {"onnxruntime-cpu-fp32"})
    gr_bench = _load(out, "gr_bench")
    assert set(gr_bench["tiles"]) == {"tile_128"}
    tile = gr_bench["tiles"]["tile_128"]
    assert all(reason.startswith("no CUDA device") for reason in tile["skipped"].values()) and tile["skipped"]
    _check_points(tile, {"torch-cpu-fp32"})


def test_mixed_precision_training_steps_run(dry_run):
    out, _ = dry_run
    train = _load(out, "train")
    assert train["device"] == "cpu" and train["amp_dtype"] == "bfloat16"  # CUDA: float16 with a gradient scaler
    assert train["steps"] == train["steps_asked"] == 2 and len(train["losses"]) == 2 and train["all_finite"]
    assert all(loss > 0 for loss in train["losses"]) and train["tiles_per_s"] > 0
    assert _fraction(train["labels"]["defect_pixel_fraction"])


def test_the_safetensors_reader_reads_what_the_package_reads():
    safetensors_torch = pytest.importorskip("safetensors.torch")
    import torch

    weights = REPO / "engines" / "weights" / "bffn-magnetic-tile" / "model.safetensors"
    want = safetensors_torch.load_file(str(weights))
    got = _gpu_check_module().load_safetensors(weights)
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def test_the_total_budget_is_enforced(tmp_path):
    """With almost no time, every step is skipped (or cut by the watchdog) with the reason, and the summary is
    still written."""
    done = _run(tmp_path / "out", tmp_path / "work", "--budget", "3", timeout=300)
    assert done.returncode in (0, 3), done.stderr[-4000:]
    summary = _load(tmp_path / "out", "summary")
    for name, step in summary["steps"].items():
        assert step["status"] in ("skipped", "timed_out"), (name, step)
        assert "ran out" in step["reason"], (name, step)
