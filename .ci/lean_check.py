"""The base install (`pip install .`, no extra) checked as a line PC gets it: `make test-lean` runs this with the
Python of a virtualenv that holds only the base install.

1. No package of the training stack came with it (torch, torchvision, triton, nvidia-*, segmentation-models-pytorch,
   timm, onnx), and torch cannot be imported.
2. The station runs from the installed package (not this checkout): `station --help`, `calibration --help`,
   `station demo --headless` on the bundled frames (16 verdicts; the time to the first verdict is printed), a short
   `station run` replay, and `station export` of its ledger.
3. A command that needs torch says so in one line, with the install line (`engines train`).
4. With ``--full VENV`` (the full install of `make test`), the demo's verdicts and defects equal the full install's,
   frame by frame.

Exit status 0 when every check holds, 1 otherwise (each failure is printed).
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINING_STACK = re.compile(r"^(torch|torchvision|triton|nvidia-.*|segmentation-models-pytorch|timm|onnx|onnxscript)$")
FAILURES: list[str] = []


def check(ok: bool, what: str, detail: str = "") -> None:
    """Print ``what`` as met or failed (with ``detail``, the evidence, when it failed)."""
    print(f"{'ok  ' if ok else 'FAIL'} {what}" + ("" if ok or not detail else f": {detail.strip()[-800:]}"), flush=True)
    if not ok:
        FAILURES.append(what)


def run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen", "STATION_CACHE": str(cwd / "cache")})


def verdicts(db: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT file, verdict, defects_json FROM inspections WHERE verdict IN ('PASS', 'FAIL')")
        return {Path(file).name: (verdict, defects) for file, verdict, defects in rows}


def first_verdict_s(db: Path, started: float) -> float:
    with sqlite3.connect(db) as con:
        first = con.execute("SELECT MIN(time_utc) FROM inspections WHERE verdict IN ('PASS', 'FAIL')").fetchone()[0]
    when = dt.datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp()
    return when - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", help="the full install's virtualenv, to compare the demo's verdicts with")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent

    listed = json.loads(subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"], check=True,
                                       capture_output=True, text=True).stdout)
    stack = sorted(p["name"] for p in listed if TRAINING_STACK.match(p["name"].lower()))
    check(not stack, f"the base install holds no package of the training stack (found: {stack or 'none'})")
    check(importlib.util.find_spec("torch") is None, "torch cannot be imported")

    work = Path(tempfile.mkdtemp(prefix="lean-check-"))
    for command in (["station", "--help"], ["calibration", "--help"], ["engines", "--help"]):
        done = run([str(bin_dir / command[0]), *command[1:]], work)
        check(done.returncode == 0, f"`{' '.join(command)}` runs", done.stderr)

    started = time.time()
    demo = run([str(bin_dir / "station"), "demo", "--headless", "--fps", "0", "--db", str(work / "demo.db")], work)
    seconds = time.time() - started
    check(demo.returncode == 0, "`station demo --headless` exits 0", demo.stderr)
    package = run([sys.executable, "-c", "import station, sys; print(station.__file__)"], work).stdout.strip()
    check("site-packages" in package, f"the station runs from the installed package ({package})")
    if demo.returncode == 0:
        lean = verdicts(work / "demo.db")
        agreement = next((line.strip() for line in demo.stdout.splitlines() if "agreement with the ground" in line), "")
        check(len(lean) == 16, f"the demo judged the 16 bundled frames ({len(lean)})", demo.stdout)
        check(bool(agreement), f"the demo scores itself against the bundled truth.csv ({agreement})", demo.stdout)
        print(f"     demo: {seconds:.1f} s in all, first verdict {first_verdict_s(work / 'demo.db', started):.1f} s "
              "after the command started")
        full_station = Path(args.full).resolve() / "bin" / "station" if args.full else None  # it runs in `work`
        if full_station is not None and full_station.exists():
            full = run([str(full_station), "demo", "--headless", "--fps", "0", "--db",
                        str(work / "full.db")], work)
            check(full.returncode == 0, "the full install's demo exits 0", full.stderr)
            if full.returncode == 0:
                theirs = verdicts(work / "full.db")
                differ = sorted(name for name in set(lean) | set(theirs) if lean.get(name) != theirs.get(name))
                check(not differ, "the 16 verdicts and their defects equal the full install's",
                      f"differ: {differ}")
        elif args.full:
            print(f"     (no full install at {args.full}: verdicts not compared)")

    samples = package and Path(package).parent / "samples" / "magnetic-tile"
    replay = run([str(bin_dir / "station"), "run", "--source", f"replay:{samples}", "--headless", "--max-frames", "4",
                  "--fps", "0", "--db", str(work / "replay.db"), "--json"], work)
    summary = json.loads(replay.stdout) if replay.returncode == 0 else {}
    check(replay.returncode == 0 and summary.get("inspected") == 4,
          "a short replay (`station run --source replay:... --max-frames 4`) inspects 4 parts",
          f"inspected {summary.get('inspected')}; {replay.stderr}")
    export = run([str(bin_dir / "station"), "export", "--db", str(work / "replay.db"), "--format", "csv", "--out",
                  str(work / "replay.csv")], work)
    check(export.returncode == 0 and (work / "replay.csv").is_file(), "`station export` writes the ledger as CSV",
          export.stderr)

    train = run([str(bin_dir / "engines"), "train", "bffn", "--data", str(work), "--out", str(work / "run")], work)
    lines = train.stderr.strip().splitlines()
    check(train.returncode == 2 and len(lines) == 1 and "[train]" in train.stderr and "pip install" in train.stderr,
          f"`engines train` says in one line that it needs the train extra: {train.stderr.strip()}", train.stderr)

    print(f"lean install: {len(FAILURES)} failure(s)")
    if not FAILURES:
        shutil.rmtree(work, ignore_errors=True)  # kept only when something failed, to look at
    else:
        print(f"     its files are kept in {work}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
