"""``station export``: the part ledger (reject log) as CSV or JSON for QA, one row per part or one per defect.

For example::

    export("station-data/rejects.db", "csv", "fails.csv", verdict="fail")
    export("station-data/rejects.db", "csv", "defects.csv", per_defect=True, absolute_paths=True)
    export("postgresql://qa@db.factory/fleet", "csv", "line3.csv", station="line-3")
    export("station-data/rejects.db", "json", "-", part_id="P-1")     # the part with serial P-1
    export("station-data/rejects.db", "csv", "promotions.csv", promotions=True)  # which weights went on, by whom

``--db postgresql://...`` reads the fleet database (docs/FLEET.md) instead of a station's log: the same columns
(``id`` is the station's row id), then the central ones (image size and SHA-256, where a copy went, when forwarded).

The log may be exported while the station writes it (WAL); an older file is read as it is, never upgraded.
"""
from __future__ import annotations

import argparse
import csv
import enum
import io
import json
import sqlite3
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from station.errors import RejectLogError, StationError
from station.rejectlog import (COLUMNS, IDENTITY_FILTERS, VerdictFilter, check_times, decode_labels, fetch_reviews,
                               fetch_rows, open_readonly, review_finding, row_filter, write_atomically)
from station.shadow_report import fetch_promotions
from station.shadow_tables import PROMOTION_COLUMNS

#: The columns of ``--per-defect``: the part's own columns, then the defect's.
PART_COLUMNS = ("id", "time_utc", "station_id", "run_id", "part_id", "meas_id", "product_id", "job_id", "source",
                "frame_id", "file", "verdict", "engine_id", "recipe", "calibration", "image_path", "overlay_path")
DEFECT_COLUMNS = ("defect", "label", "x", "y", "width", "height", "area_px", "centroid_x", "centroid_y", "mean_score",
                  "max_score", "area_mm2", "width_mm", "height_mm")

#: The columns of ``--reviews``, after a row's own: its latest review (``station review``; empty when none) and how
#: many reviews it has. ``review_finding``: false reject, escape, confirmed or not inspected.
REVIEW_EXPORT_COLUMNS = ("review_mark", "review_finding", "review_by", "review_time_utc", "review_note",
                         "review_count")


class ExportFormat(str, enum.Enum):
    CSV = "csv"
    JSON = "json"


def _absolute(rows: list[dict[str, Any]], db_path: Path) -> None:
    base = db_path.resolve().parent
    for row in rows:
        for key in ("image_path", "overlay_path"):
            if row.get(key):
                row[key] = str(base / row[key])


def defect_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per defect of the given part rows (``PART_COLUMNS`` + ``DEFECT_COLUMNS``); parts without defects
    give none. ``defect`` numbers the defects of a part from 1; rows given their review (:func:`add_reviews`) pass
    its :data:`REVIEW_EXPORT_COLUMNS` on."""
    out = []
    for row in rows:
        for n, d in enumerate(json.loads(row["defects_json"] or "[]"), start=1):
            x, y, w, h = (d.get("bbox") or [None] * 4)[:4]
            cx, cy = (d.get("centroid") or [None, None])[:2]
            wmm, hmm = (d.get("size_mm") or [None, None])[:2]
            out.append({**{k: row.get(k) for k in PART_COLUMNS}, "defect": n, "label": d.get("label"), "x": x, "y": y,
                        "width": w, "height": h, "area_px": d.get("area_px"), "centroid_x": cx, "centroid_y": cy,
                        "mean_score": d.get("mean_score"), "max_score": d.get("max_score"),
                        "area_mm2": d.get("area_mm2"), "width_mm": wmm, "height_mm": hmm,
                        **{k: row[k] for k in REVIEW_EXPORT_COLUMNS if k in row}})
    return out


def review_key(row: dict[str, Any], fleet: bool) -> Any:
    """What names a part among the reviews: its row id in a station's log; station, run and row id in the fleet."""
    return (row.get("station_id"), row.get("run_id") or None, row["id"]) if fleet else row["id"]


