"""Forwarding a station's ledger to the fleet database: in order, in batches, idempotent, with a durable mark.

The station's SQLite ledger stays its buffer and its record of truth. The forwarder reads the rows after its mark
(:class:`station.outbox.LedgerCursor`, mark named ``fleet postgresql://HOST:PORT/DB``), inserts a batch in one
PostgreSQL transaction with ``ON CONFLICT DO NOTHING`` on (station, run, row id, time), and advances the mark only
after that transaction committed. A crash anywhere resends at most one batch, which the server ignores; a server
that is away is retried with back-off, and the rows wait in the ledger.

For example (a PostgreSQL server is needed)::

    f = Forwarder("station-data/rejects.db", "postgresql://line3@db.factory/fleet")
    f.forward_all()          # ship everything there is now; FleetError when the server cannot be reached
    f.lag()                  # (rows, seconds) not yet in the fleet database

Reject images stay on the station: the central row holds their path (relative to the ledger's folder), size and
SHA-256; with ``images_dir`` they are also copied to ``DIR/<station>/<image_path>`` and ``image_copy`` says where.

In ``station run``, the recipe's ``[fleet]`` table (or ``--fleet URL``) runs the same forwarder on a thread:

.. code-block:: toml

    [fleet]
    to = "postgresql://line3@db.factory/fleet"   # no password: PGPASSWORD or ~/.pgpass
    batch = 500              # rows per transaction
    images = "/mnt/qa/images"  # optional: copy reject images there
    interval_s = 1.0         # look for new rows at least this often
    close_timeout_s = 5.0    # at the end of a run, wait this long for the last rows
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from station.errors import LedgerError
from station.fleet.central import FleetError, check_url, connect, destination
from station.outbox import LedgerCursor
from station.recipe import MISSING, Refused, TableReader, check_float, check_int, check_path

log = logging.getLogger(__name__)

#: The columns a forwarded row fills, in the order of the INSERT.
INSERT_COLUMNS = ("station_id", "run_id", "row_id", "time_utc", "timestamp_ns", "source", "frame_id", "file",
                  "verdict", "defects_json", "labels_json", "defect_classes", "engine_id", "latency_ms", "image_path",
                  "image_size", "image_sha256", "image_copy", "overlay_path", "overlay_size", "overlay_sha256",
                  "recipe", "calibration", "reason", "detail", "frame_count", "last_frame_id", "end_timestamp_ns",
                  "rejected", "camera_timestamp_ns", "part_id", "meas_id", "product_id", "job_id")
_INSERT = (f"INSERT INTO parts ({', '.join(INSERT_COLUMNS)}) VALUES ({', '.join(['%s'] * len(INSERT_COLUMNS))}) "
           "ON CONFLICT DO NOTHING")
DEFAULT_BATCH = 500
#: The columns a forwarded review fills (migration 005), in the order of the INSERT.
REVIEW_COLUMNS = ("station_id", "review_id", "run_id", "row_id", "row_time_utc", "time_utc", "reviewer", "mark",
                  "note")
_INSERT_REVIEW = (f"INSERT INTO reviews ({', '.join(REVIEW_COLUMNS)}) "
                  f"VALUES ({', '.join(['%s'] * len(REVIEW_COLUMNS))}) ON CONFLICT DO NOTHING")


def ledger_ready(db_path: str | Path) -> bool:
    """True when ``db_path`` holds a station's ledger (its ``inspections`` table); False while there is no file yet,
    or the station is creating it. Raises :class:`LedgerError` for a file that is not an SQLite database. Opens the
    file read-only: a forwarder that waits never creates the ledger itself."""
    path = Path(db_path)
    if not path.is_file():
        return False
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=1.0)
    except sqlite3.OperationalError:
        return False
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'inspections'")\
            .fetchone() is not None
    except sqlite3.OperationalError:  # locked while the station creates the schema: not yet
        return False
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path} is not a station's ledger ({exc}); pass --db with the database the station "
                          "writes ([log] db)") from None
    finally:
        conn.close()


def wait_for_ledger(db_path: str | Path, stop: threading.Event, interval_s: float = 1.0) -> bool:
    """Wait until ``db_path`` holds a ledger (:func:`ledger_ready`), looking every ``interval_s``; False when
    ``stop`` was set first. A forwarder started before its station thus needs no start order."""
    while not stop.is_set():
        if ledger_ready(db_path):
            return True
        stop.wait(interval_s)
    return False


def defect_classes(row: Mapping[str, Any]) -> list[str]:
    """The classes of a ledger row: its defects' labels and its classifier labels, sorted, without repeats."""
    classes = set()
    try:
        classes.update(str(d["label"]) for d in json.loads(row.get("defects_json") or "[]") if d.get("label"))
        labels = json.loads(row.get("labels_json") or "[]")
        classes.update(str(x) for x in (labels.get("labels", []) if isinstance(labels, dict) else labels))
    except (ValueError, TypeError, AttributeError):  # a malformed cell: the row still goes, without classes
        pass
    return sorted(classes)


