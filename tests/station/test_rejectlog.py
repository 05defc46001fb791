"""Reject log on real SQLite files: WAL, round trips, reject images, export, and rows surviving SIGKILL."""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from inspection_core.records import (Defect, Frame, FrameGap, GapKind, InspectionResult, NotInspected,
                                     NotInspectedReason, Verdict)
from station import rejectlog
from station.errors import EvidenceError, LedgerError, RejectLogError
from station.export import add_export_arguments, export, run_export
from station.judge import ActiveJudge
from station.rejectlog import SCHEMA_VERSION, RejectLog, parse_time

from tests.station.ledger_util import read_only

REPO = Path(__file__).resolve().parents[2]
DEFECT = Defect(label="defect", bbox=(1, 2, 3, 4), area_px=12, centroid=(2.5, 3.5), mean_score=0.7, max_score=0.9)


def result(frame_id: int, verdict: Verdict, image: np.ndarray | None = None, file: str | None = "a.jpg") -> InspectionResult:
    image = np.full((24, 32), frame_id % 256, np.uint8) if image is None else image
    frame = Frame(image=image, frame_id=frame_id, timestamp_ns=1_000 + frame_id, source="replay:test",
                  meta={"file": file} if file else {})
    defects = (DEFECT,) if verdict is Verdict.FAIL else ()
    return InspectionResult(frame=frame, mask=np.zeros(image.shape[:2], np.float32), defects=defects,
                            verdict=verdict, engine_id="bffn/onnxruntime", labels=("crack",) if defects else (),
                            latency_ms=12.5)


def judge(recipe: str | None = None, calibration: str | None = None, engine_id: str = "bffn/onnxruntime") -> ActiveJudge:
    """What judged the entries (a line gives the ledger its own with each entry)."""
    inspector = SimpleNamespace(engine_id=engine_id,
                                calibration=None if calibration is None else SimpleNamespace(name=calibration))
    return ActiveJudge(inspector, recipe)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """Pin the log's clock: each record takes the next time from the list (or the last one)."""
    times = [datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)]
    monkeypatch.setattr(rejectlog, "_utc_now", lambda: times.pop(0) if len(times) > 1 else times[0])
    return times


def test_wal_mode_schema_and_round_trip(tmp_path: Path, clock: list[datetime]) -> None:
    db = tmp_path / "sub" / "rejects.db"
    judged = judge("magnetic_tile 0123456789ab", "cam-A@v3")
    with RejectLog(db) as log:
        pass_id = log.record(result(7, Verdict.PASS), judge=judged)
        fail_id = log.record(result(8, Verdict.FAIL, file=None), judge=judged)
        rows = log.query()
    assert (pass_id, fail_id) == (1, 2)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r[1] for r in conn.execute("PRAGMA table_info(inspections)")] == list(rejectlog.COLUMNS)
    conn.close()
    first, second = rows
    assert first == {
        "id": 1, "time_utc": "2024-05-01T12:00:00.123Z", "timestamp_ns": 1007, "source": "replay:test",
        "frame_id": 7, "file": "a.jpg", "verdict": "PASS", "defects_json": "[]", "labels_json": "[]",
        "engine_id": "bffn/onnxruntime", "latency_ms": 12.5, "image_path": None,
        "recipe": "magnetic_tile 0123456789ab", "calibration": "cam-A@v3", "station_id": None, "run_id": None,
        "reason": None, "detail": None, "frame_count": 1, "last_frame_id": None, "end_timestamp_ns": None,
        "rejected": 0, "overlay_path": None, "camera_timestamp_ns": None,
        "part_id": None, "meas_id": None, "product_id": None, "job_id": None,
    }
    assert second["verdict"] == "FAIL" and second["file"] is None
    assert json.loads(second["defects_json"]) == [DEFECT.to_dict()]
    assert json.loads(second["labels_json"]) == ["crack"]
    assert second["image_path"] == "rejects_images/2024-05-01/120000123_8.png"
    assert second["overlay_path"] == "rejects_images/2024-05-01/120000123_8_overlay.png" and second["rejected"] == 1


