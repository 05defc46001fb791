"""Issue 29, "Shadow before promotion" and "Promotion": a candidate engine judged beside the line on a share of the
parts, recorded in the ledger's shadow table, reported, and promoted with a record. Real recipes with [shadow], the
shipped BFFN on ONNX Runtime as production and copies of it carrying another learned rule as candidates, real SQLite
ledgers, the real `station` command in a subprocess."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import sqlite3
import threading
import urllib.request
from pathlib import Path

import pytest

from station.app import build_inspector, build_shadow
from station.errors import RecipeError
from station.pipeline import Line
from station.recipe import DEFAULT_SHADOW_SHARE, QueuePolicy, load_recipe, shipped_recipe_path
from station.rejectlog import SCHEMA_VERSION, RejectLog, pass_sampled
from station.shadow import Candidate, ShadowWorker, candidate_recipe
from station.shadow_tables import PROMOTION_COLUMNS
from station.sources import ReplaySource
from tests.station.test_cli import SAMPLES, run_station
from tests.station.waiting import wait_until

SHIPPED = Path(__file__).resolve().parents[2] / "engines" / "weights" / "bffn-magnetic-tile"
SHARE = 0.5
#: The candidate's learned rule: weaker pixels count (0.6 against the shipped 0.95), smaller defects fail a part.
LENIENT = {"threshold": 0.6, "min_area_px": 20}


def query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute(sql, params).fetchall()


def dict_rows(db: Path, sql: str, params: tuple = ()) -> list[dict]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(sql, params)]


def copy_weights(out: Path, rule: dict | None) -> Path:
    """The shipped weights in another folder (the weights file linked, not copied, where the file system allows),
    with ``rule`` written over the learned rule of their config.json (None: the shipped rule)."""
    out.mkdir(parents=True)
    for name in ("config.json", "model.onnx", "onnx.json"):
        shutil.copy(SHIPPED / name, out / name)
    try:
        os.link(SHIPPED / "model.safetensors", out / "model.safetensors")
    except OSError:
        shutil.copy(SHIPPED / "model.safetensors", out / "model.safetensors")
    if rule is not None:
        config = json.loads((out / "config.json").read_text())
        config["judging"] = {**config["judging"], **rule}
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def recipe_text(*, weights: str = "bffn-magnetic-tile", shadow: str = "", rules: bool = True) -> str:
    """The shipped recipe on the bundled frames (played once, at full speed), one engine thread, another engine's
    weights, with or without its [rules] threshold and minimum area, and a [shadow] table."""
    text = (shipped_recipe_path("magnetic_tile").read_text()
            .replace('path = "../samples/magnetic-tile"', f'path = "{SAMPLES.as_posix()}"')
            .replace("loop = true", "loop = false").replace("fps = 10.0", "fps = 0").replace("threads = 0", "threads = 1")
            .replace('weights = "bffn-magnetic-tile"', f'weights = "{weights}"'))
    if not rules:
        text, n = re.subn(r"(?m)^(score_threshold|min_area_px) = .*\n", "", text)
        assert n == 2, "the shipped recipe's [rules] lines moved: update this helper"
    return text + (f"\n[shadow]\n{shadow}\n" if shadow else "")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def lenient(tmp_path_factory) -> Path:
    """A candidate: the shipped network carrying another learned rule (LENIENT)."""
    return copy_weights(tmp_path_factory.mktemp("candidate") / "lenient", LENIENT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, lenient) -> dict:
    """The bundled frames through the real `station run`, once without and once with a [shadow] candidate."""
    root = tmp_path_factory.mktemp("shadow-runs")
    plain = write(root / "plain.toml", recipe_text())
    shadowed = write(root / "shadowed.toml", recipe_text(shadow=f'weights = "{lenient}"\nshare = {SHARE}\nqueue = 16'))
    out = {"root": root, "plain_recipe": plain, "shadowed_recipe": shadowed}
    for name, recipe in (("plain", plain), ("shadowed", shadowed)):
        db = root / f"{name}.db"
        done = run_station("run", "--recipe", str(recipe), "--headless", "--db", str(db), "--json",
                           "--drain-timeout", "300")
        assert done.returncode == 0, done.stderr
        out[name] = db
        out[f"{name}_summary"] = json.loads(done.stdout)
    return out


# -- the [shadow] table ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("table, message", [
    ("share = 0.1", r"\[shadow\] weights: missing; add weights = the candidate's weights folder"),
    ('weights = "/nowhere/candidate"', r"\[shadow\] weights: '/nowhere/candidate' is not allowed; no weights at "
                                       r"/nowhere/candidate: expected a folder with config.json"),
    ('weights = "bffn-magnetic-tile"\nshare = 0', r"\[shadow\] share: 0 is not allowed; use a share of the inspected "
                                                  r"parts above 0 and up to 1, e.g. 0.1"),
    ('weights = "bffn-magnetic-tile"\nshare = 1.5', r"\[shadow\] share: 1.5 is not allowed"),
    ('weights = "bffn-magnetic-tile"\nbackend = "openvino"', r"\[shadow\] backend: 'openvino' is not allowed; use one "
                                                             r"of 'onnxruntime'"),
    ('weights = "bffn-magnetic-tile"\nnice = 20', r"\[shadow\] nice: 20 is not allowed; use an integer from 0 to 19"),
    ('weights = "bffn-magnetic-tile"\nqueue = 0', r"\[shadow\] queue: 0 is not allowed"),
    ('weights = "bffn-magnetic-tile"\nshares = 0.2', r"\[shadow\] shares: unknown key; did you mean 'share'\?"),
])
def test_the_shadow_table_is_checked_key_by_key(tmp_path, table, message):
    with pytest.raises(RecipeError, match=message) as caught:
        load_recipe(write(tmp_path / "r.toml", recipe_text(shadow=table)))
    assert "\n" not in str(caught.value)


def test_the_shadow_defaults_and_what_it_needs(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.toml", recipe_text(shadow='weights = "bffn-magnetic-tile"')))
    s = recipe.shadow
    assert (s.weights, s.share, s.backend, s.threads, s.queue, s.nice) == (
        "bffn-magnetic-tile", DEFAULT_SHADOW_SHARE, recipe.engine.backend, 1, 2, 19)
    plain = load_recipe(write(tmp_path / "p.toml", recipe_text()))
    assert plain.shadow is None and plain.fingerprint() == recipe.fingerprint(), "a shadow judges no production part"
    with_classifier = recipe_text(shadow='weights = "bffn-magnetic-tile"') + '\n[classifier]\nweights = "gr-neu-seg"\n'
    with pytest.raises(RecipeError, match=r"\[shadow\] weights: a shadow compares segmentation engines"):
        load_recipe(write(tmp_path / "c.toml", with_classifier))


def test_the_candidate_judges_with_its_own_rule_after_the_recipes_tiling(tmp_path, lenient):
    recipe = load_recipe(write(tmp_path / "r.toml", recipe_text(shadow=f'weights = "{lenient}"')))
    judged = candidate_recipe(recipe)
    assert (judged.rules.score_threshold, judged.rules.min_area_px) == (LENIENT["threshold"], LENIENT["min_area_px"])
    assert (judged.tiling, judged.engine.threads, judged.engine.weights) == (recipe.tiling, 1, str(lenient))
    assert (recipe.rules.score_threshold, recipe.rules.min_area_px) == (0.95, 30), "production keeps its rule"
    ruleless = copy_weights(tmp_path / "ruleless", None)
    config = json.loads((ruleless / "config.json").read_text())
    del config["judging"]
    (ruleless / "config.json").write_text(json.dumps(config))
    judged = candidate_recipe(recipe.with_overrides({"shadow.weights": str(ruleless)}))
    assert judged.rules == recipe.rules, "a candidate without a learned rule judges with the recipe's"


# -- the line with a shadow --------------------------------------------------------------------------------------
def test_the_production_verdicts_are_the_same_with_and_without_a_shadow(runs):
    columns = "frame_id, file, part_id, verdict, defects_json, labels_json, engine_id, recipe, rejected"
    plain = query(runs["plain"], f"SELECT {columns} FROM inspections ORDER BY id")
    shadowed = query(runs["shadowed"], f"SELECT {columns} FROM inspections ORDER BY id")
    assert len(plain) == 16 and {r[3] for r in plain} == {"PASS", "FAIL"}
    assert shadowed == plain, "the shadow changed a production verdict, a defect or a row"
    assert query(runs["plain"], "SELECT COUNT(*) FROM shadow") == [(0,)]
    summary = runs["shadowed_summary"]["shadow"]
    assert runs["plain_summary"].get("shadow") is None
    assert (summary["skipped"], summary["unfinished"], summary["errors"]) == (0, 0, 0)
    assert summary["niceness"] == (19 if os.uname().sysname == "Linux" else None), "the worker runs at low priority"


def test_shadow_rows_appear_for_the_share_with_both_mask_summaries(runs, lenient):
    db = runs["shadowed"]
    rows = dict_rows(db, "SELECT s.*, i.file, i.verdict AS row_verdict, i.defects_json, i.engine_id AS row_engine "
                         "FROM shadow s JOIN inspections i ON i.id = s.inspection_id ORDER BY s.id")
    files = [r[0] for r in query(db, "SELECT file FROM inspections WHERE verdict IN ('PASS', 'FAIL')")]
    chosen = {f for f in files if pass_sampled(f, SHARE)}  # a replayed part's identity is its file's name
    assert 0 < len(chosen) < len(files)
    assert sorted(r["file"] for r in rows) == sorted(chosen), "the share is chosen by the parts' identity"
    assert runs["shadowed_summary"]["shadow"]["chosen"] == runs["shadowed_summary"]["shadow"]["shadowed"] == len(rows)
    candidate = {r["candidate"] for r in rows}
    assert len(candidate) == 1 and candidate.pop().startswith("bffn-860977ab@onnxruntime-fp32#")
    for r in rows:
        defects = json.loads(r["defects_json"])
        assert (r["production_verdict"], r["production_engine"]) == (r["row_verdict"], r["row_engine"])
        assert (r["production_defects"], r["production_area_px"]) == (len(defects), sum(d["area_px"] for d in defects))
        assert json.loads(r["production_classes"]) == sorted({d["label"] for d in defects})
        assert r["agree"] == int(r["production_verdict"] == r["candidate_verdict"])
        assert (r["candidate_verdict"] == "FAIL") == (r["candidate_defects"] > 0)
        assert r["candidate_weights"] == str(lenient) and "score >= 0.6, min area 20 px" in r["candidate_rule"]
        assert r["candidate_ms"] > 0 and r["waited_ms"] >= 0 and 0 <= r["candidate_max_score"] <= 1
    differ = [r for r in rows if not r["agree"]]
    assert differ and any(r["agree"] for r in rows), "the lenient rule fails some parts the shipped rule passes"
    # each disagreement is what the candidate makes of the part, judged again here independently
    recipe = load_recipe(runs["shadowed_recipe"])
    inspector = build_inspector(candidate_recipe(recipe))
    for r in differ:
        with ReplaySource(SAMPLES, loop=False, pattern=r["file"]) as source:
            result = inspector.inspect(next(iter(source)))
        assert (result.verdict.value, len(result.defects), sum(d.area_px for d in result.defects)) == (
            r["candidate_verdict"], r["candidate_defects"], r["candidate_area_px"])
        assert round(float(result.mask.max()), 4) == r["candidate_max_score"]
    with contextlib.closing(sqlite3.connect(db)) as con:
        for sql in ("UPDATE shadow SET agree = 1", "DELETE FROM shadow"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                con.execute(sql)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """``/metrics`` as ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def stuck_line(tmp_path: Path, candidate_inspector, gate: threading.Event, queue: int = 1, max_frames=None):
    """The bundled frames through a line whose shadow (share 1: every part) has a candidate that waits for ``gate``
    before judging each part, as a candidate far slower than the line would."""
    recipe = load_recipe(shipped_recipe_path("magnetic_tile")).with_overrides({"engine.threads": 1})
    db = tmp_path / "line.db"
    line = Line(ReplaySource(SAMPLES, loop=False, pattern="*.jpg"), build_inspector(recipe),
                RejectLog(db, station_id="t", run_id="r"), frames_policy=QueuePolicy.BLOCK, max_frames=max_frames)

    class Stuck:
        def __getattr__(self, name):
            return getattr(candidate_inspector, name)

        def inspect(self, frame, checkpoint=None):
            gate.wait()
            return candidate_inspector.inspect(frame, checkpoint=checkpoint)

    shadow = ShadowWorker(Stuck(), Candidate.of("bffn-magnetic-tile", candidate_inspector), db, share=1.0,
                          queue_size=queue, nice=19, station_id="t", run_id="r")
    shadow.start(line)
    line.listeners.append(shadow)
    return line, shadow, db


