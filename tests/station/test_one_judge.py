"""One judge (issue 27): the rule travels with the weights, every tool judges through one
:class:`inspection.judging.Judging`, and a tool handed the weights judges as a station running them."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engines.weights import resolve_weights, write_judging_rule
from inspection.judging import Judging
from inspection_core.defaults import DEFAULT_MIN_AREA_PX, DEFAULT_OVERLAP, DEFAULT_SCORE_THRESHOLD
from inspection_core.verdict import DecisionRules, RoiRect
from station.line_calibration import judging_for, recipe_judging
from station.errors import RecipeError
from station.recipe import load_recipe, shipped_recipe_path
from tests.calibration.test_station_calibration import make_profile
from tests.station.test_recipe import MINIMAL, write

ENGINES = [sys.executable, "-m", "engines.cli"]
STATION = [sys.executable, "-m", "station.cli"]


@pytest.fixture
def profiles(tmp_path, monkeypatch) -> Path:
    """An empty calibration profile store that every default lookup finds ($STATION_PROFILES)."""
    folder = tmp_path / "profiles"
    monkeypatch.setenv("STATION_PROFILES", str(folder))
    return folder


@pytest.fixture
def own_weights(tmp_path) -> Path:
    """The shipped BFFN's config in a folder of its own (the weights file linked, not copied), its rule removed."""
    shipped = resolve_weights("bffn-magnetic-tile").path
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(shipped / "model.safetensors")
    config = json.loads((shipped / "config.json").read_text())
    config.pop("judging", None)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _recipe_text(weights: Path, rules: str = "", tiling: str = "") -> str:
    return MINIMAL.replace('weights = "w.safetensors"', f'weights = "{weights}"') + (
        f"\n[rules]\n{rules}\n" if rules else "") + (f"\n[tiling]\n{tiling}\n" if tiling else "")


# ------------------------------------------------------------------------------------------- the object
def test_explicit_settings_win_over_the_learned_rule_which_wins_over_the_defaults():
    learned = {"threshold": 0.8, "min_area_px": 50, "overlap": 16}
    j = Judging.from_rule(learned, where="W")
    assert (j.rules.score_threshold, j.rules.min_area_px, j.overlap, j.source) == (0.8, 50, 16, "W")
    j = Judging.from_rule(learned, threshold=0.6, where="W")
    assert (j.rules.score_threshold, j.rules.min_area_px, j.overlap) == (0.6, 50, 16)
    assert j.source == "the command line (threshold); W (min area, overlap)"
    j = Judging.from_rule(None)
    assert (j.rules.score_threshold, j.rules.min_area_px, j.overlap) == (
        DEFAULT_SCORE_THRESHOLD, DEFAULT_MIN_AREA_PX, DEFAULT_OVERLAP)
    assert j.source == "the defaults" and "score >= 0.5, min area 30 px, overlap 32 px" in j.describe()


def test_the_fingerprint_follows_what_decides_and_nothing_else():
    base = Judging()
    assert base.fingerprint() == Judging().fingerprint()
    assert base.replace(batch=8, source="elsewhere").fingerprint() == base.fingerprint()
    changed = [base.replace(score_threshold=0.9), base.replace(min_area_px=31), base.replace(overlap=16),
               base.replace(roi=RoiRect(0, 0, 10, 10)), base.replace(fail_on_labels=False, classifier=object())]
    assert len({j.fingerprint() for j in changed} | {base.fingerprint()}) == len(changed) + 1


def test_the_inspector_it_makes_judges_with_its_settings():
    class Engine:
        tile, engine_id, spec = 32, "e", None

        def infer(self, batch):
            raise AssertionError("not called")

    judging = Judging(DecisionRules(score_threshold=0.7, min_area_px=5), overlap=8, batch=4)
    inspector = judging.inspector(Engine())
    assert (inspector.rules, inspector.overlap, inspector.batch, inspector.calibration) == (
        judging.rules, 8, 4, None)


