"""QA's reviews reach the fleet's PostgreSQL through the forwarder, like parts (migration 005, issue 29): a real
ledger, real `station review --mark`, `station forward --once` twice, a forwarder that dies between the commit and
its mark, a station login that claims another station's reviews, and `station export --reviews` from PostgreSQL
against the same export from the ledger. The server is real (tests/station/pg_util.py)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest

from station.cli import main as station_main
from station.export import REVIEW_EXPORT_COLUMNS
from station.fleet.central import FleetError
from station.fleet.forwarder import Forwarder

from tests.station.pg_util import QA_USER, STATION_USER, PgServer
from tests.station.test_fleet import make_ledger

psycopg = pytest.importorskip("psycopg", reason="the fleet needs psycopg 3: pip install 'psycopg[binary]'")


def central_reviews(pg: PgServer, db: str) -> list[tuple]:
    with psycopg.connect(pg.url(db=db)) as conn:
        return conn.execute("SELECT station_id, review_id, run_id, row_id, reviewer, mark, note FROM reviews "
                            "ORDER BY station_id, review_id").fetchall()


def export_reviews(db: str, fmt: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert station_main(["export", "--db", db, "--format", fmt, "--reviews", "--out", "-"]) == 0
    return capsys.readouterr().out


def review_columns(text: str) -> list[tuple]:
    return sorted((int(r["id"]), r["station_id"], *(r[c] for c in REVIEW_EXPORT_COLUMNS))
                  for r in csv.DictReader(io.StringIO(text)))


def test_reviews_are_forwarded_once_refused_for_another_station_and_exported_from_postgresql(
        pg: PgServer, fleet: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ledger = make_ledger(tmp_path, "line-7", 20, monkeypatch)  # rows 1..20: PASS, FAIL, NOT_INSPECTED, GAP
    assert station_main(["review", "--db", str(ledger), "--mark", "7=good", "--mark", "3=defect", "--by", "alice",
                         "--note", "audit"]) == 0
    url = pg.url(STATION_USER, fleet)
    for _ in range(2):  # forwarded twice: each review is in PostgreSQL exactly once
        assert station_main(["forward", "--db", str(ledger), "--to", url, "--once"]) == 0
    assert central_reviews(pg, fleet) == [("line-7", 1, "run-line-7", 7, "alice", "good", "audit"),
                                          ("line-7", 2, "run-line-7", 3, "alice", "defect", "audit")]

    # a later review of row 3, and a forwarder killed after its transaction committed but before its mark moved:
    # the next one resends the review, and the server keeps one
    assert station_main(["review", "--db", str(ledger), "--mark", "3=good", "--by", "bob"]) == 0
    crashing = Forwarder(ledger, url)
    monkeypatch.setattr(crashing.review_cursor, "advance", lambda _id: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        crashing.forward_all()
    crashing.close()
    monkeypatch.undo()
    again = Forwarder(ledger, url)
    again.forward_all()
    assert (again.reviews_sent, again.reviews_inserted, again.status()["reviews_mark"]) == (1, 0, 3)
    again.close()
    assert [r[1:6] for r in central_reviews(pg, fleet)] == [
        (1, "run-line-7", 7, "alice", "good"), (2, "run-line-7", 3, "alice", "defect"),
        (3, "run-line-7", 3, "bob", "good")]

    # the station login may not write another station's reviews (row-level security), nor change its own
    other = make_ledger(tmp_path, "plant-9", 10, monkeypatch)
    Forwarder(other, pg.url(db=fleet)).forward_all()  # the admin forwards plant-9's parts
    with psycopg.connect(url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("INSERT INTO reviews (station_id, review_id, run_id, row_id, row_time_utc, time_utc, "
                         "reviewer, mark) SELECT 'plant-9', 99, 'run-plant-9', 1, %s, now(), 'mallory', 'good'",
                         (datetime_of_row(pg, fleet, "plant-9", 1),))
    for statement in ("UPDATE reviews SET mark = 'defect'", "DELETE FROM reviews", "SELECT count(*) FROM reviews"):
        with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
    with psycopg.connect(pg.url(db=fleet)) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege,
                                                                  match="append-only"):
        conn.execute("UPDATE reviews SET mark = 'defect'")  # not even the owner
    assert station_main(["review", "--db", str(other), "--mark", "2=defect", "--by", "mallory"]) == 0
    spoofed = Forwarder(other, url)
    with pytest.raises(FleetError, match="forwarding reviews .*row-level security"):
        spoofed.forward_all()  # the parts are there (the admin sent them); the review is refused and waits
    assert spoofed.status()["reviews_mark"] == 0
    spoofed.close()
    assert [r[0] for r in central_reviews(pg, fleet)] == ["line-7"] * 3

    # station export --reviews from PostgreSQL (QA's login) says what the ledger's export says: the latest review
    qa = pg.url(QA_USER, fleet)
    local = review_columns(export_reviews(str(ledger), "csv", capsys))
    central = review_columns(export_reviews(qa, "csv", capsys))
    assert [r for r in central if r[1] == "line-7"] == local
    assert {(r[0], r[2], r[3], r[4], r[-1]) for r in local if r[-1] != "0"} == {
        (7, "good", "false reject", "alice", "1"), (3, "good", "confirmed", "bob", "2")}
    local_json = {r["id"]: r["reviews"] for r in json.loads(export_reviews(str(ledger), "json", capsys))}
    central_json = {r["id"]: r["reviews"] for r in json.loads(export_reviews(qa, "json", capsys))
                    if r["station_id"] == "line-7"}
    assert central_json == local_json and len(central_json[3]) == 2


def datetime_of_row(pg: PgServer, db: str, station: str, row_id: int):
    with contextlib.closing(psycopg.connect(pg.url(db=db))) as conn:
        return conn.execute("SELECT time_utc FROM parts WHERE station_id = %s AND row_id = %s",
                            (station, row_id)).fetchone()[0]