def add_reviews(rows: list[dict[str, Any]], db_path: str | Path) -> dict[Any, list[dict[str, Any]]]:
    """Give each row the :data:`REVIEW_EXPORT_COLUMNS` of its latest review; return every row's reviews, oldest
    first, by :func:`review_key` (the JSON export's ``reviews``). ``db_path``: a station's log, or the fleet
    database's URL (the reviews its forwarders sent, migration 005)."""
    fleet = is_fleet_url(db_path)
    if fleet:
        from station.fleet.central import fetch_central_reviews

        found = fetch_central_reviews(str(db_path))
        key = (lambda r: (r["station_id"], r["run_id"], r["inspection_id"]))
    else:
        conn = open_readonly(Path(db_path))
        try:
            found = fetch_reviews(conn)
        finally:
            conn.close()
        key = (lambda r: r["inspection_id"])
    by_row: dict[Any, list[dict[str, Any]]] = {}
    for review in found:
        by_row.setdefault(key(review), []).append(review)
    for row in rows:
        history = by_row.get(review_key(row, fleet), [])
        for review in history:  # as the ledger says it: what the review makes of this row's verdict
            review["finding"] = review_finding(row["verdict"], review["mark"])
        by_row[review_key(row, fleet)] = history = [
            {k: r[k] for k in ("id", "time_utc", "reviewer", "mark", "finding", "note")} for r in history]
        latest = history[-1] if history else {}
        row.update({"review_mark": latest.get("mark"), "review_finding": latest.get("finding"),
                    "review_by": latest.get("reviewer"), "review_time_utc": latest.get("time_utc"),
                    "review_note": latest.get("note"), "review_count": len(history)})
    return by_row


def is_fleet_url(db: str | Path) -> bool:
    """True when ``db`` names the fleet's PostgreSQL database rather than a station's SQLite log."""
    return str(db).startswith(("postgresql://", "postgres://"))


def promotion_rows(db_path: str | Path, since: str | datetime | None = None, until: str | datetime | None = None,
                   station: str | None = None) -> list[dict[str, Any]]:
    """The promotions recorded in the log at ``db_path`` (``station promote``, a restart with other weights, an OPC
    UA PrepareRecipe), oldest first, with ``summary`` decoded; ``since``/``until``/``station`` as for the parts (a
    bare ``until`` date includes that day)."""
    where, params = row_filter(since, until, "all", station)  # the parts' time and station semantics
    conn = open_readonly(Path(db_path))
    try:
        return fetch_promotions(conn, where, params)
    except sqlite3.Error as exc:
        raise RejectLogError(f"cannot read the promotions of {db_path}: {exc}") from None
    finally:
        conn.close()


def promotions_refused(db_path: str | Path, *, verdict: str = "all", **part_options: Any) -> str | None:
    """Why ``--promotions`` cannot run with these options (they select parts, or the fleet database has no
    promotions), or None."""
    flags = [f"--{name.replace('_', '-')}" for name, value in part_options.items() if value]
    flags += ["--verdict"] if str(getattr(verdict, "value", verdict)).lower() != "all" else []
    if not flags and not is_fleet_url(db_path):
        return None
    return ("--promotions exports the promotions of a station's log (--since, --until and --station apply); "
            + (f"drop {', '.join(flags)}: they select parts" if flags else
               "the fleet database holds no promotions: give the station's log"))