def test_time_is_iso_utc_with_ms(tmp_path: Path) -> None:
    with RejectLog(tmp_path / "r.db") as log:
        log.record(result(1, Verdict.PASS))
        (row,) = log.query()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["time_utc"])
    logged = datetime.fromisoformat(row["time_utc"])
    assert abs(logged - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_fail_saves_readable_png_and_pass_saves_none(tmp_path: Path, clock: list[datetime]) -> None:
    db = tmp_path / "rejects.db"
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    grey = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30).astype(np.uint8)
    with RejectLog(db) as log:
        log.record(result(1, Verdict.PASS))
        log.record(result(2, Verdict.FAIL, image=grey))
        log.record(result(2, Verdict.FAIL, image=rgb))  # same ms and frame id: gets its own name
        rows = log.query()
    assert rows[0]["image_path"] is None
    paths = [db.parent / r["image_path"] for r in rows[1:]]
    assert paths[0] != paths[1] and all(p.is_file() for p in paths)
    assert np.array_equal(cv2.imread(str(paths[0]), cv2.IMREAD_UNCHANGED), grey)
    back = cv2.cvtColor(cv2.imread(str(paths[1]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, rgb)
    assert sorted(p.name for p in (db.parent / "rejects_images").rglob("*")) == [
        "120000123_2-1.png", "120000123_2-1_mask.png", "120000123_2-1_overlay.png", "120000123_2.png",
        "120000123_2_mask.png", "120000123_2_overlay.png", "2024-05-01"]
    with RejectLog(tmp_path / "noimg.db", save_images=False) as log:
        log.record(result(3, Verdict.FAIL))
        assert log.query()[0]["image_path"] is None
    assert not (tmp_path / "noimg_images").exists()


def test_unwritable_image_still_logs_the_row_says_so_and_raises(tmp_path: Path) -> None:
    """The row is committed and names the error; the write error is raised (the line stops on it, issue 26)."""
    with RejectLog(tmp_path / "r.db") as log:
        (tmp_path / "r_images").write_text("a file where the folder should be")
        with pytest.raises(EvidenceError, match="could not be written") as raised:
            log.record(result(1, Verdict.FAIL))
        assert log.image_errors == 1
        (row,) = log.query()
        assert row["id"] == raised.value.row["id"] and row["image_path"] is None
        assert "reject image not saved (NotADirectoryError" in row["detail"]


def test_reopen_appends_and_closed_log_refuses(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with RejectLog(db) as log:
        log.record(result(1, Verdict.PASS))
    log.close()  # twice is fine
    with pytest.raises(RejectLogError, match="closed"):
        log.record(result(2, Verdict.PASS))
    with RejectLog(db) as log:
        assert log.record(result(2, Verdict.PASS)) == 2


SCHEMA_1 = """CREATE TABLE inspections (id INTEGER PRIMARY KEY, time_utc TEXT NOT NULL, timestamp_ns INTEGER NOT NULL,
source TEXT NOT NULL, frame_id INTEGER NOT NULL, file TEXT, verdict TEXT NOT NULL CHECK (verdict IN ('PASS', 'FAIL')),
defects_json TEXT NOT NULL, labels_json TEXT NOT NULL, engine_id TEXT NOT NULL, latency_ms REAL NOT NULL,
image_path TEXT)"""


def test_a_schema_1_log_is_exported_as_it_is_and_upgraded_in_place_keeping_its_rows(tmp_path: Path) -> None:
    """A station updated on the line keeps writing to the log its predecessor (schema 1) wrote."""
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute(SCHEMA_1)
    conn.execute("INSERT INTO inspections VALUES (1, '2024-05-01T12:00:00.000Z', 5, 'replay:old', 3, 'x.jpg', "
                 "'FAIL', '[]', '[]', 'bffn/torch', 9.5, NULL)")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    out = tmp_path / "old.json"
    assert export(db, "json", out) == 1  # read-only: not upgraded, the new fields read empty
    (item,) = json.loads(out.read_text())
    assert item["source"] == "replay:old" and item["recipe"] is None and item["calibration"] is None
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 1
    with RejectLog(db) as log:
        log.record(result(4, Verdict.PASS), judge=judge("screen 00aa00aa00aa"))
        old, new = log.query()
    assert (old["id"], old["frame_id"], old["engine_id"], old["recipe"]) == (1, 3, "bffn/torch", None)
    assert (new["id"], new["recipe"], new["calibration"]) == (2, "screen 00aa00aa00aa", None)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    assert [r[1] for r in conn.execute("PRAGMA table_info(inspections)")] == list(rejectlog.COLUMNS)
    conn.close()
    with RejectLog(db) as log:  # opening an upgraded file again changes nothing
        assert len(log.query()) == 2


def test_newer_schema_and_non_sqlite_files_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RejectLogError, match="newer station .*upgrade the station, or use another database path"):
        RejectLog(db)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is certainly not an SQLite database file" * 20)
    with pytest.raises(RejectLogError, match="not an SQLite reject log .*move that file away"):
        RejectLog(junk)
    with pytest.raises(RejectLogError, match="not an SQLite reject log"):
        export(junk, "csv", tmp_path / "out.csv")
    empty = tmp_path / "other.db"
    sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(RejectLogError, match="not a reject log"):
        export(empty, "csv", tmp_path / "out.csv")


def test_parse_time() -> None:
    utc = timezone.utc
    assert parse_time("2024-05-01") == (datetime(2024, 5, 1, tzinfo=utc), True)
    assert parse_time("2024-05-01T08:30") == (datetime(2024, 5, 1, 8, 30, tzinfo=utc), False)
    assert parse_time("2024-05-01T08:30:00.5Z")[0] == datetime(2024, 5, 1, 8, 30, 0, 500000, tzinfo=utc)
    assert parse_time("2024-05-01T10:30+02:00")[0] == datetime(2024, 5, 1, 8, 30, tzinfo=utc)
    assert parse_time(datetime(2024, 5, 1, 8))[0] == datetime(2024, 5, 1, 8, tzinfo=utc)
    with pytest.raises(RejectLogError, match="not an ISO time; use YYYY-MM-DD"):
        parse_time("yesterday")


@pytest.fixture
def filled_db(tmp_path: Path, clock: list[datetime]) -> Path:
    """Six rows: Apr 30 23:59 PASS, May 1 08:00 FAIL, 12:00 PASS, 23:59:59.999 FAIL, May 2 00:00 PASS, 09:00 FAIL."""
    utc = timezone.utc
    clock[:] = [datetime(2024, 4, 30, 23, 59, tzinfo=utc), datetime(2024, 5, 1, 8, tzinfo=utc),
                datetime(2024, 5, 1, 12, tzinfo=utc), datetime(2024, 5, 1, 23, 59, 59, 999000, tzinfo=utc),
                datetime(2024, 5, 2, tzinfo=utc), datetime(2024, 5, 2, 9, tzinfo=utc)]
    db = tmp_path / "rejects.db"
    with RejectLog(db, save_images=False) as log:
        for i in range(6):
            log.record(result(i, Verdict.FAIL if i % 2 else Verdict.PASS))
    return db


@pytest.mark.parametrize(
    ("since", "until", "verdict", "ids"),
    [
        (None, None, "all", [1, 2, 3, 4, 5, 6]),
        (None, None, "fail", [2, 4, 6]),
        (None, None, "PASS", [1, 3, 5]),
        ("2024-05-01", "2024-05-01", "all", [2, 3, 4]),  # a bare --until date includes the whole day
        ("2024-05-01T08:00", "2024-05-01T12:00", "all", [2, 3]),  # full times are inclusive at both ends
        ("2024-05-01T10:00:00+02:00", None, "fail", [2, 4, 6]),
        ("2024-05-02", None, "pass", [5]),
        (None, "2024-04-30T23:59:00Z", "all", [1]),
    ],
)
def test_query_filters(filled_db: Path, since: str | None, until: str | None, verdict: str, ids: list[int]) -> None:
    with RejectLog(filled_db) as log:
        assert [r["id"] for r in log.query(since=since, until=until, verdict=verdict)] == ids


def test_export_csv_and_json_with_filters(filled_db: Path, tmp_path: Path) -> None:
    out_csv = tmp_path / "fails.csv"
    assert export(filled_db, "csv", out_csv, since="2024-05-01", verdict="fail") == 3
    with out_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(rejectlog.COLUMNS)
    assert [r["id"] for r in rows] == ["2", "4", "6"] and rows[0]["verdict"] == "FAIL"
    assert json.loads(rows[0]["defects_json"])[0]["bbox"] == [1, 2, 3, 4]
    assert rows[0]["image_path"] == ""

    out_json = tmp_path / "day.json"
    assert export(filled_db, "json", out_json, since="2024-05-01", until="2024-05-01") == 3
    items = json.loads(out_json.read_text())
    assert [i["id"] for i in items] == [2, 3, 4]
    assert items[0]["defects"] == [DEFECT.to_dict()] and items[0]["labels"] == ["crack"]
    assert "defects_json" not in items[0] and items[1]["defects"] == []
    assert not list(tmp_path.glob(".*.tmp"))

    with pytest.raises(RejectLogError, match="use csv or json"):
        export(filled_db, "xml", tmp_path / "x.xml")
    with pytest.raises(RejectLogError, match="use one of all, pass, fail, not_inspected, gap, rejected"):
        export(filled_db, "csv", tmp_path / "x.csv", verdict="rejects")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="station export")
    add_export_arguments(parser)
    return parser.parse_args(argv)


def test_run_export_cli(filled_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_export(_parse(["--db", str(filled_db), "--format", "json", "--verdict", "fail", "--out", "-"])) == 0
    captured = capsys.readouterr()
    assert [i["id"] for i in json.loads(captured.out)] == [2, 4, 6]
    assert "3 row(s)" in captured.err

    out = tmp_path / "all.csv"
    assert run_export(_parse(["--db", str(filled_db), "--format", "csv", "--until", "2024-05-01T12:00Z",
                              "--out", str(out)])) == 0
    assert len(list(csv.reader(io.StringIO(out.read_text())))) == 1 + 3

    assert run_export(_parse(["--db", str(tmp_path / "missing.db"), "--format", "csv", "--out", "-"])) == 2
    assert "no reject log at" in capsys.readouterr().err
    assert run_export(_parse(["--db", str(filled_db), "--format", "csv", "--since", "monday", "--out", "-"])) == 2
    assert "--since" in capsys.readouterr().err
    assert run_export(_parse(["--db", str(filled_db), "--format", "csv", "--out", str(tmp_path / "no" / "x.csv")])) == 1
    assert "cannot write" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--db", str(filled_db), "--format", "xml", "--out", "-"])


def test_export_while_writer_is_open(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    with RejectLog(db) as log:
        log.record(result(1, Verdict.FAIL))
        assert export(db, "json", tmp_path / "live.json") == 1
        log.record(result(2, Verdict.PASS))
    assert len(json.loads((tmp_path / "live.json").read_text())) == 1


def test_threads_share_one_log(tmp_path: Path) -> None:
    with RejectLog(tmp_path / "t.db", save_images=False) as log:
        ids: list[int] = []
        threads = [threading.Thread(target=lambda k=k: ids.extend(log.record(result(k * 100 + i, Verdict.PASS))
                                                                   for i in range(20))) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(ids) == list(range(1, 61)) and len(log.query()) == 60


CHILD = r"""
import sys
import numpy as np
from inspection_core.records import Defect, Frame, InspectionResult, Verdict
from station.rejectlog import RejectLog

defect = Defect("defect", (0, 0, 4, 4), 16, (2.0, 2.0), 0.8, 0.9)
log = RejectLog(sys.argv[1])
i = 0
while True:
    fail = i % 3 == 0
    frame = Frame(np.full((96, 128), i % 256, np.uint8), i, i, "replay:crash", {"file": f"{i}.png"})
    res = InspectionResult(frame, np.zeros((96, 128), np.float32), (defect,) if fail else (),
                           Verdict.FAIL if fail else Verdict.PASS, "test")
    print(log.record(res), flush=True)
    i += 1
"""


@pytest.mark.slow
def test_committed_rows_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    rng = random.Random(20240501)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    committed: list[int] = []
    for target in (rng.randint(3, 15), rng.randint(20, 40), rng.randint(50, 90)):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
        watchdog = threading.Timer(60, child.kill)
        watchdog.start()
        try:
            seen: list[int] = []
            while len(seen) < target:
                line = child.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    pytest.fail(f"child ended early: {child.stderr.read()}")  # type: ignore[union-attr]
                seen.append(int(line))
            time.sleep(rng.uniform(0.0, 0.02))  # land the kill at an arbitrary point of the next record
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            seen += [int(x) for x in child.stdout.read().split()]  # type: ignore[union-attr]
        finally:
            watchdog.cancel()
            child.stdout.close()  # type: ignore[union-attr]
            child.stderr.close()  # type: ignore[union-attr]
        assert child.returncode == -signal.SIGKILL
        committed += seen

        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        present = {row[0] for row in conn.execute("SELECT id FROM inspections")}
        images = [row[0] for row in conn.execute("SELECT image_path FROM inspections WHERE verdict = 'FAIL'")]
        conn.close()
        assert set(committed) <= present
        assert all(p is not None and (tmp_path / p).is_file() for p in images)
        for png in (tmp_path / "crash_images").rglob("*.png"):  # a final name is never half a PNG
            assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED) is not None, png
    assert len(committed) >= 73


# ------------------------------------------------------------------------------------------ the part ledger (3)

SCHEMA_2 = """CREATE TABLE inspections (id INTEGER PRIMARY KEY, time_utc TEXT NOT NULL, timestamp_ns INTEGER NOT NULL,
source TEXT NOT NULL, frame_id INTEGER NOT NULL, file TEXT, verdict TEXT NOT NULL CHECK (verdict IN ('PASS', 'FAIL')),
defects_json TEXT NOT NULL, labels_json TEXT NOT NULL, engine_id TEXT NOT NULL, latency_ms REAL NOT NULL,
image_path TEXT, recipe TEXT, calibration TEXT);
CREATE INDEX inspections_time ON inspections (time_utc);
CREATE INDEX inspections_verdict_time ON inspections (verdict, time_utc);"""


def _schema_2_file(db: Path) -> None:
    """A reject log exactly as the schema-2 station wrote it (WAL, two rows)."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_2)
    conn.execute("INSERT INTO inspections VALUES (1, '2024-05-01T12:00:00.000Z', 5, 'replay:old', 3, 'x.jpg', 'FAIL', "
                 "'[]', '[]', 'bffn/torch', 9.5, 'rejects_images/x.png', 'mt 0123456789ab', 'cam-A@v2')")
    conn.execute("INSERT INTO inspections VALUES (7, '2024-05-01T12:00:01.000Z', 6, 'replay:old', 4, 'y.jpg', 'PASS', "
                 "'[]', '[]', 'bffn/torch', 8.0, NULL, 'mt 0123456789ab', NULL)")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()


def test_a_schema_2_log_is_rebuilt_to_3_in_one_transaction_keeping_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    _schema_2_file(db)
    with pytest.raises(sqlite3.IntegrityError):  # what the upgrade is for: schema 2 refuses the new verdicts
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO inspections (time_utc, timestamp_ns, source, frame_id, verdict, defects_json, "
                         "labels_json, engine_id, latency_ms) VALUES ('t', 1, 's', 1, 'NOT_INSPECTED', '[]', '[]', "
                         "'e', 0)")
    (item_before,) = [r for r in json.loads(_export_json(db, tmp_path)) if r["id"] == 1]
    assert item_before["frame_count"] == 1 and item_before["rejected"] == 1  # read-only: old rows read as defaults
    with RejectLog(db, station_id="st-1", run_id="run-1") as log:
        log.record(NotInspected(frame_id=9, timestamp_ns=10, source="replay:new", reason=NotInspectedReason.UNREADABLE,
                                detail="empty file", file="z.jpg"))
        rows = log.query()
    assert [(r["id"], r["verdict"], r["frame_count"], r["rejected"], r["station_id"]) for r in rows] == [
        (1, "FAIL", 1, 1, None), (7, "PASS", 1, 0, None), (8, "NOT_INSPECTED", 1, 1, "st-1")]
    assert rows[0]["image_path"] == "rejects_images/x.png" and rows[0]["calibration"] == "cam-A@v2"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    assert [r[1] for r in conn.execute("PRAGMA table_info(inspections)")] == list(rejectlog.COLUMNS)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")} == {
        "inspections_time", "inspections_verdict_time", "inspections_part", "inspections_meas",
        "reviews_inspection", "shadow_candidate", "shadow_inspection"}
    assert conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'inspections_%' AND type = 'table'"
                        ).fetchall() == []
    with pytest.raises(sqlite3.IntegrityError):  # the new CHECK still guards the verdicts
        conn.execute("INSERT INTO inspections (time_utc, timestamp_ns, source, frame_id, verdict, defects_json, "
                     "labels_json, engine_id, latency_ms) VALUES ('t', 1, 's', 1, 'MAYBE', '[]', '[]', 'e', 0)")
    conn.close()


def _export_json(db: Path, tmp_path: Path) -> str:
    out = tmp_path / "export.json"
    export(db, "json", out)
    return out.read_text()


def test_not_inspected_and_gap_rows_carry_reason_ids_and_the_policy(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    frame = Frame(np.zeros((1, 1), np.uint8), 5, 100, "genicam:cam", {})
    gap = FrameGap(source="genicam:cam", kind=GapKind.OUTAGE, first_id=6, last_id=45, count=40, start_ns=100,
                   end_ns=2_000_000_100, detail="camera lost")
    with RejectLog(db, station_id="line-3", run_id="r1", not_inspected_is_reject=True) as log:
        log.record(NotInspected.of(frame, NotInspectedReason.TOO_SMALL, "1x1 px"), judge=judge(engine_id="bffn@ort"))
        log.record(gap, judge=judge(engine_id="bffn@ort"))
        log.record(result(46, Verdict.PASS), note="implausible frame: all black")
    with RejectLog(db, station_id="line-3", run_id="r2", not_inspected_is_reject=False) as log:
        log.record(NotInspected.of(frame, NotInspectedReason.DROPPED))
        rows = log.query()
    small, outage, passed, dropped = rows
    assert (small["verdict"], small["reason"], small["detail"], small["rejected"], small["engine_id"]) == (
        "NOT_INSPECTED", "too_small", "1x1 px", 1, "bffn@ort")
    assert (outage["verdict"], outage["reason"], outage["frame_id"], outage["last_frame_id"], outage["frame_count"],
            outage["end_timestamp_ns"], outage["rejected"]) == ("GAP", "outage", 6, 45, 40, 2_000_000_100, None)
    assert passed["detail"] == "implausible frame: all black" and passed["rejected"] == 0
    assert (dropped["reason"], dropped["rejected"], dropped["run_id"]) == ("dropped", 0, "r2")
    assert {r["station_id"] for r in rows} == {"line-3"}
    with RejectLog(db) as log:
        assert [r["id"] for r in log.query(verdict="not_inspected")] == [1, 4]
        assert [r["id"] for r in log.query(verdict="gap")] == [2]
        assert [r["id"] for r in log.query(verdict="rejected")] == [1]


def test_a_read_only_log_is_refused_when_the_station_opens_it(tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    with RejectLog(db) as log:
        log.record(result(1, Verdict.PASS))
    with read_only(db):
        with pytest.raises(LedgerError, match="read-only.*make the file and its folder writable"):
            RejectLog(db)
    with RejectLog(db) as log:  # writable again: it works, nothing was lost
        assert len(log.query()) == 1


def test_a_log_locked_beyond_the_timeout_stops_with_a_ledger_error(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    with RejectLog(db, busy_timeout_s=0.2) as log:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
        try:
            started = time.monotonic()
            with pytest.raises(LedgerError, match=r"locked for more than 0.2 s"):
                log.record(result(1, Verdict.PASS))
            assert time.monotonic() - started < 5
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert log.record(result(2, Verdict.PASS)) == 1


def test_images_and_exports_get_ordinary_permissions(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        db = tmp_path / "perm.db"
        with RejectLog(db) as log:
            log.record(result(1, Verdict.FAIL))
            (row,) = log.query()
        export(db, "csv", tmp_path / "out.csv")
    finally:
        os.umask(previous)
    for path in (db.parent / row["image_path"], db.parent / row["overlay_path"], tmp_path / "out.csv"):
        assert path.stat().st_mode & 0o777 == 0o644, (path, oct(path.stat().st_mode))


def test_the_overlay_image_shows_the_mask_and_the_boxes(tmp_path: Path) -> None:
    image = np.full((40, 60), 100, np.uint8)
    res = result(3, Verdict.FAIL, image=image)
    mask = np.zeros((40, 60), np.float32)
    mask[10:20, 20:30] = 0.9
    mask[30:38, 45:55] = 0.99  # scored high, but the rules ignored it (outside the ROI, say): not the decision
    decided = np.zeros((40, 60), bool)
    decided[10:20, 20:30] = True
    res = InspectionResult(res.frame, mask, (Defect("crack", (20, 10, 10, 10), 100, (25, 15), 0.9, 0.9),),
                           Verdict.FAIL, "e", decided=decided)
    with RejectLog(tmp_path / "o.db") as log:
        log.record(res)
        (row,) = log.query()
    raw = cv2.imread(str(tmp_path / row["image_path"]), cv2.IMREAD_UNCHANGED)
    overlay = cv2.cvtColor(cv2.imread(str(tmp_path / row["overlay_path"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(raw, image) and overlay.shape == (40, 60, 3)
    assert overlay[15, 25, 0] > overlay[15, 25, 1] + 50, "mask pixels are painted red"
    assert overlay[9, 25].tolist() != [100, 100, 100], "the defect is boxed"
    assert overlay[35, 5].tolist() == [100, 100, 100], "the rest is the image"
    assert overlay[34, 50].tolist() == [100, 100, 100], "what the rules ignored is not painted (issue 27)"


def test_per_defect_export_has_one_row_per_defect_and_absolute_paths_on_request(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    two = InspectionResult(result(2, Verdict.FAIL).frame, np.zeros((24, 32), np.float32),
                           (DEFECT, Defect("pit", (5, 6, 2, 2), 4, (6.0, 7.0), 0.6, 0.8, area_mm2=0.01,
                                           size_mm=(0.1, 0.1))), Verdict.FAIL, "e")
    with RejectLog(db) as log:
        log.record(result(1, Verdict.PASS))
        log.record(two)
    out = tmp_path / "defects.csv"
    assert export(db, "csv", out, per_defect=True, absolute_paths=True) == 2
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["id"], r["defect"], r["label"], r["x"], r["area_px"]) for r in rows] == [
        ("2", "1", "defect", "1", "12"), ("2", "2", "pit", "5", "4")]
    assert rows[1]["area_mm2"] == "0.01" and rows[1]["width_mm"] == "0.1"
    assert Path(rows[0]["image_path"]).is_absolute() and Path(rows[0]["image_path"]).is_file()
    assert Path(rows[0]["overlay_path"]).is_file()
    relative = tmp_path / "rel.csv"
    export(db, "csv", relative, per_defect=True)
    assert next(csv.DictReader(relative.open()))["image_path"].startswith("d_images/")


# ------------------------------------------------------------------------------- the camera's time stamp (4)

SCHEMA_3 = """CREATE TABLE inspections (
    id INTEGER PRIMARY KEY, time_utc TEXT NOT NULL, timestamp_ns INTEGER NOT NULL, source TEXT NOT NULL,
    frame_id INTEGER NOT NULL, file TEXT,
    verdict TEXT NOT NULL CHECK (verdict IN ('PASS', 'FAIL', 'NOT_INSPECTED', 'GAP')),
    defects_json TEXT NOT NULL, labels_json TEXT NOT NULL, engine_id TEXT NOT NULL, latency_ms REAL NOT NULL,
    image_path TEXT, recipe TEXT, calibration TEXT, station_id TEXT, run_id TEXT, reason TEXT, detail TEXT,
    frame_count INTEGER NOT NULL DEFAULT 1, last_frame_id INTEGER, end_timestamp_ns INTEGER, rejected INTEGER,
    overlay_path TEXT);
CREATE INDEX inspections_time ON inspections (time_utc);
CREATE INDEX inspections_verdict_time ON inspections (verdict, time_utc);"""


def _camera_result(frame_id: int, camera_ns: int | None) -> InspectionResult:
    frame = Frame(image=np.full((24, 32), 9, np.uint8), frame_id=frame_id, timestamp_ns=5_000 + frame_id,
                  source="genicam:cam-A", camera_timestamp_ns=camera_ns, bit_depth=12)
    return InspectionResult(frame=frame, mask=np.zeros((24, 32), np.float32), defects=(), verdict=Verdict.PASS,
                            engine_id="bffn/onnxruntime", labels=(), latency_ms=3.0)


def test_a_schema_3_log_gains_the_camera_timestamp_column_in_place(tmp_path: Path) -> None:
    """3 -> 4 adds one column without copying the table (same root page), keeps every row, reads NULL in old rows."""
    db = tmp_path / "v3.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_3)
    conn.execute("INSERT INTO inspections (id, time_utc, timestamp_ns, source, frame_id, verdict, defects_json, "
                 "labels_json, engine_id, latency_ms, station_id, rejected) VALUES (1, '2024-05-01T12:00:00.000Z', 5, "
                 "'genicam:cam-A', 3, 'PASS', '[]', '[]', 'bffn/torch', 9.5, 'st-1', 0)")
    conn.execute("INSERT INTO inspections (id, time_utc, timestamp_ns, source, frame_id, verdict, defects_json, "
                 "labels_json, engine_id, latency_ms, reason, frame_count, last_frame_id, end_timestamp_ns) VALUES "
                 "(4, '2024-05-01T12:00:01.000Z', 6, 'genicam:cam-A', 4, 'GAP', '[]', '[]', 'bffn/torch', 0, "
                 "'lost_ids', 2, 5, 7)")
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    root_before = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'inspections'").fetchone()[0]
    conn.close()
    (old_read,) = [r for r in rejectlog.fetch_rows(db) if r["id"] == 1]  # read-only: not upgraded, reads NULL
    assert old_read["camera_timestamp_ns"] is None
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 3
    with RejectLog(db, station_id="st-1", run_id="run-2") as log:
        row = log.record_row(_camera_result(6, 1_700_000_000_123_456_789))
        log.record(NotInspected.of(_camera_result(7, 1_700_000_000_223_456_789).frame, NotInspectedReason.INCOMPLETE))
        log.record(_camera_result(8, None))
        rows = log.query()
    assert row["camera_timestamp_ns"] == 1_700_000_000_123_456_789 and row["id"] == 5
    assert [(r["id"], r["verdict"], r["camera_timestamp_ns"]) for r in rows] == [
        (1, "PASS", None), (4, "GAP", None), (5, "PASS", 1_700_000_000_123_456_789),
        (6, "NOT_INSPECTED", 1_700_000_000_223_456_789), (7, "PASS", None)]
    assert rows[1]["frame_count"] == 2 and rows[1]["last_frame_id"] == 5 and rows[0]["station_id"] == "st-1"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    assert [r[1] for r in conn.execute("PRAGMA table_info(inspections)")] == list(rejectlog.COLUMNS)
    assert conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'inspections'").fetchone()[0] == root_before
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with RejectLog(db) as log:  # opening an upgraded file again changes nothing
        assert len(log.query()) == 5


def test_a_camera_timestamp_beyond_sqlite_integers_never_costs_the_row(tmp_path: Path) -> None:
    with RejectLog(tmp_path / "r.db") as log:
        log.record(_camera_result(1, 2**64 - 1))  # an unsigned 64-bit camera clock near its end
        log.record(_camera_result(2, 0))
        log.record(FrameGap(source="genicam:cam-A", kind=GapKind.LOST_IDS, first_id=3, last_id=3, count=1,
                            start_ns=1, end_ns=2))
        assert [r["camera_timestamp_ns"] for r in log.query()] == [None, 0, None]


@pytest.mark.parametrize("is_reject", [True, False])
def test_not_inspected_rows_carry_the_rejected_flag_the_policy_sets(tmp_path: Path, is_reject: bool) -> None:
    """Issue 26: the fail-safe flag of NOT_INSPECTED rows had no direct test. PASS 0, FAIL 1, NOT_INSPECTED by the
    recipe's policy (1 under the fail-safe default "reject", 0 under "exclude")."""
    gap = NotInspected(frame_id=3, timestamp_ns=5, source="replay:test", reason=NotInspectedReason.DROPPED)
    with RejectLog(tmp_path / "log.db", save_images=False, not_inspected_is_reject=is_reject) as ledger:
        ledger.record(result(1, Verdict.PASS))
        ledger.record(result(2, Verdict.FAIL))
        ledger.record(gap)
        rows = {r["frame_id"]: r for r in ledger.query()}
    assert rows[1]["rejected"] == 0 and rows[2]["rejected"] == 1
    assert rows[3]["verdict"] == "NOT_INSPECTED" and rows[3]["rejected"] == int(is_reject)


#: A schema-4 reject log as the station before part identities wrote it: schema 3 plus camera_timestamp_ns, and the
#: in-flight journal without identity columns.
SCHEMA_4 = SCHEMA_3.replace("    overlay_path TEXT);", "    overlay_path TEXT, camera_timestamp_ns INTEGER);") + """;
CREATE TABLE station_runs (id INTEGER PRIMARY KEY, run_id TEXT, station_id TEXT, pid INTEGER NOT NULL, host TEXT,
    started_utc TEXT NOT NULL, ended_utc TEXT, ending TEXT);
CREATE TABLE in_flight (id INTEGER PRIMARY KEY, run_id TEXT, station_id TEXT, frame_id INTEGER NOT NULL,
    source TEXT NOT NULL, file TEXT, timestamp_ns INTEGER NOT NULL, camera_timestamp_ns INTEGER,
    acquired_utc TEXT NOT NULL, recipe TEXT, calibration TEXT, engine_id TEXT)"""


def test_a_schema_4_log_gains_the_part_identity_in_place_and_its_killed_runs_parts_are_still_recorded(
        tmp_path: Path) -> None:
    """4 -> 5 adds part_id, meas_id, product_id, job_id (and indexes) without copying the table; old rows keep every
    value and read NULL identities; the journal of a run killed before the upgrade gains the columns, and its part
    gets its interrupted row at the upgrading start."""
    from inspection_core.records import PartIdentity

    db = tmp_path / "v4.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_4)
    conn.execute("INSERT INTO inspections (id, time_utc, timestamp_ns, source, frame_id, file, verdict, defects_json, "
                 "labels_json, engine_id, latency_ms, recipe, station_id, run_id, rejected, camera_timestamp_ns) "
                 "VALUES (1, '2024-05-01T12:00:00.000Z', 5, 'replay:old', 3, 'a.jpg', 'PASS', '[]', '[]', "
                 "'bffn/torch', 9.5, 'magnetic_tile 0123456789ab', 'st-1', 'run-1', 0, 77)")
    conn.execute("INSERT INTO station_runs (run_id, station_id, pid, host, started_utc) VALUES "
                 "('run-1', 'st-1', 4242, 'h', '2024-05-01T11:59:00.000Z')")  # killed: no end
    conn.execute("INSERT INTO in_flight (run_id, station_id, frame_id, source, file, timestamp_ns, acquired_utc, "
                 "recipe, engine_id) VALUES ('run-1', 'st-1', 4, 'replay:old', 'b.jpg', 6, "
                 "'2024-05-01T12:00:01.000Z', 'magnetic_tile 0123456789ab', 'bffn/torch')")
    conn.execute("PRAGMA user_version=4")
    conn.commit()
    root_before = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'inspections'").fetchone()[0]
    conn.close()
    [old_read] = rejectlog.fetch_rows(db)  # read-only: not upgraded; the identity reads NULL and no filter matches
    assert (old_read["file"], old_read["part_id"], old_read["job_id"]) == ("a.jpg", None, None)
    assert rejectlog.fetch_rows(db, part_id="a.jpg") == [] and len(rejectlog.fetch_rows(db, station="st-1")) == 1
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 4

    found = rejectlog.recover_interrupted(db, "run-2")  # the start: upgraded in place, then the journal recovered
    assert found is not None and found.interrupted == 1 and found.runs == ("run-1",)
    frame = Frame(image=np.full((24, 32), 9, np.uint8), frame_id=1, timestamp_ns=9_000, source="replay:new",
                  meta={"file": "c.jpg"}, identity=PartIdentity(part_id="P-1", meas_id="M-1", product_id="X-7",
                                                               job_id="run-2-1"))
    with RejectLog(db, station_id="st-1", run_id="run-2") as log:
        log.start_run()
        log.note_acquired(frame)  # the journal has the identity columns now
        log.record(InspectionResult(frame=frame, mask=np.zeros((24, 32), np.float32), defects=(),
                                    verdict=Verdict.PASS, engine_id="bffn/onnxruntime", latency_ms=3.0))
        rows = log.query()
        assert [r["id"] for r in log.query(part_id="P-1", meas_id="M-1")] == [3]
        assert log.query(part_id="P-1", meas_id="M-2") == []
    assert [(r["id"], r["verdict"], r["reason"], r["file"], r["camera_timestamp_ns"], r["part_id"], r["meas_id"],
             r["product_id"], r["job_id"]) for r in rows] == [
        (1, "PASS", None, "a.jpg", 77, None, None, None, None),
        (2, "NOT_INSPECTED", "interrupted", "b.jpg", None, None, None, None, None),
        (3, "PASS", None, "c.jpg", None, "P-1", "M-1", "X-7", "run-2-1")]
    assert rows[0]["recipe"] == "magnetic_tile 0123456789ab" and rows[0]["latency_ms"] == 9.5
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    assert [r[1] for r in conn.execute("PRAGMA table_info(inspections)")] == list(rejectlog.COLUMNS)
    assert {"part_id", "meas_id", "product_id", "job_id"} <= {r[1] for r in conn.execute("PRAGMA table_info(in_flight)")}
    assert conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'inspections'").fetchone()[0] == root_before
    assert {"inspections_part", "inspections_meas"} <= {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN SELECT id FROM inspections WHERE part_id = 'P-1'"))
    assert "inspections_part" in plan  # a lookup by serial uses the index
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert [r["id"] for r in rejectlog.fetch_rows(db, part_id="P-1")] == [3]
