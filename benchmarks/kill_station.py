"""Kill -9 a running station again and again on one reject log, and check after each kill what a crash may not do.

    .venv/bin/python benchmarks/kill_station.py                     # 20 kills, bundled frames at 30 frames/s
    .venv/bin/python benchmarks/kill_station.py --kills 5 --json kills.json

Each round starts ``station run`` (the real command, in its own process) on the same database, waits a random time
(``--min-s`` .. ``--max-s``, so kills land while the model loads, while rows are written, while images are saved),
SIGKILLs it, and checks:

- ``PRAGMA integrity_check`` is ``ok`` (no corruption);
- every row a reader saw committed before the kill is still there, unchanged (no committed row lost);
- no (run_id, frame_id) pair appears twice, and ids are unique (no row duplicated);
- every ``image_path`` and ``overlay_path`` names a PNG that exists and decodes (a row never names a missing or
  half-written image);
- no ``.tmp`` file is left visible under a final name.

A reader polls the database during the run (as an operator's export would), so "seen committed" is what a reader
could see. Exit codes: 0 every check held, 1 a check failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "station" / "samples" / "magnetic-tile"


def _rows(db: Path) -> dict[int, tuple]:
    try:
        con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
        try:
            return {r[0]: r[1:] for r in con.execute(
                "SELECT id, run_id, frame_id, verdict, image_path, overlay_path FROM inspections")}
        finally:
            con.close()
    except sqlite3.Error:
        return {}  # not created yet, or the schema is being made


def _check(db: Path, seen: dict[int, tuple]) -> list[str]:
    problems = []
    con = sqlite3.connect(db)
    try:
        if (result := con.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
            problems.append(f"integrity_check: {result}")
        rows = {r[0]: r[1:] for r in con.execute(
            "SELECT id, run_id, frame_id, verdict, image_path, overlay_path FROM inspections")}
        dupes = con.execute("SELECT run_id, frame_id, COUNT(*) FROM inspections WHERE verdict != 'GAP' "
                            "GROUP BY run_id, frame_id HAVING COUNT(*) > 1").fetchall()
    finally:
        con.close()
    lost = [i for i in seen if i not in rows]
    changed = [i for i in seen if i in rows and rows[i] != seen[i]]
    if lost:
        problems.append(f"{len(lost)} committed row(s) lost: ids {lost[:10]}")
    if changed:
        problems.append(f"{len(changed)} committed row(s) changed: ids {changed[:10]}")
    if dupes:
        problems.append(f"{len(dupes)} duplicated (run_id, frame_id) pair(s): {dupes[:5]}")
    import cv2

    for row_id, (_, _, _, image, overlay) in rows.items():
        for path in (image, overlay):
            if path and cv2.imread(str(db.parent / path), cv2.IMREAD_UNCHANGED) is None:
                problems.append(f"row {row_id}: {path} missing or unreadable")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kill_station.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="rounds (default: 20)")
    p.add_argument("--min-s", type=float, default=2.0, help="earliest kill after the start, seconds (default: 2)")
    p.add_argument("--max-s", type=float, default=12.0, help="latest kill after the start, seconds (default: 12)")
    p.add_argument("--fps", type=float, default=30.0, help="replay pace (default: 30, faster than the line)")
    p.add_argument("--seed", type=int, default=20261130)
    p.add_argument("--db", help="database to use (default: a new temporary folder)")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    if args.kills < 1 or args.min_s < 0 or args.max_s < args.min_s:
        p.error("--kills >= 1 and 0 <= --min-s <= --max-s")
    rng = random.Random(args.seed)
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="kill-station-")) / "kills.db"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    seen_total: dict[int, tuple] = {}
    rounds = []
    failures = 0
    for n in range(1, args.kills + 1):
        delay = rng.uniform(args.min_s, args.max_s)
        proc = subprocess.Popen([sys.executable, "-m", "station.cli", "run", "--source", f"replay:{SAMPLES}",
                                 "--fps", str(args.fps), "--headless", "--db", str(db)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.monotonic()
        seen: dict[int, tuple] = {}
        while time.monotonic() - started < delay and proc.poll() is None:
            seen.update(_rows(db))
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        seen_total.update(seen)
        problems = _check(db, seen_total)
        total = len(_rows(db))
        failures += bool(problems)
        rounds.append({"round": n, "kill_after_s": round(delay, 2), "rows_seen_before_kill": len(seen),
                       "rows_after": total, "problems": problems})
        print(f"kill {n:2d} after {delay:5.2f} s: {total} rows in the log, {len(seen_total)} seen committed before "
              f"the kills, {'OK' if not problems else 'FAILED: ' + '; '.join(problems)}", flush=True)
    con = sqlite3.connect(db)
    images = con.execute("SELECT COUNT(image_path) + COUNT(overlay_path) FROM inspections").fetchone()[0]
    runs = con.execute("SELECT COUNT(DISTINCT run_id) FROM inspections").fetchone()[0]
    con.close()
    summary = {"kills": args.kills, "failed_rounds": failures, "rows": len(_rows(db)), "runs_with_rows": runs,
               "images_checked": images, "db": str(db), "rounds": rounds}
    print(f"{args.kills} kills, {failures} failed round(s); {summary['rows']} rows from {runs} runs, "
          f"{images} image files present and readable; database {db}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
