"""The `station` command: run the line, run the demo, export the reject log.

Examples::

    station demo                                   # bundled frames, ONNX Runtime on the CPU, shipped BFFN weights
    station run --recipe station/recipes/magnetic_tile.toml --source replay:../shared/data/magnetic-tile/MT_Crack \\
                --headless --max-frames 20 --db runs/crack.db
    station run --source genicam --headless --max-frames 200        # viky.cti, the simulated GenTL camera
    station run --recipe screen_linescan --headless --max-frames 2 --classifier-weights runs/gr   # line-scan
    station export --db station-data/rejects.db --format csv --verdict fail --out rejects.csv

Exit codes: 0 done, 1 the line stopped on an error, 2 bad usage or input (missing file, bad recipe),
130 interrupted.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

from calibration.errors import CalibrationError
from engines.errors import USER_ERRORS
from inspection_core.errors import InspectionCoreError
from station.app import run_station
from station.errors import RecipeError, SourceError, StationError
from station.recipe import load_recipe, shipped_recipe_path
from station.rejectlog import add_export_arguments, run_export
from ui.app import display_available

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SAMPLES = Path(__file__).parent / "samples" / "magnetic-tile"


def _load_recipe(args: argparse.Namespace):
    name = args.recipe
    path = Path(name) if Path(name).suffix == ".toml" or Path(name).exists() else shipped_recipe_path(name)
    recipe = load_recipe(path)
    overrides: dict = {}
    if args.source:
        kind, _, rest = args.source.partition(":")
        if kind == "replay":
            overrides.update({"source.kind": "replay", "source.path": rest})
        elif kind == "genicam":
            overrides.update({"source.kind": "genicam", "source.cti": rest or None})
        elif kind == "linescan-replay":
            overrides.update({"source.kind": "linescan-replay", "source.path": rest or None})
        else:
            raise SourceError(f"unknown --source {args.source!r}: use replay:DIR, genicam, genicam:PATH.cti or "
                              "linescan-replay[:IMAGE]")
    stage = "engine"
    if recipe.engine is None:  # a classifier-only recipe: --backend and --threads apply to the classifier
        stage = "classifier"
        if args.weights is not None:
            raise RecipeError(f"{path} has no [engine] (the classifier alone judges); use --classifier-weights")
    for key, value in (("source.pattern", args.pattern), ("source.fps", args.fps), ("log.db", args.db),
                       (f"{stage}.backend", args.backend), ("engine.weights", args.weights),
                       (f"{stage}.threads", args.threads), ("source.line_rate_hz", args.line_rate),
                       ("source.block_lines", args.block_lines), ("classifier.weights", args.classifier_weights)):
        if value is not None:
            overrides[key] = value
    if args.no_loop:
        overrides["source.loop"] = False
    return recipe.with_overrides(overrides) if overrides else recipe


def _add_run_arguments(p: argparse.ArgumentParser, recipe_default: str) -> None:
    p.add_argument("--recipe", default=recipe_default,
                   help=f"recipe TOML file, or the name of a shipped recipe (default: {recipe_default})")
    p.add_argument("--source", help="replay:DIR (a folder of images), genicam (viky.cti), genicam:PATH.cti or "
                                    "linescan-replay[:IMAGE] (an image, or a synthetic screen, streamed as line "
                                    "blocks); overrides the recipe's [source]")
    p.add_argument("--pattern", help="replay: glob of the files to play (the shipped recipe plays *.jpg, so the "
                                     "masks beside magnetic-tile images are skipped)")
    p.add_argument("--fps", type=float, help="replay: frames per second (0 = as fast as the line takes them)")
    p.add_argument("--no-loop", action="store_true", help="replay: stop after the last file")
    p.add_argument("--headless", action="store_true", help="no panel: a live progress line and a final summary")
    p.add_argument("--max-frames", type=int, help="stop after inspecting this many frames")
    p.add_argument("--db", help="reject log SQLite file (default: the recipe's [log] db)")
    p.add_argument("--backend", choices=["onnxruntime", "torch", "torch-cuda", "tensorrt"],
                   help="inference backend (default: the recipe's; onnxruntime runs everywhere)")
    p.add_argument("--weights", help="weights folder or shipped name (default: the recipe's)")
    p.add_argument("--threads", type=int, help="CPU threads for the engine (0 = all cores)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    scan = p.add_argument_group("line-scan sources (docs/LINESCAN.md)")
    scan.add_argument("--line-rate", type=float, metavar="HZ",
                      help="line-scan: lines per second (replay pace, 0 = as fast as possible; camera: its rate, to "
                           "judge late blocks)")
    scan.add_argument("--block-lines", type=int, metavar="N", help="line-scan: lines per block")
    scan.add_argument("--classifier-weights", metavar="DIR",
                      help="weights folder or shipped name of the [classifier] stage (default: the recipe's; "
                           "a recipe without [classifier] gets the stage with its default settings)")


def _run(args: argparse.Namespace) -> int:
    if args.max_frames is not None and args.max_frames < 1:
        print("station: error: --max-frames must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    summary = run_station(_load_recipe(args), args.headless, args.max_frames, args.json)
    return EXIT_FAILED if summary.failure else EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    if args.source is None:
        args.source = f"replay:{SAMPLES}"
    headless = args.headless or not display_available()
    if headless and args.max_frames is None:
        args.no_loop = True  # headless: one pass over the bundled frames, then the summary
    verdicts: dict[str, str] = {}
    summary = run_station(_load_recipe(args), headless, args.max_frames, args.json,
                          on_result=lambda r: verdicts.__setitem__(r.frame.file or "", r.verdict.value))
    truth_file = Path(args.source.partition(":")[2]) / "truth.csv"
    if truth_file.exists() and verdicts and not args.json:
        truth = {row["file"]: row["defective"] == "1" for row in csv.DictReader(truth_file.open())}
        judged = [(f, v) for f, v in verdicts.items() if f in truth]
        agree = sum((v == "FAIL") == truth[f] for f, v in judged)
        print(f"  agreement with the ground truth of the bundled frames: {agree}/{len(judged)}")
        for f, v in sorted(judged):
            if (v == "FAIL") != truth[f]:
                print(f"    {f}: {v}, truth {'defective' if truth[f] else 'defect-free'}")
    return EXIT_FAILED if summary.failure else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="station", description="Run the inspection line and export its reject log.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the line from a recipe (camera or replay → engine → verdict → log)",
                         description="Acquisition, inference and logging run on their own threads joined by "
                                     "bounded queues. Ctrl-C, or closing the panel, drains the queues and closes "
                                     "the reject log cleanly.")
    _add_run_arguments(run, "magnetic_tile")
    run.set_defaults(func=_run)

    demo = sub.add_parser("demo", help="the embedded default: bundled frames replayed as a camera, ONNX Runtime on "
                                       "the CPU, shipped BFFN weights; the panel when a display is available")
    _add_run_arguments(demo, "magnetic_tile")
    demo.set_defaults(func=_demo)

    export = sub.add_parser("export", help="export the reject log for QA (CSV or JSON)")
    add_export_arguments(export)
    export.set_defaults(func=run_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - known errors become one line that says what to do
        if isinstance(exc, (StationError, InspectionCoreError, CalibrationError, *USER_ERRORS)):
            print(f"station: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
