"""The reject log's memory of unfinished work, so that a station killed with kill -9 (or crashed, or cut from power)
leaves no unmarked hole in the ledger.

Two side tables in the reject log's own SQLite file (an older station ignores them; ``in_flight`` gained the part's
identity with schema 5, added in place by the upgrade):

- ``station_runs``: one row per ``station run`` on this log (run id, station id, PID, host, start). The run sets its
  end when it closes the log (``ending = 'clean'``); a run the next start finds without an end ended uncleanly
  (``'interrupted'``, its ``ended_utc`` then the time of its last row: the last sign of life).
- ``in_flight``: one entry per acquired part, written on the acquisition thread before the part is queued for
  inspection, and deleted in the very transaction that commits the part's row
  (:meth:`station.rejectlog.RejectLog.record_row`). After a kill the journal therefore holds exactly the parts that
  have no row.

The next start on the same log (holding its lock, :mod:`station.ledgerlock`, so that no live run is touched) gives
every such part a NOT_INSPECTED row with reason ``interrupted`` and ``rejected = 1`` (fail-safe: the station died
before the part was judged and sorted, so nothing says it passed), in the run that acquired it, and reports the
unclean end (:class:`UncleanEnd`) in the run summary, the metrics and the panel.
"""
from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Created with the reject log's schema (``CREATE ... IF NOT EXISTS``); no index (the journal holds a few entries, the
#: runs table one row per run), so the log's own indexes stay those of ``inspections``.
SIDE_TABLES = """
CREATE TABLE IF NOT EXISTS station_runs (
    id           INTEGER PRIMARY KEY,
    run_id       TEXT,
    station_id   TEXT,
    pid          INTEGER NOT NULL,
    host         TEXT,
    started_utc  TEXT NOT NULL,
    ended_utc    TEXT,                     -- NULL: running, or ended without closing the log
    ending       TEXT                      -- 'clean', or 'interrupted' (written by the next start)
);
CREATE TABLE IF NOT EXISTS in_flight (
    id           INTEGER PRIMARY KEY,
    run_id       TEXT,
    station_id   TEXT,
    frame_id     INTEGER NOT NULL,
    source       TEXT NOT NULL,
    file         TEXT,
    timestamp_ns INTEGER NOT NULL,
    camera_timestamp_ns INTEGER,
    acquired_utc TEXT NOT NULL,
    recipe       TEXT,
    calibration  TEXT,
    engine_id    TEXT,
    part_id      TEXT,                     -- who the part is (the ledger's identity columns, schema 5)
    meas_id      TEXT,
    product_id   TEXT,
    job_id       TEXT
)"""
#: Columns of ``in_flight`` added after it was first made: an older file's journal gains them in the schema upgrade.
_ADDED = {"part_id": "TEXT", "meas_id": "TEXT", "product_id": "TEXT", "job_id": "TEXT"}

JOURNAL_INSERT = ("INSERT INTO in_flight (run_id, station_id, frame_id, source, file, timestamp_ns, "
                  "camera_timestamp_ns, acquired_utc, recipe, calibration, engine_id, part_id, meas_id, product_id, "
                  "job_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
#: The entry of one part, deleted with its row (one entry: a frame id met twice in a run keeps the other).
JOURNAL_FORGET = ("DELETE FROM in_flight WHERE id = (SELECT id FROM in_flight WHERE run_id IS ? AND frame_id = ? "
                  "ORDER BY id LIMIT 1)")
RUN_BEGIN = "INSERT INTO station_runs (run_id, station_id, pid, host, started_utc) VALUES (?, ?, ?, ?, ?)"
RUN_END = "UPDATE station_runs SET ended_utc = ?, ending = 'clean' WHERE run_id IS ? AND ended_utc IS NULL"


def create_tables(conn: sqlite3.Connection) -> None:
    """The side tables, inside the caller's schema transaction."""
    for statement in filter(str.strip, SIDE_TABLES.split(";")):
        conn.execute(statement)


def upgrade_tables(conn: sqlite3.Connection) -> None:
    """An older journal's missing columns added in place (entries kept; they read NULL), inside the caller's schema
    transaction."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(in_flight)")}
    for column, kind in _ADDED.items():
        if present and column not in present:
            conn.execute(f"ALTER TABLE in_flight ADD COLUMN {column} {kind}")


@dataclass(frozen=True)
class UncleanEnd:
    """What a start found on its log: earlier runs that ended without closing it (killed, crashed, power cut), and
    the parts left without a verdict, each now a NOT_INSPECTED row with reason ``interrupted``."""

    runs: tuple[str, ...]            # run ids that ended uncleanly, oldest first
    pids: tuple[int, ...]            # their processes
    last_seen_utc: tuple[str, ...]   # each one's last row (or its start): when it was last known alive
    interrupted: int                 # NOT_INSPECTED 'interrupted' rows written at this start
    frame_ids: tuple[int, ...]       # their frame ids
    recovered_by: str | None = None  # the run that wrote them

    def text(self) -> str:
        """One sentence for the operator, e.g. "the previous run 20241101T080000Z-3f9a0c (PID 4242, last seen
        2024-11-01T08:03:12.345Z) ended without closing the reject log (killed, crashed or a power cut): 1 part(s)
        had no verdict and are now recorded NOT_INSPECTED (interrupted), as rejects"."""
        parts = (f"{self.interrupted} part(s) had no verdict and are now recorded NOT_INSPECTED (interrupted), "
                 "as rejects" if self.interrupted else "no part was left without a verdict")
        if not self.runs:  # only parts refused by a run that stopped on a ledger error
            return f"{self.interrupted} part(s) an earlier run could not record are now recorded NOT_INSPECTED " \
                   "(interrupted), as rejects"
        runs = ", ".join(f"{r} (PID {p}, last seen {t})" for r, p, t in zip(self.runs, self.pids, self.last_seen_utc))
        which = "the previous run" if len(self.runs) == 1 else f"{len(self.runs)} earlier runs"
        return f"{which} {runs} ended without closing the reject log (killed, crashed or a power cut): {parts}"

    def to_dict(self) -> dict[str, Any]:
        return {"runs": list(self.runs), "pids": list(self.pids), "last_seen_utc": list(self.last_seen_utc),
                "interrupted": self.interrupted, "frame_ids": list(self.frame_ids), "message": self.text()}


