"""What each subcommand of the `engines` command does, given its parsed arguments (the parser, the manual page,
is :mod:`engines.cli`). Every handler returns the command's exit code; heavy libraries are imported inside them,
so the command starts fast and ``engines --help`` works without torch."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from engines.errors import InputError
from engines.models import Task, model_spec
from engines.quantize import DEFAULT_EXCLUDE, GROUPS
from inspection_core.defaults import DEFAULT_LABEL_THRESHOLD

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SEG_ONLY = {"tile": None, "optimizer": None, "loss": None, "init": None, "no_sam": False, "fusion": None,
            "sampling": None, "aux_weight": None, "defect_fraction": None, "class_balanced": False,
            "hard_negatives": None, "mine_every": None, "backbone_lr": None, "validate_as": None,
            "gain_target": None, "border": None, "photometric": None, "edge_fraction": None, "paste_fraction": None,
            "context": None, "whole_crops": None, "ema": None}
CLS_ONLY = {"pretrain_epochs": None, "momentum": None, "weight_decay": None, "size": None, "bank_size": None,
            "in_channels": None, "no_augment": False, "label_dim": None, "no_gr": False, "linear": False,
            "alpha": None, "tau": None}


def run_train(args: argparse.Namespace) -> int:
    from engines.train import TrainSettings, train_segmentation

    import os

    classifier = model_spec(args.model).task is Task.CLASSIFICATION
    _check_counts(args, classifier)  # before anything is written
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        log_file = Path(args.out) / "train.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(handler)
    if isinstance(args.data, list):  # --data BASE [--data LINE ...]: the first is the base, the others train beside it
        args.data, *extra = args.data
        if extra and classifier:
            raise InputError(f"{args.model} trains on one --data folder; several are for segmentation networks "
                             "(--data BASE --data LINE)")
    else:
        extra = []
    wrong = [f"--{k.replace('_', '-')}" for k, unset in (SEG_ONLY if classifier else CLS_ONLY).items()
             if getattr(args, k) not in (unset,)]
    if wrong:
        kind = "segmentation networks" if classifier else "classifiers"
        raise InputError(f"{', '.join(wrong)} apply only to {kind}, not to {args.model}")
    if classifier:
        return _train_classifier(args)
    settings = TrainSettings(model=args.model, data=args.data, out=args.out, epochs=args.epochs or 30,
                             batch=args.batch or 16, lr=args.lr or 5e-4, tile=args.tile or 128, holdout=args.holdout,
                             seed=args.seed, steps_per_epoch=args.steps_per_epoch, threads=args.threads,
                             optimizer=args.optimizer or "rmsprop", loss=args.loss or "ce", init=args.init or "",
                             device=args.device, amp=args.amp, validate=not args.no_validate,
                             validate_as=args.validate_as or "quick",
                             aux_weight=1.0 if args.aux_weight is None else args.aux_weight,
                             sampling=args.sampling or "grid", model_config=_model_config(args),
                             split=args.split or "", init_backbone=args.init_backbone or "",
                             backbone_lr=1.0 if args.backbone_lr is None else args.backbone_lr,
                             defect_fraction=0.5 if args.defect_fraction is None else args.defect_fraction,
                             class_balanced=args.class_balanced, hard_negatives=args.hard_negatives or 0.0,
                             mine_every=args.mine_every or 1, channels_last=not args.no_channels_last,
                             gain_target=args.gain_target or 0.0, border=args.border or 0,
                             photometric=args.photometric or "jitter", edge_fraction=args.edge_fraction or 0.0,
                             paste_fraction=args.paste_fraction or 0.0, context=args.context or 0.0,
                             whole_crops=args.whole_crops or 0.0, ema=args.ema or 0.0,
                             extra_data=tuple(extra))
    final = train_segmentation(settings, progress=not args.quiet)
    if main_process:
        print(json.dumps(final, indent=2))
    return EXIT_OK


def _check_counts(args: argparse.Namespace, classifier: bool) -> None:
    """A value given as 0 (or less) is refused here, not replaced by the default (``--epochs 0`` trained 40 epochs)."""
    for flag, value, least in (("--epochs", args.epochs, 1), ("--batch", args.batch, 1), ("--tile", args.tile, 1),
                               ("--steps-per-epoch", args.steps_per_epoch, 0)):
        if value is not None and value < least:
            raise InputError(f"{flag} {value}: give {least} or more" + (" (0: one pass over the training images)"
                                                                         if flag == "--steps-per-epoch" else ""))
    if args.lr is not None and not args.lr > 0:
        raise InputError(f"--lr {args.lr}: give a learning rate above 0, e.g. {'0.01' if classifier else '5e-4'}")


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
    spec = model_spec(args.model)
    foreign = [key for key in config if key not in spec.options and not (key == "backbone" and spec.backbones)]
    if foreign:
        raise InputError(f"{', '.join(foreign)} are GR options; {args.model} takes none")
    settings = ClsTrainSettings(
        model=args.model, data=args.data, out=args.out, epochs=args.epochs or 40,
        pretrain_epochs=-1 if args.pretrain_epochs is None else args.pretrain_epochs, batch=args.batch or 32,
        lr=args.lr or 1e-3, momentum=0.9 if args.momentum is None else args.momentum,
        weight_decay=5e-4 if args.weight_decay is None else args.weight_decay, size=args.size or 224,
        holdout=args.holdout, seed=args.seed, threads=args.threads, device=args.device, amp=args.amp,
        steps_per_epoch=args.steps_per_epoch, bank_size=31 if args.bank_size is None else args.bank_size,
        model_config=config, in_channels=args.in_channels or 3, augment=not args.no_augment,
        validate=not args.no_validate, split=args.split or "", init_backbone=args.init_backbone or "")
    final = train_classifier(settings, progress=not args.quiet)
    print(json.dumps(final, indent=2, default=str))
    return EXIT_OK


def run_split(args: argparse.Namespace) -> int:
    from engines.data.segmentation import (IMAGE_SUFFIXES, fold_split_by_part, leaked_parts, load_dataset, read_split,
                                           thin_training, three_way_split)

    if (args.folds is None) != (args.fold is None):
        print("error: --folds K and --fold I go together (I from 0 to K-1)", file=sys.stderr)
        return EXIT_USAGE
    if args.folds is not None and (args.group_by != "part" or args.keep):
        print("error: --folds deals whole parts; drop --group-by file and --keep", file=sys.stderr)
        return EXIT_USAGE
    samples = load_dataset(args.data)
    if args.keep and args.group_by == "part":
        print("error: --keep continues an earlier split by file; add --group-by file, or drop --keep for a split "
              "by part", file=sys.stderr)
        return EXIT_USAGE
    keep = read_split(args.keep) if args.keep else None

    def key(name: str) -> str:  # "MT_Crack/exp1_x.jpg" and "crack_exp1_x.jpg" -> "crack/exp1_x"
        path = Path(name)
        if path.parent.name.startswith("MT_"):
            return f"{path.parent.name[3:].lower()}/{path.stem}"
        return path.stem.replace("_", "/", 1) if "_" in path.stem else path.stem

    kept_out: set[str] = set()
    if args.not_train:
        kept_out = {key(p.name) for p in Path(args.not_train).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    not_train = {s.name for s in samples if key(s.name) in kept_out or Path(s.name).stem in kept_out}
    grouping = None
    if args.group_by == "part":
        from engines.data.parts import part_ids

        grouping = part_ids(samples, max_gap=args.max_gap, min_similarity=args.min_similarity)
    if args.folds is not None:
        split = fold_split_by_part(samples, grouping.ids, args.folds, args.fold, args.validation, args.seed,
                                   not_train=not_train)
    else:
        split = three_way_split(samples, args.validation, args.holdout, args.seed, keep=keep,
                                parts=grouping.ids if grouping else None, not_train=not_train)
    if args.train_share is not None:
        if grouping is None:
            print("error: --train-share keeps whole training parts; drop --group-by file", file=sys.stderr)
            return EXIT_USAGE
        split = thin_training(split, samples, grouping.ids, args.train_share, args.seed)
    leaked = [n for n in split["train"] if n in not_train]
    if leaked:
        print(f"error: {len(leaked)} images of {args.not_train} fall in the training part "
              f"(first: {leaked[0]}); pick another --seed or --keep a split that holds them out",
              file=sys.stderr)
        return EXIT_USAGE
    record: dict = dict(split)
    summary: dict = {"out": args.out, **{side: len(names) for side, names in split.items()}}
    if grouping is not None:
        part_of = dict(zip((s.name for s in samples), grouping.ids))
        record.update(group_by="part", parts=part_of)
        if args.folds is not None:
            record["folds"] = {"k": args.folds, "fold": args.fold, "seed": args.seed}
            summary["fold"] = f"{args.fold} of {args.folds}"
        if args.train_share is not None:
            record["train_share"] = {"share": args.train_share, "seed": args.seed}
            summary["train_parts"] = len({part_of[n] for n in split["train"]})
        summary.update(parts=grouping.parts, joined_by_name=grouping.by_name, joined_by_image=grouping.by_image,
                       similarity_within_runs=round(grouping.similar_within, 3),
                       similarity_across_runs_p99=round(grouping.similar_across, 3),
                       leaked=leaked_parts(split, part_of))
    else:
        record["group_by"] = "file"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary))
    return EXIT_OK


def run_curves(args: argparse.Namespace) -> int:
    from engines.curves import curve_points, plot_learning_curves, read_history

    labels = args.labels.split(",") if args.labels else list(args.runs)
    offsets = [int(v) for v in args.offset.split(",")] if args.offset else [0] * len(args.runs)
    if len(labels) != len(args.runs) or len(offsets) != len(args.runs):
        raise InputError(f"give one label and one offset per run ({len(args.runs)} runs)")
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
    spec = model_spec(args.model)
    if args.backbone:
        config["backbone"] = args.backbone
    if spec.task is Task.CLASSIFICATION:
        return {}
    if args.no_sam or args.fusion:
        if not {"use_sam", "fusion"} <= set(spec.options):
            raise InputError("--no-sam and --fusion are BFFN's ablation switches; they do not apply to " + args.model)
        if args.no_sam:
            config["use_sam"] = False
        if args.fusion:
            config["fusion"] = args.fusion
    return config


def run_export(args: argparse.Namespace) -> int:
    from engines.export import export_onnx
    from engines.weights import resolve_weights

    bundle = resolve_weights(args.weights)
    path = export_onnx(bundle, Path(args.out), tile=args.tile or bundle.tile, mode=args.mode)
    print(path)
    return EXIT_OK


def int8_groups(text: str | None) -> tuple[str, ...]:
    """``--int8-float``: the operator groups kept in floating point (None: the default ones; ``none``: no group)."""
    if text is None:
        return DEFAULT_EXCLUDE
    groups = tuple(g.strip() for g in text.split(",") if g.strip() and g.strip() != "none")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InputError(f"--int8-float: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)} "
                         "(or none)")
    return groups


def run_build(args: argparse.Namespace, judging=None) -> int:
    from engines.build import BuildSettings, build, parse_batch

    if args.into_weights:
        return _build_into_weights(args)
    if not args.out:
        raise InputError("engines build needs --out DIR (the engine folder to write), or --into-weights (the ONNX "
                         "export written into the weights folder itself)")
    settings = BuildSettings(weights=args.weights, backend=args.backend, out=args.out, precision=args.precision,
                             batch=parse_batch(args.batch), tile=args.tile, device=args.device or "",
                             mode=args.mode, model=args.model or "", workspace_mib=args.workspace,
                             calibration=args.calibration or "", data=args.data or "", threads=args.threads,
                             int8_exclude=int8_groups(args.int8_float), int8_guard=not args.no_int8_guard)
    manifest = build(settings, judging=judging)
    parity = manifest["parity"]
    print(json.dumps({"engine": args.out, "model": manifest["model"], "backend": manifest["backend"],
                      "precision": manifest["precision"], "device": manifest["device"], "tile": manifest["tile"],
                      "batch": manifest["batch"], "build_seconds": manifest["build_seconds"], "parity": parity},
                     indent=2))
    return EXIT_OK


def _build_into_weights(args: argparse.Namespace) -> int:
    """``engines build --into-weights``: the fp32 ONNX export of every scoring mode, written into the weights folder
    with its manifest of hashes (:mod:`engines.weights_onnx`)."""
    from engines.weights_onnx import write_weights_exports

    wrong = [flag for flag, given in (("--out", args.out), ("--backend", args.backend != "onnxruntime"),
                                      ("--precision", args.precision != "fp32"), ("--calibration", args.calibration),
                                      ("--device", args.device not in (None, "", "cpu")),
                                      ("--mode", args.mode != "batch")) if given]
    if wrong:
        raise InputError(f"--into-weights writes the ONNX Runtime fp32 export of every scoring mode into the weights "
                         f"folder; leave out {', '.join(wrong)} (an engine folder for other settings: --out DIR)")
    manifest = write_weights_exports(args.weights, tile=args.tile, threads=args.threads,
                                     command=" ".join(["engines", "build", "--weights", str(args.weights),
                                                       "--into-weights"]
                                                      + (["--tile", str(args.tile)] if args.tile else [])))
    print(json.dumps({"weights": args.weights, "model": manifest["model"], "manifest": "onnx.json",
                      "exports": [{k: e[k] for k in ("file", "bytes", "mode", "tile", "parity")}
                                  for e in manifest["exports"]]}, indent=2))
    return EXIT_OK


def run_bench(args: argparse.Namespace) -> int:
    from engines.benchmark import bench_engines
    from engines.folders import open_engine
    from engines.parity import reference_engine

    def opener(folder: str):
        if folder == "torch":
            return lambda: reference_engine(args.engine, threads=args.threads)
        return lambda: open_engine(folder, threads=args.threads)

    names = [args.engine] + ([args.vs] if args.vs else [])
    if len(set(names)) != len(names):
        raise InputError("--vs names the same engine twice; compare two different engine folders")
    report = bench_engines({name: opener(name) for name in names}, batch=args.batch, seconds=args.seconds)
    result = {"batch": args.batch, "seconds": args.seconds, "threads": args.threads or "all", "engines": report}
    if args.vs:
        a, b = report[args.engine]["tiles_per_s"], report[args.vs]["tiles_per_s"]
        result["ratio"] = round(a / b, 3) if b else None
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    from engines.folders import engine_folders
    from engines.manifest import ManifestError, problems, read_manifest

    if getattr(args, "backends", False):
        return _list_backends(args)
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


def _list_backends(args: argparse.Namespace) -> int:
    """``engines list --backends``: every declared backend, where it runs and in which precisions, and whether it
    runs here (the registry's availability check, which says what to install where it does not)."""
    from engines.backends.registry import BACKENDS

    rows = []
    for spec in BACKENDS.values():
        why_not = {device: spec.unavailable(device) for device in spec.devices}
        rows.append({"backend": spec.name, "title": spec.title, "summary": spec.summary,
                     "devices": list(spec.devices), "precisions": list(spec.precisions),
                     "cpu_precisions": list(spec.cpu_precisions or spec.precisions), "aliases": dict(spec.aliases),
                     "runs_here": [d for d, why in why_not.items() if why is None],
                     "why_not": {d: why for d, why in why_not.items() if why is not None}})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        aliases = "".join(f"; recipes: {a} = {row['backend']} on {d}" for a, d in row["aliases"].items())
        precisions = ", ".join(p if p in row["cpu_precisions"] or "cpu" not in row["devices"] else f"{p} (cuda only)"
                               for p in row["precisions"])
        print(f"{row['backend']} ({row['title']}): {row['summary']}\n  devices {', '.join(row['devices'])}; "
              f"precisions {precisions}{aliases}")
        for device in row["devices"]:
            why = row["why_not"].get(device)
            print(f"  runs here on {device}: yes" if why is None else f"  runs here on {device}: NO - {why}")
    return EXIT_OK


def _split_part(samples, split_path: str, part: str, data: str) -> list:
    """The samples named in one part (train / validation / holdout) of a split.json."""
    from engines.data.segmentation import read_split

    split = read_split(split_path)
    if part not in split:
        raise InputError(f"{split_path} has no {part!r} list (parts: {', '.join(sorted(split))}); write a three-way "
                         f"split with `engines split`")
    wanted = set(split[part])
    picked = [s for s in samples if s.name in wanted]
    if not picked:
        raise InputError(f"no image of {data} is in the {part!r} list of {split_path}")
    return picked


def _judge_segmentation(weights: str, samples, args: argparse.Namespace, judging, min_areas=(), failures=None,
                        max_failures: int = 12) -> tuple[dict, list, list | None, list]:
    """Judge ``samples`` with ``weights`` exactly as the station does (`engines eval`'s core), by ``judging``
    (:class:`inspection.judging.Judging`): the report, the threshold sweep, the (threshold, minimum area) sweep when
    ``min_areas`` is given, and the per-image records."""
    from engines.acceptance import breakdown, class_separation
    from engines.backends.base import load_engine
    from engines.evaluate import evaluate_station_verdicts

    engine = load_engine(weights, backend=args.backend, threads=args.threads)
    inspector = judging.inspector(engine)
    metrics, records = evaluate_station_verdicts(inspector, samples, failures_dir=failures,
                                                 max_failures=max_failures, min_areas=min_areas)
    sweep = metrics.pop("sweep")
    rule_sweep = metrics.pop("rule_sweep", None)
    report = {"weights": str(weights), "engine_id": engine.engine_id, "data": str(args.data),
              "images": len(samples), "threshold": judging.rules.score_threshold,
              "min_area_px": judging.rules.min_area, "overlap": judging.overlap, "rule_from": judging.source,
              "judging": judging.fingerprint(), **metrics}
    # where the errors are: recall and false alarms per lighting, recall at the image edge and inside it
    for key, name in (("exposure", "by_exposure"), ("at_edge", "edge_recall")):
        table = breakdown(records, key)
        if table:
            report[name] = table
    # whatever the rule: how well each image's peak score tells each class from the defect-free images (AUC)
    separation = class_separation(records)
    if separation:
        report["separation"] = separation
    return report, sweep, rule_sweep, records


def _write_report(path, report: dict, sweep: list, rule_sweep, records: list) -> None:
    Path(path).write_text(json.dumps({**report, "sweep": sweep, **({"rule_sweep": rule_sweep} if rule_sweep else {}),
                                      "images_detail": records}, indent=2) + "\n")


def _judging(args: argparse.Namespace, bundle):
    """The judging `engines eval` uses: the rule the weights carry (``engines accept`` wrote it into their
    config.json) with ``--threshold``, ``--min-area`` and ``--overlap`` on top, else the defaults; printed, with
    where each setting came from."""
    from engines.judging import judging_for_weights

    judging = judging_for_weights(bundle, threshold=args.threshold, min_area=args.min_area, overlap=args.overlap,
                                  batch=args.batch)
    print(f"rule: {judging.describe()}", file=sys.stderr)
    return judging


def _min_areas(text: str | None) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()] if text else []