@pytest.fixture(scope="module")
def candidate_inspector():
    recipe = load_recipe(shipped_recipe_path("magnetic_tile")).with_overrides({
        "engine.threads": 1, "shadow.weights": "bffn-magnetic-tile"})
    return build_inspector(candidate_recipe(recipe))


def test_a_full_queue_skips_parts_and_never_holds_the_line(tmp_path, candidate_inspector):
    from station.integrations import Context, start_all
    from station.metrics import from_table
    from station.recipe import TableReader

    gate = threading.Event()
    line, shadow, db = stuck_line(tmp_path, candidate_inspector, gate)
    recipe = load_recipe(shipped_recipe_path("magnetic_tile"))
    metrics = from_table(TableReader({"listen": "127.0.0.1:0"}, "t.toml", "metrics", tmp_path),
                         Context(recipe, db, "t", "r"))
    assert start_all([metrics], line) == [metrics]
    try:
        line.start()
        assert line.join(300), "the line ended while its shadow was stuck"  # never waits for the shadow
        assert not gate.is_set()
        status = shadow.status()
        rows = query(db, "SELECT COUNT(*) FROM inspections WHERE verdict IN ('PASS', 'FAIL')")[0][0]
        assert rows == 16 and status["chosen"] == 16
        # one part in the candidate's hands, one queued, every other one skipped (counted, never waited for)
        assert (status["skipped"], status["queued"], status["shadowed"]) == (14, 1, 0)
        got = scrape(metrics.port)
        assert got[("station_shadow_skipped_total", ())] == 14 and got[("station_shadow_parts_total", ())] == 0
        gate.set()
        shadow.close(drain_s=300)  # a normal end: what is queued is judged
        status = shadow.status()
        assert (status["shadowed"], status["unfinished"], status["skipped"]) == (2, 0, 14)
        assert query(db, "SELECT COUNT(*) FROM shadow") == [(2,)]
        got = scrape(metrics.port)
        assert got[("station_shadow_parts_total", ())] == 2 == status["agree"], "the same network and rule agree"
        assert got[("station_shadow_disagreements_total", ())] == 0
        assert got[("station_shadow_disagreement_ratio", ())] == 0.0
        assert not [name for name, _ in got if name.endswith("_created")]
    finally:
        gate.set()
        line.stop()
        shadow.close()
        metrics.close()


