"""The `station` command: run the line, run the demo, export the reject log.

Examples::

    station demo                                   # bundled frames, ONNX Runtime on the CPU, shipped BFFN weights
    station run --recipe station/recipes/magnetic_tile.toml --source replay:../shared/data/magnetic-tile/MT_Crack \\
                --headless --max-frames 20 --db runs/crack.db
    station run --source genicam --headless --max-frames 200        # viky.cti, the simulated GenTL camera
    station run --recipe screen_linescan --headless --max-frames 2 --classifier-weights runs/gr   # line-scan
    station export --db station-data/rejects.db --format csv --verdict fail --out rejects.csv
    station export --db station-data/rejects.db --format csv --per-defect --absolute-paths --out defects.csv
    station export --db station-data/rejects.db --format json --part-id P-1 --meas-id M-1 --out -   # one part
    station review --db station-data/rejects.db --mark 12=good --mark 40=defect --by alice   # QA's review
    station export --db station-data/rejects.db --format csv --reviews --out reviewed.csv   # with the latest review
    station shadow report --db station-data/rejects.db        # a [shadow] candidate against the production engine
    station promote --db station-data/rejects.db --recipe my_product_v2.toml --by alice   # record the promotion
    station export --db station-data/rejects.db --format csv --promotions --out promotions.csv   # engine changes

Exit codes of `station run` and `station demo`:
  0    done (the source ended, or --max-frames was reached)
  1    the line stopped on an error: the reject log cannot be written (disk full, read-only, I/O error, locked),
       free space below [station] min_free_mb (at start or while running), or a stage failed
  2    bad usage or input (missing file or folder, bad recipe, a folder given as --db, another station already
       writing the same reject log), said before any model is loaded
  130  stopped by SIGINT (Ctrl-C), after draining the queues
  143  stopped by SIGTERM (systemctl stop, docker stop), after draining the queues
  129  stopped by SIGHUP (the terminal closed), after draining the queues
A stop by signal is 128 + the signal's number, as a shell reports it, so a supervisor can tell "stopped on
request" from "the run ended" (0); the example systemd unit docs/station.service lists 143 and 129 in
SuccessExitStatus. An error wins over a signal: 1. A command whose output is cut short by its reader (`station
review --list --json | head -1`) stops quietly with 141 (128 + SIGPIPE), as a command killed by SIGPIPE would.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import signal
import sys
import textwrap
from pathlib import Path

from engines.backends.registry import recipe_backend_names
from inspection_core.errors import report_error
from station.app import run_station
from station.errors import LedgerError, RecipeError, SourceError
from station.export import add_export_arguments, run_export
from station.fleet.cli import add_fleet_commands
from station.integrations import flag_overrides
from station.pipeline import DEFAULT_DRAIN_TIMEOUT_S
from station.recipe import load_recipe, shipped_recipe_path
from station.review import DESCRIPTION as REVIEW_DESCRIPTION
from station.review import EPILOG as REVIEW_EPILOG
from station.review import add_review_arguments, run_review
from station import promotion, shadow_report
from ui.app import display_available

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: the reader of standard output went away (| head)
EXIT_TERMINATED, EXIT_HANGUP = 128 + signal.SIGTERM, 128 + signal.SIGHUP  # 143, 129


class Terminated(Exception):
    """SIGTERM or SIGHUP before the line runs (while the recipe and models load): leave with 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate_early(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def exit_status(failure: str | None, signum: int | None) -> int:
    """The exit status of a run: 1 when the line stopped on an error, 128 + the signal that stopped it, else 0."""
    if failure:
        return EXIT_FAILED
    if signum is not None:
        return 128 + int(signum)
    return EXIT_OK
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
    overrides.update(flag_overrides(args.opcua, args.mqtt, args.metrics, args.fleet))
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
    p.add_argument("--max-frames", type=int, metavar="N",
                   help="inspect N parts: the source stops after delivering N frames and the line ends when they are "
                        "settled; the summary says what became of any not inspected (dropped by a paced source's "
                        "queue, implausible...)")
    p.add_argument("--db", help="reject log SQLite file (default: the recipe's [log] db)")
    p.add_argument("--backend", choices=recipe_backend_names(),
                   help="inference backend (default: the recipe's; onnxruntime runs everywhere)")
    p.add_argument("--weights", help="weights folder or shipped name (default: the recipe's)")
    p.add_argument("--threads", type=int, help="CPU threads for the engine (0 = all cores)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument("--operator", metavar="NAME",
                   help="who marks parts with the panel's review keys (G good part, D defect), recorded with each "
                        "review (default: the OS user)")
    p.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, metavar="S",
                   help="after a stop (Ctrl-C, SIGTERM, SIGHUP, --max-frames, the window closed) keep inspecting "
                        "queued frames for at most S seconds (default %(default)g); then the frame being inspected "
                        "is cancelled between two batches and it and the frames still queued get NOT_INSPECTED rows "
                        "('stopped'). A second signal stops draining at once")
    links = p.add_argument_group("integrations (docs/INTEGRATION.md); each also a recipe table, off by default")
    links.add_argument("--opcua", metavar="opc.tcp://HOST:PORT",
                       help="serve OPC UA for Machine Vision at this endpoint ([opcua] endpoint)")
    links.add_argument("--mqtt", metavar="mqtt://HOST:PORT", help="publish every ledger row to this broker ([mqtt] url)")
    links.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics here ([metrics] listen)")
    links.add_argument("--fleet", metavar="postgresql://USER@HOST/DB",
                       help="forward the ledger to the fleet database while running ([fleet] to)")
    scan = p.add_argument_group("line-scan sources (docs/LINESCAN.md)")
    scan.add_argument("--line-rate", type=float, metavar="HZ",
                      help="line-scan: lines per second (replay pace, 0 = as fast as possible; camera: its rate, to "
                           "judge late blocks)")
    scan.add_argument("--block-lines", type=int, metavar="N", help="line-scan: lines per block")
    scan.add_argument("--classifier-weights", metavar="DIR",
                      help="weights folder or shipped name of the [classifier] stage (default: the recipe's; "
                           "a recipe without [classifier] gets the stage with its default settings)")


