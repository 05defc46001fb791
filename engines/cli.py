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
    engines eval --weights bffn-magnetic-tile --data ../shared/data/magnetic-tile --json eval.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# Top layer: the command wires the calibration profiles' INT8 sets into `engines build --calibration PROFILE`
# (calibration.int8 registers them with engines.build; the engines package itself never imports calibration).
import calibration.int8  # noqa: F401
from station.recipe import load_recipe, shipped_recipe_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SEGMENTATION_MODELS = ("bffn", "fcn", "unet", "deeplabv3plus", "bisenet")  # as in engines.models (kept import-free)
CLASSIFICATION_MODELS = ("gr", "resnet50", "vgg16", "inceptionv3")
SEG_ONLY = {"tile": None, "optimizer": None, "loss": None, "init": None, "no_sam": False, "fusion": None,
            "sampling": None, "aux_weight": None, "split": None, "defect_fraction": None, "class_balanced": False,
            "hard_negatives": None, "mine_every": None, "init_backbone": None}
CLS_ONLY = {"pretrain_epochs": None, "momentum": None, "weight_decay": None, "size": None, "bank_size": None,
            "in_channels": None, "no_augment": False, "label_dim": None, "no_gr": False, "linear": False,
            "alpha": None, "tau": None}


def _train(args: argparse.Namespace) -> int:
    from engines.train import TrainSettings, train_segmentation

    import os

    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        log_file = Path(args.out) / "train.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(handler)
    classifier = args.model in CLASSIFICATION_MODELS
    wrong = [f"--{k.replace('_', '-')}" for k, unset in (SEG_ONLY if classifier else CLS_ONLY).items()
             if getattr(args, k) not in (unset,)]
    if wrong:
        kind = "segmentation networks" if classifier else "classifiers"
        raise ValueError(f"{', '.join(wrong)} apply only to {kind}, not to {args.model}")
    if classifier:
        return _train_classifier(args)
    settings = TrainSettings(model=args.model, data=args.data, out=args.out, epochs=args.epochs or 30,
                             batch=args.batch or 16, lr=args.lr or 5e-4, tile=args.tile or 128, holdout=args.holdout,
                             seed=args.seed, steps_per_epoch=args.steps_per_epoch, threads=args.threads,
                             optimizer=args.optimizer or "rmsprop", loss=args.loss or "ce", init=args.init or "",
                             device=args.device, amp=args.amp, validate=not args.no_validate,
                             aux_weight=1.0 if args.aux_weight is None else args.aux_weight,
                             sampling=args.sampling or "grid", model_config=_model_config(args),
                             split=args.split or "", init_backbone=args.init_backbone or "",
                             defect_fraction=0.5 if args.defect_fraction is None else args.defect_fraction,
                             class_balanced=args.class_balanced, hard_negatives=args.hard_negatives or 0.0,
                             mine_every=args.mine_every or 1, channels_last=not args.no_channels_last)
    final = train_segmentation(settings, progress=not args.quiet)
    if main_process:
        print(json.dumps(final, indent=2))
    return EXIT_OK


def _train_classifier(args: argparse.Namespace) -> int:
    from engines.train_cls import ClsTrainSettings, train_classifier

    config = {}
    if args.backbone:
        config["backbone"] = args.backbone
    for key, value in (("label_dim", args.label_dim), ("alpha", args.alpha), ("tau", args.tau)):
        if value is not None:
            config[key] = value
    if args.no_gr:
        config["use_gr"] = False
    if args.linear:
        config["cosine"] = False
    if config and args.model != "gr":
        raise ValueError(f"{', '.join(config)} are GR options; {args.model} takes none")
    settings = ClsTrainSettings(
        model=args.model, data=args.data, out=args.out, epochs=args.epochs or 40,
        pretrain_epochs=-1 if args.pretrain_epochs is None else args.pretrain_epochs, batch=args.batch or 32,
        lr=args.lr or 1e-3, momentum=0.9 if args.momentum is None else args.momentum,
        weight_decay=5e-4 if args.weight_decay is None else args.weight_decay, size=args.size or 224,
        holdout=args.holdout, seed=args.seed, threads=args.threads, device=args.device, amp=args.amp,
        steps_per_epoch=args.steps_per_epoch, bank_size=31 if args.bank_size is None else args.bank_size,
        model_config=config, in_channels=args.in_channels or 3, augment=not args.no_augment,
        validate=not args.no_validate)
    final = train_classifier(settings, progress=not args.quiet)
    print(json.dumps(final, indent=2, default=str))
    return EXIT_OK