def run_eval(args: argparse.Namespace) -> int:
    from engines.data.segmentation import load_dataset
    from engines.evaluate import save_pr_curve
    from engines.weights import resolve_weights

    bundle = resolve_weights(args.weights)
    if model_spec(bundle.model).task is Task.CLASSIFICATION:
        return _eval_classifier(args)
    judging = _judging(args, bundle)
    samples = load_dataset(args.data)
    if args.split:
        samples = _split_part(samples, args.split, args.split_part, args.data)
    report, sweep, rule_sweep, records = _judge_segmentation(args.weights, samples, args, judging,
                                                             _min_areas(args.learn_min_areas),
                                                             failures=args.failures, max_failures=args.max_failures)
    if rule_sweep and args.split_part == "holdout" and args.split:
        print("warning: rules learned on the held-out part are optimistic; learn them with --split-part "
              "validation and report held-out once (`engines accept` does both)", file=sys.stderr)
    print(json.dumps(report, indent=2))
    curve = args.curve or (str(Path(args.json).with_suffix(".pr.png")) if args.json else None)
    if curve:
        save_pr_curve(sweep, curve, title=f"{report['engine_id']} on {args.data} ({len(samples)} images, "
                                          f"min area {judging.rules.min_area} px)",
                       operating_threshold=judging.rules.score_threshold)
        print(f"precision-recall curve: {curve}", file=sys.stderr)
    if args.json:
        _write_report(args.json, report, sweep, rule_sweep, records)
    return EXIT_OK


