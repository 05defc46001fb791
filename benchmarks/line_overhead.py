"""Line overhead: the running line against the bare engine on the same frames, taken in turns in one run.

    .venv/bin/python benchmarks/line_overhead.py                       # bundled frames, shipped BFFN, ONNX Runtime
    .venv/bin/python benchmarks/line_overhead.py --threads 2 --passes 4 --rounds 3 --json out.json

*Bare engine*: every frame is tiled beforehand (not timed) and only ``engine.infer`` on the recipe's batches is timed.
*Line*: the station's :class:`station.pipeline.Line` (replay source at full speed with back-pressure, the one
inspector, a real SQLite ledger with reject images) over the same frames. Both count the same tiles, so the line's
overhead is ``1 - line tiles/s / bare tiles/s``. Rounds alternate bare and line so that a busy machine slows both
alike; the medians are compared. The line's own stage times (``LineStats.stage_ms``) say where the rest goes.

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

from inspection_core.imageio import image_files, read_image  # noqa: E402
from inspection_core.preprocess import normalize_tiles, prepare_image  # noqa: E402
from inspection_core.tiling import tile_image  # noqa: E402
from station.app import build_inspector  # noqa: E402
from station.pipeline import Line  # noqa: E402
from station.recipe import QueuePolicy, load_recipe, shipped_recipe_path  # noqa: E402
from station.rejectlog import RejectLog  # noqa: E402
from station.sources import ReplaySource  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "station" / "samples" / "magnetic-tile"


def bare(inspector, images, passes: int) -> tuple[float, int]:
    """Seconds spent in ``engine.infer`` alone over ``passes`` passes, and the tiles inferred."""
    engine, batch = inspector.engine, inspector.batch
    prepared = [prepare_image(image, engine.spec) for image in images]
    prepared = [normalize_tiles(tile_image(p, inspector.plan(p.shape[:2])), engine.spec) for p in prepared]
    tiles = 0
    started = time.perf_counter()
    for _ in range(passes):
        for chunked in prepared:
            for start in range(0, len(chunked), batch):
                engine.infer(chunked[start:start + batch])
            tiles += len(chunked)
    return time.perf_counter() - started, tiles


def line(inspector, folder: Path, passes: int, save_images: bool) -> tuple[float, int, dict]:
    """Seconds the line took over ``passes`` passes of the folder, the frames inspected and the stage times."""
    work = Path(tempfile.mkdtemp(prefix="overhead-"))
    try:
        for n in range(passes):  # the same frames again, as other files (the replay plays a folder once)
            for f in image_files(folder):
                if f.suffix == ".jpg":
                    shutil.copy(f, work / f"{n:02d}_{f.name}")
        ledger = RejectLog(work / "ledger" / "rejects.db", save_images=save_images, station_id="bench", run_id="b")
        running = Line(ReplaySource(work, loop=False, pattern="*.jpg"), inspector, ledger,
                       frames_policy=QueuePolicy.BLOCK)
        started = time.perf_counter()
        stats = running.run()
        return time.perf_counter() - started, stats.inspected, dict(stats.stage_ms)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="line_overhead.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="magnetic_tile", help="shipped recipe name or .toml (default: magnetic_tile)")
    p.add_argument("--threads", type=int, default=2, help="engine CPU threads (default: 2)")
    p.add_argument("--passes", type=int, default=3, help="passes over the frames per round (default: 3)")
    p.add_argument("--rounds", type=int, default=3, help="bare/line turns (default: 3)")
    p.add_argument("--no-images", action="store_true", help="the ledger saves no reject images")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    if min(args.threads, args.passes, args.rounds) < 1:
        p.error("--threads, --passes and --rounds must be >= 1")
    path = Path(args.recipe) if args.recipe.endswith(".toml") else shipped_recipe_path(args.recipe)
    recipe = load_recipe(path).with_overrides({"engine.threads": args.threads})
    inspector = build_inspector(recipe)
    files = [f for f in image_files(SAMPLES) if f.suffix == ".jpg"]
    images = [read_image(f) for f in files]
    rounds = []
    line(inspector, SAMPLES, 1, not args.no_images)  # warm-up: sessions, caches, first-call costs
    for _ in range(args.rounds):
        b_s, b_tiles = bare(inspector, images, args.passes)
        l_s, l_frames, stages = line(inspector, SAMPLES, args.passes, not args.no_images)
        rounds.append({"bare_s": round(b_s, 3), "bare_tiles": b_tiles, "bare_tiles_per_s": round(b_tiles / b_s, 2),
                       "line_s": round(l_s, 3), "line_frames": l_frames,
                       "line_tiles_per_s": round(b_tiles / l_s, 2), "line_stage_ms": stages})
        print(f"bare {b_tiles / b_s:7.1f} tiles/s   line {b_tiles / l_s:7.1f} tiles/s   "
              f"({l_frames} frames in {l_s:.1f} s)", flush=True)
    bare_tps = statistics.median(r["bare_tiles_per_s"] for r in rounds)
    line_tps = statistics.median(r["line_tiles_per_s"] for r in rounds)
    overhead = 100.0 * (1.0 - line_tps / bare_tps)
    figures = {"recipe": recipe.product.name, "engine": inspector.engine_id, "threads": args.threads,
               "frames_per_pass": len(files), "tiles_per_pass": rounds[0]["bare_tiles"] // args.passes, "passes": args.passes,
               "bare_tiles_per_s": bare_tps, "line_tiles_per_s": line_tps, "overhead_pct": round(overhead, 1),
               "save_images": not args.no_images, "rounds": rounds}
    print(f"line overhead {overhead:.1f} % (median line {line_tps:.1f} tiles/s against bare engine {bare_tps:.1f} "
          f"tiles/s, {args.rounds} rounds in turns); stage ms of the last round: {rounds[-1]['line_stage_ms']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
