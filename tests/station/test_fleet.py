"""The fleet: station ledgers forwarded to a real PostgreSQL server that these tests start (tests/station/pg_util.py).

In every case the central rows must equal the local rows, with no duplicates: four stations at once, the server
killed (``pg_ctl stop -m immediate``) mid-batch and restarted, the forwarder killed with SIGKILL mid-batch.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from inspection_core.records import (Defect, Frame, FrameGap, GapKind, InspectionResult, NotInspected,
                                     NotInspectedReason, Verdict)
from station import rejectlog
from station.cli import main as station_main
from station.errors import RecipeError
from station.fleet.central import FleetError, apply_migrations, check_url, fetch_central
from station.fleet.forwarder import FleetForwarding, Forwarder, from_table
from station.fleet.report import fleet_report, render, shift_of
from station.outbox import LedgerCursor
from station.recipe import TableReader
from station.rejectlog import COLUMNS, RejectLog, fetch_rows

from tests.station.pg_util import QA_USER, STATION_USER, PgServer
from tests.station.waiting import wait_until

psycopg = pytest.importorskip("psycopg", reason="the fleet needs psycopg 3: pip install 'psycopg[binary]'")

REPO = Path(__file__).resolve().parents[2]
START = datetime(2024, 5, 31, 23, 55, tzinfo=timezone.utc)  # ledgers cross into June: two monthly partitions


# the server (fixture pg) and a fresh fleet database per test (fixture fleet) come from tests/station/conftest.py

# -- synthetic ledgers ----------------------------------------------------------------------------------------

def entry(i: int):
    """Per ten rows: six PASS, two FAIL (crack, pit), one NOT_INSPECTED, one GAP."""
    kind = i % 10
    image = np.full((12, 16), i % 256, np.uint8)
    camera = {"camera_timestamp_ns": 5_000_000 + i} if "camera_timestamp_ns" in Frame.__dataclass_fields__ else {}
    frame = Frame(image=image, frame_id=i, timestamp_ns=1_000_000 + i, source="replay:test", meta={"file": f"{i}.png"},
                  **camera)
    if kind < 6 or kind in (6, 7):
        fail = kind >= 6
        label = "crack" if kind == 6 else "pit"
        defects = (Defect(label, (1, 1, 3, 3), 9, (2.0, 2.0), 0.8, 0.9),) if fail else ()
        return InspectionResult(frame=frame, mask=np.zeros((12, 16), np.float32), defects=defects,
                                verdict=Verdict.FAIL if fail else Verdict.PASS, engine_id="bffn/onnxruntime",
                                latency_ms=1.5 + i)
    if kind == 8:
        return NotInspected.of(frame, NotInspectedReason.DROPPED, "queue full")
    return FrameGap(source="replay:test", kind=GapKind.LOST_IDS, first_id=i, last_id=i + 2, count=3, start_ns=i,
                    end_ns=i + 10)


def add_rows(log: RejectLog, first: int, count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows ``first .. first+count-1``, ten seconds apart from START."""
    for i in range(first, first + count):
        monkeypatch.setattr(rejectlog, "_utc_now", lambda i=i: START + timedelta(seconds=10 * i))
        log.record(entry(i))
    monkeypatch.undo()