def file_facts(path: Path) -> tuple[int | None, str | None]:
    """``(size, SHA-256 hex)`` of a file, ``(None, None)`` when it cannot be read."""
    try:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return path.stat().st_size, digest.hexdigest()
    except OSError:
        return None, None


def parse_utc(text: str) -> datetime:
    """A ledger ``time_utc`` (``2024-05-01T12:34:56.789Z``) as an aware datetime."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


class Forwarder:
    """Ships one local ledger to one fleet database; the methods are for one thread at a time, except
    :meth:`lag` and :meth:`status`."""

    def __init__(self, db_path: str | Path, url: str, *, station_id: str | None = None, batch: int = DEFAULT_BATCH,
                 images_dir: str | Path | None = None) -> None:
        check_url(url)
        if batch < 1:
            raise FleetError(f"batch {batch} is not allowed; use 1 or more rows per transaction")
        self.url, self.batch = url, int(batch)
        self.db_path = Path(db_path)
        self.destination = destination(url)
        self.station_id = station_id or os.uname().nodename  # for rows written before ledgers had a station id
        self.images_dir = None if images_dir is None else Path(images_dir)
        self.cursor = LedgerCursor(self.db_path, f"fleet {self.destination}")
        # QA's reviews (ledger schema 6) go after the parts they name, with their own mark
        self.review_cursor = LedgerCursor(self.db_path, f"fleet reviews {self.destination}")
        self.reviews_sent = 0      # reviews shipped by this forwarder (committed)
        self.reviews_inserted = 0  # of them, reviews the server did not have yet
        self.sent = 0        # rows shipped by this forwarder (committed)
        self.inserted = 0    # of them, rows the server did not have yet
        self.last_error: str | None = None
        self._conn: Any = None
        self._months: set[tuple[int, int]] = set()

    # -- one batch ------------------------------------------------------------------------------------------
    def _image(self, rel: str | None, station: str) -> tuple[int | None, str | None, str | None]:
        if not rel:
            return None, None, None
        source = self.db_path.parent / rel
        size, sha = file_facts(source)
        copy = None
        if self.images_dir is not None and size is not None:
            target = self.images_dir / station / rel
            try:
                if not (target.is_file() and target.stat().st_size == size):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.part")
                    shutil.copyfile(source, tmp)
                    os.replace(tmp, target)
                copy = str(target)
            except OSError as exc:  # the share is away: the row goes without a copy, the image stays on the station
                log.warning("reject image %s not copied to %s: %s", source, self.images_dir, exc)
        return size, sha, copy

    def central_row(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The values of the central INSERT for one local ledger row."""
        station = row.get("station_id") or self.station_id
        image_size, image_sha, image_copy = self._image(row.get("image_path"), station)
        overlay_size, overlay_sha, _ = self._image(row.get("overlay_path"), station)
        value = {**row, "station_id": station, "run_id": row.get("run_id") or "", "row_id": int(row["id"]),
                 "time_utc": parse_utc(row["time_utc"]), "defect_classes": defect_classes(row),
                 "image_size": image_size, "image_sha256": image_sha, "image_copy": image_copy,
                 "overlay_size": overlay_size, "overlay_sha256": overlay_sha,
                 "frame_count": row.get("frame_count") or 1}
        return tuple(value.get(c) for c in INSERT_COLUMNS)

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = connect(self.url, "station forward")
            except FleetError as exc:
                raise FleetError(f"{exc}; the rows wait in the ledger") from None
            self._months.clear()
        return self._conn

    def drop_connection(self) -> None:
        """Close the connection (the next batch opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close; it is gone either way
                pass

    def ship_batch(self) -> int:
        """Ship the next batch (at most ``batch`` rows after the mark) in one transaction, then advance the mark;
        returns the rows shipped (0: caught up). Raises :class:`FleetError` (the mark stays) when it fails."""

        rows = self.cursor.rows_after(self.cursor.mark(), self.batch)
        if not rows:
            return 0
        values = [self.central_row(r) for r in rows]
        inserted = self._insert(_INSERT, values, "", months=True)
        self.cursor.advance(rows[-1]["id"])  # only now: the rows are committed on the server
        self.sent += len(rows)
        self.inserted += inserted
        return len(rows)

    def central_review(self, review: Mapping[str, Any]) -> tuple[Any, ...]:
        """The values of the central INSERT for one local review (:meth:`LedgerCursor.reviews_after`)."""
        value = {**review, "station_id": review.get("station_id") or self.station_id,
                 "review_id": int(review["id"]), "run_id": review.get("run_id") or "",
                 "row_id": int(review["inspection_id"]), "row_time_utc": parse_utc(review["row_time_utc"]),
                 "time_utc": parse_utc(review["time_utc"])}
        return tuple(value.get(c) for c in REVIEW_COLUMNS)

    def ship_reviews(self) -> int:
        """Ship the next batch of reviews whose parts the server holds (reviewed rows up to the parts' mark) in one
        transaction, then advance the reviews' mark; returns the reviews shipped (0: caught up). ``ON CONFLICT DO
        NOTHING`` on (station, review id): a batch resent after a crash is ignored. Raises :class:`FleetError` (the
        mark stays) when it fails."""

        parts_mark = self.cursor.mark()
        reviews = []
        for review in self.cursor.reviews_after(self.review_cursor.mark(), self.batch):
            if review["inspection_id"] > parts_mark:  # its part is not on the server yet: it goes after it
                break
            reviews.append(review)
        if not reviews:
            return 0
        values = [self.central_review(r) for r in reviews]
        inserted = self._insert(_INSERT_REVIEW, values, "reviews ")
        self.review_cursor.advance(reviews[-1]["id"])  # only now: the reviews are committed on the server
        self.reviews_sent += len(reviews)
        self.reviews_inserted += inserted
        return len(reviews)

    def _insert(self, sql: str, values: list[tuple[Any, ...]], what: str, months: bool = False) -> int:
        """Insert ``values`` with ``sql`` in one transaction (first making the months they fall in, for parts) and
        return how many the server added; on failure drop the connection and raise :class:`FleetError` saying what
        to do (``what``: ``""`` for parts, ``"reviews "`` for reviews)."""
        import psycopg

        conn = self._connection()
        try:
            for moment in sorted({v[3] for v in values}) if months else ():
                month = (moment.year, moment.month)
                if month not in self._months:
                    conn.execute("SELECT fleet_ensure_month(%s)", (moment,))
                    conn.commit()
                    self._months.add(month)
            with conn.transaction():
                with conn.cursor() as cur:
                    cur.executemany(sql, values)
                    inserted = max(0, cur.rowcount)
        except psycopg.Error as exc:
            self.drop_connection()
            if what and isinstance(exc, psycopg.errors.UndefinedTable):
                hint = ("the fleet database predates reviews (migration 005); an admin runs station fleet init --to "
                        "ADMIN_URL; the reviews wait in the ledger")
            else:
                hint = self._hint(exc, values)
                hint = hint.replace("rows", "reviews") if what else hint
            refused = isinstance(exc, psycopg.errors.InsufficientPrivilege) and exc.diag.message_primary
            raise FleetError(f"forwarding {what}to {self.destination} failed: {refused or str(exc).strip()} "
                             f"({hint})") from None
        return inserted

    def _hint(self, exc: Exception, values: list[tuple[Any, ...]]) -> str:
        """What to do about a refused batch; the rows wait in the ledger in every case."""
        import psycopg

        if isinstance(exc, psycopg.OperationalError):
            return "the server is away; rows wait in the ledger"
        if isinstance(exc, psycopg.errors.UndefinedColumn):
            return ("the fleet database predates this station's columns (migration 004 added the part identity); "
                    "an admin runs station fleet init --to ADMIN_URL; the rows wait in the ledger")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            if "row-level security" in str(exc):
                ids = ", ".join(sorted({str(v[0]) for v in values}))
                user = check_url(self.url).get("user", "this login")
                return (f"this login may write only its own stations' rows, and the batch holds station id {ids}; "
                        f"an admin allows them with station fleet add-station --to ADMIN_URL {user} --station-id "
                        "ID, or fix the station's [station] id (--station for rows without one); the rows wait in "
                        "the ledger")
            if exc.diag.message_hint:  # fleet_ensure_month refused a month; its hint says what to do
                return f"{exc.diag.message_hint}; the rows wait in the ledger"
        return "run station fleet init --to URL, and station fleet add-station for this login"

    def forward_all(self, stop: threading.Event | None = None) -> int:
        """Ship batches until caught up (or ``stop`` is set), then the reviews of the rows shipped; returns the rows
        shipped. Raises :class:`FleetError` when the server cannot be reached or refuses the rows or reviews."""
        total = 0
        while stop is None or not stop.is_set():
            n = self.ship_batch()
            total += n
            if n < self.batch:
                break
        while stop is None or not stop.is_set():
            if self.ship_reviews() < self.batch:
                break
        return total

    def run(self, stop: threading.Event, wake: threading.Event | None = None, interval_s: float = 1.0,
            min_backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        """Forward until ``stop`` is set: ship what there is, then wait for ``wake`` (a new row) or ``interval_s``;
        when the server is away, retry after a back-off that doubles up to ``max_backoff_s`` (with jitter, so
        stations do not all come back at once). Never raises."""
        wake = wake or threading.Event()
        delay = min_backoff_s
        while not stop.is_set():
            try:
                self.forward_all(stop)
            except FleetError as exc:
                if str(exc) != self.last_error:
                    log.warning("%s; retrying with back-off up to %g s", exc, max_backoff_s)
                self.last_error = str(exc)
                stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, max_backoff_s)
                continue
            except Exception as exc:  # noqa: BLE001 - the forwarder never stops the line; the rows wait
                log.exception("forwarding to %s failed", self.destination)
                self.last_error = f"{type(exc).__name__}: {exc}"
                stop.wait(max_backoff_s)
                continue
            if self.last_error is not None:
                log.info("forwarding to %s again; %d rows behind", self.destination, self.lag()[0])
            self.last_error, delay = None, min_backoff_s
            wake.wait(interval_s)
            wake.clear()

    # -- figures --------------------------------------------------------------------------------------------
    def lag(self) -> tuple[int, float]:
        """``(rows, seconds)`` not yet in the fleet database: rows after the mark and the age of the oldest."""
        return self.cursor.lag()

    def status(self) -> dict[str, Any]:
        rows, seconds = self.lag()
        return {"to": self.destination, "db": str(self.db_path), "mark": self.cursor.mark(),
                "last_row": self.cursor.last_id(), "lag_rows": rows, "lag_seconds": round(seconds, 3),
                "sent": self.sent, "inserted": self.inserted, "reviews_mark": self.review_cursor.mark(),
                "reviews_sent": self.reviews_sent, "reviews_inserted": self.reviews_inserted,
                "connected": self._conn is not None,
                "last_error": self.last_error}

    def close(self) -> None:
        self.drop_connection()
        self.cursor.close()
        self.review_cursor.close()


# -- the [fleet] integration of `station run` -------------------------------------------------------------------

_KEYS = {"to": '"postgresql://USER@HOST[:PORT]/DB" (no password; or pass --fleet URL)',
         "batch": "an integer of 1 or more", "images": "a folder path (relative to the recipe), e.g. \"fleet-images\"",
         "interval_s": "a number of seconds above 0",
         "close_timeout_s": "a number of seconds, 0 or more"}


class FleetForwarding:
    """The forwarder on its own thread inside ``station run``; a new ledger row wakes it."""

    name = "fleet"

    def __init__(self, db_path: Path, url: str, station_id: str | None, batch: int = DEFAULT_BATCH,
                 images: Path | None = None, interval_s: float = 1.0, close_timeout_s: float = 5.0) -> None:
        self.db_path, self.url, self.station_id = db_path, url, station_id
        self.batch, self.images, self.interval_s, self.close_timeout_s = batch, images, interval_s, close_timeout_s
        self.forwarder: Forwarder | None = None
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, line: Any) -> None:
        self.forwarder = Forwarder(self.db_path, self.url, station_id=self.station_id, batch=self.batch,
                                   images_dir=self.images)
        self._thread = threading.Thread(target=self.forwarder.run, args=(self._stop, self._wake, self.interval_s),
                                        name="fleet-forwarder", daemon=True)
        self._thread.start()

    def on_row(self, row: Mapping[str, Any], entry: Any) -> None:
        self._wake.set()

    def status(self) -> dict[str, Any]:
        if self.forwarder is None:
            return {"to": destination(self.url), "started": False, "lag_rows": 0, "lag_seconds": 0.0}
        return self.forwarder.status()

    def close(self) -> None:
        if self.forwarder is None or self._thread is None:
            return
        deadline = time.monotonic() + self.close_timeout_s
        while time.monotonic() < deadline and self.forwarder.lag()[0] and self.forwarder.last_error is None:
            self._wake.set()
            time.sleep(0.05)
        rows = self.forwarder.lag()[0]
        if rows:
            log.warning("fleet: %d rows not yet forwarded to %s; they stay in %s and go with the next run or "
                        "`station forward`", rows, self.forwarder.destination, self.db_path)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(1.0, self.close_timeout_s))
        self.forwarder.drop_connection()


def from_table(t: TableReader, context: Any) -> FleetForwarding:
    """The ``[fleet]`` integration of a recipe, checked (never connects here)."""
    forwarding = FleetForwarding(
        Path(context.db_path), t.get("to", MISSING, _to, _KEYS["to"]), context.station_id,
        batch=t.get("batch", DEFAULT_BATCH, check_int(1), _KEYS["batch"]),
        images=t.get("images", None, check_path(t.base), _KEYS["images"]),
        interval_s=t.get("interval_s", 1.0, check_float(0.0, above=True), _KEYS["interval_s"]),
        close_timeout_s=t.get("close_timeout_s", 5.0, check_float(0.0), _KEYS["close_timeout_s"]))
    t.finish()
    return forwarding


def _to(v: Any) -> str:
    try:
        check_url(v, "to")
    except FleetError as exc:
        raise Refused(str(exc).split(": ", 1)[-1]) from None
    return v
