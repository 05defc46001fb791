"""How the station stops: on SIGTERM / SIGHUP / Ctrl-C mid-run, on a full disk, on a read-only reject log.

    .venv/bin/python benchmarks/stop_and_fail.py                 # all cases, figures printed
    .venv/bin/python benchmarks/stop_and_fail.py --json stop.json

Every case runs the real ``station run`` command in its own process on the bundled frames and measures, on the
host's monotonic clock:

- ``sigterm`` / ``sighup`` / ``sigint``: the signal is sent once the log holds a few rows (replay at 20 frames/s,
  faster than this CPU inspects); figures: seconds from the signal to the exit, the exit status, whether the log
  holds exactly one row per acquired part (plus gap rows), and that the summary was printed;
- ``full_disk``: every file the process writes is capped at 256 kB (``RLIMIT_FSIZE``, writes past it fail with
  EFBIG as on a full disk); figures: seconds from the "the line stops" message to the exit, the exit status, rows
  recorded and refused;
- ``read_only``: the reject log is made read-only (``chattr +i`` as root, else ``chmod 444``); figures: seconds
  from the start to the refusal, the exit status, whether a model was loaded (it must not be).

Exit codes: 0 every case behaved as documented, 1 one did not, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "station" / "samples" / "magnetic-tile"
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _station(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "station.cli", "run", "--source", f"replay:{SAMPLES}",
                             "--headless", *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True) as con:
            return con.execute("SELECT COUNT(*) FROM inspections").fetchone()[0]
    except sqlite3.Error:
        return 0


def signal_case(folder: Path, signum: int) -> dict:
    db = folder / f"{signal.Signals(signum).name}.db"
    proc = _station("--fps", "20", "--json", "--db", str(db))
    while _count(db) < 5 and proc.poll() is None:
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    took = time.monotonic() - sent
    summary = json.loads(out)
    rows = _count(db)
    ok = (proc.returncode == 128 + signum and rows == summary["acquired"] + summary["gap_rows"]
          and summary["refused"] == 0)
    return {"case": signal.Signals(signum).name, "ok": ok, "exit": proc.returncode, "seconds_to_exit": round(took, 2),
            "acquired": summary["acquired"], "inspected": summary["inspected"],
            "not_inspected": summary["not_inspected_reasons"], "rows": rows}


def full_disk_case(folder: Path) -> dict:
    db = folder / "full.db"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    started = time.monotonic()
    proc = _station("--fps", "30", "--json", "--db", str(db), preexec_fn=limit)
    stopped_at: list[float] = []
    lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if "the line stops:" in line and not stopped_at:
                stopped_at.append(time.monotonic())

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    out = proc.stdout.read()  # type: ignore[union-attr]
    proc.wait(timeout=300)
    ended = time.monotonic()
    reader.join(5)
    summary = json.loads(out)
    ok = proc.returncode == 1 and summary["refused"] >= 1 and _count(db) == summary["recorded"]
    return {"case": "full_disk", "ok": ok, "exit": proc.returncode,
            "seconds_from_failure_to_exit": round(ended - stopped_at[0], 2) if stopped_at else None,
            "seconds_total": round(ended - started, 2), "recorded": summary["recorded"],
            "refused": summary["refused"], "message": summary["failure"]}


def read_only_case(folder: Path) -> dict:
    db = folder / "ro.db"
    first = _station("--fps", "0", "--max-frames", "1", "--db", str(db))
    first.communicate(timeout=300)
    root = os.geteuid() == 0
    subprocess.run(["chattr", "+i", str(db)], check=True) if root else db.chmod(0o444)
    try:
        started = time.monotonic()
        proc = _station("--fps", "0", "--max-frames", "3", "--db", str(db))
        out, err = proc.communicate(timeout=300)
        took = time.monotonic() - started
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True) if root else db.chmod(0o644)
    message = next((line for line in err.splitlines() if line.startswith("station: error:")), "")
    ok = proc.returncode == 1 and "read-only" in message and "onnxruntime" not in err
    return {"case": "read_only", "ok": ok, "exit": proc.returncode, "seconds_to_refusal": round(took, 2),
            "rows_after": _count(db), "message": message}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stop_and_fail.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="stop-and-fail-"))
    warm = _station("--fps", "0", "--max-frames", "1", "--db", str(folder / "warm.db"))  # engine cache built
    warm.communicate(timeout=600)
    results = [signal_case(folder, s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)]
    results += [full_disk_case(folder), read_only_case(folder)]
    for r in results:
        print(json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
