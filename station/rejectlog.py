"""The reject log: every inspection as one committed SQLite row, plus a PNG of each rejected frame.

>>> with RejectLog("station-data/rejects.db") as log:          # doctest: +SKIP
...     row_id = log.record(result)
...     fails = log.query(since="2024-05-01", verdict="fail")

The database is in WAL mode, so an operator can export or query while the line writes. Rejected frames are
saved beside it as ``<db stem>_images/<YYYY-MM-DD>/<HHMMSSmmm>_<frame_id>.png`` (UTC); ``image_path`` holds
that path relative to the database's folder, so the two can be moved together.

``labels_json`` holds the classifier stage's labels: a JSON list of class names (``[]`` without a classifier),
or, when the stage ran on patches, ``{"labels": [...], "patches": [...]}`` with the patch grid (row, col, pixel
origin, side, labels and scores per patch). :func:`decode_labels` reads both forms, so older rows stay valid.

``recipe`` and ``calibration`` say what judged each row: the recipe's product and the fingerprint of its effective
settings (:meth:`station.recipe.Recipe.fingerprint`), and the calibration profile version (``camera@vN``; empty
when the line ran uncalibrated). Schema 1 files are upgraded in place when the station opens them; their old rows
keep empty values there.
"""
from __future__ import annotations

import argparse
import csv
import enum
import io
import json
import logging
import os
import re
import sqlite3
import sys
import tempfile
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspection_core.records import InspectionResult, Verdict
from station.errors import RejectLogError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
COLUMNS = ("id", "time_utc", "timestamp_ns", "source", "frame_id", "file", "verdict", "defects_json",
           "labels_json", "engine_id", "latency_ms", "image_path", "recipe", "calibration")
_ADDED_IN_2 = ("recipe", "calibration")  # schema 1 files get these columns (NULL in their old rows)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (
    id           INTEGER PRIMARY KEY,
    time_utc     TEXT    NOT NULL,          -- when the verdict was logged, e.g. 2024-05-01T12:34:56.789Z
    timestamp_ns INTEGER NOT NULL,          -- the frame's host monotonic timestamp
    source       TEXT    NOT NULL,
    frame_id     INTEGER NOT NULL,
    file         TEXT,
    verdict      TEXT    NOT NULL CHECK (verdict IN ('PASS', 'FAIL')),
    defects_json TEXT    NOT NULL,
    labels_json  TEXT    NOT NULL,
    engine_id    TEXT    NOT NULL,
    latency_ms   REAL    NOT NULL,
    image_path   TEXT,                      -- relative to the database's folder
    recipe       TEXT,                      -- product and settings fingerprint, e.g. "magnetic_tile 3f9a0c1d2e4b"
    calibration  TEXT                       -- calibration profile version, e.g. "cam-A@v3" (NULL: uncalibrated)
);
CREATE INDEX IF NOT EXISTS inspections_time ON inspections (time_utc);
CREATE INDEX IF NOT EXISTS inspections_verdict_time ON inspections (verdict, time_utc);
"""


class VerdictFilter(str, enum.Enum):
    ALL = "all"
    PASS = "pass"
    FAIL = "fail"


class ExportFormat(str, enum.Enum):
    CSV = "csv"
    JSON = "json"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_utc(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``: fixed width, so text order is time order."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(value: str | datetime) -> tuple[datetime, bool]:
    """Parse ``YYYY-MM-DD`` or a full ISO 8601 time (naive means UTC) into ``(aware UTC datetime, date_only)``."""
    if isinstance(value, datetime):
        moment, date_only = value, False
    else:
        text = value.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                moment, date_only = datetime.combine(date.fromisoformat(text), datetime.min.time()), True
            else:
                moment, date_only = datetime.fromisoformat(text), False
        except ValueError:
            raise RejectLogError(f"{value!r} is not an ISO time; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS[.fff]] "
                                 "with an optional Z or +HH:MM (no zone means UTC)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc), date_only


def _where(since: str | datetime | None, until: str | datetime | None, verdict: str) -> tuple[str, list[Any]]:
    """SQL filter: ``since`` inclusive; ``until`` inclusive, and a bare date means up to the end of that day."""
    try:
        wanted = VerdictFilter(str(getattr(verdict, "value", verdict)).lower())
    except ValueError:
        raise RejectLogError(f"verdict {verdict!r} is not allowed; use one of fail, pass, all") from None
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append("time_utc >= ?")
        params.append(format_utc(parse_time(since)[0]))
    if until is not None:
        moment, date_only = parse_time(until)
        clauses.append("time_utc < ?" if date_only else "time_utc <= ?")
        params.append(format_utc(moment + timedelta(days=1) if date_only else moment))
    if wanted is not VerdictFilter.ALL:
        clauses.append("verdict = ?")
        params.append(wanted.value.upper())
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _fetch(conn: sqlite3.Connection, since: Any, until: Any, verdict: str) -> list[dict[str, Any]]:
    where, params = _where(since, until, verdict)
    present = {row[1] for row in conn.execute("PRAGMA table_info(inspections)")}
    selected = ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMNS)  # a schema 1 file, read-only
    cursor = conn.execute(f"SELECT {selected} FROM inspections{where} ORDER BY id", params)
    return [dict(zip(COLUMNS, row)) for row in cursor]


def _check_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; refuses files that are not SQLite or come from a newer station."""
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise RejectLogError(f"{path} is not an SQLite reject log ({exc}); move that file away or point the "
                             "station at another path ([log] db in the recipe, or --db)") from None
    if version > SCHEMA_VERSION:
        conn.close()
        raise RejectLogError(f"{path} was written by a newer station (schema {version}; this one reads up to "
                             f"{SCHEMA_VERSION}); upgrade the station, or use another database path")
    return version