def make_ledger(folder: Path, station: str, rows: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = folder / station / "rejects.db"
    with RejectLog(db, station_id=station, run_id=f"run-{station}") as log:
        add_rows(log, 0, rows, monkeypatch)
    return db


def key(row: dict) -> tuple:
    return tuple(row[c] for c in COLUMNS)


def central_count(pg: PgServer, db: str) -> int:
    with psycopg.connect(pg.url(db=db)) as conn:
        return conn.execute("SELECT count(*) FROM parts").fetchone()[0]


def assert_same(local_dbs: list[Path], url: str) -> None:
    """The central rows equal the union of the local ones, each once."""
    local = [key(r) for db in local_dbs for r in fetch_rows(db)]
    central = [key(r) for r in fetch_central(url)]
    assert len(central) == len(local)
    assert sorted(central, key=repr) == sorted(local, key=repr)


@contextlib.contextmanager
def blocking_row(pg: PgServer, db: str, local_db: Path, row_id: int):
    """Hold an uncommitted central row with the key of local row ``row_id``: a forwarder inserting it waits (ON
    CONFLICT waits for the other transaction), i.e. it stops in the middle of that batch's transaction."""
    row = next(r for r in fetch_rows(local_db) if r["id"] == row_id)
    moment = datetime.strptime(row["time_utc"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    conn = psycopg.connect(pg.url(db=db))
    conn.execute("SELECT fleet_ensure_month(%s)", (moment,))
    conn.commit()
    conn.execute("INSERT INTO parts (station_id, run_id, row_id, time_utc, timestamp_ns, source, frame_id, verdict, "
                 "defects_json, labels_json, engine_id, latency_ms) VALUES (%s, %s, %s, %s, 0, 'x', 0, 'PASS', '[]', "
                 "'[]', 'x', 0)", (row["station_id"], row["run_id"], row_id, moment))
    try:
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        with contextlib.suppress(psycopg.Error):
            conn.close()


def forwarder_waits_on_lock(pg: PgServer, db: str) -> bool:
    with psycopg.connect(pg.url(db=db)) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'station forward' "
                            "AND wait_event_type = 'Lock'").fetchone()[0] == 1


# -- tests ----------------------------------------------------------------------------------------------------

def test_a_url_with_a_password_is_refused_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FleetError, match=r"environment \(PGPASSWORD\) or a .pgpass"):
        check_url("postgresql://line3:secret@db/fleet")
    with pytest.raises(FleetError, match="PGPASSWORD"):
        check_url("postgresql://line3@db/fleet?password=secret")
    with pytest.raises(FleetError, match="not a PostgreSQL URL"):
        check_url("mysql://db/fleet")
    db = tmp_path / "rejects.db"
    RejectLog(db).close()
    assert station_main(["forward", "--db", str(db), "--to", "postgresql://u:pw@127.0.0.1/fleet", "--once"]) == 2
    assert "the URL holds a password" in capsys.readouterr().err
    assert station_main(["export", "--db", "postgresql://u:pw@h/f", "--format", "csv", "--out", "-"]) == 2

    class Ctx:
        db_path, station_id = db, "line-3"

    with pytest.raises(RecipeError, match=r"\[fleet\] to: .*PGPASSWORD"):
        from_table(TableReader({"to": "postgresql://u:pw@h/f"}, "r.toml", "fleet", tmp_path), Ctx)
    with pytest.raises(RecipeError, match="did you mean 'batch'"):
        from_table(TableReader({"to": "postgresql://u@h/f", "batchh": 3}, "r.toml", "fleet", tmp_path), Ctx)
    with pytest.raises(RecipeError, match="batch: 0 is not allowed"):
        from_table(TableReader({"to": "postgresql://u@h/f", "batch": 0}, "r.toml", "fleet", tmp_path), Ctx)
    with pytest.raises(RecipeError, match=r'^r.toml: \[fleet\] to: missing; add to = "postgresql://USER@HOST'):
        from_table(TableReader({"batch": 3}, "r.toml", "fleet", tmp_path), Ctx)
    with pytest.raises(RecipeError, match=r"^r.toml: \[fleet\] interval_s: 0 is not allowed; use a number of seconds"):
        from_table(TableReader({"to": "postgresql://u@h/f", "interval_s": 0}, "r.toml", "fleet", tmp_path), Ctx)
    built = from_table(TableReader({"to": "postgresql://u@h/f", "images": "img"}, "r.toml", "fleet", tmp_path), Ctx)
    assert built.images == tmp_path / "img" and built.station_id == "line-3"


def test_init_is_versioned_and_idempotent_with_monthly_partitions(pg: PgServer, fleet: str) -> None:
    url = pg.url(db=fleet)
    assert apply_migrations(url) == []  # nothing new the second time
    assert station_main(["fleet", "init", "--to", url]) == 0
    with psycopg.connect(url) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version")] == \
            ["001_parts", "002_roles", "003_row_security", "004_part_identity", "005_reviews"]
        assert conn.execute("SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'parts'::regclass")\
            .fetchone()[0] == "r"
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'parts'")}
        assert {"parts_time", "parts_station_time", "parts_verdict_time", "parts_classes"} <= indexes


def test_four_stations_forward_at_once(pg: PgServer, fleet: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    dbs = [make_ledger(tmp_path, f"line-{n}", 120 + 10 * n, monkeypatch) for n in range(4)]
    url = pg.url(STATION_USER, fleet)
    errors: list[BaseException] = []

    def forward(db: Path) -> None:
        try:
            f = Forwarder(db, url, batch=25, images_dir=tmp_path / "share")
            f.forward_all()
            assert f.lag() == (0, 0.0)
            f.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=forward, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert central_count(pg, fleet) == sum(len(fetch_rows(db)) for db in dbs) == 4 * 120 + 60
    assert_same(dbs, pg.url(db=fleet))
    with psycopg.connect(pg.url(db=fleet)) as conn:
        partitions = {r[0] for r in conn.execute("SELECT relname FROM pg_inherits JOIN pg_class ON oid = inhrelid "
                                                 "WHERE inhparent = 'parts'::regclass")}
        assert {"parts_2024_05", "parts_2024_06"} <= partitions
        # the images stay on the station: path, size and SHA-256 in the central row, a copy where --images said
        path, size, sha, copy, classes = conn.execute(
            "SELECT image_path, image_size, image_sha256, image_copy, defect_classes FROM parts "
            "WHERE station_id = 'line-0' AND verdict = 'FAIL' ORDER BY row_id LIMIT 1").fetchone()
    import hashlib
    data = (dbs[0].parent / path).read_bytes()
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert Path(copy) == tmp_path / "share" / "line-0" / path and Path(copy).read_bytes() == data
    assert classes == ["crack"]
    if "camera_timestamp_ns" in COLUMNS:  # ledgers of schema 4 on: the camera's time stamp goes along
        assert {r["camera_timestamp_ns"] for r in fetch_central(pg.url(db=fleet), station="line-0")} >= {5_000_000}
    # a resend (the mark lost) is ignored by the server: no duplicates
    again = Forwarder(dbs[0], url, batch=1000)
    again.cursor._conn.execute("DELETE FROM outbox_marks")
    assert again.forward_all() == len(fetch_rows(dbs[0])) and again.inserted == 0
    again.close()
    assert central_count(pg, fleet) == 4 * 120 + 60


def test_the_station_role_may_only_insert_and_qa_may_only_select(pg: PgServer, fleet: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    db = make_ledger(tmp_path, "line-1", 10, monkeypatch)
    Forwarder(db, pg.url(STATION_USER, fleet)).forward_all()
    for statement in ("SELECT count(*) FROM parts", "DELETE FROM parts", "UPDATE parts SET file = 'x'",
                      "SELECT count(*) FROM parts_2024_05", "TRUNCATE parts", "DROP TABLE parts"):
        with psycopg.connect(pg.url(STATION_USER, fleet)) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(pg.url(QA_USER, fleet)) as conn:
        assert conn.execute("SELECT count(*) FROM parts").fetchone()[0] == 10
        for statement in ("DELETE FROM parts", "SELECT fleet_ensure_month(now())",
                          "INSERT INTO parts (station_id, run_id, row_id, time_utc, timestamp_ns, source, frame_id, "
                          "verdict, defects_json, labels_json, engine_id, latency_ms) VALUES ('x', 'x', 1, now(), 0, "
                          "'x', 0, 'PASS', '[]', '[]', 'x', 0)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    assert station_main(["fleet", "report", "--to", pg.url(STATION_USER, fleet), "--since", "2024-01-01"]) == 1


def test_server_killed_mid_batch_and_restarted_two_stations_export_the_union(
        pg: PgServer, fleet: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = make_ledger(tmp_path, "line-a", 200, monkeypatch), make_ledger(tmp_path, "line-b", 120, monkeypatch)
    url = pg.url(STATION_USER, fleet)
    stop = threading.Event()
    forwarders = [Forwarder(a, url, batch=20), Forwarder(b, url, batch=20)]
    wakes = [threading.Event(), threading.Event()]
    with blocking_row(pg, fleet, a, 150):
        threads = [threading.Thread(target=f.run, args=(stop, w, 0.05, 0.05, 0.3)) for f, w in zip(forwarders, wakes)]
        for t in threads:
            t.start()
        wait_until(lambda: forwarders[0].cursor.mark() == 140 and forwarder_waits_on_lock(pg, fleet),
                 what="station a to stop inside the batch of rows 141-160")
        pg.stop("immediate")  # the server dies with a batch half inserted and the blocking transaction open
    try:
        wait_until(lambda: forwarders[0].last_error is not None, what="the forwarder to notice the server is away")
        assert forwarders[0].cursor.mark() == 140  # the half batch never committed: the mark did not move
        with RejectLog(a, station_id="line-a", run_id="run-line-a") as log:  # the line goes on meanwhile
            add_rows(log, 200, 30, monkeypatch)
        assert forwarders[0].lag()[0] == 230 - 140
        with pytest.raises(FleetError, match="rows wait in the ledger"):
            Forwarder(a, url).ship_batch()  # what `station forward --once` meets
    finally:
        pg.start()
    for w in wakes:
        w.set()
    wait_until(lambda: all(f.lag()[0] == 0 for f in forwarders), what="both stations to catch up")
    stop.set()
    for t in threads:
        t.join(10)
    assert forwarders[0].last_error is None
    assert_same([a, b], pg.url(db=fleet))
    # done means: `station export --db postgresql://...` returns exactly the union of both stations' rows
    out = tmp_path / "fleet.csv"
    assert station_main(["export", "--db", pg.url(QA_USER, fleet), "--format", "csv", "--out", str(out)]) == 0
    with out.open() as f:
        exported = sorted(tuple(r[c] for c in COLUMNS) for r in csv.DictReader(f))
    local = []
    for db in (a, b):
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            assert station_main(["export", "--db", str(db), "--format", "csv", "--out", "-"]) == 0
        local += [tuple(r[c] for c in COLUMNS) for r in csv.DictReader(io.StringIO(text.getvalue()))]
    assert exported == sorted(local) and len(exported) == 350
    out_b = tmp_path / "b.json"
    assert station_main(["export", "--db", pg.url(QA_USER, fleet), "--format", "json", "--station", "line-b",
                         "--verdict", "fail", "--since", "2024-06-01", "--out", str(out_b)]) == 0
    import json
    items = json.loads(out_b.read_text())
    expected = [r for r in fetch_rows(b, since="2024-06-01", verdict="fail")]
    assert [i["id"] for i in items] == [r["id"] for r in expected] and items
    assert {i["station_id"] for i in items} == {"line-b"} and items[0]["image_sha256"]


def test_forwarder_killed_with_sigkill_mid_batch_then_restarted(pg: PgServer, fleet: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    db = make_ledger(tmp_path, "line-k", 200, monkeypatch)
    url = pg.url(STATION_USER, fleet)
    argv = [sys.executable, "-m", "station.cli", "forward", "--db", str(db), "--to", url, "--batch", "20",
            "--interval", "0.1"]
    with blocking_row(pg, fleet, db, 150):
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            cursor = LedgerCursor(db, "probe")
            wait_until(lambda: forwarder_waits_on_lock(pg, fleet) or proc.poll() is not None,
                     what="the forwarder to stop inside the batch of rows 141-160")
            assert proc.poll() is None, proc.communicate()
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    status = subprocess.run(argv[:-4] + ["--status", "--json"], cwd=REPO, capture_output=True, text=True)
    assert '"mark": 140' in status.stdout and '"lag_rows": 60' in status.stdout, status
    assert central_count(pg, fleet) == 140  # the killed batch rolled back on the server
    done = subprocess.run(argv[:-2] + ["--once"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "60 rows sent" in done.stderr
    assert_same([db], pg.url(db=fleet))
    cursor.close()


def test_the_fleet_table_forwards_inside_a_run_and_reports_lag(pg: PgServer, fleet: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "rejects.db"

    class Ctx:
        db_path, station_id = db, "line-r"

    table = {"to": pg.url(STATION_USER, fleet), "batch": 7, "interval_s": 5.0}
    integration = from_table(TableReader(table, "r.toml", "fleet", tmp_path), Ctx)
    assert isinstance(integration, FleetForwarding)
    with RejectLog(db, station_id="line-r", run_id="run-r") as log:
        integration.start(line=None)
        for i in range(40):
            monkeypatch.setattr(rejectlog, "_utc_now", lambda i=i: datetime.now(timezone.utc))
            row = log.record_row(entry(i))
            integration.on_row(row, None)  # the line's listeners call this after each committed row
        wait_until(lambda: integration.status()["lag_rows"] == 0, what="the thread to forward (woken by on_row)")
        status = integration.status()
        assert status["lag_seconds"] == 0 and status["sent"] == 40 and status["mark"] == 40
        integration.close()
    assert_same([db], pg.url(db=fleet))


def test_lag_while_the_server_is_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = make_ledger(tmp_path, "line-x", 12, monkeypatch)
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        dead = f"postgresql://nobody@127.0.0.1:{s.getsockname()[1]}/fleet"
    f = Forwarder(db, dead)
    with pytest.raises(FleetError, match="cannot connect"):
        f.forward_all()
    rows, seconds = f.lag()
    assert rows == 12 and seconds > 3600  # the oldest row is from 2024
    stop = threading.Event()
    t = threading.Thread(target=f.run, args=(stop, None, 0.05, 0.01, 0.05))
    t.start()
    wait_until(lambda: f.last_error is not None, what="a failed try")
    stop.set()
    t.join(5)
    assert not t.is_alive() and f.cursor.mark() == 0
    f.close()


def test_report_yield_by_station_and_rejects_by_class(pg: PgServer, fleet: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    dbs = [make_ledger(tmp_path, "line-1", 100, monkeypatch), make_ledger(tmp_path, "line-2", 50, monkeypatch)]
    for db in dbs:
        Forwarder(db, pg.url(STATION_USER, fleet)).forward_all()
    url = pg.url(QA_USER, fleet)
    rows = fleet_report(url, "2024-05-01", by="station")
    assert rows == [
        {"station": "line-1", "parts": 90, "pass": 60, "fail": 20, "not_inspected": 10, "rejected": 30,
         "lost_frames": 30, "yield_pct": 66.67},
        {"station": "line-2", "parts": 45, "pass": 30, "fail": 10, "not_inspected": 5, "rejected": 15,
         "lost_frames": 15, "yield_pct": 66.67}]
    by_class = fleet_report(url, "2024-05-01", by="class")
    assert [(r["class"], r["parts"], r["stations"]) for r in by_class] == [
        ("crack", 15, 2), ("pit", 15, 2), ("not inspected: dropped", 15, 2)]
    assert [r["station"] for r in fleet_report(url, "2024-06-01", by="station", station="line-2")] == ["line-2"]
    days = fleet_report(url, "2024-05-01", by="day")
    assert [d["day"] for d in days] == ["2024-05-31", "2024-06-01"] and sum(d["parts"] for d in days) == 135
    shifts = fleet_report(url, "2024-05-01", by="shift")
    assert [s["shift"] for s in shifts] == ["2024-05-31 S3 (22:00)"]  # 23:55 .. 00:12 is one night shift
    assert shift_of(datetime(2024, 6, 1, 5), (6, 14, 22)) == "2024-05-31 S3 (22:00)"
    assert station_main(["fleet", "report", "--to", url, "--since", "2024-05-01", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "line-1,90,60,20,10,30,30,66.67"
    chart = tmp_path / "yield.png"
    assert station_main(["fleet", "report", "--to", url, "--since", "2024-05-01", "--format", "png",
                         "--out", str(chart)]) == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "line-2" in render(rows, "table", None)
    assert station_main(["fleet", "report", "--to", url, "--since", "May", "--by", "day"]) == 2
    assert "--since" in capsys.readouterr().err


def test_station_forward_runs_until_sigterm_and_copies_images(pg: PgServer, fleet: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    db = make_ledger(tmp_path, "line-s", 20, monkeypatch)
    url = pg.url(STATION_USER, fleet)
    proc = subprocess.Popen([sys.executable, "-m", "station.cli", "forward", "--db", str(db), "--to", url,
                             "--images", str(tmp_path / "share"), "--interval", "0.1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    probe = Forwarder(db, url)
    try:
        wait_until(lambda: probe.lag()[0] == 0 or proc.poll() is not None, what="the forwarder to catch up")
        with RejectLog(db, station_id="line-s", run_id="run-line-s") as log:  # a row logged later is picked up
            add_rows(log, 20, 1, monkeypatch)
        wait_until(lambda: probe.lag()[0] == 0 or proc.poll() is not None, what="the new row")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    probe.close()
    assert proc.returncode == 0, err
    assert "21 rows sent" in err
    assert_same([db], pg.url(db=fleet))
    fails = [r for r in fetch_rows(db) if r["image_path"]]
    assert fails and all((tmp_path / "share" / "line-s" / r["image_path"]).read_bytes()
                         == (db.parent / r["image_path"]).read_bytes() for r in fails)


def test_a_database_before_004_gains_the_part_identity_and_its_queries_filter_on_it(
        pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Migration 004 on a database set up with 001-003: a schema-5 station's forwarder is told to have it applied
    (its rows wait), the rows already there read NULL identities, then export and report filter on them."""
    import json

    from inspection_core.records import PartIdentity
    from station.fleet import central
    from tests.station.pg_util import create_fleet

    first_three = central.migrations()[:3]
    with monkeypatch.context() as patch:
        patch.setattr(central, "migrations", lambda: first_three)
        db = create_fleet(pg)
    admin, qa = pg.url(db=db), pg.url(QA_USER, db)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    with psycopg.connect(admin) as conn:  # a row forwarded before 004
        conn.execute("SELECT fleet_ensure_month(%s)", (now,))
        conn.execute("INSERT INTO parts (station_id, run_id, row_id, time_utc, timestamp_ns, source, frame_id, "
                     "verdict, defects_json, labels_json, engine_id, latency_ms) VALUES ('line-1', 'run-0', 1, %s, 0, "
                     "'replay:old', 1, 'PASS', '[]', '[]', 'bffn', 1.0)", (now,))
    ledger = tmp_path / "rejects.db"
    ids = [("P-1", "M-1", "X-7"), ("P-2", "M-1", "X-8"), ("P-3", "M-2", "X-7"), (None, "M-2", None)]
    with RejectLog(ledger, station_id="line-1", run_id="run-1") as log:
        for i, (part, meas, product) in enumerate(ids, start=1):
            frame = Frame(image=np.full((12, 16), i, np.uint8), frame_id=i, timestamp_ns=i, source="replay:test",
                          meta={"file": f"{i}.png"}, identity=PartIdentity(part, meas, product, f"run-1-{i}"))
            log.record(InspectionResult(frame=frame, mask=np.zeros((12, 16), np.float32), defects=(),
                                        verdict=Verdict.PASS if i % 2 else Verdict.FAIL, engine_id="bffn",
                                        latency_ms=1.0))
    forwarder = Forwarder(ledger, pg.url(STATION_USER, db))
    with pytest.raises(FleetError, match=r"predates this station's columns \(migration 004 added the part "
                                         r"identity\); an admin runs station fleet init --to ADMIN_URL"):
        forwarder.forward_all()
    forwarder.close()
    [old] = fetch_central(qa)
    assert (old["part_id"], old["meas_id"], old["job_id"]) == (None, None, None)
    with pytest.raises(FleetError, match=r"predates the part identity columns \(migration 004\), so it cannot filter "
                                         r"on part_id; an admin runs station fleet init"):
        fetch_central(qa, part_id="P-1")
    with pytest.raises(FleetError, match="cannot filter on product_id"):
        fleet_report(qa, since=now.date().isoformat(), product_id="X-7")

    assert station_main(["fleet", "init", "--to", admin]) == 0
    assert "applied 004_part_identity" in capsys.readouterr().err
    assert Forwarder(ledger, pg.url(STATION_USER, db)).forward_all() == 4  # the rows waited in the ledger
    [one] = fetch_central(qa, part_id="P-1")
    assert (one["id"], one["meas_id"], one["product_id"], one["job_id"]) == (1, "M-1", "X-7", "run-1-1")
    assert [r["part_id"] for r in fetch_central(qa, meas_id="M-2")] == ["P-3", None]
    assert fetch_central(qa, part_id="P-1", meas_id="M-2") == []
    assert [r["part_id"] for r in fetch_central(qa) if r["run_id"] == "run-0"] == [None]  # the old row: NULL
    [x7] = fleet_report(qa, since=now.date().isoformat(), product_id="X-7")
    assert (x7["parts"], x7["pass"], x7["fail"]) == (2, 2, 0)
    assert station_main(["fleet", "report", "--to", qa, "--since", now.date().isoformat(), "--product-id", "X-8",
                         "--format", "json"]) == 0
    [x8] = json.loads(capsys.readouterr().out)
    assert (x8["station"], x8["parts"], x8["fail"]) == ("line-1", 1, 1)
    with psycopg.connect(admin) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'parts'")}
    assert {"parts_part_id", "parts_meas_id"} <= indexes