HINDSIGHT = ("the rule with the best F1 on held-out itself, chosen in hindsight: how much a better rule could give "
             "these weights, not a rule to ship")
SEGMENTERS_ALONE = ("the segmenters alone: --classifier's labels are learned on this validation part, so they "
                    "cannot be compared on it; the fused held-out figures are in the report's classifier section")


def run_accept(args: argparse.Namespace) -> int:
    from engines.acceptance import (
        Goals,
        beats,
        class_recall,
        false_alarm_rate,
        held_out_goals,
        paired_comparison,
    )
    from engines.data.segmentation import load_dataset
    from engines.evaluate import RULE_MIN_AREAS
    from engines.weights import resolve_weights

    for weights in filter(None, (args.weights, args.against)):
        if model_spec(resolve_weights(weights).model).task is Task.CLASSIFICATION:
            raise InputError(f"{weights} is a classifier; `engines accept` judges segmentation networks "
                             f"(classifiers: `engines eval`, `calibration thresholds`)")
    if args.classifier and model_spec(resolve_weights(args.classifier).model).task is not Task.CLASSIFICATION:
        raise InputError(f"--classifier {args.classifier} is a segmentation network; give a classifier's weights "
                         "(`engines train gr`)")
    from inspection.judging import Judging

    # the rule is learned here, so the weights' old one is not used; the sweeps start from 0.5 / 20 px
    base = Judging.from_rule(None, threshold=0.5, min_area=20, overlap=args.overlap, batch=args.batch)
    samples = load_dataset(args.data)
    validation = _split_part(samples, args.split, "validation", args.data)
    holdout = _split_part(samples, args.split, "holdout", args.data)
    min_areas = _min_areas(args.learn_min_areas) or list(RULE_MIN_AREAS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"weights": str(args.weights), "data": str(args.data), "split": str(args.split),
                     "min_areas_px": min_areas}

    def learn(weights: str, name: str) -> tuple[dict, list[dict]]:
        report, sweep, rule_sweep, records = _judge_segmentation(weights, validation, args, base, min_areas)
        _write_report(out / name, report, sweep, rule_sweep, records)
        rule = report["best_rule"]
        print(f"{weights}: rule learned on {len(validation)} validation images: threshold {rule['threshold']}, "
              f"min area {rule['min_area_px']} px -> F1 {rule['f1']} (FP {rule['fp']}, FN {rule['fn']})",
              file=sys.stderr)
        return rule, records

    rule, judged = learn(args.weights, "validation.json")
    summary["rule"] = {"threshold": rule["threshold"], "min_area_px": rule["min_area_px"]}
    summary["validation"] = rule
    ok = True
    if args.against:
        reference, reference_judged = learn(args.against, "validation-reference.json")
        summary["reference"] = {"weights": str(args.against), "validation": reference,
                                "beaten": beats(rule, reference),
                                "paired": paired_comparison(judged, reference_judged)}
        if args.classifier:  # its labels are learned on validation after this: the two segmenters are compared
            summary["reference"]["compared"] = SEGMENTERS_ALONE
        ok = summary["reference"]["beaten"]
    learned = base.replace(score_threshold=rule["threshold"], min_area_px=rule["min_area_px"],
                           source=f"learned on {args.split} validation")
    # held-out is judged by the learned rule; the same sweep there says, in hindsight, how much a better rule
    # could have given (a bound on rule learning, never a rule to ship): the rest of the gap is the network's
    report, sweep, rule_sweep, records = _judge_segmentation(args.weights, holdout, args, learned, min_areas)
    hindsight = report.pop("best_rule")
    for record in records:
        record["hindsight_verdict"] = record.pop("best_rule_verdict")
    _write_report(out / "holdout.json", report, sweep, rule_sweep, records)
    summary["holdout"] = {**{k: report[k] for k in ("images", "tp", "fp", "fn", "tn", "precision", "recall", "f1",
                                                    "fp_fn", "pixel_iou", "pixel_dice")},
                          "false_alarms": round(false_alarm_rate(report), 4),
                          "class_recall": class_recall(records),
                          **{k: report[k] for k in ("separation", "by_exposure", "edge_recall") if k in report},
                          "hindsight_rule": {**{k: hindsight[k] for k in ("threshold", "min_area_px", "f1", "fp",
                                                                          "fn")}, "note": HINDSIGHT}}
    goals = Goals(f1=args.goal_f1, false_alarms=args.goal_false_alarms, pixel_iou=args.goal_iou,
                  class_recall=args.goal_class_recall, class_min_images=args.class_min_images,
                  exposure_spread=args.goal_exposure_spread)
    summary["goals"] = held_out_goals(report, records, goals)
    for folder in args.line or []:  # the line's reviewed images: written down for both, and a goal with --against
        line = _judge_line(folder, args, learned, reference if args.against else None, base)
        summary.setdefault("line", []).append(line)
        if "reference" in line:
            summary["goals"].append({"goal": f"errors on the line's images of {folder} (FP+FN)",
                                     "value": line["candidate"]["fp_fn"], "at_most": line["reference"]["fp_fn"],
                                     "met": line["candidate"]["fp_fn"] <= line["reference"]["fp_fn"]})
    if args.classifier:  # a second opinion: label thresholds learned on validation, held-out judged fused
        summary["segmenter_goals"] = summary["goals"]
        summary["classifier"], fused_records = _fuse(args, validation, judged, holdout, records, report, out)
        summary["goals"] = held_out_goals(summary["classifier"]["holdout"], fused_records, goals)
    summary["accepted"] = ok = ok and all(g["met"] for g in summary["goals"])
    if not args.keep_config:  # the rule travels with the weights: eval and the other tools judge with it
        from datetime import datetime, timezone

        from engines.weights import write_judging_rule

        candidate = resolve_weights(args.weights)
        written = write_judging_rule(candidate, {
            "threshold": rule["threshold"], "min_area_px": rule["min_area_px"], "overlap": base.overlap,
            "learned_on": f"{args.split} validation ({len(validation)} images of {args.data})",
            "validation_f1": rule["f1"], "holdout_f1": report["f1"], "accepted": ok,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
        summary["rule_written_to"] = str(written)
        if args.classifier:
            fusion = summary["classifier"]
            summary["classifier"]["rule_written_to"] = str(write_judging_rule(resolve_weights(args.classifier), {
                "label_thresholds": fusion["thresholds"], "patch": fusion["patch"], "mode": fusion["mode"],
                "fused_with": {"weights": str(args.weights), "sha256": candidate.sha256(),
                               "threshold": rule["threshold"], "min_area_px": rule["min_area_px"]},
                "learned_on": f"{args.split} validation ({len(validation)} images of {args.data})",
                "validation_f1": fusion["validation"]["fused"]["f1"], "holdout_f1": fusion["holdout"]["f1"],
                "accepted": ok, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}))
    (out / "acceptance.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    for g in summary["goals"]:
        bound = f">= {g['at_least']}" if "at_least" in g else f"<= {g['at_most']}"
        print(f"{'met    ' if g['met'] else 'NOT MET'} {g['goal']}: {g['value']} (goal {bound})", file=sys.stderr)
    h = summary["holdout"]["hindsight_rule"]
    print(f"held-out F1 {summary['holdout']['f1']} by the learned rule; in hindsight the best rule there (threshold "
          f"{h['threshold']}, min area {h['min_area_px']} px) gives {h['f1']}: the rest of the gap is the network's",
          file=sys.stderr)
    separation = summary["holdout"].get("separation")
    if separation:  # whatever the rule: a class near 0.5 is not seen by the network at all
        print("held-out separation from the defect-free images by each image's peak score (AUC; 0.5 = not seen): "
              + ", ".join(f"{name} {row['auc']} ({row['images']})" for name, row in separation.items()),
              file=sys.stderr)
    counts = {name: row["images"] for name, row in summary["holdout"]["class_recall"].items()}
    if counts and max(counts.values()) < goals.class_min_images:
        largest = max(counts, key=counts.get)
        print(f"n/a     recall per class: no class has {goals.class_min_images} held-out images (the largest, "
              f"{largest}, has {counts[largest]})", file=sys.stderr)
    if args.against:
        paired = summary["reference"]["paired"]
        alone = f" ({SEGMENTERS_ALONE})" if args.classifier else ""
        print(f"{'beats' if summary['reference']['beaten'] else 'does NOT beat'} {args.against} on validation{alone}; "
              f"image by image it sets {paired['fixed']} right that the reference gets wrong and {paired['broken']} "
              f"wrong that the reference gets right (exact McNemar p = {paired['p_value']}"
              f"{'; within chance' if paired['p_value'] >= 0.05 else ''})", file=sys.stderr)
    print(f"{'accepted' if ok else 'NOT accepted'}; reports in {out}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILED


def _fuse(args: argparse.Namespace, validation, judged: list[dict], holdout, records: list[dict], report: dict,
          out: Path) -> tuple[dict, list[dict]]:
    """``engines accept --classifier``: the classifier scored on validation and held-out as the line's stage scores
    it, its label thresholds learned on validation against the segmenter's verdicts there (by the rule just learned),
    and held-out judged fused. Returns the summary's ``classifier`` section and the fused held-out records (each
    with the segmenter's verdict and the labels beside the fused verdict); writes ``holdout-fused.json``."""
    from engines.acceptance import breakdown, class_recall, false_alarm_rate
    from engines.evaluate import image_level_metrics
    from engines.fusion import classifier_scores, fused_verdicts, fusion_notes, learn_label_thresholds

    def in_order(samples, recs):
        by_name = {r["name"]: r for r in recs}
        return [by_name[s.name] for s in samples]

    val_recs, hold_recs = in_order(validation, judged), in_order(holdout, records)
    classes, scores = classifier_scores(args.classifier, [s.image for s in [*validation, *holdout]],
                                        patch=args.classifier_patch, mode=args.classifier_mode, backend=args.backend,
                                        threads=args.threads)  # one engine for both parts
    val_scores, hold_scores = scores[:len(validation)], scores[len(validation):]
    learned = learn_label_thresholds([r["best_rule_verdict"] == "FAIL" for r in val_recs],
                                     [r["defective"] for r in val_recs], val_scores, classes)
    thresholds = [learned["thresholds"][c] for c in classes]
    seg_fails = [r["verdict"] == "FAIL" for r in hold_recs]
    fails = fused_verdicts(seg_fails, hold_scores, thresholds)
    fused = []
    for r, s, fail in zip(hold_recs, hold_scores, fails):
        labels = [c for c, v, t in zip(classes, s, thresholds) if v > t]
        fused.append({**r, "segmenter_verdict": r["verdict"], "verdict": "FAIL" if fail else "PASS", "labels": labels,
                      "label_scores": {c: round(float(v), 4) for c, v in zip(classes, s)}})
    metrics = image_level_metrics([r["defective"] for r in fused], list(fails))
    holdout_figures = {**metrics, "pixel_iou": report["pixel_iou"], "false_alarms": round(false_alarm_rate(metrics), 4),
                       "class_recall": class_recall(fused),
                       "by_exposure": breakdown(fused, "exposure"), "edge_recall": breakdown(fused, "at_edge"),
                       "fixed": int(sum(f and not s for f, s, r in zip(fails, seg_fails, fused) if r["defective"])),
                       "new_false_alarms": int(sum(f and not s for f, s, r in zip(fails, seg_fails, fused)
                                                   if not r["defective"]))}
    section = {"weights": str(args.classifier), "classes": list(classes), "patch": args.classifier_patch,
               "mode": args.classifier_mode, "thresholds": learned["thresholds"],
               "validation": {"segmenter": learned["segmenter"], "fused": learned["fused"]},
               "holdout": holdout_figures}
    (out / "holdout-fused.json").write_text(json.dumps({**section, "images_detail": fused}, indent=2) + "\n")
    v = learned["fused"]
    print(f"{args.classifier}: label thresholds learned on {len(validation)} validation images "
          f"{learned['thresholds']} -> fused F1 {v['f1']} (FP {v['fp']}, FN {v['fn']}; segmenter alone "
          f"{learned['segmenter']['f1']}); held-out fused F1 {metrics['f1']} ({holdout_figures['fixed']} misses "
          f"caught, {holdout_figures['new_false_alarms']} new false alarms)", file=sys.stderr)
    for note in fusion_notes(learned["thresholds"], sorted({r.get("category") for r in [*val_recs, *hold_recs]
                                                            if r["defective"] and r.get("category")})):
        print(f"{args.classifier}: {note}", file=sys.stderr)
    return section, fused


LINE_FIGURES = ("images", "tp", "fp", "fn", "tn", "precision", "recall", "f1", "fp_fn", "pixel_iou")


def _judge_line(folder: str, args: argparse.Namespace, learned, reference_rule: dict | None, base) -> dict:
    """``engines accept --line``: the candidate (by ``learned``) and the reference (by its own learned rule) judged on
    the line folder's images that the candidate's run kept aside, or on all of them when its run did not train on
    the folder (its ``split.json`` is beside the weights or one folder up)."""
    from engines.data.segmentation import extra_holdout_names, load_dataset, read_split
    from engines.weights import resolve_weights

    samples = load_dataset(folder)
    where = resolve_weights(args.weights).path
    split_file = next((p / "split.json" for p in (where, where.parent) if (p / "split.json").is_file()), None)
    kept = extra_holdout_names(read_split(split_file), folder) if split_file else None
    if kept is not None:
        kept_names = set(kept)
        samples = [s for s in samples if s.name in kept_names]
        which = f"the {len(samples)} images {split_file} kept aside from training"
    else:
        which = f"all {len(samples)} images (the candidate's run did not train on {folder})"
    if not samples:
        raise InputError(f"no image of {folder} is left to judge the candidate on ({which}); review more parts, or "
                         "train without that folder")
    line: dict = {"data": str(folder), "judged": which}
    report, _, _, _ = _judge_segmentation(args.weights, samples, args, learned)
    line["candidate"] = {k: report[k] for k in LINE_FIGURES}
    if reference_rule is not None:
        theirs = base.replace(score_threshold=reference_rule["threshold"], min_area_px=reference_rule["min_area_px"],
                              source=f"learned on {args.split} validation")
        report, _, _, _ = _judge_segmentation(args.against, samples, args, theirs)
        line["reference"] = {k: report[k] for k in LINE_FIGURES}
    print(f"line images of {folder} ({which}): candidate F1 {line['candidate']['f1']} "
          f"(FP+FN {line['candidate']['fp_fn']})" + (f", reference F1 {line['reference']['f1']} (FP+FN "
                                                      f"{line['reference']['fp_fn']})" if "reference" in line else ""),
          file=sys.stderr)
    return line


def _eval_classifier(args: argparse.Namespace) -> int:
    from engines.data.multilabel import load_multilabel
    from engines.data.segmentation import read_split
    from engines.evaluate_cls import evaluate_classifier, rounded, save_class_figure
    from engines.weights import resolve_weights

    bundle = resolve_weights(args.weights)
    data = load_multilabel(args.data)
    if args.split:
        wanted = set(read_split(args.split).get(args.split_part, []))
        data = data.subset([i for i, s in enumerate(data.samples) if s.name in wanted])
        if not len(data):
            raise InputError(f"no image of {args.data} is in the {args.split_part!r} list of {args.split}")
    threshold = DEFAULT_LABEL_THRESHOLD if args.threshold is None else args.threshold
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


def run_cam(args: argparse.Namespace) -> int:
    from engines.evaluate_cls import write_cams

    names = args.names.split(",") if args.names else None
    written = write_cams(args.weights, args.data, args.out, names=names, limit=args.limit, size=args.size,
                         method=args.method)
    for path in written:
        print(path)
    return EXIT_OK if written else EXIT_FAILED


def run_compare(args: argparse.Namespace) -> int:
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
                               train=train, backbone=args.backbone or "", group_by=args.group_by)
    summary = run_compare(settings, progress=not args.quiet)
    print((out / "results.md").read_text())
    print(f"figures: {out / 'compare.json'}", file=sys.stderr)
    return EXIT_OK if summary["per_fold"] else EXIT_FAILED


def run_synth(args: argparse.Namespace) -> int:
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
