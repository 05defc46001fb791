"""The `engines` command: train networks, evaluate them as the station judges, and export them.

Examples::

    engines train bffn --data ../shared/data/magnetic-tile --out runs/bffn-mt
    torchrun --nproc_per_node 4 -m engines.cli train bffn --data DIR --out runs/bffn   # one process per GPU
    engines synth lens --out data/lens --count 400
    engines compare --data ../shared/data/magnetic-tile --folds 4 --out runs/compare-mt
    engines export --weights runs/bffn-mt --out runs/bffn-mt/bffn.onnx
    engines build --weights bffn-magnetic-tile --backend onnxruntime --out engines-built/bffn-ort
    engines verify engines-built/bffn-ort --against torch --data ../shared/data/magnetic-tile
    engines bench engines-built/bffn-ort --vs engines-built/bffn-torch --batch 32 --seconds 30
    engines list
    engines dataset --from-ledger station-data/rejects.db --out line-data
    engines dataset --export-coco line-data --out line-data.coco.json
    engines dataset --import-coco line-data.coco.json --into line-data
    engines eval --weights bffn-magnetic-tile --data ../shared/data/magnetic-tile --json eval.json
    engines accept --weights runs/bffn-mt --against bffn-magnetic-tile --data ../shared/data/magnetic-tile \
        --split engines/weights/bffn-magnetic-tile/split.json --out runs/accept-mt
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# Top layer: the command wires the calibration profiles' INT8 sets into `engines build --calibration PROFILE`
# (calibration.int8 registers them with engines.int8_sets; the engines package itself never imports calibration).
import calibration.int8  # noqa: F401
from engines import label_exchange, line_dataset
from engines.commands import (
    EXIT_FAILED,
    EXIT_OK,
    run_bench,
    run_build,
    run_cam,
    run_compare,
    run_curves,
    run_accept,
    run_eval,
    run_export,
    run_list,
    run_split,
    run_synth,
    run_train,
)
from engines.backends.registry import all_precisions, backend_names  # plain data, no backend library
from engines.errors import InputError
from engines.models import CLASSIFICATION_MODELS, MODEL_NAMES, RESNETS, SCORING_MODES  # plain data, no torch
from engines.quantize import DEFAULT_EXCLUDE, GROUPS  # plain data, no onnx
from inspection_core.defaults import DEFAULT_MIN_AREA_PX, DEFAULT_SCORE_THRESHOLD
from inspection_core.errors import report_error
from inspection_core.extras import require_train
from station.line_calibration import recipe_judging
from station.review import reviewed_rows

#: Subcommands that always run torch (training, the ONNX export, the torch reference of a build's parity check, class
#: activation maps): on a base install they say so in one line before doing anything. The others run on ONNX
#: Runtime (eval, accept, bench and verify of engine folders, list, split, synth, curves) and need torch only when
#: asked for it (``--backend torch``, weights without an ONNX export), which they then say the same way.
NEEDS_TORCH = ("train", "export", "build", "compare", "cam")


def _build(args: argparse.Namespace) -> int:
    """``engines build``: here for the same reason as :func:`_verify` (an int8 build is judged as a recipe's line
    judges)."""
    return run_build(args, judging=recipe_judging(args.recipe) if args.precision == "int8" and not args.into_weights
                     else None)


def _verify(args: argparse.Namespace) -> int:
    """``engines verify``: kept here, beside the parser, because it reads a station recipe (an upward import the
    layers contract allows for this entry point only); the other handlers are in :mod:`engines.commands`."""
    from engines.verify import verify

    # a segmentation engine is judged as a line running the recipe judges: its tiling, its rules after its
    # calibration profile (top layer: the command reads the recipe)
    judging = recipe_judging(args.recipe)
    print(f"rule: {judging.describe()}", file=sys.stderr)
    report = verify(args.engine, args.data, against=args.against, judging=judging, limit=args.limit,
                    threads=args.threads, batch=args.batch)
    shown = {k: v for k, v in report.items() if k not in ("verdicts_differing", "label_sets_differing")}
    differing = report.get("verdicts_differing") or report.get("label_sets_differing") or []
    shown["differing"] = differing[:20]
    print(json.dumps(shown, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        print(f"engines: verify: {args.engine} disagrees with {report['against']} beyond the {report['precision']} "
              f"tolerances: {'; '.join(report['failed'])}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _dataset(args: argparse.Namespace) -> int:
    """``engines dataset``: kept here because it reads the station's ledgers (:func:`station.review.reviewed_rows`,
    an upward import the layers contract allows for this entry point only); the work is in
    :mod:`engines.line_dataset` and :mod:`engines.label_exchange`."""
    exporting = args.export_coco or args.export_labelme
    importing = args.import_coco or args.import_labelme
    if importing:
        if not args.into or args.out:
            raise InputError("--import-coco / --import-labelme take --into DIR (the data folder the masks go into), "
                             "not --out")
    elif not args.out or args.into:
        raise InputError("--from-ledger and --export-coco / --export-labelme take --out (--into goes with "
                         "--import-coco / --import-labelme)")
    if args.from_ledger:
        ledgers = [line_dataset.Ledger(Path(db).resolve(), reviewed_rows(db)) for db in args.from_ledger]
        summary = line_dataset.build_line_dataset(ledgers, args.out, force=args.force)
        print(json.dumps(summary, indent=1) if args.json else line_dataset.describe(summary))
        return EXIT_OK
    if exporting:
        if args.export_coco:
            counts = label_exchange.export_coco(args.export_coco, args.out, force=args.force)
            text = f"{args.out}: {counts['images']} images, {counts['annotations']} polygon annotations (COCO)"
        else:
            counts = label_exchange.export_labelme(args.export_labelme, args.out, force=args.force)
            text = f"{args.out}: {counts['images']} labelme files, {counts['shapes']} polygons"
        print(json.dumps({"out": args.out, **counts}) if args.json else text)
        return EXIT_OK
    if args.force:
        raise InputError("--force goes with --from-ledger and the exports; an import changes only the masks it names")
    into = Path(args.into)
    shapes = {stem: label_exchange.image_shape(path) for stem, path in label_exchange.folder_images(into).items()}
    read = label_exchange.read_coco if args.import_coco else label_exchange.read_labelme
    masks = read(importing, shapes)
    counts = line_dataset.apply_masks(into, masks, source=str(Path(importing).resolve()))
    text = (f"{into}: {counts['masks']} masks imported from {importing} ({counts['moved']} of them moved from "
            f"needs_mask/ into images/), {counts['defect_free']} images made defect-free, {counts['still_waiting']} "
            "still waiting for a mask")
    print(json.dumps({"into": str(into), **counts}) if args.json else text)
    return EXIT_OK


def _judging_options(parser: argparse.ArgumentParser) -> None:
    """How `engines eval` and `engines accept` run the station's inspection: backend, threads, tiling, batch."""
    parser.add_argument("--backend", default="onnxruntime", choices=backend_names(device="cpu"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--overlap", type=int,
                        help="tile overlap in pixels (default: the overlap of the rule `engines accept` wrote into "
                             "the weights' config.json, else 32)")
    parser.add_argument("--batch", type=int, default=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engines",
        description="Train, evaluate, export, build, verify and benchmark the station's networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a segmentation network on tiles (paper settings by default)",
                           description="Train a network on tiles cut from DATA; checkpoints every epoch to "
                                       "OUT/checkpoint.pt and resumes from it when re-run with the same OUT.")
    train.add_argument("model", choices=MODEL_NAMES,
                       help="segmentation: bffn (paper 000) or a baseline on the same ResNet-18 backbone; "
                            "multi-label classification: gr (paper 001, two phases) or a torchvision baseline")
    train.add_argument("--data", required=True, action="append", metavar="DIR",
                       help="data folder (generic images/+masks/, magnetic-tile, or NEU-Seg). Repeat it to train on "
                            "more: --data BASE --data LINE, e.g. with the line's reviewed images from `engines "
                            "dataset --from-ledger`. --split/--holdout cut the first folder; of each further one a "
                            "quarter of every class is kept aside (named in OUT/split.json, \"extra\") for "
                            "`engines accept --line`, and the rest trains")
    train.add_argument("--out", required=True, help="run folder: checkpoint, log, final weights and config")
    train.add_argument("--epochs", type=int,
                       help="epochs (default: the paper's: 30 for segmentation, 40 per phase for classifiers)")
    train.add_argument("--batch", type=int, help="images per step (default: 16 tiles; 32 patches for classifiers)")
    train.add_argument("--lr", type=float, help="learning rate (default: 5e-4 RMSprop; 1e-3 SGD for classifiers)")
    train.add_argument("--optimizer", choices=["rmsprop", "adam"],
                       help="segmentation optimizer (default: rmsprop, the paper's); classifiers use SGD")
    train.add_argument("--loss", choices=["ce", "ce+dice"],
                       help="segmentation loss (default: ce, the paper's cross-entropy)")
    train.add_argument("--tile", type=int, help="segmentation tile side in pixels (default: 128)")
    train.add_argument("--holdout", type=float, default=0.2, help="fraction of images held out for validation")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--steps-per-epoch", type=int, default=0,
                       help="steps per epoch (default 0: as many tiles as the tiler cuts from the training images)")
    train.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: all)")
    train.add_argument("--init", help="start from these weights (folder or shipped name), e.g. to train the shipped "
                                      "weights further; a checkpoint in OUT takes precedence")
    train.add_argument("--backbone", choices=RESNETS,
                       help="backbone (default: resnet18; 34/50 for the paper's backbone ablation)")
    train.add_argument("--no-sam", action="store_true", help="BFFN without its self-attention modules (Table 4)")
    train.add_argument("--fusion", choices=["bffm", "sum", "concat"],
                       help="BFFN's fusion: bffm (default), or a plain sum/concatenation instead (Table 4)")
    train.add_argument("--sampling", choices=["grid", "random"],
                       help="grid: the tiles the station's tiler cuts (default); random: random crops")
    train.add_argument("--aux-weight", type=float, help="weight of the auxiliary losses (default: 1)")
    train.add_argument("--split", help="a split.json with train/validation/holdout lists (`engines split`): train "
                                       "on train, validate on validation after each epoch, never touch holdout "
                                       "(overrides --holdout); classifiers too, e.g. GR on magnetic-tile's "
                                       "part-wise split")
    train.add_argument("--init-backbone", metavar="WEIGHTS",
                       help="start the ResNet backbone from any network trained here on the same ResNet depth "
                            "(folder or shipped name, e.g. gr-neu-seg; a classifier such as gr may start from a "
                            "segmentation network's backbone); RGB first convolutions are summed to grey. "
                            "The source is recorded in config.json")
    train.add_argument("--backbone-lr", type=float, metavar="FRACTION",
                       help="the ResNet backbone's learning rate as a fraction of --lr (default 1; e.g. 0.1 with "
                            "--init-backbone, so the transferred features change slowly)")
    train.add_argument("--defect-fraction", type=float,
                       help="share of crops centred on a defect (default: 0.5)")
    train.add_argument("--class-balanced", action="store_true",
                       help="defect crops draw a defect class uniformly, then an image of it (rare classes)")
    train.add_argument("--hard-negatives", type=float, metavar="FRACTION",
                       help="share of crops drawn from hard negatives: tiles of defect-free training images where "
                            "the model fires (re-mined with the current model every --mine-every epochs)")
    train.add_argument("--mine-every", type=int, help="epochs between hard-negative minings (default: 1)")
    train.add_argument("--gain-target", type=float, metavar="GREY",
                       help="exposure normalisation that travels with the weights: every frame (in training, "
                            "engines eval and on the line) is scaled by one gain so its median grey becomes GREY "
                            "(e.g. 110); default 0 = frames as they come")
    train.add_argument("--border", type=int, metavar="PX",
                       help="mirrored context that travels with the weights: every frame gets PX pixels of "
                            "mirrored image on each side before it is tiled (and loses them after stitching), so a "
                            "defect at the top or left edge is seen with context (e.g. 32); default 0")
    train.add_argument("--photometric", choices=["jitter", "exposure"],
                       help="photometric augmentation: jitter (default: contrast x0.8-1.2, +-20 grey) or exposure "
                            "(a gain x0.45-2.2 and gamma 0.8-1.25: the span of the data's lightings)")
    train.add_argument("--edge-fraction", type=float, metavar="FRACTION",
                       help="share of defect crops centred on a defect pixel within 8 px of the frame's edge (for "
                            "images that have one; breaks live there); default 0")
    train.add_argument("--paste-fraction", type=float, metavar="FRACTION",
                       help="share of plain crops of defect-free images that get a real defect region of a "
                            "training image pasted in (flipped, rotated, grey-matched, blended; classes drawn "
                            "uniformly); default 0")
    train.add_argument("--context", type=float, metavar="FRACTION",
                       help="a context pass that travels with the weights: the whole frame, shrunk to one tile, is "
                            "scored too and joins the tiles' score map by the maximum (in training, engines eval "
                            "and on the line), so a defect larger than a tile (a band of another brightness) is "
                            "seen whole; FRACTION of the training crops are such shrunk whole images (e.g. 0.2); "
                            "default 0 = off")
    train.add_argument("--whole-crops", type=float, metavar="FRACTION",
                       help="FRACTION of the training crops are whole images shrunk to one tile, as --context makes "
                            "them, but without the context pass on the line: the tiles learn defects at a smaller "
                            "scale and whole (e.g. 0.2); default 0")
    train.add_argument("--ema", type=float, metavar="DECAY",
                       help="keep an exponential moving average of the weights (DECAY per step, e.g. 0.999: about "
                            "the last 1,000 steps; warmed up over the first steps) and validate, keep as best/ and "
                            "write that average instead of the last step's weights: a steadier network and a "
                            "steadier choice of epoch; it is checkpointed and resumed; default 0 = off")
    train.add_argument("--no-channels-last", action="store_true",
                       help="keep NCHW tensors (channels-last gives the same arithmetic, faster on the CPU)")
    cls = train.add_argument_group(f"classifiers ({', '.join(CLASSIFICATION_MODELS)}; paper 001)")
    cls.add_argument("--size", type=int, help="input side: patches are resized to SIZE×SIZE (default: 224)")
    cls.add_argument("--pretrain-epochs", type=int,
                     help="GR phase-1 epochs (default: as --epochs; 0 = the 'without pre-training' ablation)")
    cls.add_argument("--momentum", type=float, help="SGD momentum (default: 0.9)")
    cls.add_argument("--weight-decay", type=float, help="SGD weight decay (default: 5e-4)")
    cls.add_argument("--bank-size", type=int, help="GR reference-bank images (default: 31 = batch - 1)")
    cls.add_argument("--in-channels", type=int, choices=[1, 3], help="network input channels (default: 3)")
    cls.add_argument("--no-augment", action="store_true", help="no flips, rotations or colour jitter")
    cls.add_argument("--label-dim", type=int, help="GR label-level feature size d (default: 512)")
    cls.add_argument("--no-gr", action="store_true", help="GR without its GR-module (Table 3 ablation)")
    cls.add_argument("--linear", action="store_true", help="GR with a linear instead of cosine classifier (Table 4)")
    cls.add_argument("--alpha", type=float, help="GR SupCon weight alpha (default: 0.4)")
    cls.add_argument("--tau", type=float, help="GR SupCon temperature tau (default: 0.1)")
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    train.add_argument("--amp", action="store_true",
                       help="mixed precision: float16 with gradient scaling on CUDA, bfloat16 on the CPU")
    train.add_argument("--no-validate", action="store_true", help="skip the held-out score after each epoch")
    train.add_argument("--validate-as", choices=["quick", "station"],
                       help="how each epoch is validated (segmentation): quick = whole images at 0.5 and 30 px "
                            "(default; a trend line); station = as the station judges, tiles, stitching and the "
                            "rule these images teach (its F1 picks best/; slower: about a station eval per epoch)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=run_train)

    sp = sub.add_parser("split", help="cut a data folder into train / validation / held-out, stratified by class",
                        description="Writes a split.json with three image lists, each image-level class in the same "
                                    "proportions, by physical part unless --group-by file: all views of one part "
                                    "(a tile's exposures) fall on one side, so validation and held-out measure new "
                                    "parts. `engines train --split` trains on train and validates on "
                                    "validation; decision rules are learned on validation; held-out is reported "
                                    "once, at the end. With --keep, an earlier two-way split's training images "
                                    "stay in training and its held-out images are shared between the new "
                                    "validation and held-out parts (so weights trained on it can go on).")
    sp.add_argument("--data", required=True, help="data folder (generic, magnetic-tile or NEU-Seg layout)")
    sp.add_argument("--out", required=True, help="split.json to write")
    sp.add_argument("--validation", type=float, default=0.1, help="share of images for validation (default: 0.1)")
    sp.add_argument("--holdout", type=float, default=0.1, help="share of images held out (default: 0.1)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--group-by", choices=["part", "file"], default="part",
                    help="part (default): every image of one physical part (e.g. a tile's six exposures) on one "
                         "side, found by file-name runs and checked by image similarity; file: each image alone "
                         "(leaks a part's other views into training)")
    sp.add_argument("--max-gap", type=int, default=300,
                    help="--group-by part: files of one class whose running numbers (expK_num_N) differ by at most "
                         "this are one part (default: 300)")
    sp.add_argument("--min-similarity", type=float, default=0.75,
                    help="--group-by part: images of one class and size whose high-passed thumbnails correlate at "
                         "least this are one part, whatever their names (default: 0.75)")
    sp.add_argument("--folds", type=int, metavar="K",
                    help="k-fold over parts (--group-by part): the parts are dealt into K folds once (the same for "
                         "every --fold with the same --seed), fold --fold is held out, --validation of the images "
                         "comes from the other folds' parts and the rest trains; run it for --fold 0 .. K-1 and add "
                         "up the held-out figures: every image is held out once (--holdout is then 1/K)")
    sp.add_argument("--fold", type=int, metavar="I", help="with --folds: which fold is held out (0 .. K-1)")
    sp.add_argument("--keep", help="an earlier split.json whose training images stay in training (--group-by file)")
    sp.add_argument("--not-train", help="a folder of images (e.g. the bundled demo frames) that must not be in the "
                                        "training part; matched by file name without its class prefix")
    sp.add_argument("--train-share", type=float, metavar="F",
                    help="keep only F of each class's training parts in training (a seeded choice; with one --seed "
                         "a smaller F keeps a subset of a larger one's parts), the rest listed as unused; "
                         "validation and held-out stay as they are: points of a learning curve (what more labelled "
                         "parts would give); default 1 = all")
    sp.set_defaults(func=run_split)

    cv = sub.add_parser("curves", help="plot validation F1 and pixel IoU against training steps for runs",
                        description="Reads each run's epoch records (train.log of a run folder, even while it "
                                    "trains, or the history in a weights folder's config.json) and draws image-level "
                                    "F1 and pixel IoU against training steps, one line per run.")
    cv.add_argument("runs", nargs="+", help="run folders, weights folders or shipped names")
    cv.add_argument("--labels", help="comma-separated labels, one per run (default: the run names)")
    cv.add_argument("--offset", help="comma-separated step offsets, one per run (a run started from another's "
                                     "weights continues its step count)")
    cv.add_argument("--out", required=True, help="PNG to write")
    cv.add_argument("--title", default="")
    cv.add_argument("--json", help="also write the plotted points here")
    cv.set_defaults(func=run_curves)

    ev = sub.add_parser("eval", help="judge images exactly as the station does and score the verdicts",
                        description="Tiles each image, runs the engine, stitches, applies the decision rules and "
                                    "compares the PASS/FAIL verdicts with the image-level truth (precision, recall, "
                                    "F1, FP+FN) plus pixel IoU.")
    ev.add_argument("--weights", required=True, help="weights folder or shipped name")
    ev.add_argument("--data", required=True, help="data folder (generic, magnetic-tile or NEU-Seg layout)")
    ev.add_argument("--split", help="a split.json written by `engines train`: judge only one part of it")
    ev.add_argument("--split-part", default="holdout", choices=["holdout", "validation", "train"])
    ev.add_argument("--learn-min-areas", metavar="A,B,...",
                    help="also judge every threshold of the sweep with each of these minimum areas (px) and report "
                         "the rule with the best image-level F1 (best_rule); learn rules on --split-part "
                         "validation, then report held-out once with them")
    _judging_options(ev)
    ev.add_argument("--threshold", type=float,
                    help="defect score threshold (default: the rule `engines accept` learned and wrote into the "
                         "weights' config.json, so eval judges as a station running them; without one 0.5; "
                         "classifiers: a label is present above it, default 0.5)")
    ev.add_argument("--mode", choices=SCORING_MODES, default="batch",
                    help="GR: relate each patch to its batch (the patches of one part) or to the stored reference "
                         "bank (each patch alone, deterministic); both are scored and their agreement reported")
    ev.add_argument("--min-area", type=int,
                    help="smallest defect area in pixels (default: the weights' learned rule, else 30)")
    ev.add_argument("--json", help="also write the report, with every image's verdict and the threshold sweep, to "
                                   "this file (and the precision-recall curve beside it, FILE.pr.png)")
    ev.add_argument("--curve", help="write the image-level precision-recall curve (classifiers: the per-class "
                                    "precision/recall figure) to this PNG")
    ev.add_argument("--failures", help="save overlays of misjudged images (missed, false alarm) to this folder")
    ev.add_argument("--max-failures", type=int, default=12, help="at most this many overlays (default: 12)")
    ev.set_defaults(func=run_eval)

    acc = sub.add_parser(
        "accept", help="learn the decision rule on a split's validation part, judge held-out once, check the goals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Decide about segmentation weights honestly, as the station judges (tiles, stitching, rules):\n"
                    "  1. learn the rule (score threshold x minimum area) on the split's validation part only;\n"
                    "  2. with --against, learn the reference's own rule there too: does the candidate beat it?\n"
                    "  3. judge the held-out part once with the learned rule (and report, in hindsight, the\n"
                    "     best rule on held-out itself: what a better rule could give; never a rule to ship);\n"
                    "  4. check the held-out figures against the goals (F1, false alarms on defect-free images,\n"
                    "     pixel IoU, recall of every defect class with enough held-out images);\n"
                    "  5. with --line, judge both on the line's reviewed images the candidate did not train on;\n"
                    "  6. with --classifier, learn the label threshold of each class of a second opinion (GR) on\n"
                    "     validation too, fused with the segmenter's verdict as the station's [classifier] stage\n"
                    "     fuses it (FAIL on a defect or a label), and check the goals on the fused verdicts.\n"
                    "OUT gets validation.json, holdout.json (the `engines eval --json` reports) and acceptance.json.\n"
                    "Exit codes: 0 accepted, 1 a goal not met (or the reference not beaten), 2 bad input.",
        epilog="example:\n  engines accept --weights runs/bffn-tr2/best --against bffn-magnetic-tile \\\n"
               "      --data ../shared/data/magnetic-tile --split engines/weights/bffn-magnetic-tile/split.json \\\n"
               "      --out runs/accept-tr2")
    acc.add_argument("--weights", required=True, help="candidate weights folder or shipped name")
    acc.add_argument("--data", required=True, help="data folder (generic, magnetic-tile or NEU-Seg layout)")
    acc.add_argument("--split", required=True, help="a split.json with validation and holdout lists (`engines split`)")
    acc.add_argument("--out", required=True, help="folder for the reports")
    acc.add_argument("--against", metavar="WEIGHTS",
                     help="reference weights (e.g. the shipped ones): also learn their rule on validation and "
                          "accept the candidate only if its validation F1 is higher (or equal with fewer errors); "
                          "with --classifier the segmenters alone are compared")
    acc.add_argument("--line", action="append", metavar="DIR",
                     help="also judge both networks on the line's reviewed images (a folder from `engines dataset "
                          "--from-ledger`), each with the rule it learned on validation: the images the candidate's "
                          "run kept aside (its split.json, \"extra\"), or all of them when it did not train on DIR. "
                          "With --against, the candidate must make no more errors there than the reference. "
                          "Repeatable")
    acc.add_argument("--classifier", metavar="WEIGHTS",
                     help="a multi-label classifier (e.g. `engines train gr` on whole images) as a second opinion: "
                          "the label threshold of each of its classes is learned on validation for the fused "
                          "verdict (a class that only adds false alarms stays off, 1.0), held-out is judged fused, "
                          "and the thresholds are written into the classifier's config.json (\"judging\"), where a "
                          "recipe's [classifier] stage without `threshold` reads them (--against and --line still compare the "
                          "segmenters alone)")
    acc.add_argument("--classifier-patch", type=int, default=0, metavar="PX",
                     help="the classifier's patch side on the frame, as the recipe's [classifier] patch (default 0: "
                          "the whole frame is one image)")
    acc.add_argument("--classifier-mode", choices=("bank", "batch"), default="bank",
                     help="GR's relations: to its reference bank (default; a part's labels do not depend on "
                          "other parts) or within each batch, as the recipe's [classifier] mode")
    acc.add_argument("--learn-min-areas", metavar="A,B,...",
                     help="minimum areas (px) the rule is learned over, with every threshold of the sweep "
                          "(default: 10,20,30,50,80,120,200)")
    acc.add_argument("--keep-config", action="store_true",
                     help="do not write the learned rule into the weights' config.json (by default it is written "
                          "there, key \"judging\", so `engines eval` and other tools judge with it)")
    acc.add_argument("--goal-f1", type=float, default=0.95, help="held-out image-level F1 at least (default: 0.95)")
    acc.add_argument("--goal-false-alarms", type=float, default=0.03,
                     help="held-out defect-free images judged FAIL, at most this share (default: 0.03)")
    acc.add_argument("--goal-exposure-spread", type=float, default=0.05,
                     help="recall, and false alarms, may differ by at most this much between the exposures of "
                          "the images (expK_ in their names; default: 0.05); the held-out report lists both per "
                          "exposure, and recall at the image edge and inside it")
    acc.add_argument("--goal-iou", type=float, default=0.5, help="held-out pixel IoU at least (default: 0.5)")
    acc.add_argument("--goal-class-recall", type=float, default=0.90,
                     help="held-out recall of each defect class at least (default: 0.90) ...")
    acc.add_argument("--class-min-images", type=int, default=10,
                     help="... for classes with at least this many held-out images (default: 10)")
    _judging_options(acc)
    acc.set_defaults(func=run_accept)

    cmp = sub.add_parser("compare", help="train and judge several networks on the same k folds; write the tables",
                         description="The paper's protocol: every model is trained on k-1 folds and judged on the "
                                     "remaining one, for each of the k folds; OUT/results.md gets mean ± std of "
                                     "F1, precision, recall, FP+FN, pixel IoU and Dice per model and their "
                                     "throughput measured side by side on one backend. Re-running resumes.")
    cmp.add_argument("--data", required=True, help="data folder (generic, magnetic-tile or NEU-Seg layout)")
    cmp.add_argument("--out", required=True, help="folder for the runs, compare.json and results.md")
    cmp.add_argument("--folds", type=int, default=4, help="number of folds (default: 4, as in the paper)")
    cmp.add_argument("--only-folds", help="comma-separated fold numbers to run now (default: all)")
    cmp.add_argument("--group-by", choices=["part", "file"], default="part",
                     help="segmentation: part (default) keeps every view of a physical part (a tile's exposures) in "
                          "one fold, and in one side of each fold's validation cut, as `engines split` does; file: "
                          "each image alone")
    cmp.add_argument("--models", default="bffn,fcn,unet,deeplabv3plus,bisenet",
                     help="comma-separated models; ablations: bffn-nosam, bffn-sum, bffn-concat, bffn-nosam-sum "
                          "(default: bffn,fcn,unet,deeplabv3plus,bisenet); or classifiers on multi-label data: "
                          "gr, resnet50, vgg16, inceptionv3, the ablations gr-nogr, gr-nopretrain, gr-linear, and "
                          "gr-resnet50 (GR on the paper's backbone whatever --backbone says)")
    cmp.add_argument("--epochs", type=int,
                     help="epochs per run (default: the paper's, 30; classifiers 40 per phase). Classifiers get an "
                          "equal budget: GR's two phases together; one-phase models train that many epochs")
    cmp.add_argument("--steps-per-epoch", type=int, default=0, help="steps per epoch (default: one pass of the data)")
    cmp.add_argument("--batch", type=int, help="default: 16 tiles (segmentation), 32 images (classifiers)")
    cmp.add_argument("--lr", type=float, help="default: 5e-4 (segmentation, RMSprop), 1e-3 (classifiers, SGD)")
    cmp.add_argument("--optimizer", choices=["rmsprop", "adam"], help="segmentation optimizer (default: rmsprop)")
    cmp.add_argument("--loss", choices=["ce", "ce+dice"], help="segmentation loss (default: ce)")
    cmp.add_argument("--size", type=int, help="classifiers: input side (default: 224)")
    cmp.add_argument("--pretrain-epochs", type=int, help="GR phase-1 epochs (default: as --epochs)")
    cmp.add_argument("--backbone", choices=RESNETS,
                     help="GR's backbone (default: resnet50, the paper's); the torchvision baselines are fixed")
    cmp.add_argument("--no-validate", action="store_true", help="skip the per-epoch validation score")
    cmp.add_argument("--device", default="auto")
    cmp.add_argument("--amp", action="store_true")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                     help="defect score threshold (default: 0.5 = argmax)")
    cmp.add_argument("--min-area", type=int, default=DEFAULT_MIN_AREA_PX,
                     help="smallest defect area in pixels (default: 30)")
    cmp.add_argument("--backend", default="onnxruntime", choices=backend_names(device="cpu"),
                     help="backend for judging and for the throughput figures (default: onnxruntime)")
    cmp.add_argument("--threads", type=int, default=0)
    cmp.add_argument("--bench-batch", type=int, default=32)
    cmp.add_argument("--bench-seconds", type=float, default=20.0, help="seconds of side-by-side throughput (0: skip)")
    cmp.add_argument("--quiet", action="store_true", help="no progress bars")
    cmp.set_defaults(func=run_compare)

    synth = sub.add_parser("synth", help="write a seeded synthetic data set (camera lenses or line-scan screens)",
                           description="lens: camera-lens cover glass for segmentation, a clear glass disc inside a black ink ring whose "
                                       "texture looks like defects (never labelled), with scratches, foreign "
                                       "objects, white spots, dust, dirt and collapsing edges, some at low "
                                       "contrast, and exact masks (class ids). screen: dark line-scan screens with column striping, bubbles, pinholes, "
                                       "scratches and tin ash, cut into patches by the station's tiler, each "
                                       "labelled with the defects it holds more than 20 % of (multi-label). "
                                       "Same seed, same bytes.")
    synth.add_argument("kind", choices=["lens", "screen"], help="what to generate")
    synth.add_argument("--out", required=True, help="folder to write (generic layout: images/, masks/)")
    synth.add_argument("--count", type=int, default=200, help="number of images (default: 200)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=512, help="image side in pixels (default: 512)")
    synth.add_argument("--tile", type=int, default=256, help="screen: patch side in pixels (default: 256)")
    synth.add_argument("--defect-free", type=float,
                       help="probability that an image is defect-free (default: lens 0.5, screen 0.2)")
    synth.set_defaults(func=run_synth)

    cam = sub.add_parser("cam", help="class activation maps of a classifier for chosen images (PNG)",
                         description="CAM (Zhou et al. 2016) for gr, resnet50 and inceptionv3; Grad-CAM for vgg16 "
                                     "(or any model with --method gradcam). Writes OUT/<image stem>.cam.png: the "
                                     "image and one overlay per class.")
    cam.add_argument("--weights", required=True, help="classifier weights folder")
    cam.add_argument("--data", required=True, help="a multi-label data folder or one image file")
    cam.add_argument("--out", required=True, help="folder for the PNGs")
    cam.add_argument("--names", help="comma-separated image names from the data folder (default: the first ones)")
    cam.add_argument("--limit", type=int, default=12, help="at most this many images (default: 12)")
    cam.add_argument("--size", type=int, default=0, help="input side (default: the weights' own)")
    cam.add_argument("--method", choices=["auto", "cam", "gradcam"], default="auto")
    cam.set_defaults(func=run_cam)

    export = sub.add_parser("export", help="export weights to ONNX (inference only, dynamic batch)")
    export.add_argument("--weights", required=True, help="weights folder or shipped name")
    export.add_argument("--out", required=True, help="ONNX file to write")
    export.add_argument("--tile", type=int, default=0, help="tile side (default: the one the weights were trained on)")
    export.add_argument("--mode", choices=SCORING_MODES, default="batch",
                        help="GR only: relations over the batch, or against the stored reference bank")
    export.set_defaults(func=run_export)

    build = sub.add_parser(
        "build", help="build an engine folder (ONNX Runtime, torch or TensorRT) with its manifest and parity check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export, optionally quantise or build a TensorRT plan, measure parity with the torch fp32 "
                    "reference, and write DIR/manifest.json (versions, GPU, SHA-256 of every file). Loading later "
                    "refuses the folder when any of that no longer matches.",
        epilog="examples:\n"
               "  engines build --weights bffn-magnetic-tile --backend onnxruntime --out engines-built/bffn-ort\n"
               "  engines build --weights runs/bffn-mt --into-weights     # the ONNX export a station without torch "
               "runs\n"
               "  engines build --weights bffn-magnetic-tile --backend tensorrt --precision fp16 --batch 1:64:256 "
               "--out engines-built/bffn-trt\n"
               "  engines build --weights runs/gr-neu --backend onnxruntime --precision int8 "
               "--calibration cam-A --out engines-built/gr-int8")
    build.add_argument("--weights", required=True, help="weights folder (a training run) or shipped name")
    build.add_argument("--model", choices=MODEL_NAMES,
                       help="the network the weights must hold (a check; default: whatever they hold)")
    build.add_argument("--backend", choices=backend_names(), default="onnxruntime")
    build.add_argument("--precision", choices=all_precisions(), default="fp32",
                       help="fp16: tensorrt, torch (CUDA; CPU for parity checks only) or onnxruntime on CUDA; "
                            "int8: tensorrt or onnxruntime, calibrated on --calibration images")
    build.add_argument("--batch", default="1:32:64", help="batch profile MIN:OPT:MAX (TensorRT's optimization "
                                                           "profile; torch on CUDA captures a CUDA graph for OPT)")
    build.add_argument("--tile", type=int, default=0, help="tile / patch side (default: the weights')")
    build.add_argument("--device", help="cpu or cuda[:N] (default: cuda for tensorrt, else cpu)")
    build.add_argument("--mode", choices=SCORING_MODES, default="batch", help="GR only: scoring mode")
    build.add_argument("--workspace", type=int, default=2048, help="TensorRT workspace limit in MiB")
    build.add_argument("--calibration", help="int8: a calibration profile (calibration int8 add) or image folder")
    build.add_argument("--data", help="images for the parity check at build (default: seeded random tiles; int8: "
                                      "the calibration images)")
    build.add_argument("--recipe", help="int8: recipe whose tiling and rules judge the verdicts the build must keep "
                                        "(default: magnetic_tile); below the int8 tolerances nothing is written")
    build.add_argument("--int8-float", metavar="GROUPS",
                       help="int8, onnxruntime: comma-separated operator groups kept in floating point (default: "
                            f"{','.join(DEFAULT_EXCLUDE)}; choose from {', '.join(GROUPS)}; 'none' quantises all)")
    build.add_argument("--no-int8-guard", action="store_true",
                       help="int8 segmentation, onnxruntime: no guard; by default tiles whose int8 defect scores "
                            "come near the recipe's threshold are scored again by the fp32 graph (docs/INT8.md)")
    build.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    build.add_argument("--out", help="engine folder to write (replaced once the new one is built)")
    build.add_argument("--into-weights", action="store_true",
                       help="instead of an engine folder, write the ONNX export (fp32, every scoring mode) into the "
                            "weights folder itself with onnx.json, its manifest of hashes: the form shipped weights "
                            "take, which a station without torch opens with ONNX Runtime (kilobytes: the graph reads "
                            "its parameters from model.safetensors)")
    build.set_defaults(func=_build)

    ver = sub.add_parser("verify", help="run an engine and the torch reference on real images; exit 1 if they "
                                        "disagree beyond the engine precision's tolerances",
                         description="Reports verdict agreement, mask IoU and score differences (segmentation) or "
                                     "label agreement and score differences (classifiers), through the station's "
                                     "own inspection code.")
    ver.add_argument("engine", help="engine folder (engines build --out)")
    ver.add_argument("--against", default="torch", help="torch (fp32 CPU, from the weights in the folder) or "
                                                        "another engine folder")
    ver.add_argument("--data", required=True, help="image folder (any layout engines eval reads)")
    ver.add_argument("--recipe", help="recipe whose tiling and rules judge verdicts (default: magnetic_tile)")
    ver.add_argument("--limit", type=int, default=0, help="use this many images spread over the folder (0 = all)")
    ver.add_argument("--batch", type=int, default=32, help="classifiers: images per batch")
    ver.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    ver.add_argument("--json", help="write the full report (every differing image) here")
    ver.set_defaults(func=_verify)

    bench = sub.add_parser("bench", help="tiles/s, latency p50/p99 and memory of an engine; with --vs, two engines "
                                         "measured in turns in one run so their ratio holds on a busy machine")
    bench.add_argument("engine", help="engine folder")
    bench.add_argument("--vs", help="another engine folder, or 'torch' for the torch fp32 reference of the same "
                                    "weights")
    bench.add_argument("--batch", type=int, default=32, help="tiles per call")
    bench.add_argument("--seconds", type=float, default=20.0, help="measuring time, shared by the engines")
    bench.add_argument("--threads", type=int, default=0, help="CPU threads per engine (0 = all cores)")
    bench.add_argument("--json", help="write the figures here")
    bench.set_defaults(func=run_bench)

    ds = sub.add_parser(
        "dataset", help="a training data set from the line's reviews; masks to and from labelling tools (COCO, labelme)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="--from-ledger: write a data folder in the layout `engines train --data` reads from what QA said\n"
                    "of the station's verdicts (`station review --mark`; the latest review of a row counts):\n"
                    "  false rejects (FAIL marked good) and confirmed passes: images/, no mask (defect-free);\n"
                    "  confirmed rejects (FAIL marked defect): images/ with the predicted mask in masks/;\n"
                    "  escapes (PASS marked defect), and rejects without a predicted mask: needs_mask/, listed in\n"
                    "  needs_mask/listing.json, for a labeller to draw the mask.\n"
                    "NOT_INSPECTED rows and rows whose image is gone are skipped and counted. Every image's ledger,\n"
                    "row, station, part and review are in DIR/provenance.jsonl; the summary in DIR/line_dataset.json.\n"
                    "An existing DIR is refused; --force replaces it (masks imported into it too: import again).\n"
                    "--export-coco / --export-labelme write a data folder's masks as polygons for a labelling tool\n"
                    "(one COCO file, or one labelme JSON per image); --import-coco / --import-labelme read them\n"
                    "back: the masks of the images named are replaced, and an image in needs_mask/ that gets a\n"
                    "mask moves into images/. Exit status: 0 done, 2 bad input (one line; nothing is changed).",
        epilog="examples:\n"
               "  engines dataset --from-ledger station-data/rejects.db --out line-data\n"
               "  engines dataset --from-ledger line-1/rejects.db --from-ledger line-2/rejects.db --out line-data "
               "--json\n"
               "  engines dataset --export-coco line-data --out line-data.coco.json\n"
               "  engines dataset --import-coco line-data.coco.json --into line-data\n"
               "  engines dataset --export-labelme line-data --out line-data.labelme\n"
               "  engines dataset --import-labelme line-data.labelme --into line-data\n"
               "  engines train bffn --init bffn-magnetic-tile --data line-data --out runs/bffn-line")
    what = ds.add_mutually_exclusive_group(required=True)
    what.add_argument("--from-ledger", "--db", action="append", metavar="DB", dest="from_ledger",
                      help="a station's ledger (the recipe's [log] db); repeat for more stations or ledgers")
    what.add_argument("--export-coco", metavar="DIR", help="write DIR's masks as one COCO segmentation file (--out)")
    what.add_argument("--export-labelme", metavar="DIR",
                      help="write DIR's masks as labelme files, one NAME.json per image, into the folder --out")
    what.add_argument("--import-coco", metavar="FILE", help="read a COCO segmentation file's masks into --into DIR")
    what.add_argument("--import-labelme", metavar="PATH",
                      help="read labelme files (a folder of them, or one) into --into DIR")
    ds.add_argument("--out", help="--from-ledger: the data folder to write; --export-coco: the JSON file; "
                                  "--export-labelme: the folder for the JSON files")
    ds.add_argument("--into", metavar="DIR", help="the data folder an import changes")
    ds.add_argument("--force", action="store_true", help="replace an existing --out")
    ds.add_argument("--json", action="store_true", help="print the summary as JSON")
    ds.set_defaults(func=_dataset)

    lister = sub.add_parser("list", help="engine folders here (and in the cache), their manifests, and whether "
                                         "each can run on this machine")
    lister.add_argument("roots", nargs="*", default=["engines-built"],
                        help="folders to search (default: ./engines-built; the cache is always searched)")
    lister.add_argument("--json", action="store_true", help="print JSON")
    lister.add_argument("--backends", action="store_true",
                        help="list the declared backends instead (engines.backends.registry): their devices, "
                             "precisions, and whether each runs here, or why not")
    lister.set_defaults(func=run_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command in NEEDS_TORCH:
            require_train(f"`engines {args.command}`")  # one line with the install line, before any work
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a user error: one line, exit 2; anything else: a bug, its traceback, 1
        return report_error("engines", exc)


if __name__ == "__main__":
    sys.exit(main())
