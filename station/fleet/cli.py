"""``station forward`` and ``station fleet init|add-station|report`` (docs/FLEET.md).

Examples::

    station fleet init --to postgresql://admin@db.factory/fleet --station-user line3=line-3 --qa-user qa
    station fleet add-station --to postgresql://admin@db.factory/fleet line4 --station-id line-4
    PGPASSWORD=... station forward --db station-data/rejects.db --to postgresql://line3@db.factory/fleet
    station forward --db station-data/rejects.db --to postgresql://line3@db.factory/fleet --once
    station forward --db station-data/rejects.db --to postgresql://line3@db.factory/fleet --status --json
    station fleet report --to postgresql://qa@db.factory/fleet --since 2024-05-01 --by shift --tz Europe/Berlin
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
from station.fleet.central import (FleetError, add_station, apply_migrations, check_url, parse_station_user,
                                   policy_name, station_logins)
from station.rejectlog import IDENTITY_FILTERS, check_times

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
                    "never loses nor duplicates a row. QA's reviews (station review) follow the rows they name, kept the same way "
                    "(station, review id). Runs until stopped (SIGTERM, Ctrl-C), retrying with back-off "
                    "while the server is away; when there is no ledger at --db yet, it says so and waits for the "
                    "station to create it, so it may start before the station. --once ships what is there and "
                    "exits.", 100),
        epilog=textwrap.fill("Exit status: 0 done (or stopped by a signal, also while waiting for the ledger), 1 the "
                             "server cannot be reached or refused the rows (--once), 2 bad arguments, a file at --db "
                             "that is not a ledger, or no ledger at --db with --once or --status.", 100)
               + "\n\nExamples:"
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

    fleet = sub.add_parser("fleet", help="set up and query the fleet database (init, add-station, report)")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    init = fleet_sub.add_parser(
        "init", help="create or upgrade the fleet schema (versioned migrations) and its roles",
        description="Apply the shipped SQL migrations (station/fleet/migrations) that the database has not seen "
                    "(table schema_migrations): the parts table partitioned by month with its indexes, the role "
                    "fleet_station (may only INSERT, each login only its own station ids: row-level security) and "
                    "fleet_qa (may only SELECT). Safe to run again. The user needs CREATE on the database and "
                    "CREATEROLE.")
    init.add_argument("--to", required=True, metavar="URL", help=_URL_HELP)
    init.add_argument("--station-user", action="append", default=[], metavar="NAME[=ID,...]",
                      help="a login role for a station: created without a password when missing (set one with "
                           "ALTER ROLE ... PASSWORD, or use certificates), granted fleet_station, and allowed to "
                           "write only the rows of the station ids after = (default: NAME; PREFIX* for every id "
                           "that starts so); repeat for more (as station fleet add-station)")
    init.add_argument("--qa-user", action="append", default=[], metavar="NAME",
                      help="a login role for QA, granted fleet_qa; repeat for more")
    init.add_argument("--months-back", type=int, metavar="N",
                      help="a station may open a month of parts from N months before the server's month on "
                           "(default 12, kept in fleet_settings; older months an admin creates)")
    init.set_defaults(func=run_init)

    add = fleet_sub.add_parser(
        "add-station", help="let a station login write its own station's rows (row-level security policy)",
        description="Create the login LOGIN when missing (no password), grant it fleet_station, and give it its "
                    "own row-level security policy on parts: it may insert only rows whose station_id is one of "
                    "the --station-id values, never another station's. Run again to change the ids. The user of "
                    "--to needs CREATEROLE and must own parts (the admin who ran station fleet init).")
    add.add_argument("login", metavar="LOGIN", help="the station's login role (the user in its forwarder's URL)")
    add.add_argument("--to", required=True, metavar="URL", help=_URL_HELP)
    add.add_argument("--station-id", action="append", default=[], metavar="ID",
                     help="a station id this login writes ([station] id of the station; default: LOGIN); "
                          "PREFIX* allows every id that starts so; repeat for more")
    add.set_defaults(func=run_add_station)

    report = fleet_sub.add_parser(
        "report", help="yield, rejects by class and not-inspected counts across stations",
        description="Yield (PASS over PASS + FAIL + NOT_INSPECTED), fails, not-inspected parts, rejects and lost "
                    "frames per station, day, or shift; or FAIL parts by defect class and NOT_INSPECTED parts by "
                    "reason (--by class). Days and shifts are in --tz (UTC by default), with daylight saving: a "
                    "shift or day spanning a change is an hour shorter or longer (column hours).")
    report.add_argument("--to", required=True, metavar="URL", help=_URL_HELP)
    report.add_argument("--since", required=True, metavar="ISO",
                        help="rows at or after this time (YYYY-MM-DD...; without an offset, in --tz)")
    report.add_argument("--until", metavar="ISO",
                        help="rows at or before this time (a bare date: that whole day; without an offset, in --tz)")
    report.add_argument("--by", default="station", choices=["station", "day", "shift", "class"],
                        help="group by (default: station)")
    report.add_argument("--station", metavar="ID", help="only this station")
    report.add_argument("--product-id", metavar="ID", help="only parts of this product (the PLC's ProductId)")
    report.add_argument("--part-id", metavar="ID", help="only rows of this part (the PLC's PartId, else the "
                                                        "source's part id)")
    report.add_argument("--meas-id", metavar="ID", help="only rows of this measurement (the PLC's MeasId)")
    report.add_argument("--shifts", default="6,14,22", metavar="H,H,...",
                        help="hours (local, in --tz) at which shifts start, for --by shift (default %(default)s)")
    report.add_argument("--tz", default="UTC", metavar="ZONE",
                        help="the plant's time zone (IANA name, e.g. Europe/Berlin) for days, shifts and times "
                             "without an offset (default %(default)s)")
    report.add_argument("--format", default="table", choices=["table", "csv", "json", "png"],
                        help="a text table (default), CSV, JSON or a PNG bar chart (needs --out)")
    report.add_argument("--out", metavar="FILE", help="write here (default: standard output)")
    report.set_defaults(func=run_report)


def _error(prog: str, exc: Exception) -> None:
    print(f"{prog}: error: {exc}", file=sys.stderr)


def run_forward(args: argparse.Namespace) -> int:
    """``station forward``; returns the exit status."""
    from station.fleet.forwarder import ledger_ready, wait_for_ledger

    prog = "station forward"
    try:
        check_url(args.to)
    except FleetError as exc:
        _error(prog, exc)
        return EXIT_USAGE
    stop = threading.Event()
    if args.status or args.once:
        if not Path(args.db).is_file():
            _error(prog, f"no ledger at {args.db}; pass --db with the database the station writes ([log] db)")
            return EXIT_USAGE
        return _forward(prog, args, stop)
    # a service: runs until SIGTERM or Ctrl-C, and waits for a ledger that a station has not created yet
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            ready = ledger_ready(args.db)
        except LedgerError as exc:
            _error(prog, exc)
            return EXIT_USAGE
        if not ready:
            print(f"{prog}: waiting for the ledger at {Path(args.db).absolute()} (the station creates it when it "
                  "first runs; stop with SIGTERM or Ctrl-C)", file=sys.stderr, flush=True)
            try:
                if not wait_for_ledger(args.db, stop, max(0.05, args.interval)):
                    print(f"{prog}: stopped while waiting for the ledger at {Path(args.db).absolute()}; "
                          "0 rows sent", file=sys.stderr)
                    if args.json:
                        print(json.dumps({"db": str(args.db), "ledger": False, "sent": 0, "inserted": 0}, indent=1))
                    return EXIT_OK
            except LedgerError as exc:
                _error(prog, exc)
                return EXIT_USAGE
            print(f"{prog}: the ledger at {Path(args.db).absolute()} appeared; forwarding", file=sys.stderr,
                  flush=True)
        return _forward(prog, args, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _forward(prog: str, args: argparse.Namespace, stop: threading.Event) -> int:
    """``station forward`` once its ledger is there: ``--status``, ``--once``, or until ``stop`` is set."""
    from station.fleet.forwarder import Forwarder

    try:
        forwarder = Forwarder(args.db, args.to, station_id=args.station, batch=args.batch, images_dir=args.images)
    except (FleetError, LedgerError) as exc:
        _error(prog, exc)
        return EXIT_USAGE
    try:
        if args.status:
            status = forwarder.status()
            for key in ("connected", "sent", "inserted", "last_error", "reviews_sent", "reviews_inserted"):
                status.pop(key)
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
            forwarder.run(stop, interval_s=args.interval, max_backoff_s=args.max_backoff)
        status = forwarder.status()
        if args.json:
            print(json.dumps(status, indent=1))
        else:
            print(f"{prog}: {status['sent']} rows sent to {status['to']} ({status['inserted']} new), "
                  f"{status['reviews_sent']} reviews ({status['reviews_inserted']} new); "
                  f"{status['lag_rows']} rows behind", file=sys.stderr)
        return EXIT_OK
    finally:
        forwarder.close()


def run_init(args: argparse.Namespace) -> int:
    """``station fleet init``; returns the exit status."""
    prog = "station fleet init"
    try:
        check_url(args.to)
        stations = [parse_station_user(u) for u in args.station_user]
        if args.months_back is not None and args.months_back < 0:
            raise FleetError(f"--months-back {args.months_back} is not allowed; use 0 (this month only) or more")
    except FleetError as exc:
        _error(prog, exc)
        return EXIT_USAGE
    try:
        applied = apply_migrations(args.to, stations, tuple(args.qa_user), args.months_back)
        logins = station_logins(args.to)
    except FleetError as exc:
        _error(prog, exc)
        return EXIT_FAILED
    print(f"{prog}: {'applied ' + ', '.join(applied) if applied else 'schema already up to date'}"
          + "".join(f"; {u} may insert the rows of {', '.join(ids)} (fleet_station)" for u, ids in stations)
          + "".join(f"; {u} may read (fleet_qa)" for u in args.qa_user)
          + (f"; stations open months from {args.months_back} months back" if args.months_back is not None else ""),
          file=sys.stderr)
    for login in (m for m, policy in logins.items() if policy is None):
        print(f"{prog}: warning: {login} is in fleet_station but has no policy, so it may insert nothing; allow its "
              f"station ids with station fleet add-station --to URL {login} --station-id ID", file=sys.stderr)
    return EXIT_OK


def run_add_station(args: argparse.Namespace) -> int:
    """``station fleet add-station``; returns the exit status."""
    prog = "station fleet add-station"
    ids = tuple(args.station_id) or (args.login,)
    try:
        check_url(args.to)
        parse_station_user(f"{args.login}={','.join(ids)}")
    except FleetError as exc:
        _error(prog, exc)
        return EXIT_USAGE
    try:
        add_station(args.to, args.login, ids)
    except FleetError as exc:
        _error(prog, exc)
        return EXIT_FAILED
    print(f"{prog}: {args.login} may insert the rows of station {', '.join(ids)} and no others (fleet_station, "
          f"policy \"{policy_name(args.login)}\" on parts)", file=sys.stderr)
    return EXIT_OK


def run_report(args: argparse.Namespace) -> int:
    """``station fleet report``; returns the exit status."""
    from station.fleet.report import fleet_report, parse_shifts, parse_zone, render

    prog = "station fleet report"
    try:
        check_url(args.to)
        shifts = parse_shifts(args.shifts)
        zone = parse_zone(args.tz)
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
        rows = fleet_report(args.to, args.since, args.until, args.by, args.station, shifts, zone,
                            **{key: getattr(args, key, None) for key in IDENTITY_FILTERS})
        text = render(rows, args.format, args.out, title=f"fleet by {args.by} since {args.since} ({args.tz})")
    except FleetError as exc:
        _error(prog, exc)
        return EXIT_FAILED
    if text is not None:
        sys.stdout.write(text)
    return EXIT_OK
