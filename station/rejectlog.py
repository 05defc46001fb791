# Over 500 lines on purpose: the ledger's schema, its upgrades, writes, images and reads share one SQLite connection.
"""The part ledger (the reject log): every part the line saw, or lost, as one committed SQLite row.

For example, with ``result`` an inspection's record::

    with RejectLog("station-data/rejects.db", station_id="line-3", run_id=new_run_id()) as log:
        row_id = log.record(result)          # an InspectionResult (PASS / FAIL), NotInspected or FrameGap
        fails = log.query(since="2024-05-01", verdict="fail")

Rows, by ``verdict``:

- ``PASS`` / ``FAIL``: an inspected part (:class:`~inspection_core.records.InspectionResult`);
- ``NOT_INSPECTED``: a part the source delivered but the line could not inspect
  (:class:`~inspection_core.records.NotInspected`); ``reason`` says why (``dropped``, ``unreadable``, ``incomplete``,
  ``too_small``, ``too_large``, ``inference_error``, ``stopped``, ``interrupted``...) and ``detail`` says more;
- ``GAP``: frames the source lost (:class:`~inspection_core.records.FrameGap`): ids ``frame_id .. last_frame_id``,
  ``frame_count`` of them (an estimate for a camera outage, ``reason = "outage"``; ``"lost_ids"`` for skipped ids),
  between ``timestamp_ns`` and ``end_timestamp_ns``.

``rejected`` is 1 for a part that goes to the reject bin (FAIL, and NOT_INSPECTED under the fail-safe default
``[station] not_inspected = "reject"``), 0 for one that passes (PASS, or NOT_INSPECTED under ``"exclude"``), NULL for
gap rows: it records the choice made for each row. ``station_id`` and ``run_id`` say which station and which
``station run`` wrote the row; ``recipe`` and ``calibration`` what judged it (the recipe's product and settings
fingerprint, :meth:`station.recipe.Recipe.fingerprint`, and the calibration profile version, ``camera@vN``): the
ledger keeps no copy of them, each entry comes with the judge it was made under (:class:`station.judge.ActiveJudge`,
given by the line to :meth:`RejectLog.record` and :meth:`RejectLog.note_acquired`).

The database is in WAL mode, so an operator can export or query while the line writes; each row is its own
transaction with ``synchronous=FULL``. The image of every FAIL part is saved beside it as
``<db stem>_images/<YYYY-MM-DD>/<HHMMSSmmm>_<frame_id>.png`` (UTC) with ``..._overlay.png`` beside it (the defect
mask in red, each defect boxed); ``image_path`` and ``overlay_path`` are relative to the database's folder, so the
two can be moved together. Beside them, ``<image stem>_mask.png`` keeps the predicted mask, the rules' decision
(:attr:`~inspection_core.records.InspectionResult.decided`, what the overlay paints): a lossless 8-bit PNG of the
image's height and width, 0 background and 255 defect (all 0 when no defect was kept). No column names it: its
path is the image's by this convention (:func:`mask_path_of`), it is written and pruned with the image, and rows
saved before it was kept have none (``engines dataset --from-ledger`` reads it). Files are created with the
process's umask, like any other file. When a FAIL's images
cannot be written (a full disk...), its row is still committed, its ``detail`` names the error, and
:meth:`RejectLog.record_row` raises :class:`~station.errors.EvidenceError` (carrying the row): the line stops.

Images for review (``[log]``, issue 29): a share of PASS parts (``save_pass_share``) has its image and overlay saved
the same way, so QA can look for escapes; which ones is decided per part by :func:`pass_sampled`, a hash of the
part's identity (:func:`sample_key`), so the same part is sampled at every replay and restart, whatever the order
or the number of runs (a counter of passes would restart with each run). A pass whose image cannot be written is
still logged and says so, but does not stop the line (it is a sample, not a reject's evidence). With
``images_max_mb`` the images folder is kept under that bound: after each saved image the oldest images (by row id)
are deleted until it fits, skipping those of rows that have a review (:data:`REVIEWS_TABLE`). A pruned row is never
deleted nor changed: it keeps its ``image_path`` and ``overlay_path``, which then name no file: a path that no longer
exists means retention pruned it (the log says when, at INFO).

Beside ``inspections`` the file keeps the runs that wrote it and the in-flight journal of parts acquired and not yet
recorded (:mod:`station.journal`): what lets the next start give the parts a killed run left without a verdict their
NOT_INSPECTED ``interrupted`` rows.

``labels_json`` holds the classifier stage's labels: a JSON list of class names (``[]`` without a classifier), or,
when the stage ran on patches, ``{"labels": [...], "patches": [...]}``; :func:`decode_labels` reads both.

``camera_timestamp_ns`` is the camera's own time stamp of the frame (chunk data or the GenTL buffer's time stamp, on
the camera's clock: :attr:`~inspection_core.records.Frame.camera_timestamp_ns`), beside the host's ``timestamp_ns``;
NULL when the camera gives none (replays, viky.cti), for gap rows, and in rows written before schema 4.

``part_id``, ``meas_id``, ``product_id`` and ``job_id`` say who the part is
(:class:`~inspection_core.records.PartIdentity`, decided when it was acquired: :mod:`station.part_identity`): the
PLC's PartId (else the source's part id: a replayed file's name, a camera's chunk value, a line-scan part's index),
MeasId and ProductId, and the OPC UA job the part answers; NULL where nobody said, and in rows before schema 5.
``station export --part-id`` / ``--meas-id`` / ``--product-id`` filter on them (indexed: ``part_id``, ``meas_id``).

Schema history (``PRAGMA user_version``), upgraded in place when the station opens an older file, old rows kept:
1 → 2 added ``recipe``, ``calibration``; 2 → 3 added the ledger columns (``station_id`` … ``overlay_path``) and the
NOT_INSPECTED and GAP verdicts; 3 → 4 added ``camera_timestamp_ns``; 4 → 5 the part's identity (``part_id``,
``meas_id``, ``product_id``, ``job_id``, and the same columns in the in-flight journal); 5 → 6 the ``reviews``
table (:data:`REVIEWS_TABLE`: QA's append-only verdicts on rows, :meth:`RejectLog.add_reviews`); 6 → 7 the ``shadow``
and ``promotions`` tables (:mod:`station.shadow_tables`: a candidate engine's verdicts beside the rows, and who
promoted which weights). SQLite cannot change a CHECK
constraint, so a file older than 3 is rebuilt (new table, rows copied, old dropped, new renamed) inside one
transaction: a kill during it leaves the old file as it was. Old rows get ``frame_count = 1`` and ``rejected`` from
their verdict. From 3 on an upgrade only adds columns (``ALTER TABLE ... ADD COLUMN``, in the same kind of
transaction) and indexes, so a large ledger is not copied.
"""
from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np