# ------------------------------------------------------------------------------ the rule travels with weights
def test_a_recipe_that_leaves_the_rule_out_takes_the_rule_beside_the_weights(tmp_path, own_weights):
    plain = load_recipe(write(tmp_path, _recipe_text(own_weights)))
    assert (plain.rules.score_threshold, plain.rules.min_area_px, plain.tiling.overlap) == (0.5, 30, 32)
    assert plain.rule_from == "the defaults"
    write_judging_rule(resolve_weights(own_weights), {"threshold": 0.8, "min_area_px": 50, "overlap": 16,
                                                      "learned_on": "a test split"})
    learned = load_recipe(write(tmp_path, _recipe_text(own_weights)))
    assert (learned.rules.score_threshold, learned.rules.min_area_px, learned.tiling.overlap) == (0.8, 50, 16)
    assert "config.json" in learned.rule_from and "a test split" in learned.rule_from
    assert learned.fingerprint() != plain.fingerprint(), "ledger rows judged by another rule must say so"
    mixed = load_recipe(write(tmp_path, _recipe_text(own_weights, rules="score_threshold = 0.6")))
    assert (mixed.rules.score_threshold, mixed.rules.min_area_px, mixed.tiling.overlap) == (0.6, 50, 16)
    assert mixed.rule_from.startswith("the recipe (threshold); ") and "(min area, overlap)" in mixed.rule_from
    judging = judging_for(mixed)
    assert (judging.rules.score_threshold, judging.overlap) == (0.6, 16) and "rule from" in judging.source
    explicit = load_recipe(write(tmp_path, _recipe_text(own_weights, rules="score_threshold = 0.6\nmin_area_px = 7",
                                                         tiling="overlap = 8")))
    assert (explicit.rules.score_threshold, explicit.rules.min_area_px, explicit.tiling.overlap) == (0.6, 7, 8)
    assert explicit.rule_from == "the recipe"
    in_mm = load_recipe(write(tmp_path, _recipe_text(own_weights, rules="min_area_mm2 = 0.1")
                              + '[calibration]\nprofile = "c"\n'))  # the area in mm² replaces the learned one
    assert (in_mm.rules.score_threshold, in_mm.rules.min_area_px, in_mm.rules.min_area_mm2, in_mm.tiling.overlap) == (
        0.8, DEFAULT_MIN_AREA_PX, 0.1, 16)
    with pytest.raises(RecipeError, match=r"overlap.*'wide' is not allowed"):  # checked as the recipe's own key
        load_recipe(write(tmp_path, _recipe_text(own_weights, tiling='overlap = "wide"')))


def test_the_shipped_weights_carry_the_rule_of_the_shipped_recipe():
    rule = resolve_weights("bffn-magnetic-tile").judging_rule()
    recipe = load_recipe(shipped_recipe_path("magnetic_tile"))
    assert rule is not None, "engines accept's rule for the shipped weights is missing from their config.json"
    assert (rule["threshold"], rule["min_area_px"], rule["overlap"]) == (
        recipe.rules.score_threshold, recipe.rules.min_area_px, recipe.tiling.overlap)


# ------------------------------------------------------------------------ verify and build judge as the line
def test_tools_that_judge_as_the_line_get_the_rules_after_the_calibration_profile(profiles, tmp_path, own_weights):
    make_profile(profiles, roi=RoiRect(10, 20, 100, 60), flatfield=False)
    text = _recipe_text(own_weights, rules="score_threshold = 0.9") + '\n[calibration]\nprofile = "cam-A"\n'
    path = write(tmp_path, text)
    judging = recipe_judging(str(path))
    assert load_recipe(path).rules.roi is None, "the recipe itself has no ROI"
    assert judging.rules.roi == RoiRect(10, 20, 100, 60), "verify and the int8 guard must judge inside the ROI"
    assert judging.rules.score_threshold == 0.9 and judging.calibration is not None
    assert "calibration cam-A" in judging.describe()


def test_engines_verify_judges_with_the_recipes_line(monkeypatch, tmp_path, capsys, own_weights):
    import engines.cli
    import engines.verify

    seen = {}

    def fake_verify(folder, data, against="torch", judging=None, **_):
        seen["judging"] = judging
        return {"passed": True, "failed": []}

    monkeypatch.setattr(engines.verify, "verify", fake_verify)
    path = write(tmp_path, _recipe_text(own_weights, rules="score_threshold = 0.85\nmin_area_px = 12"))
    assert engines.cli.main(["verify", "somewhere", "--data", "d", "--recipe", str(path)]) == 0
    assert (seen["judging"].rules.score_threshold, seen["judging"].rules.min_area_px) == (0.85, 12)
    assert "rule: score >= 0.85, min area 12 px" in capsys.readouterr().err


