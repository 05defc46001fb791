"""``station review``: QA's verdicts on the ledger's rows, recorded append-only beside them (schema 6).

For example::

    station review --db station-data/rejects.db                   # QA's window: G good part, D defect, N next...
    station review --db station-data/rejects.db --finding unreviewed --class crack --since 2026-11-01
    station review --db station-data/rejects.db --mark 12=good --mark 40=defect --by alice --note "shift B audit"
    station review --db station-data/rejects.db --list            # every review, with what it makes of the verdict
    station review --db station-data/rejects.db --list --json

Without ``--mark`` or ``--list`` it opens QA's review window (:mod:`ui.review_window`) on the ledger's rejects and
sampled passes, newest first; the filter flags set its filters.

``--mark ROW=good`` says the part of ledger row ROW is good (a false reject when the row FAILed), ``ROW=defect``
that it is defective (an escape when the row PASSed). Each mark is a new row of the ``reviews`` table
(:data:`station.rejectlog.REVIEWS_TABLE`): who (``--by``, default the OS user), when (UTC), what, an optional note.
The row reviewed is never changed; a second review of the same row is one more review, and the latest one counts
(``station export --reviews``). The marks of one command are recorded together or not at all.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from station.errors import LedgerError, RejectLogError
from station.rejectlog import (COLUMNS, REVIEW_MARKS, RejectLog, check_times, fetch_reviews, mask_path_of,
                               open_readonly)
from ui.review_records import REVIEW_CHOICES, VERDICT_CHOICES, ReviewFilters

PROG = "station review"
DESCRIPTION = ("Review the parts of a station's ledger. Without --mark or --list: QA's review window, paging through "
               "the rejects and the sampled passes (rows with a saved image), newest first, with the image, the "
               "overlay, the verdict and the defects; keys G (good part) and D (defect) record a review and show the "
               "next part, arrow keys and PgUp/PgDn page, N shows the next unreviewed part, F5 reads the ledger "
               "again; the filters (--since, --until, --class, --station, --part-id, --verdict, --finding) are also "
               "fields of the window. For scripts: --mark ROW=good says the part of row ROW "
               "(the id column of station export) is good: a false reject when the station FAILed it. "
               "--mark ROW=defect says it is defective: an escape when the station PASSed it. Each review is a new, "
               "append-only row of the ledger's reviews table, naming the row, who (--by), when (UTC) and what was "
               "said (and --note); the row reviewed is never changed, and a later review of the same row is one more "
               "review (the latest counts). The reviews may be recorded while the station writes the log.")
EPILOG = ("Examples: station review --db station-data/rejects.db --finding unreviewed; "
          "station review --db station-data/rejects.db --mark 12=good --mark 40=defect --by alice; "
          "station review --db station-data/rejects.db --list --json. Exit status: 0 done, 1 the log cannot be "
          "written, 2 bad arguments (a row that is not in the log, a GAP row, a mark other than good or defect, no "
          "log at --db, no display for the window): said in one line, and nothing is recorded.")
#: The window's review filter on the command line (--finding) and in the window.
FINDING_FLAGS = {choice.replace(" ", "-"): choice for choice in REVIEW_CHOICES}


def default_reviewer() -> str:
    """The OS user running the command (its uid when it has no name)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


def parse_mark(text: str) -> tuple[int, str]:
    """``"12=good"`` → ``(12, "good")``; :class:`RejectLogError` for anything else."""
    row, sep, mark = text.partition("=")
    mark = mark.strip().lower()
    if not sep or not row.strip().isdigit() or mark not in REVIEW_MARKS:
        raise RejectLogError(f"--mark {text!r}: use ROW=good or ROW=defect, ROW the ledger row's id "
                             "(e.g. --mark 12=good)")
    return int(row), mark