def test_stopping_cancels_the_part_being_judged_and_what_is_queued(tmp_path, candidate_inspector):
    gate = threading.Event()
    line, shadow, db = stuck_line(tmp_path, candidate_inspector, gate, queue=2, max_frames=3)
    judging = []
    inspect = candidate_inspector.inspect

    def watched(frame, checkpoint=None):  # the candidate's batches: the stop cancels between two of them
        judging.append(frame.frame_id)
        return inspect(frame, checkpoint=checkpoint)

    candidate_inspector.inspect = watched
    try:
        line.start()
        assert line.join(300)
        wait_until(lambda: shadow.status()["queued"] == 2, 60, "two parts queued behind the stuck one")
        closing = threading.Thread(target=shadow.close, kwargs={"drain_s": 0.0})
        closing.start()
        wait_until(lambda: shadow._cancel.is_set(), 30, "the stop reaching the shadow")
        gate.set()  # the part in hand goes to the engine now, and is cancelled before its first batch
        closing.join(60)
        assert not closing.is_alive(), "the shadow stopped"
        status = shadow.status()
        assert (status["shadowed"], status["unfinished"]) == (0, 3) and judging == [judging[0]]
        assert query(db, "SELECT COUNT(*) FROM shadow") == [(0,)]
        assert not [t for t in threading.enumerate() if t.name in ("shadow", "shadow-recorder")]
    finally:
        del candidate_inspector.inspect
        gate.set()
        shadow.close()