# ------------------------------------------------------- engines eval with no flags = station run, image by image
def _subset(magnetic_tile: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A few real images in the data set's own layout (for engines eval) and flat (for the station's replay)."""
    data, flat, names = tmp_path / "data", tmp_path / "flat", {}
    flat.mkdir()
    for folder, count in (("MT_Free", 6), ("MT_Blowhole", 2), ("MT_Break", 2), ("MT_Uneven", 2), ("MT_Crack", 2)):
        (data / folder).mkdir(parents=True)
        for jpg in sorted((magnetic_tile / folder).glob("*.jpg"))[:count]:
            shutil.copy2(jpg, data / folder / jpg.name)
            shutil.copy2(jpg.with_suffix(".png"), data / folder / jpg.with_suffix(".png").name)
            shutil.copy2(jpg, flat / f"{folder}-{jpg.name}")
            names[f"{folder}-{jpg.name}"] = f"{folder}/{jpg.name}"
    return data, flat, names


def test_engines_eval_without_rule_flags_gives_the_verdicts_of_station_run(magnetic_tile, tmp_path):
    data, flat, names = _subset(magnetic_tile, tmp_path)
    report = tmp_path / "eval.json"
    ev = subprocess.run([*ENGINES, "eval", "--weights", "bffn-magnetic-tile", "--data", str(data), "--threads", "2",
                         "--json", str(report)], capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr
    assert "learned by engines accept" in ev.stderr, ev.stderr
    judged = json.loads(report.read_text())
    by_eval = {r["name"]: r["verdict"] for r in judged["images_detail"]}
    assert len(by_eval) == len(names)
    # the weights' rule matters here: at the default rule these images would not all be judged alike
    at = {round(p["threshold"], 2): (p["tp"], p["fp"]) for p in judged["sweep"]}
    assert at[0.5] != at[0.95], "pick images whose verdicts depend on the rule"

    db = tmp_path / "line.db"
    run = subprocess.run([*STATION, "run", "--source", f"replay:{flat}", "--headless", "--max-frames",
                          str(len(names)), "--fps", "0", "--db", str(db), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "rows.json"
    exported = subprocess.run([*STATION, "export", "--db", str(db), "--format", "json", "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    by_line = {names[Path(r["file"]).name]: r["verdict"] for r in json.loads(out.read_text())}
    assert by_line == by_eval


# ------------------------------------------------------------------------------------------- a recipe switch
def _frames_recipe(tmp_path: Path, name: str, frames: str) -> Path:
    import re

    from tests.station.test_cli import SAMPLES

    text = (shipped_recipe_path("magnetic_tile").read_text()
            .replace('path = "../samples/magnetic-tile"', f'path = "{SAMPLES.as_posix()}"')
            .replace("loop = true", "loop = false").replace("fps = 10.0", "fps = 0").replace("threads = 0", "threads = 1"))
    text, n = re.subn(r"(?m)^db = .*", f'db = "{(tmp_path / name).as_posix()}.db"', text)
    assert n == 1, "the shipped recipe's [log] db line moved: update this helper"
    path = tmp_path / f"{name}.toml"
    path.write_text(text + (f"\n[frames]\n{frames}\n" if frames else ""))
    return path


def test_a_switched_recipe_brings_its_frame_guards(tmp_path):
    """What judges includes the recipe's [frames] limits: after a switch the new recipe's guards refuse frames the
    old one took, and the rows carry the new recipe's label."""
    import io
    import sqlite3

    from station.app import build_inspector, build_line, run_headless
    from station.judge import ActiveJudge

    plain_recipe = load_recipe(_frames_recipe(tmp_path, "plain", ""))
    switched_recipe = load_recipe(_frames_recipe(tmp_path, "switched", ""))
    narrow = load_recipe(_frames_recipe(tmp_path, "narrow", "max_width = 100"))
    for recipe, switch_to in ((plain_recipe, None), (switched_recipe, narrow)):
        line = build_line(recipe, max_frames=3)
        if switch_to is not None:
            line.switch(ActiveJudge.of(switch_to, build_inspector(switch_to)))
        run_headless(line, out=io.StringIO())
    with sqlite3.connect(tmp_path / "plain.db") as con:
        plain = con.execute("SELECT verdict, reason FROM inspections ORDER BY id").fetchall()
    with sqlite3.connect(tmp_path / "switched.db") as con:
        switched = con.execute("SELECT verdict, reason, recipe FROM inspections ORDER BY id").fetchall()
    assert plain and all(verdict in ("PASS", "FAIL") for verdict, _ in plain[:3])
    assert switched and all(v == "NOT_INSPECTED" and reason == "too_large" for v, reason, _ in switched)
    assert {label for _, _, label in switched} == {f"magnetic_tile {narrow.fingerprint()}"}
