"""Issue 29: the line's reviewed images train beside the base set (`engines train --data BASE --data LINE`), a share
of them stays aside, and `engines accept --line` judges the candidate and the reference there."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engines.cli import main
from engines.data.segmentation import LINE_HOLDOUT, extra_folder_split
from tests.engines.test_acceptance import _split
from tests.engines.test_data_train import make_generic_set

pytestmark = pytest.mark.slow

TRAIN = ["--epochs", "1", "--batch", "4", "--threads", "2", "--device", "cpu", "--no-validate", "--quiet"]


def _steps(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["training"]["history"][-1]["step"]


def test_a_further_folder_keeps_a_share_of_each_class_aside_under_its_own_names(tmp_path):
    line = make_generic_set(tmp_path / "line", n=8, seed=1)
    train, held, record = extra_folder_split(line, seed=0)
    assert len(held) == round(4 * LINE_HOLDOUT) * 2  # 4 defective, 4 defect-free: each class keeps its share aside
    assert sorted(record["train"] + record["holdout"]) == sorted(p.name for p in (line / "images").iterdir())
    assert not set(record["train"]) & set(record["holdout"])
    assert all(s.name.startswith("line/") for s in train) and [s.name for s in held] == record["holdout"]


def test_training_on_base_and_line_and_accepting_on_the_line_images_it_did_not_see(untrained_bffn, tmp_path):
    base = make_generic_set(tmp_path / "base", n=10, size=(140, 150))
    line = make_generic_set(tmp_path / "line", n=8, size=(140, 150), seed=1)
    split = _split(tmp_path, base)

    alone, both = tmp_path / "alone", tmp_path / "both"
    assert main(["train", "bffn", "--data", str(base), "--split", str(split), "--out", str(alone), *TRAIN]) == 0
    assert main(["train", "bffn", "--data", str(base), "--data", str(line), "--split", str(split), "--out", str(both),
                 "--init", str(untrained_bffn), *TRAIN]) == 0
    record = json.loads((both / "split.json").read_text())
    assert record["train"] == json.loads(split.read_text())["train"], "the base is cut by --split as before"
    (extra,) = record["extra"]
    assert Path(extra["data"]) == line and len(extra["train"]) == 6 and len(extra["holdout"]) == 2
    assert "extra" not in json.loads((alone / "split.json").read_text())
    # an epoch is one pass over the training tiles: 2 base images alone, 2 + 6 line images together
    assert _steps(both) == 4 * _steps(alone)
    assert json.loads((both / "config.json").read_text())["training"]["settings"]["extra_data"] == [str(line)]

    reference = Path(shutil.copytree(untrained_bffn, tmp_path / "reference"))
    out = tmp_path / "accept"
    loose = ["--goal-f1", "0", "--goal-false-alarms", "1", "--goal-iou", "0", "--goal-class-recall", "0",
             "--goal-exposure-spread", "1"]
    code = main(["accept", "--weights", str(both), "--against", str(reference), "--data", str(base), "--split",
                 str(split), "--line", str(line), "--out", str(out), "--learn-min-areas", "20", "--threads", "2",
                 "--keep-config", *loose])
    summary = json.loads((out / "acceptance.json").read_text())
    (judged,) = summary["line"]
    assert judged["candidate"]["images"] == 2 and "kept aside" in judged["judged"]
    assert judged["reference"]["images"] == 2
    goal = next(g for g in summary["goals"] if g["goal"].startswith("errors on the line's images"))
    assert goal["met"] == (judged["candidate"]["fp_fn"] <= judged["reference"]["fp_fn"])
    assert code == (0 if summary["accepted"] else 1)

    # weights that never trained on the folder are judged on all of it
    out2 = tmp_path / "accept-alone"
    main(["accept", "--weights", str(alone), "--data", str(base), "--split", str(split), "--line", str(line),
          "--out", str(out2), "--learn-min-areas", "20", "--threads", "2", "--keep-config", *loose])
    (judged,) = json.loads((out2 / "acceptance.json").read_text())["line"]
    assert judged["candidate"]["images"] == 8 and "did not train on" in judged["judged"]
    assert "reference" not in judged


def test_a_classifier_refuses_several_data_folders(tmp_path, capsys):
    assert main(["train", "gr", "--data", str(tmp_path / "a"), "--data", str(tmp_path / "b"),
                 "--out", str(tmp_path / "run")]) == 2
    assert "several are for segmentation networks" in capsys.readouterr().err
