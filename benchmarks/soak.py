"""Soak: run the station for a long time and watch its memory; resident size must not keep growing.

    .venv/bin/python benchmarks/soak.py                          # 30 minutes, bundled frames at 10 frames/s
    .venv/bin/python benchmarks/soak.py --minutes 1 --json soak.json

Runs ``station run`` (the real command, its own process) on a looping replay of the bundled frames paced at
``--fps`` (faster than this CPU inspects them, so the drop-oldest queue, the ledger's NOT_INSPECTED rows and the
reject images are all exercised), samples its resident set size (``VmRSS`` from ``/proc/PID/status``) every
``--every`` seconds, then stops it with SIGTERM (a drain) and reads the run summary.

Growth is judged after a warm-up (``--warmup``, default a fifth of the run, at least 15 s: the model, ONNX Runtime's
arenas and the caches settle first): the mean RSS of the last fifth of the samples against the mean of the first
fifth after the warm-up. It passes below ``--max-growth`` percent (default 5). Exit codes: 0 passed, 1 memory grew
too much or the station failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "station" / "samples" / "magnetic-tile"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="how long to run (default: 30)")
    p.add_argument("--fps", type=float, default=10.0, help="replay pace (default: 10)")
    p.add_argument("--every", type=float, default=2.0, help="seconds between RSS samples (default: 2)")
    p.add_argument("--warmup", type=float, help="seconds left out before judging growth (default: a fifth, >= 15)")
    p.add_argument("--max-growth", type=float, default=5.0, help="allowed RSS growth in percent (default: 5)")
    p.add_argument("--threads", type=int, help="engine CPU threads (default: the recipe's)")
    p.add_argument("--db", help="reject log (default: in a new temporary folder)")
    p.add_argument("--json", help="write the samples and figures to this file")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.every <= 0:
        p.error("--minutes and --every must be > 0")
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else max(15.0, seconds / 5)
    if warmup >= seconds:
        p.error(f"the warm-up ({warmup:g} s) must be shorter than the run ({seconds:g} s)")
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="soak-")) / "soak.db"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "station.cli", "run", "--source", f"replay:{SAMPLES}", "--fps",
                             str(args.fps), "--headless", "--json", "--db", str(db),
                             *(["--threads", str(args.threads)] if args.threads is not None else [])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    started = time.monotonic()
    samples: list[tuple[float, float]] = []
    while (elapsed := time.monotonic() - started) < seconds and proc.poll() is None:
        value = rss_mb(proc.pid)
        if value is not None:
            samples.append((round(elapsed, 1), round(value, 1)))
        time.sleep(args.every)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    try:
        summary = json.loads(out)
    except json.JSONDecodeError:
        summary = {}
    judged = [v for t, v in samples if t >= warmup]
    if len(judged) < 5:
        print(f"too few samples after the warm-up ({len(judged)}); run longer", file=sys.stderr)
        return 1
    fifth = max(1, len(judged) // 5)
    early, late = sum(judged[:fifth]) / fifth, sum(judged[-fifth:]) / fifth
    growth = 100.0 * (late - early) / early
    ok = growth < args.max_growth and proc.returncode == 128 + signal.SIGTERM and not summary.get("failure")
    figures = {"minutes": args.minutes, "fps": args.fps, "threads": args.threads, "warmup_s": warmup, "samples": len(samples),
               "rss_mb_first": samples[0][1] if samples else None, "rss_mb_after_warmup": round(early, 1),
               "rss_mb_end": round(late, 1), "rss_mb_max": max(v for _, v in samples),
               "growth_pct": round(growth, 2), "max_growth_pct": args.max_growth, "passed": ok,
               "exit_status": proc.returncode, "acquired": summary.get("acquired"),
               "inspected": summary.get("inspected"), "rows": summary.get("recorded"),
               "refused": summary.get("refused"), "db": str(db)}
    print(f"soak {args.minutes:g} min at {args.fps:g} frames/s: RSS {figures['rss_mb_after_warmup']} MB after the "
          f"{warmup:g} s warm-up -> {figures['rss_mb_end']} MB at the end ({growth:+.2f} %, limit "
          f"{args.max_growth:g} %); max {figures['rss_mb_max']} MB; {summary.get('acquired')} parts, "
          f"{summary.get('inspected')} inspected, {summary.get('recorded')} rows; exit {proc.returncode}: "
          f"{'PASSED' if ok else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({**figures, "rss_samples": samples}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