from inspection_core.records import Frame, FrameGap, InspectionResult, NotInspected, PartIdentity, Verdict
from station import journal, shadow_tables
from station.errors import DiskSpaceError, EvidenceError, LedgerError, RejectLogError
from station.judge import ActiveJudge
from ui.overlay import overlay_mask

log = logging.getLogger(__name__)

SCHEMA_VERSION = 7
GAP = "GAP"  # the verdict of a gap row
VERDICTS = (Verdict.PASS.value, Verdict.FAIL.value, Verdict.NOT_INSPECTED.value, GAP)
COLUMNS = ("id", "time_utc", "timestamp_ns", "source", "frame_id", "file", "verdict", "defects_json",
           "labels_json", "engine_id", "latency_ms", "image_path", "recipe", "calibration",
           "station_id", "run_id", "reason", "detail", "frame_count", "last_frame_id", "end_timestamp_ns", "rejected",
           "overlay_path", "camera_timestamp_ns", "part_id", "meas_id", "product_id", "job_id")
#: Who the part is (:class:`~inspection_core.records.PartIdentity`), in the order of its ``values()``.
IDENTITY_COLUMNS = ("part_id", "meas_id", "product_id", "job_id")
#: The identity columns ``station export`` (here and over the fleet database) filters on.
IDENTITY_FILTERS = ("part_id", "meas_id", "product_id")
_ADDED_IN_2 = ("recipe", "calibration")
#: Columns added after schema 3 (no CHECK constraint changed): added to a schema-3 table in place, with their types.
_ADDED_AFTER_3 = {"camera_timestamp_ns": "INTEGER", "part_id": "TEXT", "meas_id": "TEXT", "product_id": "TEXT",
                  "job_id": "TEXT"}
#: What the columns added later read as in older rows (SQL expressions over the old columns).
_OLD_ROW_DEFAULTS = {"frame_count": "1", "rejected": "CASE verdict WHEN 'FAIL' THEN 1 ELSE 0 END"}

LedgerEntry = Union[InspectionResult, NotInspected, FrameGap]
#: What the predicted mask's file name adds to its image's stem (:func:`mask_path_of`).
MASK_SUFFIX = "_mask"

_TABLE = """
CREATE TABLE {name} (
    id           INTEGER PRIMARY KEY,
    time_utc     TEXT    NOT NULL,          -- when the row was logged, e.g. 2024-05-01T12:34:56.789Z
    timestamp_ns INTEGER NOT NULL,          -- the frame's host monotonic timestamp (gap: its start)
    source       TEXT    NOT NULL,
    frame_id     INTEGER NOT NULL,          -- gap: the first lost id
    file         TEXT,
    verdict      TEXT    NOT NULL CHECK (verdict IN ('PASS', 'FAIL', 'NOT_INSPECTED', 'GAP')),
    defects_json TEXT    NOT NULL,
    labels_json  TEXT    NOT NULL,
    engine_id    TEXT    NOT NULL,
    latency_ms   REAL    NOT NULL,
    image_path   TEXT,                      -- relative to the database's folder
    recipe       TEXT,                      -- product and settings fingerprint, e.g. "magnetic_tile 3f9a0c1d2e4b"
    calibration  TEXT,                      -- calibration profile version, e.g. "cam-A@v3" (NULL: uncalibrated)
    station_id   TEXT,                      -- [station] id (default: the host name); NULL in rows before schema 3
    run_id       TEXT,                      -- one per `station run`, e.g. 20241101T080000Z-3f9a0c
    reason       TEXT,                      -- NOT_INSPECTED: why; GAP: lost_ids or outage
    detail       TEXT,                      -- more words: the decoder's message, a frame's size, a warning
    frame_count  INTEGER NOT NULL DEFAULT 1,-- parts this row stands for (GAP: the estimated lost frames)
    last_frame_id INTEGER,                  -- GAP: the last lost id
    end_timestamp_ns INTEGER,               -- GAP: the first frame after it (or when the line stopped)
    rejected     INTEGER,                   -- 1: to the reject bin, 0: passes, NULL: a gap
    overlay_path TEXT,                      -- FAIL: the image with its defect overlay, beside image_path
    camera_timestamp_ns INTEGER,            -- the camera's own time stamp (ns, camera clock); NULL: none given
    part_id      TEXT,                      -- the part's id: the PLC's PartId, else the source's (file, chunk...)
    meas_id      TEXT,                      -- the PLC's MeasId
    product_id   TEXT,                      -- the PLC's ProductId
    job_id       TEXT                       -- the OPC UA job the part answers
)"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS inspections_time ON inspections (time_utc);
CREATE INDEX IF NOT EXISTS inspections_verdict_time ON inspections (verdict, time_utc);
CREATE INDEX IF NOT EXISTS inspections_part ON inspections (part_id) WHERE part_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS inspections_meas ON inspections (meas_id) WHERE meas_id IS NOT NULL;
"""

#: What a reviewer may say of a part: it is ``good`` (a FAIL so marked is a false reject) or a ``defect`` (a PASS
#: so marked is an escape).
REVIEW_MARKS = ("good", "defect")
REVIEW_COLUMNS = ("id", "inspection_id", "time_utc", "reviewer", "mark", "note")
#: Schema 6: one row per review, never updated nor deleted (the triggers refuse it); the inspections row it names is
#: never changed. A later review of the same row is a new row: the latest one (highest id) is the row's review.
REVIEWS_TABLE = """
CREATE TABLE IF NOT EXISTS reviews (
    id            INTEGER PRIMARY KEY,
    inspection_id INTEGER NOT NULL REFERENCES inspections (id), -- the ledger row reviewed
    time_utc      TEXT    NOT NULL,         -- when the review was recorded, e.g. 2024-05-01T12:34:56.789Z
    reviewer      TEXT    NOT NULL,         -- who (station review --by; default: the OS user)
    mark          TEXT    NOT NULL CHECK (mark IN ('good', 'defect')), -- what they said of the part
    note          TEXT                      -- their words, optional
);
CREATE INDEX IF NOT EXISTS reviews_inspection ON reviews (inspection_id, id);
CREATE TRIGGER IF NOT EXISTS reviews_no_update BEFORE UPDATE ON reviews
    BEGIN SELECT RAISE(ABORT, 'reviews are append-only: record a new review instead'); END;
CREATE TRIGGER IF NOT EXISTS reviews_no_delete BEFORE DELETE ON reviews
    BEGIN SELECT RAISE(ABORT, 'reviews are append-only: record a new review instead'); END
"""