def encode_labels(result: InspectionResult) -> str:
    """The ``labels_json`` text of a result: a plain list, or labels plus patch grid when there is one."""
    if not result.patches:
        return json.dumps(list(result.labels))
    return json.dumps({"labels": list(result.labels), "patches": [dict(p) for p in result.patches]})


def decode_labels(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """``(labels, patches)`` of a ``labels_json`` value in either form (see the module docstring)."""
    value = json.loads(text)
    if isinstance(value, dict):
        return list(value.get("labels", [])), list(value.get("patches", []))
    return list(value), []


def _to_png_layout(image: np.ndarray) -> np.ndarray:
    """Images on the line are grey or RGB(A); OpenCV writes BGR(A)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGBA2BGRA)
    return np.ascontiguousarray(image)


class RejectLog:
    """Append-only SQLite log of inspections; thread-safe, one committed transaction per row.

    ``recipe`` and ``calibration`` are written on every row (see the module's docstring)."""

    def __init__(self, db_path: str | Path, save_images: bool = True, recipe: str | None = None,
                 calibration: str | None = None) -> None:
        self.db_path = Path(db_path)
        self.save_images = save_images
        self.recipe, self.calibration = recipe, calibration
        self.images_dir = self.db_path.parent / f"{self.db_path.stem}_images"
        self.image_errors = 0  # frames whose PNG could not be written (the row is still logged)
        self._lock = threading.Lock()
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise RejectLogError(f"cannot open the reject log {self.db_path}: {exc}; check the folder exists "
                                 "and is writable, or choose another path") from None
        version = _check_version(conn, self.db_path)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("reject log %s runs in journal mode %r, not WAL (a network or in-memory file?)",
                            self.db_path, mode)
            # FULL, not NORMAL: in WAL mode both keep every committed row through a process kill (the WAL
            # frames are in the OS cache before COMMIT returns), but only FULL also keeps them through a power
            # cut or OS crash, because it fsyncs the WAL at each commit. A reject record is a quality record
            # and stations lose power; one fsync per row (about a millisecond) is cheap at line rates.
            conn.execute("PRAGMA synchronous=FULL")
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                # read again under the write lock: another station process may have upgraded it meanwhile
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version == 1:
                    for column in _ADDED_IN_2:
                        conn.execute(f"ALTER TABLE inspections ADD COLUMN {column} TEXT")
                    log.info("reject log %s upgraded from schema 1 to %s (columns %s added; old rows keep them "
                             "empty)", self.db_path, SCHEMA_VERSION, ", ".join(_ADDED_IN_2))
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise RejectLogError(f"cannot set up the reject log {self.db_path}: {exc}; check the disk and "
                                 "that no other program holds the file") from None
        self._conn: sqlite3.Connection | None = conn

    def __enter__(self) -> RejectLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RejectLogError(f"the reject log {self.db_path} is closed; open a new RejectLog")
        return self._conn

    def record(self, result: InspectionResult) -> int:
        """Log one result in its own committed transaction and return its row id.

        A FAIL frame's image is written first (when ``save_images``), so a row never names a missing file.
        """
        with self._lock:
            conn = self._connection()
            now = _utc_now()
            frame = result.frame
            image_path = None
            if result.verdict is Verdict.FAIL and self.save_images:
                image_path = self._save_image(frame.image, frame.frame_id, now)
            row = (
                format_utc(now), int(frame.timestamp_ns), frame.source, int(frame.frame_id), frame.file,
                Verdict(result.verdict).value, json.dumps([d.to_dict() for d in result.defects]),
                encode_labels(result), result.engine_id, float(result.latency_ms), image_path, self.recipe,
                self.calibration,
            )
            try:
                conn.execute("BEGIN IMMEDIATE")
                cursor = conn.execute(f"INSERT INTO inspections ({', '.join(COLUMNS[1:])}) "
                                      f"VALUES ({', '.join('?' * len(row))})", row)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise RejectLogError(f"cannot write to the reject log {self.db_path}: {exc}; check free disk "
                                     "space and permissions") from None
            return int(cursor.lastrowid)

    def _save_image(self, image: np.ndarray, frame_id: int, now: datetime) -> str | None:
        """Write the PNG under a temporary name, fsync, then rename: a kill never leaves half a PNG."""
        folder = self.images_dir / now.strftime("%Y-%m-%d")
        stem = f"{now.strftime('%H%M%S')}{now.microsecond // 1000:03d}_{frame_id}"
        tmp_name = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ok, encoded = cv2.imencode(".png", _to_png_layout(image))
            if not ok:
                raise ValueError(f"OpenCV cannot encode a {image.dtype} image of shape {image.shape} as PNG")
            final, n = folder / f"{stem}.png", 1
            while final.exists():
                final, n = folder / f"{stem}-{n}.png", n + 1
            fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{final.stem}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(encoded.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, final)
        except (OSError, ValueError, cv2.error) as exc:
            self.image_errors += 1
            log.warning("reject image of frame %s not saved (%s); the inspection is still logged", frame_id, exc)
            if tmp_name is not None and os.path.exists(tmp_name):
                os.unlink(tmp_name)
            return None
        return final.relative_to(self.db_path.parent).as_posix()

    def query(self, since: str | datetime | None = None, until: str | datetime | None = None,
              verdict: str = "all") -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name, oldest first; times as in :func:`parse_time`."""
        with self._lock:
            return _fetch(self._connection(), since, until, verdict)

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close; safe to call twice."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # a reader holding the WAL: it will be checkpointed next time
                log.warning("reject log checkpoint skipped: %s", exc)
            finally:
                self._conn.close()
                self._conn = None


# -------------------------------------------------------------------------------------------------- export

def _open_readonly(db_path: Path) -> sqlite3.Connection:
    if not db_path.is_file():
        raise RejectLogError(f"no reject log at {db_path}; pass the database the station writes "
                             "(the recipe's [log] db, station-data/rejects.db by default)")
    try:
        conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise RejectLogError(f"cannot open {db_path} for reading: {exc}") from None
    if _check_version(conn, db_path) == 0:
        conn.close()
        raise RejectLogError(f"{db_path} is an SQLite file but not a reject log (no inspections table); "
                             "pass the database the station writes")
    return conn


def export(db_path: str | Path, fmt: str, out_path: str | Path, since: str | datetime | None = None,
           until: str | datetime | None = None, verdict: str = "all") -> int:
    """Write the matching rows to ``out_path`` (``"-"`` = stdout) as CSV or JSON; return the row count.

    CSV has one column per database column. JSON is an array of objects with the same keys, except that
    ``defects_json`` / ``labels_json`` become decoded ``defects`` / ``labels`` lists, plus ``patches`` (the
    classifier's patch grid; ``[]`` for rows without one).
    """
    try:
        kind = ExportFormat(str(getattr(fmt, "value", fmt)).lower())
    except ValueError:
        raise RejectLogError(f"format {fmt!r} is not allowed; use csv or json") from None
    _where(since, until, verdict)  # check the filters before touching any file
    conn = _open_readonly(Path(db_path))
    try:
        rows = _fetch(conn, since, until, verdict)
    except sqlite3.Error as exc:
        raise RejectLogError(f"cannot read {db_path}: {exc}") from None
    finally:
        conn.close()
    buffer = io.StringIO()
    if kind is ExportFormat.CSV:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([row[c] for c in COLUMNS] for row in rows)
    else:
        items = []
        for row in rows:
            item = {k: v for k, v in row.items() if not k.endswith("_json")}
            item["defects"] = json.loads(row["defects_json"])
            item["labels"], item["patches"] = decode_labels(row["labels_json"])
            items.append(item)
        json.dump(items, buffer, indent=1)
        buffer.write("\n")
    if str(out_path) == "-":
        sys.stdout.write(buffer.getvalue())
        sys.stdout.flush()
        return len(rows)
    out = Path(out_path)
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
        os.replace(tmp, out)
    except OSError as exc:
        raise RejectLogError(f"cannot write {out}: {exc}; check the folder exists and is writable") from None
    return len(rows)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``station export`` to ``parser`` (a sub-command parser)."""
    if parser.description is None:
        parser.description = ("Export inspections from the reject log as CSV or JSON. The log may be exported "
                              "while the station is writing it.")
    if parser.epilog is None:
        parser.epilog = ("Times are 'YYYY-MM-DD' or full ISO 8601 ('2024-05-01T08:00', '...Z', '...+02:00'); "
                         "no zone means UTC; a bare --until date includes that whole day. Exit status: 0 done, "
                         "1 the log cannot be read or the output written, 2 bad arguments or no log at --db.")
    parser.add_argument("--db", required=True, metavar="PATH",
                        help="the reject log database (e.g. station-data/rejects.db)")
    parser.add_argument("--format", required=True, choices=[f.value for f in ExportFormat], dest="format",
                        help="csv: one column per field; json: an array of objects with decoded defects and labels")
    parser.add_argument("--since", metavar="ISO", help="only inspections at or after this time")
    parser.add_argument("--until", metavar="ISO", help="only inspections at or before this time")
    parser.add_argument("--verdict", default="all", type=str.lower, choices=[v.value for v in VerdictFilter],
                        help="only failed or passed inspections (default: all)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output file, or - for standard output")


def run_export(args: argparse.Namespace) -> int:
    """Run ``station export`` with parsed arguments; returns the exit status."""
    prog = "station export"
    db = Path(args.db)
    if not db.is_file():
        print(f"{prog}: error: no reject log at {db}; pass --db with the database the station writes "
              "(the recipe's [log] db, station-data/rejects.db by default)", file=sys.stderr)
        return 2
    try:
        for name in ("since", "until"):
            if getattr(args, name) is not None:
                try:
                    parse_time(getattr(args, name))
                except RejectLogError as exc:
                    raise RejectLogError(f"--{name}: {exc}") from None
    except RejectLogError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        count = export(db, args.format, args.out, since=args.since, until=args.until, verdict=args.verdict)
    except RejectLogError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    where = "standard output" if args.out == "-" else args.out
    print(f"{prog}: {count} inspection(s) from {db} written to {where}", file=sys.stderr)
    return 0
