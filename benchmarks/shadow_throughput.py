"""Shadow throughput: the line with and without a ``[shadow]`` candidate engine, taken in turns in one run (issue 29).

    .venv/bin/python benchmarks/shadow_throughput.py                       # bundled frames, shipped BFFN, ONNX Runtime
    .venv/bin/python benchmarks/shadow_throughput.py --passes 6 --rounds 4 --json docs/results/shadow-throughput.json

Each arm runs the station's :class:`station.pipeline.Line` (replay at full speed with back-pressure, the shipped
recipe's inspector on ``--threads`` engine threads, a real SQLite ledger with reject images) over the bundled frames,
``--passes`` times as other files. The *shadow* arm adds the recipe's ``[shadow]`` worker (:mod:`station.shadow`) at
``--share`` (default: the recipe default) with the shipped weights as the candidate (the same network as production:
a fine-tuned candidate costs as much), its engine on ``--shadow-threads`` and its thread at ``--nice``. Throughput is
parts inspected over the line's wall time, from its start to its last row; the shadow is closed afterwards without a
drain, so what it has not judged by then counts as skipped or unfinished, and the figures say how many of the chosen
parts it judged. The arms alternate, their order flipping every round, and the medians are compared: the goal is a
ratio of at least 0.90. With ``--fps`` the replay is paced like a camera (the frames queue drops the oldest when
full, as the shipped recipe's): a line with time to spare, where the latency and the share judged are the figures.

Exit codes: 0 done, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from inspection_core.imageio import image_files  # noqa: E402
from station.app import build_inspector  # noqa: E402
from station.pipeline import Line  # noqa: E402
from station.recipe import DEFAULT_SHADOW_SHARE, QueuePolicy, load_recipe, shipped_recipe_path  # noqa: E402
from station.rejectlog import RejectLog  # noqa: E402
from station.shadow import Candidate, ShadowWorker, candidate_recipe  # noqa: E402
from station.sources import ReplaySource  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "station" / "samples" / "magnetic-tile"


def frames(folder: Path, passes: int) -> Path:
    """A folder with ``passes`` copies of the bundled frames, each copy under other names (other parts)."""
    work = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    for n in range(passes):
        for f in image_files(folder):
            if f.suffix == ".jpg":
                shutil.copy(f, work / f"{n:02d}_{f.name}")
    return work


def run_arm(inspector, shadow_parts, folder: Path, work: Path, name: str, fps: float = 0.0) -> dict:
    """One pass of the line over ``folder``; ``shadow_parts``: ``(inspector, candidate, args)`` or None."""
    db = work / name / "rejects.db"
    ledger = RejectLog(db, save_images=True, station_id="bench", run_id=name)
    line = Line(ReplaySource(folder, loop=False, pattern="*.jpg", fps=fps or None), inspector, ledger,
                frames_policy=QueuePolicy.DROP_OLDEST if fps else QueuePolicy.BLOCK)
    shadow = None
    if shadow_parts is not None:
        candidate_inspector, candidate, args = shadow_parts
        shadow = ShadowWorker(candidate_inspector, candidate, db, share=args.share, queue_size=args.queue,
                              nice=args.nice, station_id="bench", run_id=name)
        shadow.start(line)
        line.listeners.append(shadow)
    started = time.perf_counter()
    stats = line.run()
    seconds = time.perf_counter() - started
    out = {"seconds": round(seconds, 3), "parts": stats.inspected, "parts_per_s": round(stats.inspected / seconds, 3),
           "latency_ms_p50": round(stats.latency_ms_p50, 1), "latency_ms_p99": round(stats.latency_ms_p99, 1),
           "dropped": stats.dropped, "stage_ms": dict(stats.stage_ms)}
    if shadow is not None:
        shadow.close(0.0)
        out["shadow"] = shadow.status()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shadow_throughput.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="magnetic_tile", help="shipped recipe name or .toml (default: magnetic_tile)")
    p.add_argument("--threads", type=int, default=2, help="the production engine's CPU threads (default: 2)")
    p.add_argument("--candidate", default="bffn-magnetic-tile", help="the candidate's weights (default: the shipped)")
    p.add_argument("--share", type=float, default=DEFAULT_SHADOW_SHARE,
                   help=f"[shadow] share (default: the recipe default, {DEFAULT_SHADOW_SHARE:g})")
    p.add_argument("--shadow-threads", type=int, default=1, help="[shadow] threads (default: 1)")
    p.add_argument("--nice", type=int, default=19, help="[shadow] nice (default: 19)")
    p.add_argument("--queue", type=int, default=2, help="[shadow] queue (default: 2)")
    p.add_argument("--passes", type=int, default=6, help="passes over the 16 frames per arm (default: 6)")
    p.add_argument("--rounds", type=int, default=4, help="rounds of the two arms, in turns (default: 4)")
    p.add_argument("--fps", type=float, default=0.0, help="pace the replay (default 0: full speed)")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    if min(args.threads, args.passes, args.rounds, args.queue) < 1 or not 0 < args.share <= 1:
        p.error("--threads, --passes, --rounds and --queue must be >= 1, --share in (0, 1]")
    path = Path(args.recipe) if args.recipe.endswith(".toml") else shipped_recipe_path(args.recipe)
    recipe = load_recipe(path).with_overrides({"engine.threads": args.threads, "shadow.weights": args.candidate,
                                               "shadow.threads": args.shadow_threads})
    inspector = build_inspector(recipe)
    judged = candidate_recipe(recipe)
    candidate_inspector = build_inspector(judged)
    candidate = Candidate.of(args.candidate, candidate_inspector)
    shadow_parts = (candidate_inspector, candidate, args)
    folder = frames(SAMPLES, args.passes)
    work = Path(tempfile.mkdtemp(prefix="shadow-bench-ledgers-"))
    rounds = []
    try:
        warm = frames(SAMPLES, 1)
        run_arm(inspector, shadow_parts, warm, work, "warm-up")  # sessions, caches, first-call costs
        shutil.rmtree(warm, ignore_errors=True)
        for n in range(args.rounds):
            arms = ("line", "shadow") if n % 2 == 0 else ("shadow", "line")
            got = {arm: run_arm(inspector, shadow_parts if arm == "shadow" else None, folder, work, f"r{n}-{arm}",
                                args.fps) for arm in arms}
            ratio = got["shadow"]["parts_per_s"] / got["line"]["parts_per_s"]
            s = got["shadow"]["shadow"]
            rounds.append({"order": list(arms), **got, "ratio": round(ratio, 4)})
            print(f"round {n + 1}: line {got['line']['parts_per_s']:.3f} parts/s, with shadow "
                  f"{got['shadow']['parts_per_s']:.3f} parts/s: ratio {ratio:.3f}; latency p50 "
                  f"{got['line']['latency_ms_p50']:.0f} / {got['shadow']['latency_ms_p50']:.0f} ms, dropped "
                  f"{got['line']['dropped']} / {got['shadow']['dropped']}; the shadow judged {s['shadowed']} of "
                  f"{s['chosen']} chosen parts ({s['skipped']} skipped, {s['unfinished']} unfinished; "
                  f"{s['candidate_ms_p50']} ms a part, niceness {s['niceness']})", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    line_pps = statistics.median(r["line"]["parts_per_s"] for r in rounds)
    shadow_pps = statistics.median(r["shadow"]["parts_per_s"] for r in rounds)
    chosen = sum(r["shadow"]["shadow"]["chosen"] for r in rounds)
    judged_parts = sum(r["shadow"]["shadow"]["shadowed"] for r in rounds)
    figures = {"recipe": recipe.product.name, "engine": inspector.engine_id, "threads": args.threads, "fps": args.fps,
               "candidate": candidate.id, "share": args.share, "shadow_threads": args.shadow_threads,
               "nice": args.nice, "queue": args.queue, "frames_per_arm": 16 * args.passes,
               "line_parts_per_s": line_pps, "shadow_parts_per_s": shadow_pps,
               "ratio_of_medians": round(shadow_pps / line_pps, 4),
               "median_ratio": statistics.median(r["ratio"] for r in rounds),
               "line_latency_ms_p50": statistics.median(r["line"]["latency_ms_p50"] for r in rounds),
               "shadow_latency_ms_p50": statistics.median(r["shadow"]["latency_ms_p50"] for r in rounds),
               "shadow_chosen": chosen, "shadow_judged": judged_parts, "rounds": rounds}
    print(f"with the shadow at share {args.share:g}: {shadow_pps:.3f} parts/s against {line_pps:.3f} without "
          f"(medians of {args.rounds} rounds in turns): ratio {shadow_pps / line_pps:.3f} (goal >= 0.90); the shadow "
          f"judged {judged_parts} of the {chosen} parts chosen for it")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