def _check_run_arguments(args: argparse.Namespace) -> str | None:
    if args.max_frames is not None and args.max_frames < 1:
        return "--max-frames must be at least 1"
    if args.drain_timeout < 0:
        return "--drain-timeout must be 0 or more seconds"
    return None


def _report(summary) -> int:
    if summary.failure:
        print(f"station: error: {summary.failure}", file=sys.stderr)
    return exit_status(summary.failure, summary.signal)


def _run(args: argparse.Namespace) -> int:
    problem = _check_run_arguments(args)
    if problem:
        print(f"station: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    summary = run_station(_load_recipe(args), args.headless, args.max_frames, args.json,
                          drain_timeout_s=args.drain_timeout, operator=args.operator)
    return _report(summary)


def _demo(args: argparse.Namespace) -> int:
    problem = _check_run_arguments(args)
    if problem:
        print(f"station: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.source is None:
        args.source = f"replay:{SAMPLES}"
    headless = args.headless or not display_available()
    if headless and args.max_frames is None:
        args.no_loop = True  # headless: one pass over the bundled frames, then the summary
    verdicts: dict[str, str] = {}
    recipe = _load_recipe(args)
    summary = run_station(recipe, headless, args.max_frames, args.json,
                          on_result=lambda r: verdicts.__setitem__(r.frame.file or "", r.verdict.value),
                          drain_timeout_s=args.drain_timeout, operator=args.operator)
    truth_file = Path(args.source.partition(":")[2]) / "truth.csv"
    if truth_file.exists() and verdicts and not args.json:
        truth = {row["file"]: row["defective"] == "1" for row in csv.DictReader(truth_file.open())}
        judged = [(f, v) for f, v in verdicts.items() if f in truth]
        agree = sum((v == "FAIL") == truth[f] for f, v in judged)
        print(f"  agreement with the ground truth of the bundled frames: {agree}/{len(judged)}")
        for f, v in sorted(judged):
            if (v == "FAIL") != truth[f]:
                print(f"    {f}: {v}, truth {'defective' if truth[f] else 'defect-free'}")
        unjudged = len(set(truth) - set(verdicts))
        if unjudged and headless and recipe.source.fps > 0:
            print(f"  {unjudged} bundled frame(s) had no verdict: the replay delivers {recipe.source.fps:g} frames/s "
                  "and this machine inspected slower, so the line dropped frames (each has its NOT_INSPECTED row); "
                  "`station demo --fps 0` hands each frame over when the line is ready")
    return _report(summary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="station", description="Run the inspection line, export its reject log and record QA's reviews.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the line from a recipe (camera or replay → engine → verdict → log)",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description=textwrap.fill(
                             "Acquisition, inference and logging run on their own threads joined by bounded queues. "
                             "Every part the source delivers gets one row in the reject log (PASS, FAIL, or "
                             "NOT_INSPECTED with the reason), and every gap of lost frames one GAP row. Ctrl-C, "
                             "SIGTERM, SIGHUP or closing the panel drains the queues (at most --drain-timeout "
                             "seconds) and closes the reject log cleanly. When a row cannot be written the line stops "
                             "at once and exits 1.", 100),
                         epilog=textwrap.fill(
                             "Exit codes: 0 done, 1 the line stopped on an error (reject log not writable, free space "
                             "below [station] min_free_mb...), 2 bad input, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (each "
                             "after draining; 128 + the signal number). docs/RELIABILITY.md has the details, "
                             "docs/station.service an example systemd unit.", 100))
    _add_run_arguments(run, "magnetic_tile")
    run.set_defaults(func=_run)

    demo = sub.add_parser("demo", help="the embedded default: bundled frames replayed as a camera, ONNX Runtime on "
                                       "the CPU, shipped BFFN weights; the panel when a display is available")
    _add_run_arguments(demo, "magnetic_tile")
    demo.set_defaults(func=_demo)

    export = sub.add_parser("export", help="export the reject log for QA (CSV or JSON)")
    add_export_arguments(export)
    export.set_defaults(func=run_export)

    review = sub.add_parser("review", help="record QA's review of ledger rows (good part / defect), or list them",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description=textwrap.fill(REVIEW_DESCRIPTION, 100, break_on_hyphens=False),
                            epilog=textwrap.fill(REVIEW_EPILOG, 100, break_on_hyphens=False))
    add_review_arguments(review)
    review.set_defaults(func=run_review)

    shadow = sub.add_parser("shadow", help="a candidate engine shadowed beside the line: station shadow report",
                            description="Reports on the [shadow] candidate of a recipe (station shadow report --help).")
    shadow_report.add_shadow_arguments(shadow)
    shadow.set_defaults(func=shadow_report.run_shadow)
    promote = sub.add_parser("promote", help="record that a shadowed candidate engine is promoted (a recipe change)",
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             description=textwrap.fill(promotion.DESCRIPTION, 100, break_on_hyphens=False),
                             epilog=textwrap.fill(promotion.EPILOG, 100, break_on_hyphens=False))
    promotion.add_promote_arguments(promote)
    promote.set_defaults(func=promotion.run_promote)
    add_fleet_commands(sub)
    return parser


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's last flush of what is left in its buffer does not
    fail again on the closed pipe (Python's own advice for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a test's captured stream): nothing is left to flush
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    previous = {}
    if args.command in ("run", "demo"):  # until the line takes them over: leave with 128 + the signal
        previous = {s: signal.signal(s, _terminate_early) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone away is met below and not at the interpreter's exit
        return status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `station ... | head`: the reader has all it wants; stop quietly, as SIGPIPE would
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Terminated as exc:
        print(f"station: stopped by {exc} before the line started", file=sys.stderr)
        return 128 + exc.signum
    except LedgerError as exc:  # the ledger cannot be written or the disk is nearly full: the line cannot run
        print(f"station: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a user error: one line, exit 2; anything else: a bug, its traceback, 1
        return report_error("station", exc)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