def review_finding(verdict: str | None, mark: str) -> str:
    """What a review makes of the verdict it names: ``false reject`` (a FAIL marked good), ``escape`` (a PASS marked
    defect), ``confirmed`` (a FAIL marked defect, a PASS marked good), ``not inspected`` (a NOT_INSPECTED part: the
    engine gave no verdict to judge)."""
    if verdict == Verdict.FAIL.value:
        return "false reject" if mark == "good" else "confirmed"
    if verdict == Verdict.PASS.value:
        return "escape" if mark == "defect" else "confirmed"
    return "not inspected"


def fetch_reviews(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every review of the ledger behind ``conn``, oldest first, with the reviewed row's ``verdict``, ``station_id``,
    ``part_id``, ``file`` and ``row_time_utc``, and the review's ``finding`` (:func:`review_finding`); ``[]`` for a
    file older than schema 6."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reviews'").fetchone() is None:
        return []
    sql = (f"SELECT {', '.join('r.' + c for c in REVIEW_COLUMNS)}, i.verdict, i.station_id, i.part_id, i.file, "
           "i.time_utc FROM reviews r JOIN inspections i ON i.id = r.inspection_id ORDER BY r.id")
    keys = (*REVIEW_COLUMNS, "verdict", "station_id", "part_id", "file", "row_time_utc")
    found = [dict(zip(keys, row)) for row in conn.execute(sql)]
    for item in found:
        item["finding"] = review_finding(item["verdict"], item["mark"])
    return found


class VerdictFilter(str, enum.Enum):
    ALL = "all"
    PASS = "pass"
    FAIL = "fail"
    NOT_INSPECTED = "not_inspected"
    GAP = "gap"
    REJECTED = "rejected"  # every row with rejected = 1: FAIL, and NOT_INSPECTED when it counts as a reject


def sample_key(entry: Any) -> str:
    """What decides whether a PASS part's image is kept (:func:`pass_sampled`): the part's ``part_id`` (the PLC's
    PartId, else the source's: a replayed file's name), else its file, else ``source:frame_id``."""
    part_id = _identity(entry)["part_id"]
    if part_id:
        return str(part_id)
    frame = getattr(entry, "frame", None)
    if getattr(frame, "file", None):
        return str(frame.file)
    return f"{getattr(frame, 'source', '')}:{getattr(frame, 'frame_id', '')}"


def pass_sampled(key: str, share: float) -> bool:
    """Whether a PASS part with this :func:`sample_key` has its image kept under ``[log] save_pass_share = share``:
    the first 8 bytes of the key's SHA-256, read as a fraction of 2^64, fall below ``share``. The same key always
    gets the same answer, and over many parts the share kept is ``share``."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64 < share


def mask_path_of(image_path: str) -> str:
    """The predicted mask saved beside a row's image (same folder, relative as ``image_path`` is):
    ``2024-05-01/123456789_7.png`` → ``2024-05-01/123456789_7_mask.png``."""
    path = Path(image_path)
    return path.with_name(f"{path.stem}{MASK_SUFFIX}.png").as_posix()


def _decided_png(result: InspectionResult) -> np.ndarray:
    """The rules' decision as the mask file holds it: ``uint8`` of the frame's height and width, 255 where a kept
    defect is, else 0."""
    height, width = result.frame.image.shape[:2]
    if result.decided is None:
        return np.zeros((height, width), np.uint8)
    decided = np.asarray(result.decided)
    if decided.shape != (height, width):
        raise ValueError(f"the decided mask is {decided.shape}, its frame {(height, width)}")
    return np.where(decided > 0, 255, 0).astype(np.uint8)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id(now: datetime | None = None) -> str:
    """A fresh run id: UTC start time and 6 random hex digits, e.g. ``20241101T080000Z-3f9a0c`` (sorts by time)."""
    moment = (now or _utc_now()).astimezone(timezone.utc)
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


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


def check_times(since: str | None, until: str | None) -> None:
    """``--since`` / ``--until`` as given on a command line: a :class:`RejectLogError` naming the flag when one is
    not a time."""
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            try:
                parse_time(value)
            except RejectLogError as exc:
                raise RejectLogError(f"--{name}: {exc}") from None


def row_filter(since: str | datetime | None, until: str | datetime | None, verdict: str, station: str | None = None,
               *, mark: str = "?", time_param: Any = format_utc, rejected_sql: str = "rejected = 1",
               part_id: str | None = None, meas_id: str | None = None,
               product_id: str | None = None) -> tuple[str, list[Any]]:
    """The SQL ``WHERE`` of an export (here, and over the fleet database: ``mark`` is the driver's placeholder,
    ``time_param`` turns a UTC datetime into the time parameter): ``since`` inclusive; ``until`` inclusive, and a
    bare date means up to the end of that day; ``verdict`` a :class:`VerdictFilter` value; ``station`` one station;
    ``part_id``, ``meas_id``, ``product_id`` the part's identity, each matched exactly."""
    try:
        wanted = VerdictFilter(str(getattr(verdict, "value", verdict)).lower())
    except ValueError:
        raise RejectLogError(f"verdict {verdict!r} is not allowed; use one of "
                             f"{', '.join(v.value for v in VerdictFilter)}") from None
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append(f"time_utc >= {mark}")
        params.append(time_param(parse_time(since)[0]))
    if until is not None:
        moment, date_only = parse_time(until)
        clauses.append(f"time_utc < {mark}" if date_only else f"time_utc <= {mark}")
        params.append(time_param(moment + timedelta(days=1) if date_only else moment))
    if wanted is VerdictFilter.REJECTED:
        clauses.append(rejected_sql)
    elif wanted is not VerdictFilter.ALL:
        clauses.append(f"verdict = {mark}")
        params.append(wanted.value.upper())
    if station is not None:
        clauses.append(f"station_id = {mark}")
        params.append(station)
    for column, value in (("part_id", part_id), ("meas_id", meas_id), ("product_id", product_id)):
        if value is not None:
            clauses.append(f"{column} = {mark}")
            params.append(str(value))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _fetch(conn: sqlite3.Connection, since: Any, until: Any, verdict: str, **filters: Any) -> list[dict[str, Any]]:
    where, params = row_filter(since, until, verdict, **filters)
    present = {row[1] for row in conn.execute("PRAGMA table_info(inspections)")}
    if set(COLUMNS) <= present:
        sql = f"SELECT {', '.join(COLUMNS)} FROM inspections{where} ORDER BY id"
    else:  # an older file, read-only: the later columns read as their defaults, and the filters see them so
        selected = ", ".join(c if c in present else f"{_OLD_ROW_DEFAULTS.get(c, 'NULL')} AS {c}" for c in COLUMNS)
        sql = f"SELECT * FROM (SELECT {selected} FROM inspections){where} ORDER BY id"
    return [dict(zip(COLUMNS, row)) for row in conn.execute(sql, params)]


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