def _split(args: argparse.Namespace) -> int:
    from engines.data.segmentation import load_dataset, three_way_split

    samples = load_dataset(args.data)
    keep = json.loads(Path(args.keep).read_text()) if args.keep else None
    split = three_way_split(samples, args.validation, args.holdout, args.seed, keep=keep)
    if args.not_train:
        from engines.data.segmentation import IMAGE_SUFFIXES

        def key(name: str) -> str:  # "MT_Crack/exp1_x.jpg" and "crack_exp1_x.jpg" -> "crack/exp1_x"
            path = Path(name)
            if path.parent.name.startswith("MT_"):
                return f"{path.parent.name[3:].lower()}/{path.stem}"
            return path.stem.replace("_", "/", 1) if "_" in path.stem else path.stem

        kept_out = {key(p.name) for p in Path(args.not_train).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        leaked = [n for n in split["train"] if key(n) in kept_out or Path(n).stem in kept_out]
        if leaked:
            print(f"error: {len(leaked)} images of {args.not_train} fall in the training part "
                  f"(first: {leaked[0]}); pick another --seed or --keep a split that holds them out",
                  file=sys.stderr)
            return EXIT_USAGE
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(split, indent=1) + "\n")
    counts = {part: len(names) for part, names in split.items()}
    print(json.dumps({"out": str(out), **counts}))
    return EXIT_OK


def _curves(args: argparse.Namespace) -> int:
    from engines.curves import curve_points, plot_learning_curves, read_history

    labels = args.labels.split(",") if args.labels else list(args.runs)
    offsets = [int(v) for v in args.offset.split(",")] if args.offset else [0] * len(args.runs)
    if len(labels) != len(args.runs) or len(offsets) != len(args.runs):
        raise ValueError(f"give one label and one offset per run ({len(args.runs)} runs)")
    plotted = []
    for run, label, offset in zip(args.runs, labels, offsets):
        history, per_epoch = read_history(run)
        plotted.append((label, curve_points(history, per_epoch, offset)))
    path = plot_learning_curves(plotted, args.out, title=args.title)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(plotted), indent=1) + "\n")
    print(path)
    return EXIT_OK


def _model_config(args: argparse.Namespace) -> dict:
    """Network options from the command line (only those given, so each network keeps its own defaults)."""
    config = {}
    if args.backbone:
        config["backbone"] = args.backbone
    if args.model in CLASSIFICATION_MODELS:
        return {}
    if args.model == "bffn":
        if args.no_sam:
            config["use_sam"] = False
        if args.fusion:
            config["fusion"] = args.fusion
    elif args.no_sam or args.fusion:
        raise ValueError("--no-sam and --fusion are BFFN's ablation switches; they do not apply to " + args.model)
    return config