def recover(conn: sqlite3.Connection, run_id: str | None, now_utc: str) -> UncleanEnd | None:
    """At a start, holding the log's lock, inside the caller's write transaction on a current-schema log
    (:func:`station.rejectlog.recover_interrupted`): close the runs that ended uncleanly and give every journaled part
    without a row its NOT_INSPECTED ``interrupted`` row. None when the log has no journal yet (only older stations
    wrote it) or every earlier run ended cleanly with every part recorded. ``now_utc``: the rows' ``time_utc``."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"station_runs", "in_flight", "inspections"} <= tables:
        return None
    return _recover(conn, run_id, now_utc)


def _recover(conn: sqlite3.Connection, run_id: str | None, now_utc: str) -> UncleanEnd | None:
    open_runs = conn.execute("SELECT run_id, pid, started_utc FROM station_runs WHERE ended_utc IS NULL AND "
                             "run_id IS NOT ? ORDER BY id", (run_id,)).fetchall()
    runs, pids, seen = [], [], []
    for run, pid, started in open_runs:
        # from the end of the table: the run that ended uncleanly is usually the last one, so no long scan
        last = conn.execute("SELECT time_utc FROM inspections WHERE run_id IS ? ORDER BY id DESC LIMIT 1",
                            (run,)).fetchone()
        runs.append(run)
        pids.append(int(pid))
        seen.append(last[0] if last else started)
    unclean = dict(zip(runs, pids))
    entries = conn.execute("SELECT id, run_id, station_id, frame_id, source, file, timestamp_ns, camera_timestamp_ns, "
                           "acquired_utc, recipe, calibration, engine_id, part_id, meas_id, product_id, job_id "
                           "FROM in_flight WHERE run_id IS NOT ? ORDER BY id", (run_id,)).fetchall()
    frame_ids = []
    for (_, run, station, frame_id, source, file, ts, camera_ts, acquired, recipe, calibration, engine,
         *identity) in entries:
        if run in unclean:
            why = (f"run {run} (PID {unclean[run]}) ended without a verdict for this part: the station was killed, "
                   "crashed or lost power")
        else:
            why = f"run {run} stopped (the ledger failed) before this part's row could be written"
        detail = f"{why}; acquired at {acquired}, recorded when the station started again (run {run_id or '-'})"
        conn.execute(
            "INSERT INTO inspections (time_utc, timestamp_ns, source, frame_id, file, verdict, defects_json, "
            "labels_json, engine_id, latency_ms, recipe, calibration, station_id, run_id, reason, detail, "
            "frame_count, rejected, camera_timestamp_ns, part_id, meas_id, product_id, job_id) VALUES "
            "(?, ?, ?, ?, ?, 'NOT_INSPECTED', '[]', '[]', ?, 0.0, ?, ?, ?, ?, 'interrupted', ?, 1, 1, ?, ?, ?, ?, ?)",
            (now_utc, ts, source, frame_id, file, engine or "", recipe, calibration, station, run, detail, camera_ts,
             *identity))
        frame_ids.append(int(frame_id))
    conn.execute("DELETE FROM in_flight WHERE run_id IS NOT ?", (run_id,))
    for run, last in zip(runs, seen):
        conn.execute("UPDATE station_runs SET ended_utc = ?, ending = 'interrupted' WHERE run_id IS ?", (last, run))
    if not runs and not frame_ids:
        return None
    found = UncleanEnd(tuple(runs), tuple(pids), tuple(seen), len(frame_ids), tuple(frame_ids), run_id)
    log.warning("%s", found.text())
    return found