def _upgrade(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty file, or bring an older one to :data:`SCHEMA_VERSION`, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # read again under the write lock: another station process may have upgraded it meanwhile
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        present = [row[1] for row in conn.execute("PRAGMA table_info(inspections)")]
        if 3 <= version < SCHEMA_VERSION and present:  # columns added, no constraint changed: no copy needed
            before = conn.execute("SELECT COUNT(*) FROM inspections").fetchone()
            for column, kind in _ADDED_AFTER_3.items():
                if column not in present:
                    conn.execute(f"ALTER TABLE inspections ADD COLUMN {column} {kind}")
            tables = [t for t in ("reviews", "shadow", "promotions") if not shadow_tables.has_table(conn, t)]
            log.info("reject log %s upgraded from schema %d to %d in place (%d rows kept; added %s)", path, version,
                     SCHEMA_VERSION, before[0], ", ".join([c for c in COLUMNS if c not in present] + tables))
        elif version < SCHEMA_VERSION and present:
            before = conn.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM inspections").fetchone()
            conn.execute(_TABLE.format(name="inspections_new"))
            copied = [c for c in COLUMNS if c in present]
            filled = [c for c in _OLD_ROW_DEFAULTS if c not in present]
            conn.execute(f"INSERT INTO inspections_new ({', '.join(copied + filled)}) "
                         f"SELECT {', '.join(copied + [_OLD_ROW_DEFAULTS[c] for c in filled])} "
                         "FROM inspections ORDER BY id")
            after = conn.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM inspections_new").fetchone()
            if tuple(after) != tuple(before):
                raise sqlite3.DatabaseError(f"the copy holds {after[0]} rows, the old table {before[0]}")
            conn.execute("DROP TABLE inspections")
            conn.execute("ALTER TABLE inspections_new RENAME TO inspections")
            log.info("reject log %s upgraded from schema %d to %d in place (%d rows kept; added %s)", path, version,
                     SCHEMA_VERSION, before[0], ", ".join(c for c in COLUMNS if c not in present))
        elif not present:
            conn.execute(_TABLE.format(name="inspections"))
        for statement in filter(str.strip, _INDEXES.split(";")):
            conn.execute(statement)
        journal.create_tables(conn)  # the runs and the in-flight journal (station.journal), beside the rows
        journal.upgrade_tables(conn)  # an older file's journal gains the columns added since
        for statement in filter(str.strip, REVIEWS_TABLE.split(";\n")):  # schema 6: QA's reviews
            conn.execute(statement)
        shadow_tables.create_tables(conn)  # schema 7: a candidate's verdicts, and promotions
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _identity(entry: Any) -> dict[str, str | None]:
    """The identity columns of a ledger entry (its :class:`PartIdentity`; all NULL for an entry without one)."""
    identity = getattr(entry, "identity", None)
    if not isinstance(identity, PartIdentity):
        identity = PartIdentity()
    return dict(zip(IDENTITY_COLUMNS, identity.values()))


def _camera_ns(frame: Any) -> int | None:
    """The camera's time stamp of a frame (None: no frame, the camera gave none, or a value beyond SQLite's 64-bit
    integers, which must never cost the row)."""
    value = getattr(frame, "camera_timestamp_ns", None)
    return int(value) if value is not None and 0 <= int(value) < 2**63 else None


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


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (a kill never leaves half a file), with the
    permissions an ordinary ``open()`` would give (``0666`` less the umask; ``mkstemp`` alone makes ``0600``)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o666 & ~current_umask())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def free_mb(folder: str | Path) -> float:
    """Free megabytes (10^6 bytes) available to this user on the file system holding ``folder`` (or the nearest
    existing folder above it)."""
    path = Path(folder).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 1e6


def check_free_space(folder: str | Path, min_free_mb: float) -> float:
    """Free MB at ``folder``; raises :class:`DiskSpaceError` below ``min_free_mb`` (0 disables the check)."""
    free = free_mb(folder)
    if min_free_mb > 0 and free < min_free_mb:
        raise DiskSpaceError(f"only {free:.0f} MB free where the reject log lives ({Path(folder).resolve()}), below "
                             f"[station] min_free_mb = {min_free_mb:g}; free disk space there (or move the log with "
                             "[log] db / --db), then start the station again")
    return free


def _why(exc: sqlite3.Error, busy_timeout_s: float) -> str:
    """What an SQLite error means for the operator."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    if name.startswith("SQLITE_FULL"):
        return "the disk is full"
    if name.startswith("SQLITE_READONLY"):
        return "the database file is read-only"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return f"another program held the database locked for more than {busy_timeout_s:g} s"
    if name.startswith("SQLITE_IOERR"):
        return "a disk I/O error (a full disk, a file size limit or a failing disk)"
    return type(exc).__name__


def _write_failed(conn: sqlite3.Connection, path: Path, exc: sqlite3.Error, busy_timeout_s: float, fix: str,
                  what: str = "") -> LedgerError:
    """Roll back ``conn``'s open transaction after ``exc`` and return the :class:`LedgerError` to raise: ``cannot
    write the reject log PATH[ (WHAT)]: WHY (EXC); FIX``. A rollback that fails too changes nothing: the error
    reported is the write's."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass
    return LedgerError(f"cannot write the reject log {path}{f' ({what})' if what else ''}: "
                       f"{_why(exc, busy_timeout_s)} ({exc}); {fix}")