def _export(args: argparse.Namespace) -> int:
    from engines.export import export_onnx
    from engines.weights import resolve_weights

    bundle = resolve_weights(args.weights)
    path = export_onnx(bundle, Path(args.out), tile=args.tile or bundle.tile, mode=args.mode)
    print(path)
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    from engines.build import BuildSettings, build, parse_batch

    settings = BuildSettings(weights=args.weights, backend=args.backend, out=args.out, precision=args.precision,
                             batch=parse_batch(args.batch), tile=args.tile, device=args.device or "",
                             mode=args.mode, model=args.model or "", workspace_mib=args.workspace,
                             calibration=args.calibration or "", data=args.data or "", threads=args.threads)
    manifest = build(settings)
    parity = manifest["parity"]
    print(json.dumps({"engine": args.out, "model": manifest["model"], "backend": manifest["backend"],
                      "precision": manifest["precision"], "device": manifest["device"], "tile": manifest["tile"],
                      "batch": manifest["batch"], "build_seconds": manifest["build_seconds"], "parity": parity},
                     indent=2))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from engines.verify import verify

    # a segmentation engine is judged with a station recipe's tiling and rules (top layer: the command reads it)
    name = args.recipe or "magnetic_tile"
    recipe = load_recipe(name if Path(name).suffix == ".toml" else shipped_recipe_path(name))
    report = verify(args.engine, args.data, against=args.against, recipe=recipe, limit=args.limit,
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


def _bench(args: argparse.Namespace) -> int:
    from engines.benchmark import bench_engines
    from engines.build import open_engine, reference_engine

    def opener(folder: str):
        if folder == "torch":
            return lambda: reference_engine(args.engine, threads=args.threads)
        return lambda: open_engine(folder, threads=args.threads)

    names = [args.engine] + ([args.vs] if args.vs else [])
    if len(set(names)) != len(names):
        raise ValueError("--vs names the same engine twice; compare two different engine folders")
    report = bench_engines({name: opener(name) for name in names}, batch=args.batch, seconds=args.seconds)
    result = {"batch": args.batch, "seconds": args.seconds, "threads": args.threads or "all", "engines": report}
    if args.vs:
        a, b = report[args.engine]["tiles_per_s"], report[args.vs]["tiles_per_s"]
        result["ratio"] = round(a / b, 3) if b else None
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from engines.build import engine_folders
    from engines.manifest import ManifestError, problems, read_manifest

    rows = []
    for folder in engine_folders(args.roots):
        try:
            manifest = read_manifest(folder)
            found = problems(folder, manifest)
        except ManifestError as exc:
            rows.append({"folder": str(folder), "runs_here": False, "why_not": [str(exc)]})
            continue
        rows.append({"folder": str(folder), "model": manifest["model"], "backend": manifest["backend"],
                     "precision": manifest["precision"], "device": manifest["device"], "tile": manifest["tile"],
                     "batch": manifest["batch"], "built_at": manifest.get("built_at"),
                     "weights_sha256": manifest["weights"]["sha256"][:16], "parity": manifest.get("parity"),
                     "runs_here": not found, "why_not": found, "rebuild": manifest.get("build_command")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no engine folders found (build one with `engines build`)")
        return EXIT_OK
    for row in rows:
        head = (f"{row['folder']}\n  {row.get('model', '?')} {row.get('backend', '?')} {row.get('precision', '?')} "
                f"on {row.get('device', '?')}, tile {row.get('tile', '?')}, batch {row.get('batch', '?')}, "
                f"built {row.get('built_at', '?')}")
        print(head)
        if row.get("parity"):
            p = row["parity"]
            print(f"  parity at build vs {p['against']}: decisions {p['decision_agreement']:.4f}, "
                  f"max |diff| {p['max_abs']:.2e} on {p['inputs']} inputs")
        print("  runs here: yes" if row["runs_here"] else "  runs here: NO - " + "; ".join(row["why_not"]))
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    from engines.backends.base import load_engine
    from engines.data.segmentation import load_dataset
    from engines.evaluate import evaluate_station_verdicts, save_pr_curve
    from inspection.inspector import Inspector
    from inspection_core.verdict import DecisionRules

    from engines.weights import resolve_weights

    if resolve_weights(args.weights).model in CLASSIFICATION_MODELS:
        return _eval_classifier(args)
    samples = load_dataset(args.data)
    if args.split:
        split = json.loads(Path(args.split).read_text())
        wanted = set(split[args.split_part])
        samples = [s for s in samples if s.name in wanted]
        if not samples:
            raise ValueError(f"no image of {args.data} is in the {args.split_part!r} list of {args.split}")
    engine = load_engine(args.weights, backend=args.backend, threads=args.threads)
    rules = DecisionRules(score_threshold=args.threshold, min_area_px=args.min_area)
    inspector = Inspector(engine, overlap=args.overlap, batch=args.batch, rules=rules)
    min_areas = [int(v) for v in args.learn_min_areas.split(",") if v.strip()] if args.learn_min_areas else []
    metrics, records = evaluate_station_verdicts(inspector, samples, failures_dir=args.failures,
                                                 max_failures=args.max_failures, min_areas=min_areas)
    sweep = metrics.pop("sweep")
    rule_sweep = metrics.pop("rule_sweep", None)
    if rule_sweep and args.split_part == "holdout" and args.split:
        print("warning: rules learned on the held-out part are optimistic; learn them with --split-part "
              "validation and report held-out once", file=sys.stderr)
    report = {"weights": str(args.weights), "engine_id": engine.engine_id, "data": str(args.data),
              "images": len(samples), "threshold": args.threshold, "min_area_px": args.min_area,
              "overlap": args.overlap, **metrics}
    print(json.dumps(report, indent=2))
    curve = args.curve or (str(Path(args.json).with_suffix(".pr.png")) if args.json else None)
    if curve:
        save_pr_curve(sweep, curve, title=f"{engine.engine_id} on {args.data} ({len(samples)} images, "
                                          f"min area {args.min_area} px)", operating_threshold=args.threshold)
        print(f"precision-recall curve: {curve}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({**report, "sweep": sweep, **({"rule_sweep": rule_sweep} if rule_sweep
                                                                             else {}),
                                               "images_detail": records}, indent=2) + "\n")
    return EXIT_OK