def test_a_shadow_is_refused_on_a_line_scan_line(tmp_path):
    from dataclasses import replace

    from station.recipe import SourceKind

    recipe = load_recipe(write(tmp_path / "r.toml", recipe_text(shadow='weights = "bffn-magnetic-tile"')))
    scanning = replace(recipe, source=replace(recipe.source, kind=SourceKind.LINESCAN_REPLAY))
    with pytest.raises(RecipeError, match=r"r\.toml: \[shadow\]: line-scan parts are streamed"):
        build_shadow(scanning)
    assert build_shadow(load_recipe(write(tmp_path / "p.toml", recipe_text()))) is None


# -- station shadow report -------------------------------------------------------------------------------------
@pytest.fixture
def ledger(runs, tmp_path) -> Path:
    db = tmp_path / "line.db"
    shutil.copy(runs["shadowed"], db)
    return db


def reviewed(db: Path) -> dict:
    """Reviews of three shadowed parts: the first disagreement marked defective (the production PASS is an escape),
    an agreeing FAIL marked good then defective (the latest counts: correct), an agreeing PASS marked good."""
    rows = dict_rows(db, "SELECT inspection_id, production_verdict, agree FROM shadow ORDER BY id")
    differ = next(r["inspection_id"] for r in rows if not r["agree"] and r["production_verdict"] == "PASS")
    fail = next(r["inspection_id"] for r in rows if r["agree"] and r["production_verdict"] == "FAIL")
    passed = next(r["inspection_id"] for r in rows if r["agree"] and r["production_verdict"] == "PASS")
    for marks in ([f"{differ}=defect", f"{fail}=good", f"{passed}=good"], [f"{fail}=defect"]):
        done = run_station("review", "--db", str(db), *[a for m in marks for a in ("--mark", m)], "--by", "qa")
        assert done.returncode == 0, done.stderr
    return {"differ": differ, "fail": fail, "passed": passed}


