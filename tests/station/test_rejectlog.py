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

import cv2
import numpy as np
import pytest

from inspection_core.records import Defect, Frame, InspectionResult, Verdict
from station import rejectlog
from station.errors import RejectLogError
from station.rejectlog import SCHEMA_VERSION, RejectLog, add_export_arguments, export, parse_time, run_export

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


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """Pin the log's clock: each record takes the next time from the list (or the last one)."""
    times = [datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)]
    monkeypatch.setattr(rejectlog, "_utc_now", lambda: times.pop(0) if len(times) > 1 else times[0])
    return times


def test_wal_mode_schema_and_round_trip(tmp_path: Path, clock: list[datetime]) -> None:
    db = tmp_path / "sub" / "rejects.db"
    with RejectLog(db, recipe="magnetic_tile 0123456789ab", calibration="cam-A@v3") as log:
        pass_id = log.record(result(7, Verdict.PASS))
        fail_id = log.record(result(8, Verdict.FAIL, file=None))
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
        "recipe": "magnetic_tile 0123456789ab", "calibration": "cam-A@v3",
    }
    assert second["verdict"] == "FAIL" and second["file"] is None
    assert json.loads(second["defects_json"]) == [DEFECT.to_dict()]
    assert json.loads(second["labels_json"]) == ["crack"]
    assert second["image_path"] == "rejects_images/2024-05-01/120000123_8.png"


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
    assert sorted(p.name for p in (db.parent / "rejects_images").rglob("*")) == ["120000123_2-1.png",
                                                                                 "120000123_2.png", "2024-05-01"]
    with RejectLog(tmp_path / "noimg.db", save_images=False) as log:
        log.record(result(3, Verdict.FAIL))
        assert log.query()[0]["image_path"] is None
    assert not (tmp_path / "noimg_images").exists()


def test_unwritable_image_still_logs_the_row(tmp_path: Path) -> None:
    with RejectLog(tmp_path / "r.db") as log:
        (tmp_path / "r_images").write_text("a file where the folder should be")
        row_id = log.record(result(1, Verdict.FAIL))
        assert log.image_errors == 1
        assert log.query()[0]["id"] == row_id and log.query()[0]["image_path"] is None


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
    with RejectLog(db, recipe="screen 00aa00aa00aa", calibration=None) as log:
        log.record(result(4, Verdict.PASS))
        old, new = log.query()
    assert (old["id"], old["frame_id"], old["engine_id"], old["recipe"]) == (1, 3, "bffn/torch", None)
    assert (new["id"], new["recipe"], new["calibration"]) == (2, "screen 00aa00aa00aa", None)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
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
    with pytest.raises(RejectLogError, match="use one of fail, pass, all"):
        export(filled_db, "csv", tmp_path / "x.csv", verdict="rejected")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="station export")
    add_export_arguments(parser)
    return parser.parse_args(argv)


def test_run_export_cli(filled_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_export(_parse(["--db", str(filled_db), "--format", "json", "--verdict", "fail", "--out", "-"])) == 0
    captured = capsys.readouterr()
    assert [i["id"] for i in json.loads(captured.out)] == [2, 4, 6]
    assert "3 inspection(s)" in captured.err

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