def recover_interrupted(db_path: str | Path, run_id: str | None,
                        busy_timeout_s: float = 10.0) -> journal.UncleanEnd | None:
    """At a start, holding the log's lock (:mod:`station.ledgerlock`), before any model loads: give the parts earlier
    runs left without a verdict (a kill -9, a crash, a power cut) their NOT_INSPECTED ``interrupted`` rows and report
    the unclean end (:func:`station.journal.recover`), in one transaction: a kill during it leaves the journal as it
    was. None when there is nothing to report, no file yet, or a file :class:`RejectLog` will upgrade or refuse
    (it says what is wrong); a file of schema 3 or later is upgraded in place first, so a run killed before an upgrade
    still has its parts recorded. Raises :class:`LedgerError` when the rows cannot be written."""
    path = Path(db_path)
    if not path.is_file():
        return None
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s)
    try:
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError:  # not an SQLite file: RejectLog says so
            return None
        if not 3 <= version <= SCHEMA_VERSION:  # a file RejectLog rebuilds or refuses (it says why)
            return None
        conn.execute("PRAGMA synchronous=FULL")
        if version < SCHEMA_VERSION:  # columns added in place (as RejectLog would): the journal's rows need them
            _upgrade(conn, path)
        conn.execute("BEGIN IMMEDIATE")
        found = journal.recover(conn, run_id, format_utc(_utc_now()))
        conn.execute("COMMIT")
        return found
    except sqlite3.Error as exc:
        raise _write_failed(conn, path, exc, busy_timeout_s, "free disk space, make the file writable or stop the "
                            "program holding it, then start the station again",
                            what="recording the parts an earlier run left without a verdict") from None
    finally:
        conn.close()


def probe_writable(db_path: str | Path, busy_timeout_s: float = 10.0) -> None:
    """Raise :class:`LedgerError` now when an existing log cannot be written (read-only file or folder, locked):
    a write that is rolled back, so nothing changes, and nothing is created when there is no file yet."""
    path = Path(db_path)
    if not path.is_file():
        return
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the reject log {path}: {exc}; check the file and its folder") from None
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"PRAGMA user_version={version}")
        conn.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):
            raise LedgerError(f"cannot write the reject log {path}: {_why(exc, busy_timeout_s)} ({exc}); make the "
                              "file and its folder writable, free disk space, or stop the program holding it, then "
                              "start the station again") from None
        # not an SQLite file: RejectLog says so when it opens it
    finally:
        conn.close()