def _eval_classifier(args: argparse.Namespace) -> int:
    from engines.data.multilabel import load_multilabel
    from engines.evaluate_cls import evaluate_classifier, rounded, save_class_figure
    from engines.weights import resolve_weights

    bundle = resolve_weights(args.weights)
    data = load_multilabel(args.data)
    if args.split:
        wanted = set(json.loads(Path(args.split).read_text())[args.split_part])
        data = data.subset([i for i, s in enumerate(data.samples) if s.name in wanted])
        if not len(data):
            raise ValueError(f"no image of {args.data} is in the {args.split_part!r} list of {args.split}")
    threshold = 0.5 if args.threshold is None else args.threshold
    report, records = evaluate_classifier(bundle, data, mode=args.mode, batch=args.batch, threads=args.threads,
                                          threshold=threshold)
    report["data"] = str(args.data)
    print(json.dumps(rounded(report), indent=2, default=str))
    figure = args.curve or (str(Path(args.json).with_suffix(".classes.png")) if args.json else None)
    if figure:
        save_class_figure(report, figure, title=f"{bundle.model} on {args.data} ({len(data)} images, {args.mode})")
        print(f"per-class figure: {figure}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({**report, "images_detail": records}, indent=2, default=str) + "\n")
    return EXIT_OK


def _cam(args: argparse.Namespace) -> int:
    from engines.evaluate_cls import write_cams

    names = args.names.split(",") if args.names else None
    written = write_cams(args.weights, args.data, args.out, names=names, limit=args.limit, size=args.size,
                         method=args.method)
    for path in written:
        print(path)
    return EXIT_OK if written else EXIT_FAILED


def _compare(args: argparse.Namespace) -> int:
    from engines.compare import CompareSettings, run_compare

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "compare.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    train = {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "optimizer": args.optimizer,
             "loss": args.loss, "steps_per_epoch": args.steps_per_epoch, "threads": args.threads,
             "validate": not args.no_validate, "device": args.device, "amp": args.amp, "size": args.size,
             "pretrain_epochs": args.pretrain_epochs}
    train = {k: v for k, v in train.items() if v is not None and (k, v) not in
             {("steps_per_epoch", 0), ("threads", 0), ("validate", True), ("device", "auto"), ("amp", False)}}
    settings = CompareSettings(data=args.data, out=args.out, models=tuple(args.models.split(",")), folds=args.folds,
                               seed=args.seed, threshold=args.threshold, min_area_px=args.min_area,
                               backend=args.backend, threads=args.threads, bench_batch=args.bench_batch,
                               bench_seconds=args.bench_seconds,
                               only_folds=tuple(int(f) for f in args.only_folds.split(",")) if args.only_folds else (),
                               train=train, backbone=args.backbone or "")
    summary = run_compare(settings, progress=not args.quiet)
    print((out / "results.md").read_text())
    print(f"figures: {out / 'compare.json'}", file=sys.stderr)
    return EXIT_OK if summary["per_fold"] else EXIT_FAILED


