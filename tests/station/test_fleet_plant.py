"""The fleet as a plant runs it (issue 28), against the real PostgreSQL server of tests/station/conftest.py:
`station forward` started before its station, station logins that may write only their own station's rows and
open only the months they need (row-level security, also tried with ``psql``), and shift reports in local time
across daylight-saving changes.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from inspection_core.records import Defect, Frame, InspectionResult, NotInspected, NotInspectedReason, Verdict
from station import rejectlog
from station.cli import SAMPLES
from station.cli import main as station_main
from station.fleet import central
from station.fleet import forwarder as forwarding
from station.fleet.central import FleetError, fetch_central, migrations
from station.fleet.forwarder import Forwarder, ledger_ready
from station.fleet.report import fleet_report, parse_zone, periods, shift_of
from station.recipe import default_station_id
from station.rejectlog import COLUMNS, RejectLog, fetch_rows

from tests.station.pg_util import QA_USER, STATION_USER, PgServer, create_fleet
from tests.station.waiting import wait_until

psycopg = pytest.importorskip("psycopg", reason="the fleet needs psycopg 3: pip install 'psycopg[binary]'")

REPO = Path(__file__).resolve().parents[2]
STATION = [sys.executable, "-m", "station.cli"]
BERLIN = "Europe/Berlin"
OLD_LOGIN = "fleet_old_line"


class Stderr:
    """The lines a child process writes to stderr, read on a thread (so a test can wait for one)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(proc.stderr.readline, "")),
                                        daemon=True)
        self._thread.start()

    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> str:
        self._thread.join(10)
        return self.text()


def result(i: int, moment: datetime | None = None):
    """Row ``i``: PASS, FAIL (crack) or NOT_INSPECTED, in turn."""
    frame = Frame(image=np.zeros((8, 8), np.uint8), frame_id=i, timestamp_ns=1_000 + i, source="replay:test")
    if i % 3 == 2:
        return NotInspected.of(frame, NotInspectedReason.DROPPED, "queue full")
    fail = i % 3 == 1
    defects = (Defect("crack", (1, 1, 3, 3), 9, (2.0, 2.0), 0.8, 0.9),) if fail else ()
    return InspectionResult(frame=frame, mask=np.zeros((8, 8), np.float32), defects=defects,
                            verdict=Verdict.FAIL if fail else Verdict.PASS, engine_id="test", latency_ms=1.0)


