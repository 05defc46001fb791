"""Issue 29 end to end: the station learns from its line. The real line runs on replayed frames; QA overrules false
rejects and marks an escape with `station review --mark`; `engines dataset --from-ledger` builds the data set and
its masks survive a COCO round trip; a few fine-tuning steps make a candidate; the line runs again with the
candidate in `[shadow]`; `station shadow report` lists where the two disagree; the promotion is recorded; and the
promoted recipe's line judges with the candidate."""
from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from pathlib import Path

import pytest

from engines.cli import main as engines
from engines.data.segmentation import load_dataset
from engines.weights import resolve_weights, write_judging_rule
from station.cli import main as station
from tests.station.test_cli import run_station
from tests.station.test_shadow import recipe_text

pytestmark = pytest.mark.slow


def rows(db: Path, sql: str) -> list[dict]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(sql)]


def run_line(recipe: Path, db: Path) -> None:
    done = run_station("run", "--recipe", str(recipe), "--headless", "--db", str(db), "--drain-timeout", "300",
                       timeout=600)
    assert done.returncode == 0, done.stderr


def test_review_relabel_retrain_shadow_promote(tmp_path, capsys):
    # 1. the line runs, keeping every part's image (a real line keeps its rejects and a share of its passes)
    db = tmp_path / "station-data" / "rejects.db"
    db.parent.mkdir()
    first = tmp_path / "line.toml"
    first.write_text(re.sub(r"save_pass_share = [0-9.]+", "save_pass_share = 1.0", recipe_text()))
    run_line(first, db)
    judged = rows(db, "SELECT id, verdict, file FROM inspections ORDER BY id")
    fails = [r["id"] for r in judged if r["verdict"] == "FAIL"]
    passes = [r["id"] for r in judged if r["verdict"] == "PASS"]
    assert len(fails) >= 3 and passes, judged

    # 2. QA: two false rejects overruled, a reject confirmed, a pass marked as an escape
    overruled, confirmed, escape = fails[:2], fails[2], passes[0]
    assert station(["review", "--db", str(db), "--by", "qa-anna", *[a for r in overruled for a in ("--mark", f"{r}=good")],
                    "--mark", f"{confirmed}=defect", "--mark", f"{escape}=defect"]) == 0
    assert len(rows(db, "SELECT * FROM reviews")) == 4

    # 3. the line's data set, and its masks through a labelling tool's format and back
    data = tmp_path / "line-data"
    assert engines(["dataset", "--from-ledger", str(db), "--out", str(data)]) == 0
    samples = {s.name: s for s in load_dataset(data)}
    assert len(samples) == 3  # the overruled rejects (defect-free) and the confirmed one (its predicted mask)
    assert sum(s.mask.any() for s in samples.values()) == 1
    assert len(list((data / "needs_mask").glob("*.png"))) == 1, "the escape waits for a mask"
    masks_before = {p.name: p.read_bytes() for p in (data / "masks").iterdir()}
    coco = tmp_path / "line.coco.json"
    assert engines(["dataset", "--export-coco", str(data), "--out", str(coco)]) == 0
    assert engines(["dataset", "--import-coco", str(coco), "--into", str(data)]) == 0
    assert {p.name: p.read_bytes() for p in (data / "masks").iterdir()} == masks_before
    capsys.readouterr()

    # 4. a few fine-tuning steps from the production weights on the line's data: the candidate, with the rule that
    #    `engines accept` would write beside it (a lower threshold than production's 0.95)
    candidate = tmp_path / "candidate"
    assert engines(["train", "bffn", "--init", "bffn-magnetic-tile", "--data", str(data), "--out", str(candidate),
                    "--epochs", "1", "--steps-per-epoch", "2", "--batch", "2", "--threads", "2", "--device", "cpu",
                    "--no-validate", "--quiet"]) == 0
    write_judging_rule(resolve_weights(str(candidate)), {"threshold": 0.5, "min_area_px": 20})

    # 5. the line again, the candidate in [shadow] on every part
    shadowed = tmp_path / "line-shadow.toml"
    shadowed.write_text(recipe_text(shadow=f'weights = "{candidate.as_posix()}"\nshare = 1.0\nqueue = 16'))
    run_line(shadowed, db)
    shadow = rows(db, "SELECT * FROM shadow ORDER BY inspection_id")
    second_run = [r["id"] for r in rows(db, "SELECT id FROM inspections ORDER BY id")][len(judged):]
    assert [r["inspection_id"] for r in shadow] == second_run, "every part of the second run was shadowed"
    production = {r["id"]: r["verdict"] for r in rows(db, "SELECT id, verdict FROM inspections")}
    assert all(r["production_verdict"] == production[r["inspection_id"]] for r in shadow)
    differ = {r["inspection_id"] for r in shadow if not r["agree"]}
    assert differ, "a lower threshold on retrained weights disagrees somewhere on these frames"
    assert all(r["candidate_verdict"] != r["production_verdict"] for r in shadow if not r["agree"])

    report = run_station("shadow", "report", "--db", str(db), "--json")
    assert report.returncode == 0, report.stderr
    (seen,) = json.loads(report.stdout)["candidates"]
    assert {d["row"] for d in seen["differ"]} == differ and seen["shadowed"] == len(second_run)
    text = run_station("shadow", "report", "--db", str(db)).stdout
    assert all(re.search(rf"\b{row}\b", text) for row in differ)

    # 6. promotion: the recipe with the candidate's weights (its own rule), recorded with who and the report
    promoted = tmp_path / "line_v2.toml"
    promoted.write_text(recipe_text(weights=candidate.as_posix(), rules=False))
    done = run_station("promote", "--db", str(db), "--recipe", str(promoted), "--by", "alice")
    assert done.returncode == 0, done.stderr
    (promotion,) = rows(db, "SELECT * FROM promotions")
    assert promotion["promoted_by"] == "alice" and promotion["to_weights"] == candidate.as_posix()
    assert json.loads(promotion["summary_json"])["disagreements"] == len(differ)

    # 7. the promoted line judges as the shadow did
    run_line(promoted, db)
    after = rows(db, f"SELECT id, file, verdict, engine_id FROM inspections WHERE id > {second_run[-1]} ORDER BY id")
    by_file = {r["file"]: r for r in rows(db, "SELECT i.file, s.candidate_verdict FROM shadow s "
                                              "JOIN inspections i ON i.id = s.inspection_id")}
    assert len(after) == len(second_run)
    assert all(r["verdict"] == by_file[r["file"]]["candidate_verdict"] for r in after)
