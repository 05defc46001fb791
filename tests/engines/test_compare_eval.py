"""k folds, the evaluation sweep and its curve, failure overlays, `engines compare` and multi-process training."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from engines.data.segmentation import load_dataset, stratified_folds
from inspection_core.verdict import DecisionRules
from tests.engines.test_data_train import make_generic_set

ENGINES = [sys.executable, "-m", "engines.cli"]


def test_folds_are_disjoint_cover_everything_and_spread_each_category(tmp_path):
    samples = load_dataset(make_generic_set(tmp_path / "set", n=22, size=(40, 40)))
    folds = stratified_folds(samples, 4, seed=1)
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(22)), "every image is tested exactly once"
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    defective = [sum(samples[i].defective for i in f) for f in folds]
    assert max(defective) - min(defective) <= 1, defective
    assert stratified_folds(samples, 4, seed=1) == folds
    assert stratified_folds(samples, 4, seed=2) != folds
    with pytest.raises(ValueError, match="at least 2"):
        stratified_folds(samples, 1, seed=0)


def test_sweep_is_consistent_with_the_operating_point_and_draws_a_curve(untrained_bffn, tmp_path):
    from engines.backends.base import load_engine
    from engines.evaluate import evaluate_station_verdicts, save_pr_curve
    from inspection.inspector import Inspector

    samples = load_dataset(make_generic_set(tmp_path / "set", n=6, size=(140, 150)))
    engine = load_engine(untrained_bffn, "onnxruntime", threads=2)
    rules = DecisionRules(score_threshold=0.5, min_area_px=30)
    inspector = Inspector(engine, overlap=32, batch=8, rules=rules)
    metrics, records = evaluate_station_verdicts(inspector, samples, failures_dir=tmp_path / "fail", max_failures=2)
    sweep = metrics["sweep"]
    at_operating = next(p for p in sweep if p["threshold"] == 0.5)
    for key in ("tp", "fp", "fn", "tn", "f1"):
        assert at_operating[key] == metrics[key], "the sweep must judge with the station's rules"
    flagged = [p["tp"] + p["fp"] for p in sweep]
    assert flagged == sorted(flagged, reverse=True), "a higher threshold can only flag fewer images"
    assert 0.0 <= metrics["pixel_dice"] <= 1.0 and metrics["pixel_iou"] <= metrics["pixel_dice"] + 1e-9
    failures = sum(r["defective"] != (r["verdict"] == "FAIL") for r in records)
    saved = sorted((tmp_path / "fail").glob("*.png")) if failures else []
    assert len(saved) == min(2, failures)
    for png in saved:
        panel = cv2.imread(str(png))
        assert panel is not None and panel.shape[:2] == (140, 3 * 150), "image | overlay | score map"
    curve = save_pr_curve(sweep, tmp_path / "pr.png", title="untrained", operating_threshold=0.5)
    image = cv2.imread(str(curve))
    assert image is not None and image.shape[0] > 300 and image.std() > 10


@pytest.mark.slow
def test_compare_trains_every_model_on_every_fold_writes_tables_and_resumes(tmp_path):
    data = make_generic_set(tmp_path / "set", n=8, size=(128, 128))
    out = tmp_path / "cmp"
    cmd = [*ENGINES, "compare", "--data", str(data), "--out", str(out), "--folds", "2", "--models", "bffn,unet",
           "--epochs", "1", "--steps-per-epoch", "1", "--batch", "2", "--threads", "2", "--bench-seconds", "0.5",
           "--bench-batch", "4", "--quiet", "--no-validate"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "compare.json").read_text())
    assert set(summary["per_fold"]) == {"bffn", "unet"}
    assert all(len(v) == 2 for v in summary["per_fold"].values())
    assert sum(r["images"] for r in summary["per_fold"]["bffn"]) == 8, "each image is judged once per model"
    assert summary["throughput"]["bffn"]["tiles_per_s"] > 0 and summary["throughput"]["unet"]["tiles_per_s"] > 0
    table = (out / "results.md").read_text()
    assert "| bffn |" in table and "| unet |" in table and "±" in table and "tiles/s" in table
    assert (out / "fold1" / "unet" / "pr.png").exists() and (out / "fold2" / "bffn" / "eval.json").exists()
    folds = json.loads((out / "folds.json").read_text())
    assert sorted(n for f in folds for n in f) == sorted(p.name for p in (data / "images").iterdir())

    weights = out / "fold1" / "bffn" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert weights.stat().st_mtime_ns == before, "a finished run must not be trained again"
    assert json.loads((out / "compare.json").read_text())["per_fold"] == summary["per_fold"]


def test_compare_refuses_unknown_models_and_folds(tmp_path):
    data = make_generic_set(tmp_path / "set", n=4, size=(64, 64))
    done = subprocess.run([*ENGINES, "compare", "--data", str(data), "--out", str(tmp_path / "c"),
                           "--models", "bffn,segformer"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "segformer" in done.stderr and "unet" in done.stderr
    done = subprocess.run([*ENGINES, "compare", "--data", str(data), "--out", str(tmp_path / "c"), "--folds", "2",
                           "--only-folds", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "1..2" in done.stderr


@pytest.mark.slow
def test_torchrun_trains_with_two_processes(tmp_path):
    data = make_generic_set(tmp_path / "set", n=6, size=(128, 128))
    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "engines.cli", "train", "bffn", "--data", str(data), "--out", str(out),
                           "--epochs", "1", "--steps-per-epoch", "2", "--batch", "2", "--threads", "1",
                           "--device", "cpu", "--no-validate", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["world_size"] == 2
    assert len(config["training"]["history"]) == 1 and np.isfinite(config["training"]["history"][0]["loss"])
    assert done.stdout.count('"epoch"') == 1, "only rank 0 reports"


def test_mixed_precision_and_a_missing_gpu_are_handled(tmp_path):
    from engines.errors import BackendUnavailable
    from engines.train import TrainSettings, train_segmentation
    from engines.training import pick_device

    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="--device cpu"):
            pick_device("cuda")
    data = make_generic_set(tmp_path / "set", n=4, size=(128, 128))
    final = train_segmentation(TrainSettings(data=str(data), out=str(tmp_path / "amp"), epochs=1, steps_per_epoch=1,
                                             batch=2, holdout=0.0, threads=2, amp=True, device="cpu"),
                               progress=False)
    assert np.isfinite(final["loss"])


def test_compare_covers_the_classifiers_and_refuses_mixed_kinds(tmp_path):
    data = tmp_path / "screen"
    subprocess.run([*ENGINES, "synth", "screen", "--out", str(data), "--count", "3", "--size", "512", "--tile", "128",
                    "--seed", "1"], check=True, capture_output=True, timeout=120)
    out = tmp_path / "cmp"
    done = subprocess.run([*ENGINES, "compare", "--data", str(data), "--out", str(out), "--folds", "2",
                           "--models", "gr,gr-nogr,gr-resnet50,inceptionv3", "--backbone", "resnet18",
                           "--epochs", "1", "--pretrain-epochs", "1", "--size", "64", "--batch", "8", "--steps-per-epoch", "1",
                           "--threads", "1", "--bench-seconds", "0.5", "--bench-batch", "4", "--no-validate", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "compare.json").read_text())
    assert set(summary["per_fold"]) == {"gr", "gr-nogr", "gr-resnet50", "inceptionv3"}
    assert sum(r["images"] for r in summary["per_fold"]["gr"]) == 48, "each patch is judged once per model"
    assert all(0.0 <= r["agreement"] <= 1.0 for r in summary["per_fold"]["gr"])
    assert summary["per_fold"]["gr-nogr"][0]["agreement"] is None, "without the GR-module there are no relations"
    gr_config = json.loads((out / "fold1" / "gr" / "config.json").read_text())["model_config"]
    assert gr_config["backbone"] == "resnet18" and gr_config["use_gr"] is True
    assert json.loads((out / "fold1" / "gr-nogr" / "config.json").read_text())["model_config"]["use_gr"] is False
    assert json.loads((out / "fold1" / "gr-resnet50" / "config.json").read_text())["model_config"]["backbone"] == \
        "resnet50", "gr-resnet50 keeps the paper's backbone whatever --backbone says"

    def passes(model):  # epochs run per phase: every model gets GR's 1 + 1
        training = json.loads((out / "fold1" / model / "config.json").read_text())["training"]
        return [p["epochs"] for p in training["phases"]]
    assert passes("gr") == [1, 1] and passes("gr-nogr") == [2] and passes("inceptionv3") == [2]
    assert summary["sizes"] == {"gr": 64, "gr-nogr": 64, "gr-resnet50": 64, "inceptionv3": 75}, \
        "Inception-v3 cannot take 64 px: it gets its smallest side, 75"
    assert json.loads((out / "fold1" / "inceptionv3" / "config.json").read_text())["tile"] == 75
    table = (out / "results.md").read_text()
    assert "| gr |" in table and "| inceptionv3 |" in table and "F-measure" in table and "agreement" in table
    assert "inceptionv3 75 px" in table
    assert "Equal budget" in table
    mixed = subprocess.run([*ENGINES, "compare", "--data", str(data), "--out", str(tmp_path / "m"),
                            "--models", "bffn,gr"], capture_output=True, text=True, timeout=120)
    assert mixed.returncode == 2 and "separate runs" in mixed.stderr


def test_a_diverging_run_stops_with_advice_and_compare_records_it(tmp_path):
    """A loss that becomes NaN stops training at once with what to do (no NaN weights saved); engines compare
    records the run as diverged, goes on, and does not retrain it when re-run."""
    from engines.errors import TrainingDiverged
    from engines.train import TrainSettings, train_segmentation

    seg = make_generic_set(tmp_path / "seg", n=4, size=(128, 128))
    with pytest.raises(TrainingDiverged, match=r"epoch 1 step \d+.*lower learning rate \(--lr, now 1e\+12\)"):
        train_segmentation(TrainSettings(model="fcn", data=str(seg), out=str(tmp_path / "segrun"), epochs=2,
                                         steps_per_epoch=3, batch=2, holdout=0.0, threads=1, lr=1e12,
                                         optimizer="adam"), progress=False)
    assert not (tmp_path / "segrun" / "model.safetensors").exists()
    data = tmp_path / "screen"
    subprocess.run([*ENGINES, "synth", "screen", "--out", str(data), "--count", "3", "--size", "512", "--tile", "128",
                    "--seed", "1"], check=True, capture_output=True, timeout=120)
    common = ["--data", str(data), "--backbone", "resnet18", "--epochs", "1", "--pretrain-epochs", "1", "--size",
              "64", "--batch", "8", "--steps-per-epoch", "2", "--lr", "1e6", "--threads", "1", "--no-validate",
              "--quiet"]
    args = [*common, "--folds", "2", "--only-folds", "1", "--models", "gr-linear", "--bench-seconds", "0.5"]
    train = subprocess.run([*ENGINES, "train", "gr", "--out", str(tmp_path / "gr"), "--linear", *common],
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 2 and "training diverged" in train.stderr and "Traceback" not in train.stderr
    out = tmp_path / "cmp"
    for _ in range(2):  # the second run finds the diverged run recorded and does not train it again
        done = subprocess.run([*ENGINES, "compare", "--out", str(out), *args], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("training gr-linear") == 0
    assert "training diverged" in (out / "fold1" / "gr-linear" / "diverged.txt").read_text()
    row = json.loads((out / "compare.json").read_text())["per_fold"]["gr-linear"][0]
    assert "training diverged" in row["diverged"] and "f_measure" not in row
    table = (out / "results.md").read_text()
    assert "| gr-linear | diverged (1 of 1 runs)" in table and "Diverged (the loss became NaN" in table
