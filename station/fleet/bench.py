"""A benchmark of the forwarder (not a test): throughput, lag at a steady line rate, catch-up after an outage.

    python -m station.fleet.bench --to postgresql://USER@HOST/DB --work /tmp/fleet-bench [--json]

``--to`` is a fleet database set up by ``station fleet init``, with a user that may insert the stations ``bench-*``
(``--station-user 'bench_line=bench-*'``; the figures need no SELECT). The ledgers are real SQLite logs written as
a station writes them (one committed row at a time for the steady-rate part); the figures go to docs/FLEET.md.

1. throughput: one ledger of ``--backlog`` rows forwarded in batches of 500;
2. lag: ``--stations`` stations each logging ``--rate`` parts/s for ``--seconds`` s, each with its forwarder
   thread woken by every new row (as in ``station run --fleet``); the lag in seconds is sampled every 0.5 s;
3. catch-up: each station holds the rows of a ``--outage`` s outage at ``--rate`` parts/s, then all forward at once.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from inspection_core.records import Defect, Frame, InspectionResult, Verdict
from station.fleet.forwarder import Forwarder
from station.rejectlog import COLUMNS, RejectLog, new_run_id


def _result(i: int) -> InspectionResult:
    frame = Frame(image=np.zeros((8, 8), np.uint8), frame_id=i, timestamp_ns=time.monotonic_ns(), source="bench")
    fail = i % 10 == 0
    defects = (Defect("crack", (1, 1, 2, 2), 4, (2.0, 2.0), 0.8, 0.9),) if fail else ()
    return InspectionResult(frame=frame, mask=np.zeros((8, 8), np.float32), defects=defects,
                            verdict=Verdict.FAIL if fail else Verdict.PASS, engine_id="bench", latency_ms=3.0)


def backlog_ledger(db: Path, station: str, rows: int, start: datetime, rate: float) -> Path:
    """A ledger of ``rows`` rows as a station at ``rate`` parts/s would have logged them from ``start`` (written
    in one transaction: what is measured is the forwarding, not the writing)."""
    with RejectLog(db, save_images=False, station_id=station, run_id=new_run_id()) as log:
        template = log.record_row(_result(1))
    conn = sqlite3.connect(db)
    cols = [c for c in COLUMNS if c != "id"]
    values = []
    for i in range(rows):
        moment = start + timedelta(seconds=i / rate)
        row = {**template, "frame_id": i, "verdict": "FAIL" if i % 10 == 0 else "PASS",
               "time_utc": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"}
        values.append([row[c] for c in cols])
    with conn:
        conn.execute("DELETE FROM inspections")
        conn.executemany(f"INSERT INTO inspections ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                         values)
    conn.close()
    return db


def throughput(url: str, work: Path, rows: int) -> dict[str, Any]:
    db = backlog_ledger(work / "throughput.db", "bench-throughput", rows, datetime.now(timezone.utc), 1000.0)
    f = Forwarder(db, url, batch=500)
    started = time.perf_counter()
    sent = f.forward_all()
    elapsed = time.perf_counter() - started
    f.close()
    return {"rows": sent, "seconds": round(elapsed, 2), "rows_per_s": round(sent / elapsed)}


def steady_lag(url: str, work: Path, stations: int, rate: float, seconds: float) -> dict[str, Any]:
    stop = threading.Event()
    samples: list[float] = []
    forwarders, threads, wakes = [], [], []
    logs = []
    for n in range(stations):
        db = work / f"steady-{n}.db"
        log = RejectLog(db, save_images=False, station_id=f"bench-{n}", run_id=new_run_id())
        logs.append(log)
        f, wake = Forwarder(db, url, batch=500), threading.Event()
        forwarders.append(f)
        wakes.append(wake)
        threads.append(threading.Thread(target=f.run, args=(stop, wake, 1.0), daemon=True))

    def station(n: int) -> None:
        period, due, i = 1.0 / rate, time.monotonic(), 0
        end = due + seconds
        while due < end:
            logs[n].record(_result(i))
            wakes[n].set()
            i += 1
            due += period
            time.sleep(max(0.0, due - time.monotonic()))

    writers = [threading.Thread(target=station, args=(n,)) for n in range(stations)]
    for t in threads + writers:
        t.start()
    while any(w.is_alive() for w in writers):
        time.sleep(0.5)
        samples.append(max(f.lag()[1] for f in forwarders))
    for w in writers:
        w.join()
    deadline = time.monotonic() + 30
    while any(f.lag()[0] for f in forwarders) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(5)
    sent = sum(f.sent for f in forwarders)
    for f, log in zip(forwarders, logs):
        f.close()
        log.close()
    return {"stations": stations, "rate_per_station": rate, "seconds": seconds, "rows": sent,
            "lag_s_median": round(statistics.median(samples), 3), "lag_s_max": round(max(samples), 3)}


def catch_up(url: str, work: Path, stations: int, rate: float, outage_s: float) -> dict[str, Any]:
    rows = int(rate * outage_s)
    start = datetime.now(timezone.utc) - timedelta(seconds=outage_s)
    dbs = [backlog_ledger(work / f"outage-{n}.db", f"bench-outage-{n}", rows, start, rate) for n in range(stations)]
    forwarders = [Forwarder(db, url, batch=500) for db in dbs]
    started = time.perf_counter()
    threads = [threading.Thread(target=f.forward_all) for f in forwarders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    sent = sum(f.sent for f in forwarders)
    for f in forwarders:
        f.close()
    return {"stations": stations, "outage_s": outage_s, "rows": sent, "catch_up_s": round(elapsed, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m station.fleet.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--to", required=True, help="a fleet database (station fleet init), a user that may insert bench-* rows")
    p.add_argument("--work", help="folder for the ledgers (default: a temporary one)")
    p.add_argument("--backlog", type=int, default=20000)
    p.add_argument("--stations", type=int, default=4)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--outage", type=float, default=300.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="fleet-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    figures = {"throughput": throughput(args.to, work, args.backlog),
               "steady": steady_lag(args.to, work, args.stations, args.rate, args.seconds),
               "catch_up": catch_up(args.to, work, args.stations, args.rate, args.outage)}
    print(json.dumps(figures, indent=1) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
