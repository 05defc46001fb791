"""A second opinion (issue 25): a classifier's label thresholds learned on validation for the verdict fused with the
segmenter's, `engines accept --classifier`, and the station judging with what it learned."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engines.fusion import OFF, fused_verdicts, fusion_notes, learn_label_thresholds
from tests.conftest import TINY_GR_CLASSES
from tests.engines.test_acceptance import ENGINES
from tests.engines.test_data_train import make_generic_set

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_class_whose_labels_catch_misses_is_switched_on_at_the_highest_threshold_that_catches_them():
    seg = np.array([1, 0, 0, 0, 0, 0], bool)
    truth = np.array([1, 1, 1, 0, 0, 0], bool)
    scores = np.array([[0.9, 0.5], [0.8, 0.4], [0.62, 0.1], [0.3, 0.95], [0.5, 0.2], [0.1, 0.1]], np.float32)
    rule = learn_label_thresholds(seg, truth, scores, ("uneven", "break"), grid=(0.2, 0.4, 0.6, 0.7))
    # uneven above 0.6 catches both misses without a false alarm (0.5 is below); break at any level only adds one
    assert rule["thresholds"] == {"uneven": 0.6, "break": OFF}
    assert rule["segmenter"]["f1"] == 0.5 and rule["fused"]["f1"] == 1.0
    assert fused_verdicts(seg, scores, [0.6, OFF]).tolist() == truth.tolist()


def test_labels_that_only_add_false_alarms_stay_off_so_fusion_never_does_worse_than_the_segmenter_there():
    rng = np.random.default_rng(0)
    truth = rng.random(60) < 0.4
    seg = truth.copy()
    seg[:5] = ~seg[:5]  # five mistakes of the segmenter
    scores = rng.random((60, 3)).astype(np.float32)
    rule = learn_label_thresholds(seg, truth, scores, ("a", "b", "c"))
    assert rule["fused"]["f1"] >= rule["segmenter"]["f1"]
    perfect = learn_label_thresholds(truth, truth, scores, ("a", "b", "c"))  # nothing to catch: all off
    assert perfect["thresholds"] == {"a": OFF, "b": OFF, "c": OFF}
    with pytest.raises(ValueError, match="3 segmenter verdicts for 4 images"):
        learn_label_thresholds(seg[:3], truth[:4], scores[:3], ("a", "b", "c"))


def test_the_notes_say_when_no_label_helps_and_when_the_classifier_knows_other_defects():
    assert fusion_notes({"crack": 0.3, "break": OFF}, ["break", "crack"]) == []
    (off,) = fusion_notes({"crack": OFF, "break": OFF}, ["break", "crack"])
    assert "every label stays off" in off and "the fused verdict is the segmenter's" in off
    (foreign,) = fusion_notes({"inclusion": 0.2, "crack": 0.5}, ["break", "crack"])
    assert "inclusion are not" in foreign and "engines train gr" in foreign


@pytest.fixture
def accepted(untrained_bffn, tiny_gr, tmp_path):
    """`engines accept --classifier` on a small generic set: the segmenter and the classifier are copies it may
    write its rules into, judged --against the same untrained weights (which it cannot beat: exit 1, everything
    written). Returns (segmenter, classifier, data, split, out, the process)."""
    seg = Path(shutil.copytree(untrained_bffn, tmp_path / "seg"))
    gr = Path(shutil.copytree(tiny_gr, tmp_path / "gr"))
    data = make_generic_set(tmp_path / "set", n=14, size=(120, 150))
    names = sorted(p.name for p in (data / "images").iterdir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": names[:2], "validation": names[2:8], "holdout": names[8:]}))
    out = tmp_path / "accept"
    loose = ["--goal-f1", "0", "--goal-false-alarms", "1", "--goal-iou", "0", "--goal-class-recall", "0",
             "--goal-exposure-spread", "1"]
    done = subprocess.run([*ENGINES, "accept", "--weights", str(seg), "--classifier", str(gr), "--data", str(data),
                           "--split", str(split), "--out", str(out), "--learn-min-areas", "10,40", "--threads", "2",
                           "--against", str(untrained_bffn), *loose], capture_output=True, text=True, timeout=400)
    return seg, gr, data, split, out, done


def test_accept_learns_label_thresholds_on_validation_and_judges_held_out_fused(accepted):
    seg, gr, data, split, out, done = accepted
    assert done.returncode == 1 and "does NOT beat" in done.stderr, done.stderr
    summary = json.loads((out / "acceptance.json").read_text())
    fusion = summary["classifier"]
    assert fusion["classes"] == TINY_GR_CLASSES and set(fusion["thresholds"]) == set(TINY_GR_CLASSES)
    assert (fusion["patch"], fusion["mode"]) == (0, "bank")
    assert fusion["validation"]["fused"]["f1"] >= fusion["validation"]["segmenter"]["f1"]
    assert "label thresholds learned on 6 validation images" in done.stderr
    # --against compares the segmenters alone, and says so (the labels are learned on that validation part)
    assert summary["reference"]["compared"].startswith("the segmenters alone")
    assert re.search(r"beat \S+ on validation \(the segmenters alone: --classifier's labels are learned", done.stderr)

    detail = json.loads((out / "holdout-fused.json").read_text())["images_detail"]
    segmenter = json.loads((out / "holdout.json").read_text())["images_detail"]
    assert [r["name"] for r in detail] == sorted(json.loads(split.read_text())["holdout"])
    assert [r["segmenter_verdict"] for r in detail] == [r["verdict"] for r in segmenter]
    for r in detail:  # the station's rule: FAIL on a defect or on any label above its class's threshold
        labels = [c for c in TINY_GR_CLASSES if r["label_scores"][c] > fusion["thresholds"][c]]
        assert r["labels"] == labels
        assert r["verdict"] == ("FAIL" if r["segmenter_verdict"] == "FAIL" or labels else "PASS")
    fails = [r["verdict"] == "FAIL" for r in detail]
    assert fusion["holdout"]["tp"] == sum(f and r["defective"] for f, r in zip(fails, detail))
    assert fusion["holdout"]["fp"] == sum(f and not r["defective"] for f, r in zip(fails, detail))
    assert summary["goals"][0]["value"] == fusion["holdout"]["f1"], "the goals judge the fused verdicts"
    assert summary["segmenter_goals"][0]["value"] == summary["holdout"]["f1"]

    written = json.loads((gr / "config.json").read_text())["judging"]
    assert written["label_thresholds"] == fusion["thresholds"] and written["patch"] == 0
    assert written["fused_with"]["threshold"] == summary["rule"]["threshold"]


def test_the_station_scores_and_judges_held_out_as_accept_fused_it(accepted, tmp_path):
    """A recipe that runs both weights, [classifier] patch = 0 and no threshold, gives each held-out image the
    scores and the verdict `engines accept --classifier` reported (here with thresholds that make labels fire)."""
    from engines.data.segmentation import load_dataset
    from engines.weights import resolve_weights, write_judging_rule
    from station.app import build_inspector
    from station.recipe import load_recipe

    seg, gr, data, split, out, done = accepted
    assert done.returncode == 1 and "does NOT beat" in done.stderr, done.stderr
    detail = json.loads((out / "holdout-fused.json").read_text())["images_detail"]
    median = {c: float(np.median([r["label_scores"][c] for r in detail])) for c in TINY_GR_CLASSES}
    write_judging_rule(resolve_weights(gr), {"label_thresholds": median, "learned_on": "this test"})
    recipe = tmp_path / "fused.toml"
    recipe.write_text(f'''[product]
name = "fused"

[source]
kind = "replay"
path = "{data / 'images'}"

[tiling]
tile = 128
overlap = 32

[engine]
weights = "{seg}"
threads = 2

[classifier]
weights = "{gr}"
patch = 0
mode = "bank"
threads = 2
''')
    inspector = build_inspector(load_recipe(recipe))
    samples = {s.name: s for s in load_dataset(data)}
    fired = 0
    from inspection_core.records import Frame

    for k, r in enumerate(detail):
        result = inspector.inspect(Frame(samples[r["name"]].image, k, 0, "test"))
        (patch,) = result.patches
        for c in TINY_GR_CLASSES:
            assert patch["scores"][c] == pytest.approx(r["label_scores"][c], abs=2e-4)
        labels = [c for c in TINY_GR_CLASSES if r["label_scores"][c] > median[c]]
        fired += bool(labels)
        assert list(result.labels) == labels
        expected = "FAIL" if r["segmenter_verdict"] == "FAIL" or labels else "PASS"
        assert result.verdict.value == expected, r["name"]
    assert fired, "the test's thresholds make some labels fire"


def test_accept_refuses_a_segmentation_network_as_the_classifier(untrained_bffn, tmp_path):
    data = make_generic_set(tmp_path / "set", n=6, size=(100, 100))
    names = sorted(p.name for p in (data / "images").iterdir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": names[:2], "validation": names[2:4], "holdout": names[4:]}))
    done = subprocess.run([*ENGINES, "accept", "--weights", str(untrained_bffn), "--classifier", str(untrained_bffn),
                           "--data", str(data), "--split", str(split), "--out", str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is a segmentation network; give a classifier's weights" in done.stderr
