"""benchmarks/decision_levers.py: the levers after the network (rule, flips, ensemble, component rule), each learned
on validation and judged on held-out with the station's own defect finding."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from tests.engines.test_data_train import make_generic_set

_spec = importlib.util.spec_from_file_location(
    "decision_levers", Path(__file__).resolve().parents[2] / "benchmarks" / "decision_levers.py")
levers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(levers)


def _map(blobs, size=(64, 64)):
    """A score map with square blobs ``(y, x, side, score)`` on a 0.05 background, and its truth mask."""
    m = np.full(size, 0.05, np.float32)
    for y, x, side, score in blobs:
        m[y:y + side, x:x + side] = score
    return m


def test_the_plain_rule_learns_the_minimum_area_that_drops_small_false_alarms():
    # defects: 7x7 blobs at 0.8; good parts: 3x3 specks at 0.9 (a threshold cannot drop them, an area can)
    maps = [_map([(10, 10, 7, 0.8)]) for _ in range(4)] + [_map([(30, 30, 3, 0.9)]) for _ in range(4)]
    truth = [True] * 4 + [False] * 4
    rule = levers.best_rule(levers.rule_sweep(maps, truth, thresholds=(0.5, 0.7), min_areas=(5, 20, 80)))
    assert (rule["min_area_px"], rule["f1"], rule["fp"]) == (20, 1.0, 0)
    assert rule["threshold"] == 0.7  # ties go to the higher threshold
    assert levers.judge_rule(maps, truth, 0.5, 5)["fp"] == 4


def test_component_rule_separates_by_mean_score_where_peak_and_area_do_not():
    def defect(rng):  # a solid blob: high mean
        return _map([(10, 10, 6, 0.85 + 0.1 * rng.random())])

    def flicker(rng):  # the same size with one bright pixel over a dim blob: high peak, low mean
        m = _map([(20, 20, 6, 0.55 + 0.05 * rng.random())])
        m[22, 22] = 0.97
        return m

    rng = np.random.default_rng(0)
    val_maps = [defect(rng) for _ in range(6)] + [flicker(rng) for _ in range(6)]
    val_masks = [m >= 0.8 for m in val_maps[:6]] + [np.zeros((64, 64), bool)] * 6
    truth = [True] * 6 + [False] * 6
    rule = levers.learn_component_rule(val_maps, val_masks, truth, threshold=0.5)
    assert rule["f1"] == 1.0 and rule["weights"]["mean_score"] > 0
    assert rule["components"] == 12 and rule["true_components"] == 6
    hold = [defect(rng) for _ in range(3)] + [flicker(rng) for _ in range(3)]
    judged = levers.judge_component_rule(rule, hold, [m >= 0.8 for m in hold], [True] * 3 + [False] * 3)
    assert (judged["tp"], judged["fp"], judged["fn"]) == (3, 0, 0)


def test_levers_average_the_mirrors_and_the_networks_before_judging():
    # network a misses the defect of image 0 unless its mirrored map is averaged in; b alone sees it
    weak, strong = _map([(10, 10, 8, 0.4)]), _map([(10, 10, 8, 0.9)])
    empty = _map([(40, 40, 3, 0.45)])  # a 9 px speck: a false component for the component rule
    parts = ("validation", "holdout")
    maps = {("a", "none"): {p: [weak, empty] for p in parts},
            ("a", "lr"): {p: [strong, empty] for p in parts},
            ("a", "ud"): {p: [strong, empty] for p in parts},
            ("b", "none"): {p: [strong, empty] for p in parts}}
    truth = {p: [True, False] for p in parts}
    masks = {p: [strong >= 0.5, np.zeros_like(empty, bool)] for p in parts}
    report = levers.levers(maps, masks, truth, "a", ["a", "b"])
    assert set(report) == {"plain a", "plain b", "flips a", "ensemble a + b", "components a"}
    for name in ("plain b", "flips a", "ensemble a + b"):
        assert report[name]["holdout"]["f1"] == 1.0, name
    # the flips' mean is (0.4 + 0.9 + 0.9) / 3 on the blob: the learned threshold lies below it
    assert report["flips a"]["validation"]["threshold"] <= 0.7
    assert report["components a"]["validation"]["components"] == 2
    everywhere = {p: [np.ones_like(empty, bool)] * 2 for p in parts}  # every component true: nothing to learn
    assert levers.levers(maps, everywhere, {p: [True, True] for p in parts}, "a",
                         ["a"])["components a"]["note"].startswith("not learned")


def test_the_benchmark_runs_on_a_folder_and_reuses_its_cached_maps(tmp_path, untrained_bffn, capsys):
    data = make_generic_set(tmp_path / "set", n=6, size=(96, 96))
    names = sorted(p.name for p in (data / "images").iterdir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": names[:3], "holdout": names[3:]}))
    args = ["--weights", str(untrained_bffn), "--data", str(data), "--split", str(split), "--cache",
            str(tmp_path / "cache"), "--json", str(tmp_path / "report.json")]
    assert levers.main(args) == 0
    first = capsys.readouterr()
    assert first.err.count("maps in") == 6  # 3 mirrors x 2 parts
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 6 and all(n.endswith(("-validation.npz", "-holdout.npz")) for n in cached)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == {"validation": 3, "holdout": 3}
    for lever in report["levers"].values():
        h = lever["holdout"]
        assert h["tp"] + h["fp"] + h["fn"] + h["tn"] == 3
    assert levers.main(args) == 0
    second = capsys.readouterr()
    assert "maps in" not in second.err  # every map came from the cache
    assert json.loads((tmp_path / "report.json").read_text()) == report