def _synth(args: argparse.Namespace) -> int:
    if args.kind == "screen":
        from engines.data.synthetic_screen import ScreenSpec, write_screen_patches

        extra = {} if args.defect_free is None else {"defect_free_prob": args.defect_free}
        spec = ScreenSpec(size=(args.size, args.size), **extra)
        out = write_screen_patches(args.out, args.count, seed=args.seed, spec=spec, tile=args.tile)
        print(f"{args.count} synthetic line-scan screens ({args.size}x{args.size}) cut into {args.tile}-px patches in "
              f"{out} (images/, labels.csv with the 20 % rule, classes.txt, screens.json)")
        return EXIT_OK
    from engines.data.synthetic_lens import LensSpec, write_lens_dataset

    extra = {} if args.defect_free is None else {"defect_free_prob": args.defect_free}
    spec = LensSpec(size=(args.size, args.size), **extra)
    out = write_lens_dataset(args.out, args.count, seed=args.seed, spec=spec)
    print(f"{args.count} synthetic camera lenses ({args.size}x{args.size}) written to {out} "
          f"(images/, masks/ with class ids, classes.txt, truth.csv, lenses.json)")
    return EXIT_OK


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
    train.add_argument("model", choices=SEGMENTATION_MODELS + CLASSIFICATION_MODELS,
                       help="segmentation: bffn (paper 000) or a baseline on the same ResNet-18 backbone; "
                            "multi-label classification: gr (paper 001, two phases) or a torchvision baseline")
    train.add_argument("--data", required=True, help="data folder (generic images/+masks/, magnetic-tile, or NEU-Seg)")
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
    train.add_argument("--backbone", choices=["resnet18", "resnet34", "resnet50"],
                       help="backbone (default: resnet18; 34/50 for the paper's backbone ablation)")
    train.add_argument("--no-sam", action="store_true", help="BFFN without its self-attention modules (Table 4)")
    train.add_argument("--fusion", choices=["bffm", "sum", "concat"],
                       help="BFFN's fusion: bffm (default), or a plain sum/concatenation instead (Table 4)")
    train.add_argument("--sampling", choices=["grid", "random"],
                       help="grid: the tiles the station's tiler cuts (default); random: random crops")
    train.add_argument("--aux-weight", type=float, help="weight of the auxiliary losses (default: 1)")
    train.add_argument("--split", help="a split.json with train/validation/holdout lists (`engines split`): train "
                                       "on train, validate on validation after each epoch, never touch holdout "
                                       "(overrides --holdout)")
    train.add_argument("--init-backbone", metavar="WEIGHTS",
                       help="start the ResNet backbone from any network trained here on the same ResNet depth "
                            "(folder or shipped name, e.g. gr-neu-seg); RGB first convolutions are summed to grey. "
                            "The source is recorded in config.json")
    train.add_argument("--defect-fraction", type=float,
                       help="share of crops centred on a defect (default: 0.5)")
    train.add_argument("--class-balanced", action="store_true",
                       help="defect crops draw a defect class uniformly, then an image of it (rare classes)")
    train.add_argument("--hard-negatives", type=float, metavar="FRACTION",
                       help="share of crops drawn from hard negatives: tiles of defect-free training images where "
                            "the model fires (re-mined with the current model every --mine-every epochs)")
    train.add_argument("--mine-every", type=int, help="epochs between hard-negative minings (default: 1)")
    train.add_argument("--no-channels-last", action="store_true",
                       help="keep NCHW tensors (channels-last gives the same arithmetic, faster on the CPU)")
    cls = train.add_argument_group("classifiers (gr, resnet50, vgg16, inceptionv3; paper 001)")
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
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    sp = sub.add_parser("split", help="cut a data folder into train / validation / held-out, stratified by class",
                        description="Writes a split.json with three image lists, each image-level class in the same "
                                    "proportions. `engines train --split` trains on train and validates on "
                                    "validation; decision rules are learned on validation; held-out is reported "
                                    "once, at the end. With --keep, an earlier two-way split's training images "
                                    "stay in training and its held-out images are shared between the new "
                                    "validation and held-out parts (so weights trained on it can go on).")
    sp.add_argument("--data", required=True, help="data folder (generic, magnetic-tile or NEU-Seg layout)")
    sp.add_argument("--out", required=True, help="split.json to write")
    sp.add_argument("--validation", type=float, default=0.1, help="share of images for validation (default: 0.1)")
    sp.add_argument("--holdout", type=float, default=0.1, help="share of images held out (default: 0.1)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--keep", help="an earlier split.json whose training images stay in training")
    sp.add_argument("--not-train", help="a folder of images (e.g. the bundled demo frames) that must not be in the "
                                        "training part; matched by file name without its class prefix")
    sp.set_defaults(func=_split)

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
    cv.set_defaults(func=_curves)

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
    ev.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"])
    ev.add_argument("--threads", type=int, default=0)
    ev.add_argument("--threshold", type=float, default=0.5,
                    help="defect score threshold (default: 0.5; classifiers: a label is present above it)")
    ev.add_argument("--mode", choices=["batch", "bank"], default="batch",
                    help="GR: relate each patch to its batch (the patches of one part) or to the stored reference "
                         "bank (each patch alone, deterministic); both are scored and their agreement reported")
    ev.add_argument("--min-area", type=int, default=30, help="smallest defect area in pixels (default: 30)")
    ev.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels (default: 32)")
    ev.add_argument("--batch", type=int, default=32)
    ev.add_argument("--json", help="also write the report, with every image's verdict and the threshold sweep, to "
                                   "this file (and the precision-recall curve beside it, FILE.pr.png)")
    ev.add_argument("--curve", help="write the image-level precision-recall curve (classifiers: the per-class "
                                    "precision/recall figure) to this PNG")
    ev.add_argument("--failures", help="save overlays of misjudged images (missed, false alarm) to this folder")
    ev.add_argument("--max-failures", type=int, default=12, help="at most this many overlays (default: 12)")
    ev.set_defaults(func=_eval)

    cmp = sub.add_parser("compare", help="train and judge several networks on the same k folds; write the tables",
                         description="The paper's protocol: every model is trained on k-1 folds and judged on the "
                                     "remaining one, for each of the k folds; OUT/results.md gets mean ± std of "
                                     "F1, precision, recall, FP+FN, pixel IoU and Dice per model and their "
                                     "throughput measured side by side on one backend. Re-running resumes.")
    cmp.add_argument("--data", required=True, help="data folder (generic, magnetic-tile or NEU-Seg layout)")
    cmp.add_argument("--out", required=True, help="folder for the runs, compare.json and results.md")
    cmp.add_argument("--folds", type=int, default=4, help="number of folds (default: 4, as in the paper)")
    cmp.add_argument("--only-folds", help="comma-separated fold numbers to run now (default: all)")
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
    cmp.add_argument("--backbone", choices=["resnet18", "resnet34", "resnet50"],
                     help="GR's backbone (default: resnet50, the paper's); the torchvision baselines are fixed")
    cmp.add_argument("--no-validate", action="store_true", help="skip the per-epoch validation score")
    cmp.add_argument("--device", default="auto")
    cmp.add_argument("--amp", action="store_true")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--threshold", type=float, default=0.5, help="defect score threshold (default: 0.5 = argmax)")
    cmp.add_argument("--min-area", type=int, default=30, help="smallest defect area in pixels (default: 30)")
    cmp.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"],
                     help="backend for judging and for the throughput figures (default: onnxruntime)")
    cmp.add_argument("--threads", type=int, default=0)
    cmp.add_argument("--bench-batch", type=int, default=32)
    cmp.add_argument("--bench-seconds", type=float, default=20.0, help="seconds of side-by-side throughput (0: skip)")
    cmp.add_argument("--quiet", action="store_true", help="no progress bars")
    cmp.set_defaults(func=_compare)

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
    synth.set_defaults(func=_synth)

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
    cam.set_defaults(func=_cam)

    export = sub.add_parser("export", help="export weights to ONNX (inference only, dynamic batch)")
    export.add_argument("--weights", required=True, help="weights folder or shipped name")
    export.add_argument("--out", required=True, help="ONNX file to write")
    export.add_argument("--tile", type=int, default=0, help="tile side (default: the one the weights were trained on)")
    export.add_argument("--mode", choices=("batch", "bank"), default="batch",
                        help="GR only: relations over the batch, or against the stored reference bank")
    export.set_defaults(func=_export)

    build = sub.add_parser(
        "build", help="build an engine folder (ONNX Runtime, torch or TensorRT) with its manifest and parity check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export, optionally quantise or build a TensorRT plan, measure parity with the torch fp32 "
                    "reference, and write DIR/manifest.json (versions, GPU, SHA-256 of every file). Loading later "
                    "refuses the folder when any of that no longer matches.",
        epilog="examples:\n"
               "  engines build --weights bffn-magnetic-tile --backend onnxruntime --out engines-built/bffn-ort\n"
               "  engines build --weights bffn-magnetic-tile --backend tensorrt --precision fp16 --batch 1:64:256 "
               "--out engines-built/bffn-trt\n"
               "  engines build --weights runs/gr-neu --backend onnxruntime --precision int8 "
               "--calibration cam-A --out engines-built/gr-int8")
    build.add_argument("--weights", required=True, help="weights folder (a training run) or shipped name")
    build.add_argument("--model", choices=SEGMENTATION_MODELS + CLASSIFICATION_MODELS,
                       help="the network the weights must hold (a check; default: whatever they hold)")
    build.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default="onnxruntime")
    build.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                       help="fp16: tensorrt, torch (CUDA; CPU for parity checks only) or onnxruntime on CUDA; "
                            "int8: tensorrt or onnxruntime, calibrated on --calibration images")
    build.add_argument("--batch", default="1:32:64", help="batch profile MIN:OPT:MAX (TensorRT's optimization "
                                                           "profile; torch on CUDA captures a CUDA graph for OPT)")
    build.add_argument("--tile", type=int, default=0, help="tile / patch side (default: the weights')")
    build.add_argument("--device", help="cpu or cuda[:N] (default: cuda for tensorrt, else cpu)")
    build.add_argument("--mode", choices=("batch", "bank"), default="batch", help="GR only: scoring mode")
    build.add_argument("--workspace", type=int, default=2048, help="TensorRT workspace limit in MiB")
    build.add_argument("--calibration", help="int8: a calibration profile (calibration int8 add) or image folder")
    build.add_argument("--data", help="images for the parity check at build (default: seeded random tiles)")
    build.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    build.add_argument("--out", required=True, help="engine folder to write (replaced once the new one is built)")
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
    bench.set_defaults(func=_bench)

    lister = sub.add_parser("list", help="engine folders here (and in the cache), their manifests, and whether "
                                         "each can run on this machine")
    lister.add_argument("roots", nargs="*", default=["engines-built"],
                        help="folders to search (default: ./engines-built; the cache is always searched)")
    lister.add_argument("--json", action="store_true", help="print JSON")
    lister.set_defaults(func=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - turn known errors into one-line messages
        from engines.errors import USER_ERRORS

        if isinstance(exc, USER_ERRORS):
            print(f"engines: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