def reviewed_rows(db_path: str | Path) -> list[dict[str, Any]]:
    """Every ledger row of ``db_path`` that has a review, by row id, read-only (the file is not upgraded): the row's
    columns, ``review`` (its latest review as :func:`~station.rejectlog.fetch_reviews` reads it: the latest counts),
    ``review_count``, and ``image_file`` / ``mask_file``: the absolute paths its ``image_path`` and predicted mask
    (:func:`~station.rejectlog.mask_path_of`) name, None when it names no image (whether they still exist is the
    caller's to see). :class:`RejectLogError` when the file is missing or not a ledger."""
    db = Path(db_path)
    try:
        with db.open("rb") as fh:
            sqlite = fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        sqlite = True  # open_readonly names what is wrong
    if not sqlite:
        raise RejectLogError(f"{db} is not a station ledger (not an SQLite file); pass the database the station "
                             "writes (the recipe's [log] db, station-data/rejects.db by default)")
    conn = open_readonly(db)
    try:
        history: dict[int, list[dict[str, Any]]] = {}
        for review in fetch_reviews(conn):
            history.setdefault(int(review["inspection_id"]), []).append(review)
        have = {row[1] for row in conn.execute("PRAGMA table_info(inspections)")}
        columns = [c for c in COLUMNS if c in have]
        rows = []
        ids = sorted(history)
        for start in range(0, len(ids), 500):  # SQLite's bound on parameters
            chunk = ids[start:start + 500]
            rows += [dict(zip(columns, values)) for values in conn.execute(
                f"SELECT {', '.join(columns)} FROM inspections WHERE id IN ({', '.join('?' * len(chunk))}) "
                "ORDER BY id", chunk)]
    except sqlite3.Error as exc:
        raise RejectLogError(f"cannot read {db}: {exc}") from None
    finally:
        conn.close()
    folder = db.resolve().parent
    for row in rows:
        reviews = history[int(row["id"])]
        row.update({"review": reviews[-1], "review_count": len(reviews)})
        image = row.get("image_path")
        row["image_file"] = str(folder / image) if image else None
        row["mask_file"] = str(folder / mask_path_of(image)) if image else None
    return sorted(rows, key=lambda r: r["id"])


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``station review`` to ``parser`` (a sub-command parser)."""
    parser.add_argument("--db", required=True, metavar="PATH",
                        help="the station's ledger (reject log), e.g. station-data/rejects.db")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--mark", action="append", metavar="ROW=good|defect",
                      help="review ledger row ROW: good (the part is good) or defect (the part is defective); "
                           "repeat for more rows")
    what.add_argument("--list", action="store_true",
                      help="list every review, oldest first: its id, the row, the row's verdict, the mark, what it "
                           "makes of the verdict (false reject, escape, confirmed, not inspected), who, when, note")
    parser.add_argument("--by", metavar="NAME", help="who reviews (default: the OS user)")
    parser.add_argument("--note", metavar="TEXT", help="a note recorded with each --mark")
    parser.add_argument("--json", action="store_true", help="--list: a JSON array of objects instead of text")
    window = parser.add_argument_group("the review window's filters (without --mark or --list)")
    window.add_argument("--since", metavar="TIME", help="rows logged at or after TIME (YYYY-MM-DD or ISO 8601; "
                                                        "no zone: UTC)")
    window.add_argument("--until", metavar="TIME", help="rows logged up to TIME (a bare date: to its end)")
    window.add_argument("--class", dest="defect_class", metavar="NAME",
                        help="rows with a defect of this class (a defect's label, or a classifier label)")
    window.add_argument("--station", metavar="ID", help="rows of this station id")
    window.add_argument("--part-id", metavar="ID", help="the rows of this part id")
    window.add_argument("--verdict", choices=VERDICT_CHOICES, default="all",
                        help="rows with this verdict (default: all: rejects and sampled passes)")
    window.add_argument("--finding", choices=tuple(FINDING_FLAGS), default="any",
                        help="by their latest review: unreviewed, reviewed, false-reject, escape, confirmed "
                             "(default: any)")


def _print_list(db: Path, as_json: bool) -> None:
    conn = open_readonly(db)
    try:
        reviews = fetch_reviews(conn)
    finally:
        conn.close()
    if as_json:
        json.dump(reviews, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    if not reviews:
        print(f"no reviews in {db}")
        return
    print(f"{'review':>6}  {'row':>6}  {'verdict':<13}  {'mark':<6}  {'finding':<13}  {'by':<12}  {'time (UTC)':<24}  note")
    for r in reviews:
        print(f"{r['id']:>6}  {r['inspection_id']:>6}  {r['verdict']:<13}  {r['mark']:<6}  {r['finding']:<13}  "
              f"{r['reviewer']:<12}  {r['time_utc']:<24}  {r['note'] or ''}".rstrip())


def run_review(args: argparse.Namespace) -> int:
    """Run ``station review`` with parsed arguments; returns the exit status (a :class:`LedgerError` is left to
    the caller: exit 1)."""
    db = Path(args.db)
    try:
        if not db.is_file():
            raise RejectLogError(f"no ledger at {db}; pass --db with the database the station writes (the recipe's "
                                 "[log] db, station-data/rejects.db by default)")
        if not args.mark and not args.list:
            return _open_window(db, args)
        used = [flag for flag, value in (("--since", args.since), ("--until", args.until),
                                         ("--class", args.defect_class), ("--station", args.station),
                                         ("--part-id", args.part_id)) if value is not None]
        used += [flag for flag, value, default in (("--verdict", args.verdict, "all"),
                                                   ("--finding", args.finding, "any")) if value != default]
        if used:
            raise RejectLogError(f"{', '.join(used)} filter the review window; leave them out with --mark or --list")
        if args.list:
            if args.by is not None or args.note is not None:
                raise RejectLogError("--by and --note go with --mark, not --list")
            _print_list(db, args.json)
            return 0
        if args.json:
            raise RejectLogError("--json goes with --list")
        marks = [parse_mark(text) for text in args.mark]
        reviewer = default_reviewer() if args.by is None else args.by
        open_readonly(db).close()  # a ledger, not some other file: refused before it is upgraded or written
        with RejectLog(db, save_images=False) as ledger:
            recorded = ledger.add_reviews(marks, reviewer, args.note)
    except LedgerError:
        raise  # the log cannot be written: station's main says so, exit 1
    except RejectLogError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for r in recorded:
        print(f"review {r['id']}: row {r['inspection_id']} ({r['verdict']}) marked {r['mark']} by {r['reviewer']}: "
              f"{r['finding']}")
    return 0


def window_filters(args: argparse.Namespace) -> ReviewFilters:
    """The review window's filters from the command line (:class:`RejectLogError` for a time that is not one)."""
    check_times(args.since, args.until)
    return ReviewFilters(since=args.since, until=args.until, defect_class=args.defect_class, station=args.station,
                         part_id=args.part_id, verdict=args.verdict, review=FINDING_FLAGS[args.finding])


def _open_window(db: Path, args: argparse.Namespace) -> int:
    """QA's review window on ``db`` until it closes (exit 2 where no window can be shown)."""
    from ui.app import display_available

    if args.note is not None or args.json:
        raise RejectLogError("--note and --json go with --mark and --list, not the review window")
    filters = window_filters(args)
    if not display_available():
        raise RejectLogError("no display here for the review window (no DISPLAY or WAYLAND_DISPLAY, QT_QPA_PLATFORM "
                             "offscreen, or PyQt6 missing); record reviews with --mark ROW=good|defect and read "
                             "them with --list")
    from station.review_ledger import LedgerReviewSource
    from ui.review_window import run_review_window

    with LedgerReviewSource(db, default_reviewer() if args.by is None else args.by) as source:
        return run_review_window(source, filters)