def export(db_path: str | Path, fmt: str, out_path: str | Path, since: str | datetime | None = None,
           until: str | datetime | None = None, verdict: str = "all", *, per_defect: bool = False,
           absolute_paths: bool = False, station: str | None = None, part_id: str | None = None,
           meas_id: str | None = None, product_id: str | None = None, reviews: bool = False,
           promotions: bool = False) -> int:
    """Write the matching rows to ``out_path`` (``"-"`` = stdout) as CSV or JSON; return the number written.

    CSV has one column per database column. JSON is an array of objects with the same keys, except that
    ``defects_json`` / ``labels_json`` become decoded ``defects`` / ``labels`` lists, plus ``patches`` (the
    classifier's patch grid; ``[]`` for rows without one). ``per_defect``: one row per defect instead
    (:func:`defect_rows`; the count returned is of defects). ``absolute_paths``: image paths made absolute (they are
    relative to the database's folder otherwise). ``station``: only that station's rows; ``part_id``, ``meas_id``,
    ``product_id``: only the rows of that part, measurement or product (exact match). ``db_path`` may be a
    ``postgresql://`` URL of the fleet database; its rows carry the central columns after ``COLUMNS``.
    ``reviews``: each row (and each defect row) also carries :data:`REVIEW_EXPORT_COLUMNS`, its latest review; in
    JSON each part also has ``reviews``, all its reviews oldest first (``id``, ``time_utc``, ``reviewer``, ``mark``,
    ``finding``, ``note``). From the fleet database, the reviews its forwarders sent (migration 005).
    ``promotions``: the promotions instead of the parts (:func:`promotion_rows`, columns
    :data:`~station.shadow_tables.PROMOTION_COLUMNS`; JSON has the decoded ``summary`` in place of ``summary_json``).
    """
    filters = {"station": station, "part_id": part_id, "meas_id": meas_id, "product_id": product_id}
    try:
        kind = ExportFormat(str(getattr(fmt, "value", fmt)).lower())
    except ValueError:
        raise RejectLogError(f"format {fmt!r} is not allowed; use csv or json") from None
    columns = list(COLUMNS)
    if promotions:
        refused = promotions_refused(db_path, per_defect=per_defect, reviews=reviews, absolute_paths=absolute_paths,
                                     verdict=verdict, part_id=part_id, meas_id=meas_id, product_id=product_id)
        if refused:
            raise RejectLogError(refused)
        items = promotion_rows(db_path, since, until, station)
        buffer = io.StringIO()
        if kind is ExportFormat.CSV:
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(PROMOTION_COLUMNS)
            writer.writerows([json.dumps(row["summary"]) if c == "summary_json" else row[c] for c in PROMOTION_COLUMNS]
                             for row in items)
        else:
            json.dump(items, buffer, indent=1)
            buffer.write("\n")
        return _write(buffer, out_path, len(items))
    if is_fleet_url(db_path):
        from station.fleet.central import central_columns, fetch_central

        if absolute_paths:
            raise RejectLogError("--absolute-paths needs a station's log: fleet rows hold paths on each station "
                                 "(image_copy says where --images copied them)")
        rows = fetch_central(str(db_path), since, until, verdict, **filters)
        columns = central_columns()
    else:
        rows = fetch_rows(db_path, since, until, verdict, **filters)
        if absolute_paths:
            _absolute(rows, Path(db_path))
    history: dict[Any, list[dict[str, Any]]] | None = None
    if reviews:
        history = add_reviews(rows, db_path)
        columns += REVIEW_EXPORT_COLUMNS
    buffer = io.StringIO()
    if per_defect:
        items = defect_rows(rows)
        if kind is ExportFormat.CSV:
            writer = csv.DictWriter(buffer, PART_COLUMNS + DEFECT_COLUMNS + (REVIEW_EXPORT_COLUMNS if reviews else ()),
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(items)
        else:
            json.dump(items, buffer, indent=1)
            buffer.write("\n")
        count = len(items)
    elif kind is ExportFormat.CSV:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([row[c] for c in columns] for row in rows)
        count = len(rows)
    else:
        items = []
        for row in rows:
            item = {k: v for k, v in row.items() if not k.endswith("_json")}
            item["defects"] = json.loads(row["defects_json"])
            item["labels"], item["patches"] = decode_labels(row["labels_json"])
            if history is not None:
                item["reviews"] = history.get(review_key(row, is_fleet_url(db_path)), [])
            items.append(item)
        json.dump(items, buffer, indent=1)
        buffer.write("\n")
        count = len(rows)
    return _write(buffer, out_path, count)


def _write(buffer: io.StringIO, out_path: str | Path, count: int) -> int:
    """The export to ``out_path`` (``"-"``: standard output), written whole or not at all; returns ``count``."""
    if str(out_path) == "-":
        sys.stdout.write(buffer.getvalue())
        sys.stdout.flush()
        return count
    out = Path(out_path)
    try:
        write_atomically(out if out.is_absolute() else Path.cwd() / out, buffer.getvalue().encode("utf-8"),
                         fsync=False)
    except OSError as exc:
        raise RejectLogError(f"cannot write {out}: {exc}; check the folder exists and is writable") from None
    return count


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``station export`` to ``parser`` (a sub-command parser)."""
    if parser.description is None:
        parser.description = ("Export the part ledger (reject log) as CSV or JSON: one row per part (PASS, FAIL, "
                              "NOT_INSPECTED with its reason) and per gap of lost frames, or one row per defect. "
                              "The log may be exported while the station is writing it.")
    if parser.epilog is None:
        parser.epilog = ("Times are 'YYYY-MM-DD' or full ISO 8601 ('2024-05-01T08:00', '...Z', '...+02:00'); "
                         "no zone means UTC; a bare --until date includes that whole day. Exit status: 0 done, "
                         "1 the log cannot be read or the output written, 2 bad arguments or no log at --db.")
    parser.add_argument("--db", required=True, metavar="PATH",
                        help="the reject log database (e.g. station-data/rejects.db), or the fleet database as "
                             "postgresql://USER@HOST/DB (password from PGPASSWORD or ~/.pgpass; docs/FLEET.md)")
    parser.add_argument("--format", required=True, choices=[f.value for f in ExportFormat], dest="format",
                        help="csv: one column per field; json: an array of objects with decoded defects and labels")
    parser.add_argument("--since", metavar="ISO", help="only rows at or after this time")
    parser.add_argument("--until", metavar="ISO", help="only rows at or before this time")
    parser.add_argument("--verdict", default="all", type=str.lower, choices=[v.value for v in VerdictFilter],
                        help="only these rows (default: all); rejected = FAIL plus NOT_INSPECTED parts counted as "
                             "rejects")
    parser.add_argument("--station", metavar="ID", help="only rows of this station ([station] id)")
    parser.add_argument("--part-id", metavar="ID",
                        help="only rows of this part: the PLC's PartId (serial number, DMC code), else the source's "
                             "part id (a replayed file's name, a camera's chunk value, a line-scan part's index)")
    parser.add_argument("--meas-id", metavar="ID", help="only rows of this measurement (the PLC's MeasId)")
    parser.add_argument("--product-id", metavar="ID", help="only rows of this product (the PLC's ProductId)")
    parser.add_argument("--per-defect", action="store_true",
                        help="one row per defect (the part's id, time, station, run, frame, file, image paths, then "
                             "the defect's label, box, area, centroid and scores); parts without defects give none")
    parser.add_argument("--absolute-paths", action="store_true",
                        help="image_path and overlay_path as absolute paths (default: relative to the database)")
    parser.add_argument("--reviews", action="store_true",
                        help="add each row's latest review (station review): columns review_mark (good or defect), "
                             "review_finding (false reject, escape, confirmed, not inspected), review_by, "
                             "review_time_utc, review_note, and review_count (empty and 0 when unreviewed); in JSON "
                             "each part also lists all its reviews, oldest first, as reviews; from the fleet "
                             "database too (the reviews the stations forwarded)")
    parser.add_argument("--promotions", action="store_true",
                        help="export the promotions instead of the parts: when which weights and rule went on the "
                             "line, by whom, via what (station promote, a restart with other weights, an OPC UA "
                             "PrepareRecipe), from which engine, with the shadow's evidence; --since, --until and "
                             "--station apply")
    parser.add_argument("--out", required=True, metavar="FILE", help="output file, or - for standard output")


def run_export(args: argparse.Namespace) -> int:
    """Run ``station export`` with parsed arguments; returns the exit status."""
    prog = "station export"
    fleet = is_fleet_url(args.db)
    db = args.db if fleet else Path(args.db)
    if fleet:
        from station.fleet.central import FleetError, check_url

        try:
            check_url(args.db, "--db")
        except FleetError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
    elif not db.is_file():
        print(f"{prog}: error: no reject log at {db}; pass --db with the database the station writes "
              "(the recipe's [log] db, station-data/rejects.db by default)", file=sys.stderr)
        return 2
    try:
        check_times(args.since, args.until)
    except RejectLogError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    refused = getattr(args, "promotions", False) and promotions_refused(
        args.db, verdict=args.verdict, per_defect=getattr(args, "per_defect", False),
        reviews=getattr(args, "reviews", False), absolute_paths=getattr(args, "absolute_paths", False),
        **{key: getattr(args, key, None) for key in IDENTITY_FILTERS})
    if refused:
        print(f"{prog}: error: {refused}", file=sys.stderr)
        return 2
    try:
        count = export(db, args.format, args.out, since=args.since, until=args.until, verdict=args.verdict,
                       per_defect=getattr(args, "per_defect", False),
                       absolute_paths=getattr(args, "absolute_paths", False), station=getattr(args, "station", None),
                       reviews=getattr(args, "reviews", False), promotions=getattr(args, "promotions", False),
                       **{key: getattr(args, key, None) for key in IDENTITY_FILTERS})
    except StationError as exc:  # RejectLogError, or FleetError from the fleet database
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    where = "standard output" if args.out == "-" else args.out
    what = ("promotion(s)" if getattr(args, "promotions", False) else
            "defect(s)" if getattr(args, "per_defect", False) else "row(s)")
    print(f"{prog}: {count} {what} from {db} written to {where}", file=sys.stderr)
    return 0
