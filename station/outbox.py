"""Shipping the ledger: rows read back from the SQLite log after a durable mark.

The part ledger (:mod:`station.rejectlog`) is the record; every integration that sends rows elsewhere (MQTT, the
fleet database) ships *from* it, so a peer that goes away only delays rows. A publisher keeps, per destination, the
id of the last row its peer acknowledged (a *mark*) in the ledger file itself, in the table ``outbox_marks``; after
an outage, or a restart of the station or the forwarder, it reads the rows after its mark and sends them again.
Peers deduplicate on (station id, run id, row id), so a row sent twice around a crash is stored once.

For example, a peer that sends rows somewhere (``send``)::

    cursor = LedgerCursor("station-data/rejects.db", "mqtt")
    for row in cursor.rows_after(cursor.mark(), limit=500):
        send(row); cursor.advance(row["id"])

``outbox_marks`` is created on first use and is not part of the ``inspections`` schema (an older station ignores it).
"""
from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from station.errors import LedgerError
from station.rejectlog import COLUMNS, format_utc

_MARKS = """CREATE TABLE IF NOT EXISTS outbox_marks (
    name        TEXT PRIMARY KEY,   -- the destination, e.g. "mqtt mqtt://broker:1883" or "fleet postgresql://..."
    row_id      INTEGER NOT NULL,   -- the last row its peer acknowledged
    updated_utc TEXT NOT NULL
)"""


def connect_beside(db_path: Path, ddl: str, purpose: str, busy_timeout_s: float = 10.0) -> sqlite3.Connection:
    """A connection of its own to an existing ledger file, for a table kept beside ``inspections`` (``ddl``: its
    ``CREATE TABLE IF NOT EXISTS``); ``purpose`` names it in the :class:`LedgerError` when the file cannot take it."""
    try:
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(ddl)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot {purpose} in {db_path}: {exc}; the file and its folder must be writable") from None
    return conn


class LedgerCursor:
    """Reads ledger rows after a mark and keeps the mark durable; thread-safe, its own SQLite connection (the
    log is in WAL mode, so reading never blocks the line's writes)."""

    def __init__(self, db_path: str | Path, name: str, busy_timeout_s: float = 10.0) -> None:
        self.db_path = Path(db_path)
        self.name = name
        self._lock = threading.Lock()
        if not self.db_path.is_file():
            raise LedgerError(f"no reject log at {self.db_path}; give the log a station run writes ([log] db)")
        self._conn = connect_beside(self.db_path, _MARKS, "keep the outbox mark", busy_timeout_s)

    def mark(self) -> int:
        """The id of the last row the destination acknowledged (0: none yet)."""
        with self._lock:
            row = self._conn.execute("SELECT row_id FROM outbox_marks WHERE name = ?", (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def start_at_newest(self) -> int | None:
        """A destination's first contact that skips the log's history: its mark is set on the newest row, in one
        statement, only when it has no mark yet. Returns that row id, or ``None`` when a mark already existed (then
        nothing changes: rows after a mark are never skipped)."""
        now = format_utc(datetime.now(timezone.utc))
        with self._lock:
            done = self._conn.execute(
                "INSERT OR IGNORE INTO outbox_marks (name, row_id, updated_utc) "
                "SELECT ?, coalesce(max(id), 0), ? FROM inspections", (self.name, now))
            if not done.rowcount:
                return None
            return int(self._conn.execute("SELECT row_id FROM outbox_marks WHERE name = ?",
                                          (self.name,)).fetchone()[0])

    def advance(self, row_id: int) -> None:
        """Record that the destination holds every row up to ``row_id`` (committed before it returns; a mark never
        moves back)."""
        now = format_utc(datetime.now(timezone.utc))
        with self._lock:
            self._conn.execute(
                "INSERT INTO outbox_marks (name, row_id, updated_utc) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE "
                "SET row_id = max(row_id, excluded.row_id), updated_utc = excluded.updated_utc",
                (self.name, int(row_id), now))

    def rows_after(self, row_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """Up to ``limit`` rows with an id above ``row_id``, oldest first, as dicts keyed by column name."""
        with self._lock:
            present = {r[1] for r in self._conn.execute("PRAGMA table_info(inspections)")}
            selected = ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMNS)
            cursor = self._conn.execute(f"SELECT {selected} FROM inspections WHERE id > ? ORDER BY id LIMIT ?",
                                        (int(row_id), int(limit)))
            return [dict(zip(COLUMNS, r)) for r in cursor]

    def reviews_after(self, review_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """Up to ``limit`` reviews (ledger schema 6) with an id above ``review_id``, oldest first, each with the
        reviewed row's ``station_id``, ``run_id`` and ``row_time_utc``; ``[]`` for a ledger without reviews."""
        with self._lock:
            if self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reviews'")\
                    .fetchone() is None:
                return []
            present = {r[1] for r in self._conn.execute("PRAGMA table_info(inspections)")}
            station = "i.station_id" if "station_id" in present else "NULL"
            run = "i.run_id" if "run_id" in present else "NULL"
            keys = ("id", "inspection_id", "time_utc", "reviewer", "mark", "note", "station_id", "run_id",
                    "row_time_utc")
            cursor = self._conn.execute(
                "SELECT r.id, r.inspection_id, r.time_utc, r.reviewer, r.mark, r.note, "
                f"{station}, {run}, i.time_utc FROM reviews r JOIN inspections i ON i.id = r.inspection_id "
                "WHERE r.id > ? ORDER BY r.id LIMIT ?", (int(review_id), int(limit)))
            return [dict(zip(keys, r)) for r in cursor]

    def last_id(self) -> int:
        """The id of the newest row in the log (0: empty)."""
        with self._lock:
            return int(self._conn.execute("SELECT coalesce(max(id), 0) FROM inspections").fetchone()[0])

    def lag(self) -> tuple[int, float]:
        """``(rows, seconds)`` the destination is behind: rows after its mark, and the age of the oldest of them."""
        mark = self.mark()
        with self._lock:
            count, oldest = self._conn.execute(
                "SELECT count(*), min(time_utc) FROM inspections WHERE id > ?", (mark,)).fetchone()
        if not count:
            return 0, 0.0
        then = datetime.strptime(oldest, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        return int(count), max(0.0, (datetime.now(timezone.utc) - then).total_seconds())

    def close(self) -> None:
        with self._lock:
            self._conn.close()
