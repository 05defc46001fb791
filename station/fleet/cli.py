"""``station forward`` and ``station fleet init|report`` (docs/FLEET.md).

Examples::

    station fleet init --to postgresql://admin@db.factory/fleet --station-user line3 --qa-user qa
    PGPASSWORD=... station forward --db station-data/rejects.db --to postgresql://line3@db.factory/fleet
    station forward --db station-data/rejects.db --to postgresql://line3@db.factory/fleet --once
    station forward --db station-data/rejects.db --to postgresql://line3@db.factory/fleet --status --json
    station fleet report --to postgresql://qa@db.factory/fleet --since 2024-05-01 --by shift
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap
import threading
from pathlib import Path

from station.errors import LedgerError, RejectLogError
from station.fleet.central import FleetError, apply_migrations, check_url
from station.rejectlog import check_times

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_URL_HELP = "the fleet database, postgresql://USER@HOST[:PORT]/DB; the password comes from PGPASSWORD or ~/.pgpass"


def add_fleet_commands(sub: argparse._SubParsersAction) -> None:
    """Add the fleet's subcommands to ``station``'s parser."""
    fwd = sub.add_parser(
        "forward", help="forward the part ledger to the fleet's PostgreSQL database",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("Ship the ledger's rows (PASS, FAIL, NOT_INSPECTED, GAP) to the fleet database in order and in "
                    "batches, one transaction each; a durable mark in the ledger file says what the server holds, "
                    "and a resent row is ignored there (station, run, row id), so a crash, an outage or a restart "
                    "never loses nor duplicates a row. Runs until stopped (SIGTERM, Ctrl-C), retrying with back-off "
                    "while the server is away; --once ships what is there and exits.", 100),
        epilog=textwrap.fill("Exit status: 0 done (or stopped by a signal), 1 the server cannot be reached or refused "
                             "the rows (--once), 2 bad arguments or no ledger at --db.", 100) + "\n\nExamples:"
               + __doc__.split("Examples::", 1)[1])
    fwd.add_argument("--db", required=True, metavar="PATH", help="the station's ledger (e.g. station-data/rejects.db)")
    fwd.add_argument("--to", required=True, metavar="URL", help=_URL_HELP)
    fwd.add_argument("--once", action="store_true", help="ship the rows there are now, then exit")
    fwd.add_argument("--status", action="store_true",
                     help="print the mark and the lag (rows and seconds behind) and exit; does not connect")
    fwd.add_argument("--json", action="store_true", help="--status or the final figures as JSON")
    fwd.add_argument("--batch", type=int, default=500, metavar="N", help="rows per transaction (default %(default)s)")
    fwd.add_argument("--images", metavar="DIR", help="also copy reject images to DIR/<station>/<path> (a shared "
                                                       "folder) and record where; they always stay on the station")
    fwd.add_argument("--station", metavar="ID", help="station id for rows written before ledgers had one "
                                                     "(default: the host name)")
    fwd.add_argument("--interval", type=float, default=1.0, metavar="S",
                     help="look for new rows every S seconds (default %(default)g)")
    fwd.add_argument("--max-backoff", type=float, default=30.0, metavar="S",
                     help="while the server is away, retry at most every S seconds (default %(default)g)")
    fwd.set_defaults(func=run_forward)

    fleet = sub.add_parser("fleet", help="set up and query the fleet database (init, report)")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    init = fleet_sub.add_parser(
        "init", help="create or upgrade the fleet schema (versioned migrations) and its roles",
        description="Apply the shipped SQL migrations (station/fleet/migrations) that the database has not seen "
                    "(table schema_migrations): the parts table partitioned by month with its indexes, the role "
                    "fleet_station (may only INSERT) and fleet_qa (may only SELECT). Safe to run again. The user "
                    "needs CREATE on the database and CREATEROLE.")
    init.add_argument("--to", required=True, metavar="URL", help=_URL_HELP)
    init.add_argument("--station-user", action="append", default=[], metavar="NAME",
                      help="a login role for a station: created without a password when missing (set one with "
                           "ALTER ROLE ... PASSWORD, or use certificates), granted fleet_station; repeat for more")
    init.add_argument("--qa-user", action="append", default=[], metavar="NAME",
                      help="a login role for QA, granted fleet_qa; repeat for more")
    init.set_defaults(func=run_init)

    report = fleet_sub.add_parser(
        "report", help="yield, rejects by class and not-inspected counts across stations",
        description="Yield (PASS over PASS + FAIL + NOT_INSPECTED), fails, not-inspected parts, rejects and lost "
                    "frames per station, day, or shift; or FAIL parts by defect class and NOT_INSPECTED parts by "
                    "reason (--by class). Times are UTC.")
    report.add_argument("--to", required=True, metavar="URL", help=_URL_HELP)
    report.add_argument("--since", required=True, metavar="ISO", help="rows at or after this time (YYYY-MM-DD...)")
    report.add_argument("--until", metavar="ISO", help="rows at or before this time (a bare date: that whole day)")
    report.add_argument("--by", default="station", choices=["station", "day", "shift", "class"],
                        help="group by (default: station)")
    report.add_argument("--station", metavar="ID", help="only this station")
    report.add_argument("--shifts", default="6,14,22", metavar="H,H,...",
                        help="UTC hours at which shifts start, for --by shift (default %(default)s)")
    report.add_argument("--format", default="table", choices=["table", "csv", "json", "png"],
                        help="a text table (default), CSV, JSON or a PNG bar chart (needs --out)")
    report.add_argument("--out", metavar="FILE", help="write here (default: standard output)")
    report.set_defaults(func=run_report)


def _error(prog: str, exc: Exception) -> None:
    print(f"{prog}: error: {exc}", file=sys.stderr)


def run_forward(args: argparse.Namespace) -> int:
    """``station forward``; returns the exit status."""
    from station.fleet.forwarder import Forwarder

    prog = "station forward"
    if not Path(args.db).is_file():
        _error(prog, f"no ledger at {args.db}; pass --db with the database the station writes ([log] db)")
        return EXIT_USAGE
    try:
        check_url(args.to)
        forwarder = Forwarder(args.db, args.to, station_id=args.station, batch=args.batch, images_dir=args.images)
    except (FleetError, LedgerError) as exc:
        _error(prog, exc)
        return EXIT_USAGE
    try:
        if args.status:
            status = forwarder.status()
            status.pop("connected"), status.pop("sent"), status.pop("inserted"), status.pop("last_error")
            if args.json:
                print(json.dumps(status, indent=1))
            else:
                print(f"{status['db']} -> {status['to']}: row {status['mark']} of {status['last_row']} forwarded; "
                      f"{status['lag_rows']} rows behind, the oldest {status['lag_seconds']:.1f} s old")
            return EXIT_OK
        if args.once:
            try:
                forwarder.forward_all()
            except FleetError as exc:
                _error(prog, exc)
                return EXIT_FAILED
        else:
            stop = threading.Event()
            previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                forwarder.run(stop, interval_s=args.interval, max_backoff_s=args.max_backoff)
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        status = forwarder.status()
        if args.json:
            print(json.dumps(status, indent=1))
        else:
            print(f"{prog}: {status['sent']} rows sent to {status['to']} ({status['inserted']} new); "
                  f"{status['lag_rows']} rows behind", file=sys.stderr)
        return EXIT_OK
    finally:
        forwarder.close()


def run_init(args: argparse.Namespace) -> int:
    """``station fleet init``; returns the exit status."""
    try:
        check_url(args.to)
    except FleetError as exc:
        _error("station fleet init", exc)
        return EXIT_USAGE
    try:
        applied = apply_migrations(args.to, tuple(args.station_user), tuple(args.qa_user))
    except FleetError as exc:
        _error("station fleet init", exc)
        return EXIT_FAILED
    print(f"station fleet init: {'applied ' + ', '.join(applied) if applied else 'schema already up to date'}"
          + "".join(f"; {u} may insert (fleet_station)" for u in args.station_user)
          + "".join(f"; {u} may read (fleet_qa)" for u in args.qa_user), file=sys.stderr)
    return EXIT_OK


def run_report(args: argparse.Namespace) -> int:
    """``station fleet report``; returns the exit status."""
    from station.fleet.report import fleet_report, parse_shifts, render

    prog = "station fleet report"
    try:
        check_url(args.to)
        shifts = parse_shifts(args.shifts)
        try:
            check_times(args.since, args.until)
        except RejectLogError as exc:
            raise FleetError(str(exc)) from None
        if args.format == "png" and not args.out:
            raise FleetError("--format png needs --out FILE.png")
    except FleetError as exc:
        _error(prog, exc)
        return EXIT_USAGE
    try:
        rows = fleet_report(args.to, args.since, args.until, args.by, args.station, shifts)
        text = render(rows, args.format, args.out, title=f"fleet by {args.by} since {args.since}")
    except FleetError as exc:
        _error(prog, exc)
        return EXIT_FAILED
    if text is not None:
        sys.stdout.write(text)
    return EXIT_OK