class RejectLog:
    """Append-only SQLite ledger of parts; thread-safe, one committed transaction per row.

    ``station_id`` and ``run_id`` are written on every row; ``recipe``, ``calibration`` and ``engine_id`` come from
    the judge each entry is recorded with (:class:`~station.judge.ActiveJudge`; none: NULL, NULL and ``""`` or the
    result's own engine); ``not_inspected_is_reject`` sets ``rejected`` of NOT_INSPECTED rows; the overlay images
    paint each result's own decision (:attr:`InspectionResult.decided`). Any failure to write a row raises :class:`LedgerError`; a FAIL
    whose images cannot be written raises :class:`EvidenceError` once its row (which says so) is committed.
    :meth:`start_run` opens the run's in-flight journal (:meth:`note_acquired`; :mod:`station.journal`).
    """

    def __init__(self, db_path: str | Path, save_images: bool = True, *, station_id: str | None = None,
                 run_id: str | None = None, not_inspected_is_reject: bool = True,
                 busy_timeout_s: float = 10.0, save_pass_share: float = 0.0, images_max_mb: float = 0.0) -> None:
        self.db_path = Path(db_path)
        self.save_images = save_images
        self.save_pass_share = float(save_pass_share)  # [log] save_pass_share: PASS images kept (pass_sampled)
        self.images_max_mb = float(images_max_mb)  # [log] images_max_mb: the images folder's bound (0: none)
        self._images_bytes: int | None = None  # bytes under images_dir, counted at the first prune (images_max_mb)
        self._pruned_through = 0  # row ids up to here have been through retention
        self._over_bound_warned = False
        self.station_id, self.run_id = station_id, run_id
        self.not_inspected_is_reject = not_inspected_is_reject
        self.busy_timeout_s = busy_timeout_s
        self.images_dir = self.db_path.parent / f"{self.db_path.stem}_images"
        self.image_errors = 0  # frames whose PNG could not be written (the row is still logged, and says so)
        self._lock = threading.Lock()
        self._journal: sqlite3.Connection | None = None  # the in-flight journal's connection, from start_run()
        self._journal_lock = threading.Lock()
        # held around each write transaction (a row, a journal entry), not while images are written: the journal's
        # writer waits for at most the commit in progress instead of polling SQLite's busy handler, which can miss
        # the gaps between back-to-back row commits for hundreds of milliseconds
        self._write_gate = threading.Lock()
        self.lock: Any = None  # a LedgerLock held for this log (station.ledgerlock): released by close()
        self.unclean_end: journal.UncleanEnd | None = None  # what this start found of earlier runs (build_line)
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout_s)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the reject log {self.db_path}: {exc}; check the folder exists "
                              "and is writable, or choose another path") from None
        _check_version(conn, self.db_path)
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
            _upgrade(conn, self.db_path)
            # a write that is rolled back: a read-only file or folder is found now, not at the first part
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            error = _write_failed(conn, self.db_path, exc, busy_timeout_s, "make the file and its folder writable, "
                                  "free disk space, or stop the program holding it, then start the station again")
            conn.close()
            raise error from None
        self._conn: sqlite3.Connection | None = conn
        if self.images_max_mb > 0:  # a smaller bound than the last run's applies from the start
            with self._lock:
                self._prune()

    @property
    def write_gate(self) -> threading.Lock:
        """Held around each write transaction of this log (not while images are written): a writer of a table
        beside ``inspections`` on its own connection (the shadow, :mod:`station.shadow`) holds it too, so this
        log's writes never meet SQLite's busy handler."""
        return self._write_gate

    def __enter__(self) -> RejectLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RejectLogError(f"the reject log {self.db_path} is closed; open a new RejectLog")
        return self._conn

    # -- writing ---------------------------------------------------------------------------------------------
    def record(self, entry: LedgerEntry, note: str | None = None, judge: ActiveJudge | None = None) -> int:
        """Log one ledger entry, judged under ``judge``, in its own committed transaction and return its row id;
        ``note`` goes to ``detail`` (e.g. a warning about the image).

        A FAIL part's images are written first (when ``save_images``), so a row never names a missing file.
        Raises :class:`LedgerError` when the row cannot be written.
        """
        return int(self.record_row(entry, note, judge)["id"])

    def record_row(self, entry: LedgerEntry, note: str | None = None,
                   judge: ActiveJudge | None = None) -> dict[str, Any]:
        """:meth:`record`, returning the committed row as a dict keyed by column name (``id`` included), exactly
        as :meth:`query` would read it back: what the line's integrations publish."""
        with self._lock:
            conn = self._connection()
            now = _utc_now()
            lost: list[OSError] = []
            row = self._row(entry, now, note, lost, judge)
            try:
                with self._write_gate:
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                        cursor = conn.execute(f"INSERT INTO inspections ({', '.join(row)}) "
                                              f"VALUES ({', '.join('?' * len(row))})", list(row.values()))
                        if self._journal is not None and not isinstance(entry, FrameGap):  # the part has its row
                            conn.execute(journal.JOURNAL_FORGET, (self.run_id, row["frame_id"]))
                        conn.execute("COMMIT")
                    except sqlite3.Error:
                        try:
                            if conn.in_transaction:
                                conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                        raise
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot write to the reject log {self.db_path}: {_why(exc, self.busy_timeout_s)} "
                                  f"({exc}); free disk space, make the file writable or stop the program locking "
                                  "it, then start the station again") from None
            committed = {"id": int(cursor.lastrowid), **{c: row.get(c) for c in COLUMNS if c != "id"}}
            if self.images_max_mb > 0 and row.get("image_path"):
                if self._images_bytes is not None:
                    self._images_bytes += sum(self._file_size(path) for path in _image_files(row))
                self._prune()
            if lost:  # the row says so; the line stops as on any write error (docs/RELIABILITY.md, issue 26)
                raise EvidenceError(f"the reject image of FAIL frame {row['frame_id']} could not be written "
                                    f"({lost[0].strerror or lost[0]}: {lost[0].filename or self.images_dir}); its row "
                                    f"{committed['id']} is recorded without the image and says so. Free disk space "
                                    f"where the images go ({self.images_dir}) or make that folder writable, then "
                                    "start the station again", committed)
            return committed

    def _row(self, entry: LedgerEntry, now: datetime, note: str | None, lost: list[OSError] | None = None,
             judge: ActiveJudge | None = None) -> dict[str, Any]:
        """The row of ``entry``, judged under ``judge``; a FAIL's images are written here. When they cannot be,
        ``detail`` names the error, and a write error (not an image OpenCV cannot encode) is appended to ``lost``."""
        recipe, calibration, engine_id = _judged_by(judge)
        common = {"time_utc": format_utc(now), "recipe": recipe, "calibration": calibration,
                  "station_id": self.station_id, "run_id": self.run_id, "detail": note or None, **_identity(entry)}
        if isinstance(entry, InspectionResult):
            frame = entry.frame
            image_path = overlay_path = None
            fail = entry.verdict is Verdict.FAIL
            if (self.save_images if fail else
                    entry.verdict is Verdict.PASS and pass_sampled(sample_key(entry), self.save_pass_share)):
                image_path, overlay_path, error = self._save_images(entry, now)
                if error is not None:
                    if fail and isinstance(error, OSError) and lost is not None:  # a pass sample never stops the line
                        lost.append(error)
                    why = f"{type(error).__name__}: {error}"
                    what = "reject image" if fail else "pass sample image"
                    common["detail"] = "; ".join(t for t in (note, f"{what} not saved ({why})") if t)
            return {**common, "timestamp_ns": int(frame.timestamp_ns), "source": frame.source,
                    "camera_timestamp_ns": _camera_ns(frame),
                    "frame_id": int(frame.frame_id), "file": frame.file, "verdict": Verdict(entry.verdict).value,
                    "defects_json": json.dumps([d.to_dict() for d in entry.defects]),
                    "labels_json": encode_labels(entry), "engine_id": entry.engine_id,
                    "latency_ms": float(entry.latency_ms), "image_path": image_path, "overlay_path": overlay_path,
                    "frame_count": 1, "rejected": int(entry.verdict is not Verdict.PASS)}
        if isinstance(entry, NotInspected):
            detail = "; ".join(t for t in (entry.detail, note) if t) or None
            return {**common, "timestamp_ns": int(entry.timestamp_ns), "source": entry.source,
                    "camera_timestamp_ns": _camera_ns(entry.frame),
                    "frame_id": int(entry.frame_id), "file": entry.file, "verdict": Verdict.NOT_INSPECTED.value,
                    "defects_json": "[]", "labels_json": "[]", "engine_id": engine_id,
                    "latency_ms": max(0.0, (time.monotonic_ns() - entry.timestamp_ns) / 1e6),
                    "reason": entry.reason.value, "detail": detail, "frame_count": 1,
                    "rejected": int(self.not_inspected_is_reject)}
        if isinstance(entry, FrameGap):
            return {**common, "timestamp_ns": int(entry.start_ns), "source": entry.source,
                    "frame_id": int(entry.first_id), "verdict": GAP, "defects_json": "[]", "labels_json": "[]",
                    "engine_id": engine_id, "latency_ms": 0.0, "reason": entry.kind.value,
                    "detail": entry.detail or note or None, "frame_count": int(entry.count),
                    "last_frame_id": int(entry.last_id), "end_timestamp_ns": int(entry.end_ns), "rejected": None}
        raise TypeError(f"a ledger entry is an InspectionResult, NotInspected or FrameGap, not {type(entry).__name__}")

    def _save_images(self, result: InspectionResult,
                     now: datetime) -> tuple[str | None, str | None, Exception | None]:
        """The raw image, its overlay (mask and boxes) and its predicted mask (:func:`mask_path_of`) as PNGs, and
        None; ``(None, None, error)`` when they cannot be written (counted in ``image_errors``; the row is still
        logged, and names the error). The image is written last: a row never names an image without its mask."""
        frame = result.frame
        folder = self.images_dir / now.strftime("%Y-%m-%d")
        stem = f"{now.strftime('%H%M%S')}{now.microsecond // 1000:03d}_{frame.frame_id}"
        overlay = mask = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ok, encoded = cv2.imencode(".png", _to_png_layout(frame.image))
            if not ok:
                raise ValueError(f"OpenCV cannot encode a {frame.image.dtype} image of shape {frame.image.shape}")
            final, n = folder / f"{stem}.png", 1
            while final.exists():
                final, n = folder / f"{stem}-{n}.png", n + 1
            try:
                drawn = overlay_mask(frame.image, result.decided, 0.5, result.defects)  # the rules' decision
                ok, encoded_overlay = cv2.imencode(".png", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                if ok:
                    overlay = final.with_name(f"{final.stem}_overlay.png")
                    write_atomically(overlay, encoded_overlay.tobytes())
            except (ValueError, cv2.error) as exc:  # an image the overlay cannot draw: the raw one still counts
                log.warning("overlay of frame %s not drawn: %s", frame.frame_id, exc)
            ok, encoded_mask = cv2.imencode(".png", _decided_png(result))  # lossless, as the rules decided it
            if not ok:
                raise ValueError(f"OpenCV cannot encode the predicted mask of frame {frame.frame_id}")
            mask = self.db_path.parent / mask_path_of(final.relative_to(self.db_path.parent).as_posix())
            write_atomically(mask, encoded_mask.tobytes())
            write_atomically(final, encoded.tobytes())
        except (OSError, ValueError, cv2.error) as exc:
            self.image_errors += 1
            for orphan in (overlay, mask):  # no row will name them without their raw image
                if orphan is not None:
                    orphan.unlink(missing_ok=True)
            log.error("reject image of frame %s not saved (%s); the inspection is still logged", frame.frame_id,
                      exc)
            return None, None, exc
        relative = self.db_path.parent
        return (final.relative_to(relative).as_posix(),
                None if overlay is None else overlay.relative_to(relative).as_posix(), None)

    # -- retention ([log] images_max_mb) -----------------------------------------------------------------------
    def _file_size(self, relative: str | None) -> int:
        if not relative:
            return 0
        try:
            return (self.db_path.parent / relative).stat().st_size
        except OSError:
            return 0

    def _count_image_bytes(self) -> int:
        total = 0
        for folder, _, names in os.walk(self.images_dir):
            for name in names:
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except OSError:
                    pass
        return total

    def prune_images(self) -> list[int]:
        """Apply ``images_max_mb`` now (:meth:`record_row` does after each saved image): the ids of the rows whose
        images were deleted, oldest first."""
        with self._lock:
            return self._prune()

    def _prune(self) -> list[int]:
        """Delete the images of the oldest rows (by id) not reviewed until the images folder holds at most
        ``images_max_mb``; the rows stay as they are. Under ``self._lock``. A file that cannot be deleted or a
        ledger that cannot be read is logged and left for the next time: retention never stops the line."""
        bound = self.images_max_mb * 1e6
        if bound <= 0:
            return []
        if self._images_bytes is None:
            self._images_bytes = self._count_image_bytes()
        if self._images_bytes <= bound:
            return []
        pruned: list[int] = []
        try:
            candidates = self._connection().execute(
                "SELECT id, image_path, overlay_path FROM inspections WHERE id > ? AND image_path IS NOT NULL "
                "AND id NOT IN (SELECT inspection_id FROM reviews) ORDER BY id", (self._pruned_through,)).fetchall()
        except sqlite3.Error as exc:
            log.warning("reject log: images not pruned this time (%s)", exc)
            return []
        for row_id, image_path, overlay_path in candidates:
            if self._images_bytes <= bound:
                break
            for relative in _image_files({"image_path": image_path, "overlay_path": overlay_path}):
                if not relative:
                    continue
                path = self.db_path.parent / relative
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("reject log: image %s not pruned (%s)", path, exc)
                    continue
                self._images_bytes -= size
            pruned.append(int(row_id))
            self._pruned_through = int(row_id)
        if pruned:
            log.info("reject log: images of %d row(s) pruned (rows %d to %d) to keep %s under [log] images_max_mb = "
                     "%g; the rows stay", len(pruned), pruned[0], pruned[-1], self.images_dir, self.images_max_mb)
        if self._images_bytes > bound and not self._over_bound_warned:
            self._over_bound_warned = True
            log.warning("reject log: %s holds %.1f MB, over [log] images_max_mb = %g, and nothing more can be pruned "
                        "(reviewed rows' images are kept; files no row names are not touched)", self.images_dir,
                        self._images_bytes / 1e6, self.images_max_mb)
        return pruned

    # -- the run and its in-flight journal (station.journal) ---------------------------------------------------
    def start_run(self, pid: int | None = None) -> None:
        """Record this run in ``station_runs`` (PID, host, start) and open the in-flight journal: from here on
        :meth:`note_acquired` keeps every acquired part on record until its row commits, and :meth:`close` marks the
        run's clean end. A run found without one at the next start ended uncleanly (:func:`station.journal.recover`).
        """
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(journal.RUN_BEGIN, (self.run_id, self.station_id, pid or os.getpid(),
                                                 socket.gethostname(), format_utc(_utc_now())))
                conn.execute("COMMIT")
                # The journal's own connection: the acquisition thread waits at most for the row commit in progress
                # (the write gate), never for a FAIL's images. synchronous=NORMAL: no fsync per entry; a kill keeps
                # it (it is in the OS's cache when the INSERT returns), the next row's commit (FULL) fsyncs the WAL.
                entries = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False,
                                          timeout=self.busy_timeout_s)
                entries.execute("PRAGMA synchronous=NORMAL")
                entries.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints stay with the row writer, off this thread
            except sqlite3.Error as exc:
                raise _write_failed(conn, self.db_path, exc, self.busy_timeout_s,
                                    "free disk space or make the file writable, then start the station again") from None
            self._journal = entries  # set: a run is open (close() marks its clean end)

    def note_acquired(self, frame: Frame, judge: ActiveJudge | None = None) -> None:
        """Journal an acquired part, with the ``judge`` active at its acquisition (its ``interrupted`` row, should
        the run be killed, names it), before it is queued for inspection (the acquisition thread); its entry is deleted
        in the transaction that commits its row. No-op before :meth:`start_run`. Raises :class:`LedgerError` when the
        entry cannot be written: the line stops, as on a row."""
        if self._journal is None:
            return
        values = (self.run_id, self.station_id, int(frame.frame_id), frame.source, frame.file,
                  int(frame.timestamp_ns), _camera_ns(frame), format_utc(_utc_now()), *_judged_by(judge),
                  *frame.identity.values())
        with self._journal_lock, self._write_gate:
            entries = self._journal  # read again under the lock: close() may have closed it meanwhile
            if entries is None:
                return
            try:
                entries.execute(journal.JOURNAL_INSERT, values)
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot write to the reject log {self.db_path} (the in-flight journal): "
                                  f"{_why(exc, self.busy_timeout_s)} ({exc}); free disk space, make the file "
                                  "writable or stop the program locking it, then start the station again") from None

    # -- QA's reviews (schema 6) ---------------------------------------------------------------------------
    def add_reviews(self, marks: list[tuple[int, str]], reviewer: str, note: str | None = None) -> list[dict[str, Any]]:
        """Record one review per ``(row id, mark)`` (``mark`` one of :data:`REVIEW_MARKS`) by ``reviewer``, all in one
        transaction, and return them as :func:`fetch_reviews` reads them. The rows reviewed are not changed. Raises
        :class:`RejectLogError` (nothing recorded) when a row id is not in the ledger or names a GAP row (no part),
        or a mark or the reviewer is not allowed; :class:`LedgerError` when the file cannot be written."""
        if not reviewer.strip():
            raise RejectLogError("the reviewer's name is empty; give --by NAME")
        for row_id, mark in marks:
            if mark not in REVIEW_MARKS:
                raise RejectLogError(f"row {row_id}: {mark!r} is not a review; use good (the part is good) or "
                                     "defect (the part is defective)")
        with self._lock:
            conn = self._connection()
            now = format_utc(_utc_now())
            try:
                with self._write_gate:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        ids = []
                        for row_id, mark in marks:
                            found = conn.execute("SELECT verdict FROM inspections WHERE id = ?", (row_id,)).fetchone()
                            if found is None:
                                last = conn.execute("SELECT MAX(id) FROM inspections").fetchone()[0]
                                raise RejectLogError(f"row {row_id} is not in {self.db_path} (its rows are 1 to "
                                                     f"{last or 0}); nothing was recorded")
                            if found[0] == GAP:
                                raise RejectLogError(f"row {row_id} is a GAP row (frames the source lost, no part "
                                                     "to review); nothing was recorded")
                            cursor = conn.execute("INSERT INTO reviews (inspection_id, time_utc, reviewer, mark, note) "
                                                  "VALUES (?, ?, ?, ?, ?)", (row_id, now, reviewer, mark, note or None))
                            ids.append(int(cursor.lastrowid))
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
            except sqlite3.Error as exc:
                raise _write_failed(conn, self.db_path, exc, self.busy_timeout_s, "free disk space, make the file "
                                    "writable or stop the program locking it, then review again",
                                    what="a review") from None
            wanted = set(ids)
            return [r for r in fetch_reviews(conn) if r["id"] in wanted]

    # -- reading ---------------------------------------------------------------------------------------------
    def query(self, since: str | datetime | None = None, until: str | datetime | None = None,
              verdict: str = "all", **filters: Any) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name, oldest first; times as in :func:`parse_time`; ``filters``: those of
        :func:`row_filter` (``station``, ``part_id``, ``meas_id``, ``product_id``)."""
        with self._lock:
            return _fetch(self._connection(), since, until, verdict, **filters)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (the line's logging thread closes its log when the line ends)."""
        return self._conn is None

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close; safe to call twice."""
        with self._lock:
            if self._conn is None:
                return
            with self._journal_lock:
                entries, self._journal = self._journal, None
                if entries is not None:
                    entries.close()
            try:
                if entries is not None:  # a run was open: its clean end, the next start finds nothing to recover
                    try:
                        self._conn.execute(journal.RUN_END, (format_utc(_utc_now()), self.run_id))
                    except sqlite3.Error as exc:  # the next start reports this run as an unclean end
                        log.warning("reject log: the run's end could not be recorded: %s", exc)
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # a reader holding the WAL, or a full disk: checkpointed next time
                log.warning("reject log checkpoint skipped: %s", exc)
            finally:
                self._conn.close()
                self._conn = None
                lock, self.lock = self.lock, None
                if lock is not None:
                    lock.release()


def _image_files(row: dict[str, Any]) -> list[str]:
    """The files a row's saved images are, relative to the database's folder: overlay, predicted mask, image (the
    image last: retention deletes in this order, so a file is never left that only the image's name leads to)."""
    image = row.get("image_path")
    return [p for p in (row.get("overlay_path"), mask_path_of(image) if image else None, image) if p]


def _judged_by(judge: ActiveJudge | None) -> tuple[str | None, str | None, str]:
    """``(recipe, calibration, engine_id)`` of a row recorded under ``judge`` (none: ``(None, None, "")``)."""
    return (None, None, "") if judge is None else (judge.recipe, judge.calibration, judge.engine_id)


def open_readonly(db_path: Path) -> sqlite3.Connection:
    """A read-only connection to a reject log of any schema version (for export and tools)."""
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


def fetch_rows(db_path: str | Path, since: str | datetime | None = None, until: str | datetime | None = None,
               verdict: str = "all", **filters: Any) -> list[dict[str, Any]]:
    """The matching rows of the log at ``db_path``, read-only (the file is not upgraded); ``filters``: those of
    :func:`row_filter` (``station``, ``part_id``, ``meas_id``, ``product_id``). A file older than schema 5 has no
    identity: a filter on it matches none of its rows."""
    row_filter(since, until, verdict, **filters)  # check the filters before touching any file
    conn = open_readonly(Path(db_path))
    try:
        return _fetch(conn, since, until, verdict, **filters)
    except sqlite3.Error as exc:
        raise RejectLogError(f"cannot read {db_path}: {exc}") from None
    finally:
        conn.close()