def ledger_at(db: Path, station: str, moments: list[datetime], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ledger of ``station`` with one row logged at each of ``moments``."""
    with RejectLog(db, save_images=False, station_id=station, run_id=f"run-{station}") as log:
        for i, moment in enumerate(moments):
            monkeypatch.setattr(rejectlog, "_utc_now", lambda moment=moment: moment)
            log.record(result(i))
    monkeypatch.undo()
    return db


def central_count(pg: PgServer, db: str, where: str = "true") -> int:
    with psycopg.connect(pg.url(db=db)) as conn:
        return conn.execute(f"SELECT count(*) FROM parts WHERE {where}").fetchone()[0]


def partitions(pg: PgServer, db: str) -> set[str]:
    with psycopg.connect(pg.url(db=db)) as conn:
        return {r[0] for r in conn.execute("SELECT relname FROM pg_inherits JOIN pg_class ON oid = inhrelid "
                                           "WHERE inhparent = 'parts'::regclass")}


def insert_as(pg: PgServer, db: str, user: str, station: str, moment: datetime | None = None) -> None:
    """One row inserted by ``user`` directly, as a forwarder (or anyone holding the login) would."""
    with psycopg.connect(pg.url(user, db)) as conn:
        conn.execute("INSERT INTO parts (station_id, run_id, row_id, time_utc, timestamp_ns, source, frame_id, "
                     "verdict, defects_json, labels_json, engine_id, latency_ms) VALUES (%s, 'r', 1, %s, 0, 'x', 0, "
                     "'PASS', '[]', '[]', 'x', 0)", (station, moment or datetime.now(timezone.utc)))


def keys(rows: list[dict]) -> list[tuple]:
    return sorted((tuple(r[c] for c in COLUMNS) for r in rows), key=repr)


# -- 1. `station forward` started before its station ----------------------------------------------------------

def test_forward_waits_for_the_ledger_and_stops_on_sigterm_while_waiting(tmp_path: Path) -> None:
    ledger = tmp_path / "station-data" / "rejects.db"  # neither the file nor its folder exists yet
    dead = "postgresql://nobody@127.0.0.1:9/fleet"  # never reached: it stops before the ledger appears
    proc = subprocess.Popen([*STATION, "forward", "--db", str(ledger), "--to", dead, "--interval", "0.1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = Stderr(proc)
    try:
        wait_until(lambda: f"waiting for the ledger at {ledger}" in err.text() or proc.poll() is not None,
                   what="the message that it waits for the ledger")
        time.sleep(0.5)
        assert proc.poll() is None, err.text()  # it waits instead of exiting
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0, err.join()
    assert "stopped while waiting for the ledger" in err.join()
    assert not ledger.exists() and not ledger.parent.exists()  # waiting never creates the ledger
    # a file that is being created (empty) is not a ledger yet; a file that is no SQLite database is refused
    ledger.parent.mkdir()
    ledger.write_bytes(b"")
    assert ledger_ready(ledger) is False
    ledger.write_bytes(b"this is not a database, but long enough to hold an SQLite header" * 4)
    assert station_main(["forward", "--db", str(ledger), "--to", dead]) == 2
    # --once and --status still want the ledger now
    assert station_main(["forward", "--db", str(tmp_path / "none.db"), "--to", dead, "--once"]) == 2
    assert station_main(["forward", "--db", str(tmp_path / "none.db"), "--to", dead, "--status"]) == 2


def test_forward_started_before_the_station_forwards_a_real_run(pg: PgServer, tmp_path: Path) -> None:
    station = default_station_id()  # what `station run` writes without a [station] id
    db = create_fleet(pg, (f"fleet_wait_line={station}",), ())
    ledger = tmp_path / "station-data" / "rejects.db"
    proc = subprocess.Popen([*STATION, "forward", "--db", str(ledger), "--to", pg.url("fleet_wait_line", db),
                             "--interval", "0.1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = Stderr(proc)
    try:
        wait_until(lambda: f"waiting for the ledger at {ledger}" in err.text() or proc.poll() is not None,
                   what="the message that it waits for the ledger")
        assert proc.poll() is None, err.text()
        run = subprocess.run([*STATION, "run", "--source", f"replay:{SAMPLES}", "--headless", "--max-frames", "4",
                              "--fps", "0", "--db", str(ledger)], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        wait_until(lambda: central_count(pg, db) == 4 or proc.poll() is not None, timeout=60,
                   what="the station's 4 rows in PostgreSQL")
        assert proc.poll() is None, err.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, err.join()
    assert "appeared; forwarding" in err.join() and "4 rows sent" in err.join()
    assert keys(fetch_central(pg.url(db=db))) == keys(fetch_rows(ledger))


# -- 2. a station login writes only its own station's rows ----------------------------------------------------

def test_a_station_login_cannot_write_another_stations_rows_nor_open_any_month(
        pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    db = create_fleet(pg, (), (), None)  # the schema only; logins come from the commands below
    admin = pg.url(db=db)
    assert station_main(["fleet", "init", "--to", admin, "--station-user", "rls_line3=line-3",
                         "--qa-user", "rls_qa"]) == 0
    assert "rls_line3 may insert the rows of line-3" in capsys.readouterr().err
    now = datetime.now(timezone.utc)
    # the spoof of the issue: line3 writes a row as 'line4-spoof', and opens a month in 2031
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        insert_as(pg, db, "rls_line3", "line4-spoof")
    insert_as(pg, db, "rls_line3", "line-3")  # its own id goes in
    with psycopg.connect(pg.url("rls_line3", db)) as conn:
        assert conn.execute("SELECT fleet_ensure_month(now())").fetchone()[0] == f"parts_{now:%Y_%m}"
        for month, why in (("2031-01-15", "more than 1 day ahead"), (f"{now.year - 2}-{now.month:02d}-15",
                                                                        "stations open months from")):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=why):
                conn.execute("SELECT fleet_ensure_month(%s::timestamptz)", (month,))
            conn.rollback()
    assert not any(p.startswith(("parts_2031", f"parts_{now.year - 2}")) for p in partitions(pg, db))
    # the same with psql, as an integrator tries it
    if shutil.which("psql"):
        psql = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "rls_line3",
                "-d", db, "-c"]
        spoof = subprocess.run(psql + ["INSERT INTO parts (station_id, run_id, row_id, time_utc, timestamp_ns, "
                                       "source, frame_id, verdict, defects_json, labels_json, engine_id, latency_ms) "
                                       "VALUES ('line4-spoof', 'r', 2, now(), 0, 'x', 0, 'PASS', '[]', '[]', 'x', 0)"],
                               capture_output=True, text=True)
        assert spoof.returncode != 0 and "new row violates row-level security policy" in spoof.stderr, spoof
        future = subprocess.run(psql + ["SELECT fleet_ensure_month('2031-06-01')"], capture_output=True, text=True)
        assert future.returncode != 0 and "may not open month 2031-06" in future.stderr, future
        assert "HINT" in future.stderr and "check the station's clock" in future.stderr
    # a forwarder whose ledger says line4-spoof: refused with what to do, nothing stored, the rows wait
    spoofed = ledger_at(tmp_path / "spoof.db", "line4-spoof", [now - timedelta(seconds=5)] * 3, monkeypatch)
    forwarder = Forwarder(spoofed, pg.url("rls_line3", db))
    with pytest.raises(FleetError, match="station id line4-spoof.*station fleet add-station") as refused:
        forwarder.forward_all()
    assert "row-level security" in str(refused.value) and forwarder.cursor.mark() == 0
    forwarder.close()
    future = ledger_at(tmp_path / "clock.db", "line-3", [utc(2031, 1, 15, 8, 0)], monkeypatch)  # a clock gone wrong
    with pytest.raises(FleetError, match=r"may not open month 2031-01 .*check the station.s clock.*rows wait"):
        Forwarder(future, pg.url("rls_line3", db)).forward_all()
    once = subprocess.run([*STATION, "forward", "--db", str(spoofed), "--to", pg.url("rls_line3", db), "--once"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert once.returncode == 1 and "row-level security" in once.stderr, once.stderr
    # a second station through the command; each writes its own id only; QA reads them all
    assert station_main(["fleet", "add-station", "--to", admin, "rls_line4", "--station-id", "line-4"]) == 0
    assert 'policy "station rls_line4"' in capsys.readouterr().err
    line4 = ledger_at(tmp_path / "line4.db", "line-4", [now - timedelta(seconds=3)] * 3, monkeypatch)
    assert Forwarder(line4, pg.url("rls_line4", db)).forward_all() == 3
    for login, other in (("rls_line3", "line-4"), ("rls_line4", "line-3")):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            insert_as(pg, db, login, other)
    assert central_count(pg, db, "station_id = 'line4-spoof'") == 0
    with psycopg.connect(pg.url("rls_qa", db)) as conn:
        assert dict(conn.execute("SELECT station_id, count(*) FROM parts GROUP BY 1").fetchall()) == \
            {"line-3": 1, "line-4": 3}
    # run again to change a login's ids; a prefix covers a station's cameras
    assert station_main(["fleet", "add-station", "--to", admin, "rls_line3", "--station-id", "line-3",
                         "--station-id", "line4-spoof"]) == 0
    assert Forwarder(spoofed, pg.url("rls_line3", db)).forward_all() == 3  # the rows waited in the ledger
    assert station_main(["fleet", "add-station", "--to", admin, "rls_line3", "--station-id", "line-3-cam*"]) == 0
    insert_as(pg, db, "rls_line3", "line-3-cam-b")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        insert_as(pg, db, "rls_line3", "line-3")
    # the admin that owns parts is not limited: it may open an old month for a station
    with psycopg.connect(admin) as conn:
        conn.execute("SELECT fleet_ensure_month(%s::timestamptz)", (f"{now.year - 2}-{now.month:02d}-15",))
        conn.commit()
    assert f"parts_{now.year - 2}_{now.month:02d}" in partitions(pg, db)
    # bad input is refused before connecting
    assert station_main(["fleet", "add-station", "--to", admin, "x", "--station-id", "a*b"]) == 2
    assert station_main(["fleet", "init", "--to", admin, "--station-user", "x="]) == 2
    assert station_main(["fleet", "init", "--to", admin, "--months-back", "-1"]) == 2


def test_an_older_fleet_database_is_upgraded_and_names_the_logins_without_a_policy(
        pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    first_two = migrations()[:2]
    with monkeypatch.context() as patch:  # a database set up before row-level security, with a station login
        patch.setattr(central, "migrations", lambda: first_two)
        db = create_fleet(pg, (), (QA_USER,), None)
    admin = pg.url(db=db)
    with psycopg.connect(admin) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OLD_LOGIN,)).fetchone() is None:
            conn.execute(f"CREATE ROLE {OLD_LOGIN} LOGIN")
        conn.execute(f"GRANT fleet_station TO {OLD_LOGIN}")  # as `fleet init --station-user` did before
        conn.commit()
    old = ledger_at(tmp_path / "old.db", "line-old", [datetime.now(timezone.utc)] * 4, monkeypatch)
    with monkeypatch.context() as patch:  # forwarded as a station before migration 004 did: no identity columns
        columns = forwarding.INSERT_COLUMNS[:forwarding.INSERT_COLUMNS.index("part_id")]
        patch.setattr(forwarding, "INSERT_COLUMNS", columns)
        patch.setattr(forwarding, "_INSERT", f"INSERT INTO parts ({', '.join(columns)}) VALUES "
                                            f"({', '.join(['%s'] * len(columns))}) ON CONFLICT DO NOTHING")
        assert Forwarder(old, pg.url(OLD_LOGIN, db)).forward_all() == 4
    assert station_main(["fleet", "init", "--to", admin]) == 0
    err = capsys.readouterr().err
    assert "applied 003_row_security, 004_part_identity" in err
    assert f"warning: {OLD_LOGIN} is in fleet_station but has no policy" in err
    with psycopg.connect(pg.url(QA_USER, db)) as conn:  # the old rows stay, and QA still reads them
        assert conn.execute("SELECT count(*) FROM parts").fetchone()[0] == 4
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # no policy: nothing, until the admin says which ids
        insert_as(pg, db, OLD_LOGIN, "line-old")
    assert station_main(["fleet", "add-station", "--to", admin, OLD_LOGIN, "--station-id", "line-old"]) == 0
    insert_as(pg, db, OLD_LOGIN, "line-old")
    assert station_main(["fleet", "init", "--to", admin]) == 0
    assert f"warning: {OLD_LOGIN}" not in capsys.readouterr().err  # (roles are the cluster's: others may show)


# -- 3. shifts in local time, across daylight saving ----------------------------------------------------------

def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# Europe/Berlin: CET (UTC+1) until 2026-03-29 01:00 UTC, then CEST (UTC+2) until 2026-10-25 01:00 UTC.
# Shifts at 6, 14 and 22 local; each row's expected shift in local time, and where UTC hours would put it.
SPRING = [(utc(2026, 3, 28, 20, 30), "2026-03-28 S2 (14:00)"),  # 21:30 CET
          (utc(2026, 3, 28, 21, 0), "2026-03-28 S3 (22:00)"),   # 22:00 CET: the night shift starts
          (utc(2026, 3, 29, 0, 59), "2026-03-28 S3 (22:00)"),   # 01:59 CET, the clock then jumps to 03:00
          (utc(2026, 3, 29, 1, 0), "2026-03-28 S3 (22:00)"),    # 03:00 CEST
          (utc(2026, 3, 29, 3, 59), "2026-03-28 S3 (22:00)"),   # 05:59 CEST
          (utc(2026, 3, 29, 4, 0), "2026-03-29 S1 (06:00)"),    # 06:00 CEST (UTC hours: still the night shift)
          (utc(2026, 3, 29, 4, 30), "2026-03-29 S1 (06:00)")]
AUTUMN = [(utc(2026, 10, 24, 19, 59), "2026-10-24 S2 (14:00)"),  # 21:59 CEST
          (utc(2026, 10, 24, 20, 0), "2026-10-24 S3 (22:00)"),   # 22:00 CEST (UTC hours: the afternoon shift)
          (utc(2026, 10, 25, 0, 30), "2026-10-24 S3 (22:00)"),   # 02:30 CEST ...
          (utc(2026, 10, 25, 1, 30), "2026-10-24 S3 (22:00)"),   # ... and 02:30 CET, the hour that repeats
          (utc(2026, 10, 25, 4, 30), "2026-10-24 S3 (22:00)"),   # 05:30 CET (UTC hours: 04:30, the night shift)
          (utc(2026, 10, 25, 5, 0), "2026-10-25 S1 (06:00)"),    # 06:00 CET (UTC hours: the night shift)
          (utc(2026, 10, 25, 5, 1), "2026-10-25 S1 (06:00)")]


def test_report_counts_shifts_in_local_time_across_daylight_saving(
        pg: PgServer, fleet: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name, rows in (("line-spring", SPRING), ("line-autumn", AUTUMN)):
        Forwarder(ledger_at(tmp_path / f"{name}.db", name, [m for m, _ in rows], monkeypatch),
                  pg.url(STATION_USER, fleet)).forward_all()
    for moment, shift in SPRING + AUTUMN:
        assert shift_of(moment, (6, 14, 22), BERLIN) == shift, moment
    url = pg.url(QA_USER, fleet)
    spring = fleet_report(url, "2026-03-28", "2026-03-29", by="shift", tz=BERLIN)
    assert [(s["shift"], s["hours"], s["parts"]) for s in spring] == [
        ("2026-03-28 S2 (14:00)", 8, 1), ("2026-03-28 S3 (22:00)", 7, 4), ("2026-03-29 S1 (06:00)", 8, 2)]
    night = spring[1]  # rows 1-4 of the spring ledger: FAIL, NOT_INSPECTED, PASS, FAIL
    assert (night["pass"], night["fail"], night["not_inspected"], night["yield_pct"]) == (1, 2, 1, 25.0)
    # the command, as QA runs it, for the autumn change: a nine-hour night shift
    assert station_main(["fleet", "report", "--to", url, "--since", "2026-10-24", "--until", "2026-10-25",
                         "--by", "shift", "--tz", BERLIN, "--format", "json"]) == 0
    autumn = json.loads(capsys.readouterr().out)
    assert [(s["shift"], s["hours"], s["parts"]) for s in autumn] == [
        ("2026-10-24 S2 (14:00)", 8, 1), ("2026-10-24 S3 (22:00)", 9, 4), ("2026-10-25 S1 (06:00)", 8, 2)]
    # in UTC hours (the default) the same rows fall elsewhere: that was the bug for a plant in Berlin
    in_utc = fleet_report(url, "2026-10-24", "2026-10-25", by="shift")
    assert [(s["shift"], s["hours"], s["parts"]) for s in in_utc] == [
        ("2026-10-24 S2 (14:00)", 8, 2), ("2026-10-24 S3 (22:00)", 8, 5)]
    # local days: 23 and 25 hours; a bare --since/--until is a local day (2026-03-29 starts at 23:00 UTC)
    days = fleet_report(url, "2026-03-29", "2026-03-29", by="day", tz=BERLIN)
    assert [(d["day"], d["hours"], d["parts"]) for d in days] == [("2026-03-29", 23, 5)]
    days = fleet_report(url, "2026-10-01", "2026-10-31", by="day", tz=BERLIN)
    assert [(d["day"], d["hours"], d["parts"]) for d in days] == [("2026-10-24", 24, 2), ("2026-10-25", 25, 5)]
    # by station: the window is local too
    assert [(r["station"], r["parts"]) for r in fleet_report(url, "2026-03-29T06:00", "2026-03-29", by="station",
                                                             tz=BERLIN)] == [("line-spring", 2)]
    assert station_main(["fleet", "report", "--to", url, "--since", "2026-03-01", "--tz", "Europe/Berln"]) == 2
    assert "--tz 'Europe/Berln' is not a time zone" in capsys.readouterr().err


def test_shift_names_and_lengths_without_a_server() -> None:
    # a shift that starts in the skipped hour starts when the clock jumps; in the repeated hour, at its first
    assert shift_of(utc(2026, 3, 29, 1, 0), (2, 10, 18), BERLIN) == "2026-03-29 S1 (02:00)"
    assert shift_of(utc(2026, 3, 29, 0, 59), (2, 10, 18), BERLIN) == "2026-03-28 S3 (18:00)"
    assert shift_of(utc(2026, 10, 25, 0, 0), (2, 10, 18), BERLIN) == "2026-10-25 S1 (02:00)"
    assert shift_of(datetime(2024, 6, 1, 5), (6, 14, 22)) == "2024-05-31 S3 (22:00)"  # naive: UTC
    spans = periods(date(2026, 10, 25), date(2026, 10, 25), parse_zone(BERLIN), (2, 10, 18))
    assert [(p.name, p.hours) for p in spans][:3] == [
        ("2026-10-25 S1 (02:00)", 9), ("2026-10-25 S2 (10:00)", 8), ("2026-10-25 S3 (18:00)", 8)]