def test_shadow_report_gives_agreement_differences_and_how_each_engine_fared(ledger):
    marked = reviewed(ledger)
    rows = dict_rows(ledger, "SELECT * FROM shadow ORDER BY id")
    agree = sum(r["agree"] for r in rows)
    done = run_station("shadow", "report", "--db", str(ledger), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    [c] = report["candidates"]
    assert (c["shadowed"], c["agree"], c["disagreements"]) == (len(rows), agree, len(rows) - agree)
    assert c["agreement"] == round(agree / len(rows), 4)
    assert c["production_pass_candidate_fail"] + c["production_fail_candidate_pass"] == len(rows) - agree
    assert [d["row"] for d in c["differ"]] == [r["inspection_id"] for r in rows if not r["agree"]]
    first = next(d for d in c["differ"] if d["row"] == marked["differ"])
    source = next(r for r in rows if r["inspection_id"] == marked["differ"])
    assert first["production"] == {"verdict": "PASS", "defects": source["production_defects"],
                                   "area_px": source["production_area_px"], "classes": [],
                                   "max_score": source["production_max_score"]}
    assert first["candidate"]["verdict"] == "FAIL" and first["candidate"]["classes"] == ["defect"]
    assert first["review"] == "defect" and first["file"].endswith(".jpg")
    assert c["reviewed"] == {"parts": 3, "production": {"correct": 2, "false_reject": 0, "escape": 1},
                             "candidate": {"correct": 3, "false_reject": 0, "escape": 0}}
    text = run_station("shadow", "report", "--db", str(ledger))
    assert text.returncode == 0, text.stderr
    words = " ".join(text.stdout.split())
    assert f"agree {agree}, differ {len(rows) - agree}: agreement {100 * agree / len(rows):.1f} %" in words
    assert "production 2 0 1" in words and "candidate 3 0 0" in words
    assert f"{marked['differ']} {first['file']} PASS 0 defect(s)" in words and "[reviewed defect]" in words
    assert "promotions (0): none recorded" in words
    prefix = c["candidate"][:14]
    assert json.loads(run_station("shadow", "report", "--db", str(ledger), "--candidate", prefix,
                                  "--json").stdout)["candidates"][0]["candidate"] == c["candidate"]
    by_sha = run_station("shadow", "report", "--db", str(ledger), "--candidate", c["sha256"][:10], "--json")
    assert json.loads(by_sha.stdout)["candidates"][0]["candidate"] == c["candidate"]
    unknown = run_station("shadow", "report", "--db", str(ledger), "--candidate", "unet-0000")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "no such candidate" in unknown.stderr
    missing = run_station("shadow", "report", "--db", str(ledger.parent / "none.db"))
    assert missing.returncode == 2 and "no reject log at" in missing.stderr


# -- promotion ---------------------------------------------------------------------------------------------------
def test_station_promote_records_who_what_and_the_shadow_report(ledger, lenient, tmp_path):
    reviewed(ledger)
    before = query(ledger, "SELECT recipe, engine_id FROM inspections ORDER BY id DESC LIMIT 1")[0]
    keeps_rules = write(tmp_path / "keeps_rules.toml", recipe_text(weights=str(lenient)))
    other = copy_weights(tmp_path / "other", None)  # other weights (a byte changed): never shadowed here
    data = (other / "model.safetensors").read_bytes()
    (other / "model.safetensors").unlink()
    (other / "model.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    never = write(tmp_path / "never.toml", recipe_text(weights=str(other), rules=False))
    other_rule = write(tmp_path / "other_rule.toml", recipe_text(
        weights=str(copy_weights(tmp_path / "stricter", {"threshold": 0.7})), rules=False))
    same = write(tmp_path / "same.toml", recipe_text())
    for recipe, message in ((keeps_rules, "the shadow judged weights .* with score >= 0.6, min area 20 px.*"
                                          "judges with score >= 0.95, min area 30 px.*Leave \\[rules\\] "
                                          "score_threshold and min_area_px out"),
                            (other_rule, "the shadow judged weights .* with score >= 0.6, min area 20 px.*judges "
                                         "with score >= 0.7, min area 30 px"),
                            (never, "were never shadowed in .*run the line with \\[shadow\\] weights"),
                            (same, "nothing to promote: the latest parts in .* were judged by")):
        refused = run_station("promote", "--db", str(ledger), "--recipe", str(recipe), "--by", "alice")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert re.search(message, refused.stderr), refused.stderr
    assert query(ledger, "SELECT COUNT(*) FROM promotions") == [(0,)]

    new = write(tmp_path / "line_v2.toml", recipe_text(weights=str(lenient), rules=False))
    done = run_station("promote", "--db", str(ledger), "--recipe", str(new), "--by", "alice", "--note", "QA sign-off")
    assert done.returncode == 0, done.stderr
    assert "promotion 1 recorded" in done.stdout and "station run --recipe" in done.stdout
    assert "PrepareRecipe with recipe id 'line_v2'" in done.stdout
    report = json.loads(run_station("shadow", "report", "--db", str(ledger), "--json").stdout)
    [promotion] = report["promotions"]
    [candidate] = report["candidates"]
    recipe = load_recipe(new)
    assert (promotion["promoted_by"], promotion["via"], promotion["note"]) == ("alice", "station promote", "QA sign-off")
    assert (promotion["from_recipe"], promotion["from_engine"]) == before
    assert promotion["to_recipe"] == f"magnetic_tile {recipe.fingerprint()}" != before[0]
    assert promotion["to_weights"] == str(lenient) and promotion["to_sha256"] == candidate["sha256"]
    assert promotion["to_engine"] == "bffn-860977ab@onnxruntime-fp32"
    assert promotion["candidate"] == candidate["candidate"] and promotion["to_judging"] == candidate["judging"]
    summary = promotion["summary"]
    for key in ("shadowed", "agree", "disagreements", "agreement", "reviewed"):
        assert summary[key] == candidate[key], key
    assert promotion["time_utc"].endswith("Z") and promotion["recipe_path"] == str(new.resolve())
    text = run_station("shadow", "report", "--db", str(ledger)).stdout
    assert "promotions (1):" in text and "alice via station promote" in text
    forced = run_station("promote", "--db", str(ledger), "--recipe", str(never), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["candidate"] is None  # recorded as never shadowed so

    # QA exports the promotions beside the parts: the same rows the report gives, in CSV and JSON
    exported = run_station("export", "--db", str(ledger), "--format", "json", "--promotions", "--out", "-")
    assert exported.returncode == 0 and "2 promotion(s)" in exported.stderr, exported.stderr
    assert json.loads(exported.stdout) == json.loads(run_station("shadow", "report", "--db", str(ledger),
                                                                 "--json").stdout)["promotions"]
    as_csv = tmp_path / "promotions.csv"
    assert run_station("export", "--db", str(ledger), "--format", "csv", "--promotions", "--station", promotion["station_id"],
                       "--until", promotion["time_utc"][:10], "--out", str(as_csv)).returncode == 0
    rows = list(csv.DictReader(as_csv.open()))
    assert [(r["promoted_by"], r["via"], r["to_sha256"]) for r in rows[:1]] == [
        ("alice", "station promote", candidate["sha256"])] and len(rows) == 2
    assert json.loads(rows[0]["summary_json"])["shadowed"] == candidate["shadowed"]
    later = run_station("export", "--db", str(ledger), "--format", "csv", "--promotions", "--since", "2999-01-01",
                        "--out", "-")
    assert later.stdout.strip().split("\n") == [",".join(PROMOTION_COLUMNS)], "only the header: none that late"
    mixed = run_station("export", "--db", str(ledger), "--format", "csv", "--promotions", "--per-defect",
                        "--verdict", "fail", "--out", "-")
    assert mixed.returncode == 2 and "drop --per-defect, --verdict: they select parts" in mixed.stderr
    with contextlib.closing(sqlite3.connect(ledger)) as con:
        for sql in ("UPDATE promotions SET promoted_by = 'bob'", "DELETE FROM promotions"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                con.execute(sql)


def test_a_schema_6_ledger_is_upgraded_in_place_and_read_before(ledger):
    assert SCHEMA_VERSION == 7
    with contextlib.closing(sqlite3.connect(ledger)) as con:  # what a schema-6 station left
        con.execute("DROP TABLE shadow")
        con.execute("DROP TABLE promotions")
        con.execute("PRAGMA user_version=6")
        con.commit()
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'inspections'").fetchone()[0]
    columns = [r[1] for r in query(ledger, "PRAGMA table_info(inspections)")]
    before = query(ledger, f"SELECT {', '.join(f'quote({c})' for c in columns)} FROM inspections ORDER BY id")
    report = run_station("shadow", "report", "--db", str(ledger), "--json")  # read as it is
    assert report.returncode == 0 and json.loads(report.stdout) == {"db": str(ledger), "candidates": [],
                                                                    "promotions": []}
    assert query(ledger, "PRAGMA user_version") == [(6,)]
    with RejectLog(ledger) as log:  # a station of schema 7 opens it
        assert len(log.query()) == len(before)
    assert query(ledger, "PRAGMA user_version") == [(7,)]
    assert query(ledger, "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('shadow', 'promotions') "
                         "ORDER BY name") == [("promotions",), ("shadow",)]
    assert query(ledger, f"SELECT {', '.join(f'quote({c})' for c in columns)} FROM inspections ORDER BY id") == before
    assert query(ledger, "SELECT rootpage FROM sqlite_master WHERE name = 'inspections'") == [(root,)], "not copied"


def test_a_restart_with_other_weights_is_recorded_as_a_promotion_unless_one_came_first(runs, tmp_path):
    """Every engine that judged parts has its record: a station started with other weights than judged the ledger's
    latest parts records the switch (via the restart, by the operator), once; a `station promote` before the restart
    is the record, and the same weights again record nothing."""
    db = tmp_path / "line.db"
    shutil.copy(runs["plain"], db)
    other = copy_weights(tmp_path / "other", None)  # other weights: a byte changed, another SHA-256
    data = (other / "model.safetensors").read_bytes()
    (other / "model.safetensors").unlink()
    (other / "model.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    switched = write(tmp_path / "switched.toml", recipe_text(weights=str(other), rules=False))
    before = query(db, "SELECT recipe, engine_id FROM inspections WHERE verdict IN ('PASS','FAIL') "
                       "ORDER BY id DESC LIMIT 1")[0]

    def start(recipe: Path) -> None:
        done = run_station("run", "--recipe", str(recipe), "--headless", "--db", str(db), "--max-frames", "2",
                           "--operator", "op-anna", "--json")
        assert done.returncode == 0, done.stderr

    start(switched)
    [row] = dict_rows(db, "SELECT * FROM promotions")
    assert (row["via"], row["promoted_by"], row["candidate"]) == ("station run (restart)", "op-anna", None)
    assert (row["from_recipe"], row["from_engine"]) == before
    assert row["to_weights"] == str(other) and row["to_engine"].split("@")[0] != before[1].split("@")[0]
    assert "no station promote of them came first" in row["note"]
    start(switched)  # the same weights again: nothing new
    assert query(db, "SELECT COUNT(*) FROM promotions") == [(1,)]
    plain = runs["plain_recipe"]
    done = run_station("promote", "--db", str(db), "--recipe", str(plain), "--by", "alice", "--force")
    assert done.returncode == 0, done.stderr
    start(plain)  # promoted first: the restart is not recorded again
    assert [r["via"] for r in dict_rows(db, "SELECT via FROM promotions ORDER BY id")] == [
        "station run (restart)", "station promote"]
