"""Screenshot of the operator panel on the real line: the bundled magnetic-tile frames replayed once through the
shipped recipe (BFFN on ONNX Runtime), the real panel widget drawn offscreen, grabbed to a PNG once every frame has
been inspected and the last one is on screen. This is the picture in the README (``docs/img/panel.png``)::

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/panel_screenshot.py --out docs/img/panel.png

What it runs is ``station run magnetic_tile --no-loop`` with the panel, except that the reject log goes to a
temporary folder (``--db`` to keep it) and the replay runs as fast as the engine takes the frames (back-pressure with
a frames queue of one, so no frame is dropped and none waits behind others). The run's counters are printed as JSON; the exit status is 1 when not every frame was
inspected or the panel never showed the last one within ``--timeout`` seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "station" / "samples" / "magnetic-tile"
RECIPE = REPO / "station" / "recipes" / "magnetic_tile.toml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("::", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "img" / "panel.png"), help="PNG to write")
    parser.add_argument("--recipe", default=str(RECIPE), help="recipe (default: the shipped magnetic_tile)")
    parser.add_argument("--frames", default=str(SAMPLES), help="folder of frames to replay once")
    parser.add_argument("--db", help="reject log to write (default: a temporary one, removed afterwards)")
    parser.add_argument("--threads", type=int, default=0, help="engine threads (default: the recipe's)")
    parser.add_argument("--operator", default="op-anna", help="the operator's name on the review keys (station run "
                                                              "--operator; there the OS user by default)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--settle-ms", type=int, default=400,
                        help="wait this long after the last frame is shown, so the counters catch up")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(REPO))
    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication

    from inspection_core.imageio import image_files
    from station.app import build_line
    from station.panel_reviews import LineReviews
    from station.review import default_reviewer
    from station.recipe import load_recipe
    from ui.panel import StationPanel, frame_name

    recipe = load_recipe(args.recipe)
    frames = image_files(args.frames, recipe.source.pattern)
    if not frames:
        print(f"no frames matching {recipe.source.pattern} in {args.frames}", file=sys.stderr)
        return 1
    tmp = tempfile.TemporaryDirectory(prefix="panel-shot-")
    shown_path = Path(os.path.relpath(Path(args.frames).resolve())) if Path(args.frames).resolve().is_relative_to(
        Path.cwd()) else Path(args.frames).resolve()  # the caption names the source: no home folders in pictures
    # One frame waits at most: a frame is read when the engine is ready for it, so the latency shown is the
    # inspection's own, not the time a frame spent queued behind others.
    overrides = {"source.kind": "replay", "source.path": str(shown_path), "source.loop": False,
                 "source.fps": 0, "queues.frames": 1, "log.db": args.db or str(Path(tmp.name) / "rejects.db")}
    if args.threads:
        overrides["engine.threads"] = args.threads
    recipe = recipe.with_overrides(overrides)
    line = build_line(recipe, max_frames=len(frames))
    calibration = line.judge.calibration_note
    reviews = LineReviews(line.reject_log, args.operator or default_reviewer())  # the review keys, as station run wires them
    line.listeners.append(reviews)

    app = QApplication.instance() or QApplication(sys.argv[:1])
    panel = StationPanel(line.feed, line.stats, on_close=line.stop, calibration=calibration, reviews=reviews)
    panel.setWindowTitle(f"Inspection station - {recipe.product.name}")
    panel.resize(args.width, args.height)
    panel.show()
    started = time.monotonic()
    outcome: dict = {}

    def last_frame_shown() -> bool:
        _, result = line.feed.latest()
        return result is not None and panel.caption_label.text().startswith(f"frame {frame_name(result)}")

    def poll() -> None:
        stats = line.stats()
        done = not line.running and stats.inspected + getattr(stats, "not_inspected", 0) >= len(frames)
        if done and last_frame_shown():
            QTimer.singleShot(args.settle_ms, grab)
        elif time.monotonic() - started > args.timeout:
            outcome["error"] = f"timed out after {args.timeout:.0f} s: {stats.inspected} of {len(frames)} inspected"
            panel.close()
        else:
            QTimer.singleShot(100, poll)

    def grab() -> None:
        panel.refresh()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not panel.grab().save(str(out)):
            outcome["error"] = f"cannot write {out}"
        outcome["frames_drawn"] = panel.frames_drawn
        panel.close()

    line.start()
    QTimer.singleShot(100, poll)
    app.exec()
    line.stop()
    line.join()
    reviews.close()
    stats = line.stats()
    report = {"out": args.out, "frames": len(frames), "inspected": stats.inspected, "passed": stats.passed,
              "failed": stats.failed, "not_inspected": getattr(stats, "not_inspected", 0),
              "frames_drawn": outcome.get("frames_drawn"),
              "engine_id": stats.engine_id, "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(report, indent=2))
    tmp.cleanup()
    if "error" in outcome or stats.inspected != len(frames):
        print(f"panel_screenshot: {outcome.get('error', 'not every frame was inspected')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
