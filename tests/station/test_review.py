"""`station review`: QA's reviews recorded append-only in the ledger (schema 6), listed, exported; real SQLite files
made by a real `station run`, and the real `station` command in a subprocess (issue 29, "Review, recorded")."""
from __future__ import annotations

import contextlib
import csv
import getpass
import io
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from station.cli import SAMPLES
from station.rejectlog import SCHEMA_VERSION, RejectLog
from tests.station.test_cli import STATION, run_station


@pytest.fixture(scope="module")
def line_ledger(tmp_path_factory) -> Path:
    """A ledger the line wrote: 4 replayed parts, PASS and FAIL."""
    db = tmp_path_factory.mktemp("line") / "line.db"
    done = run_station("run", "--source", f"replay:{SAMPLES}", "--headless", "--max-frames", "4", "--fps", "0",
                       "--db", str(db))
    assert done.returncode == 0, done.stderr
    return db


@pytest.fixture
def ledger(line_ledger, tmp_path) -> Path:
    db = tmp_path / "line.db"
    shutil.copy(line_ledger, db)
    return db


def query(db: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute(sql).fetchall()


def ids_by_verdict(db: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for row_id, verdict in query(db, "SELECT id, verdict FROM inspections ORDER BY id"):
        found.setdefault(verdict, []).append(row_id)
    assert found.get("PASS") and found.get("FAIL"), found  # the 4 sample parts have both
    return found


def inspections_bytes(db: Path) -> list[tuple]:
    """Every inspections row as SQLite quotes each value: equal lists mean equal rows, byte for byte."""
    columns = [r[1] for r in query(db, "PRAGMA table_info(inspections)")]
    return query(db, f"SELECT {', '.join(f'quote({c})' for c in columns)} FROM inspections ORDER BY id")


def test_help_reads_like_a_manual():
    assert "review" in run_station("--help").stdout
    words = " ".join(run_station("review", "--help").stdout.split())
    for option in ("--db", "--mark ROW=good|defect", "--list", "--by", "--note", "--json"):
        assert option in words
    assert "false reject" in words and "escape" in words and "append-only" in words and "Exit status" in words
    assert "--reviews" in run_station("export", "--help").stdout


def test_marks_are_recorded_listed_and_exported(ledger):
    verdicts = ids_by_verdict(ledger)
    fail, passed = verdicts["FAIL"][0], verdicts["PASS"][0]
    confirmed = verdicts["FAIL"][1]
    done = run_station("review", "--db", str(ledger), "--mark", f"{fail}=good", "--mark", f"{passed}=defect",
                       "--mark", f"{confirmed}=defect", "--by", "alice", "--note", "shift B audit")
    assert done.returncode == 0, done.stderr
    assert f"row {fail} (FAIL) marked good by alice: false reject" in done.stdout
    assert f"row {passed} (PASS) marked defect by alice: escape" in done.stdout
    stored = query(ledger, "SELECT id, inspection_id, reviewer, mark, note, time_utc FROM reviews ORDER BY id")
    assert [r[:5] for r in stored] == [(1, fail, "alice", "good", "shift B audit"),
                                      (2, passed, "alice", "defect", "shift B audit"),
                                      (3, confirmed, "alice", "defect", "shift B audit")]
    assert all(r[5].endswith("Z") and len(r[5]) == 24 for r in stored)  # UTC, as the ledger's own times

    by_default = run_station("review", "--db", str(ledger), "--mark", f"{passed}=good")  # no --by: the OS user
    assert by_default.returncode == 0, by_default.stderr
    assert query(ledger, "SELECT reviewer, note FROM reviews WHERE id = 4") == [(getpass.getuser(), None)]

    listed = run_station("review", "--db", str(ledger), "--list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 5 and "finding" in lines[0]
    assert "false reject" in lines[1] and "shift B audit" in lines[1] and "escape" in lines[2]
    assert "confirmed" in lines[3] and "confirmed" in lines[4]
    as_json = json.loads(run_station("review", "--db", str(ledger), "--list", "--json").stdout)
    assert [(r["inspection_id"], r["verdict"], r["mark"], r["finding"]) for r in as_json] == [
        (fail, "FAIL", "good", "false reject"), (passed, "PASS", "defect", "escape"),
        (confirmed, "FAIL", "defect", "confirmed"), (passed, "PASS", "good", "confirmed")]

    out = run_station("export", "--db", str(ledger), "--format", "csv", "--reviews", "--out", "-")
    assert out.returncode == 0, out.stderr
    rows = {int(r["id"]): r for r in csv.DictReader(io.StringIO(out.stdout))}
    assert (rows[fail]["review_mark"], rows[fail]["review_finding"], rows[fail]["review_by"],
            rows[fail]["review_count"]) == ("good", "false reject", "alice", "1")
    assert (rows[passed]["review_finding"], rows[passed]["review_count"]) == ("confirmed", "2")  # the latest counts
    unreviewed = [r for i, r in rows.items() if i not in (fail, passed, confirmed)]
    assert unreviewed and all(r["review_mark"] == "" and r["review_count"] == "0" for r in unreviewed)
    plain = run_station("export", "--db", str(ledger), "--format", "csv", "--out", "-").stdout
    assert "review_mark" not in plain.splitlines()[0]  # without --reviews the export is as before

    items = {r["id"]: r for r in json.loads(run_station("export", "--db", str(ledger), "--format", "json",
                                                        "--reviews", "--out", "-").stdout)}
    assert [(r["mark"], r["finding"]) for r in items[passed]["reviews"]] == [("defect", "escape"), ("good", "confirmed")]
    assert items[passed]["review_finding"] == "confirmed" and items[fail]["reviews"][0]["reviewer"] == "alice"
    assert all(r["reviews"] == [] for i, r in items.items() if i not in (fail, passed, confirmed))
    per_defect = run_station("export", "--db", str(ledger), "--format", "csv", "--per-defect", "--reviews",
                             "--out", "-")
    defects = list(csv.DictReader(io.StringIO(per_defect.stdout)))
    assert defects and {d["review_finding"] for d in defects if int(d["id"]) == fail} == {"false reject"}


def test_reviews_are_append_only_and_never_change_the_row(ledger):
    row = ids_by_verdict(ledger)["FAIL"][0]
    before = inspections_bytes(ledger)
    for mark in ("good", "defect"):
        done = run_station("review", "--db", str(ledger), "--mark", f"{row}={mark}", "--by", "qa")
        assert done.returncode == 0, done.stderr
    assert query(ledger, "SELECT id, inspection_id, mark FROM reviews ORDER BY id") == [(1, row, "good"),
                                                                                        (2, row, "defect")]
    assert inspections_bytes(ledger) == before
    with contextlib.closing(sqlite3.connect(ledger)) as con:
        for sql in ("UPDATE reviews SET mark = 'good' WHERE id = 2", "DELETE FROM reviews WHERE id = 1"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                con.execute(sql)
    assert query(ledger, "SELECT COUNT(*) FROM reviews") == [(2,)]


@pytest.mark.parametrize("args, message", [
    (["--mark", "999=good"], "row 999 is not in"),
    (["--mark", "1=maybe"], "use ROW=good or ROW=defect"),
    (["--mark", "one=good"], "use ROW=good or ROW=defect"),
    (["--mark", "1"], "use ROW=good or ROW=defect"),
    (["--mark", "1=good", "--by", " "], "reviewer's name is empty"),
    (["--list", "--by", "qa"], "--by and --note go with --mark"),
    (["--mark", "1=good", "--json"], "--json goes with --list"),
    (["--mark", "1=good", "--class", "crack", "--since", "2026-11-01"], "--since, --class filter the review window"),
    (["--list", "--finding", "unreviewed"], "--finding filter the review window; leave them out with --mark or --list"),
])
def test_bad_input_is_one_line_exit_2_and_records_nothing(ledger, args, message):
    run_station("review", "--db", str(ledger), "--mark", "1=good")  # one review before (and the file at schema 6)
    before = inspections_bytes(ledger)
    good_mark = [] if args[0] == "--list" else ["--mark", "2=defect"]  # a good mark beside the bad input
    done = run_station("review", "--db", str(ledger), *good_mark, *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("station review: error: "), done.stderr
    assert message in done.stderr
    assert query(ledger, "SELECT COUNT(*) FROM reviews") == [(1,)]  # the good marks beside a bad one are not kept
    assert inspections_bytes(ledger) == before


def test_without_mark_or_list_the_window_needs_a_display_and_says_so(ledger):
    """`station review --db DB` opens QA's window (tests/ui/test_review_window.py); where none can be shown it
    says what to use instead, exit 2, and records nothing."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([*STATION, "review", "--db", str(ledger), "--finding", "unreviewed"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("station review: error: no display here for the review window")
    assert "--mark ROW=good|defect" in done.stderr and done.stderr.count("\n") == 1
    bad = subprocess.run([*STATION, "review", "--db", str(ledger), "--since", "yesterday"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--since: 'yesterday' is not an ISO time" in bad.stderr
    assert query(ledger, "SELECT COUNT(*) FROM reviews") == [(0,)]


def test_a_reader_that_stops_early_ends_the_list_quietly(ledger):
    """`station review --list --json | head -1`: no traceback; the exit status a SIGPIPE gives (141)."""
    row = ids_by_verdict(ledger)["FAIL"][0]
    with RejectLog(ledger, save_images=False) as log:  # enough reviews to fill the pipe many times over
        log.add_reviews([(row, "good")] * 3000, "qa", "a note long enough to make the listing a few hundred kB")
    for args in (["--list", "--json"], ["--list"]):
        reader = subprocess.Popen([*STATION, "review", "--db", str(ledger), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        first = reader.stdout.readline()
        reader.stdout.close()  # what head does after its line
        assert reader.wait(timeout=120) == 141
        assert first.strip() and reader.stderr.read() == b"", args
        reader.stderr.close()


def test_no_ledger_and_a_gap_row_are_refused(tmp_path, ledger):
    missing = run_station("review", "--db", str(tmp_path / "none.db"), "--mark", "1=good")
    assert missing.returncode == 2 and "no ledger at" in missing.stderr and not (tmp_path / "none.db").exists()
    with contextlib.closing(sqlite3.connect(ledger)) as con:
        con.execute("INSERT INTO inspections (time_utc, timestamp_ns, source, frame_id, verdict, defects_json, "
                    "labels_json, engine_id, latency_ms, frame_count, last_frame_id, reason) VALUES "
                    "('2026-12-06T00:00:00.000Z', 1, 'replay:x', 90, 'GAP', '[]', '[]', '', 0, 3, 92, 'lost_ids')")
        con.commit()
        gap = con.execute("SELECT MAX(id) FROM inspections").fetchone()[0]
    done = run_station("review", "--db", str(ledger), "--mark", f"{gap}=good")
    assert done.returncode == 2 and "is a GAP row" in done.stderr
    assert query(ledger, "SELECT COUNT(*) FROM reviews") == [(0,)]
    # --reviews from the fleet database (forwarded reviews, migration 005): tests/station/test_fleet_reviews.py


def test_a_schema_5_ledger_keeps_its_rows_and_gains_the_reviews_in_place(ledger):
    assert SCHEMA_VERSION == 7  # 7: the shadow tables (tests/station/test_shadow.py upgrades a schema 6 file)
    with contextlib.closing(sqlite3.connect(ledger)) as con:  # what a schema-5 station left: no reviews table
        con.execute("DROP TABLE reviews")
        con.execute("PRAGMA user_version=5")
        con.commit()
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'inspections'").fetchone()[0]
    before = inspections_bytes(ledger)
    # reading does not upgrade: the list is empty, the export's review columns too
    listed = run_station("review", "--db", str(ledger), "--list")
    assert listed.returncode == 0 and listed.stdout.startswith("no reviews in"), listed.stderr
    out = run_station("export", "--db", str(ledger), "--format", "csv", "--reviews", "--out", "-")
    assert out.returncode == 0 and all(r["review_count"] == "0" for r in csv.DictReader(io.StringIO(out.stdout)))
    assert query(ledger, "PRAGMA user_version") == [(5,)]

    row = ids_by_verdict(ledger)["PASS"][0]
    done = run_station("review", "--db", str(ledger), "--mark", f"{row}=defect", "--by", "qa")
    assert done.returncode == 0, done.stderr
    assert query(ledger, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert inspections_bytes(ledger) == before  # every row kept as it was, in the same table (no copy)
    assert query(ledger, "SELECT rootpage FROM sqlite_master WHERE name = 'inspections'") == [(root,)]
    assert query(ledger, "SELECT inspection_id, reviewer, mark FROM reviews") == [(row, "qa", "defect")]
    again = run_station("run", "--source", f"replay:{SAMPLES}", "--headless", "--max-frames", "1", "--fps", "0",
                        "--db", str(ledger))  # the line writes on after the upgrade
    assert again.returncode == 0, again.stderr
    assert len(inspections_bytes(ledger)) == len(before) + 1 and inspections_bytes(ledger)[:len(before)] == before
