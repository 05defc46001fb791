"""The paper's protocol for comparing networks: k-fold cross-validation (every model trained and judged on the
same folds), mean ± std of the image-level metrics, and throughput measured side by side on one backend.

Layout of ``OUT``::

    OUT/fold1/bffn/            a training run (weights, checkpoint, train.log) and eval.json on the test fold
    OUT/fold1/unet/ ...
    OUT/compare.json           every figure
    OUT/results.md             the tables (Tables 1–2 and 4 of the paper)

Re-running the same command resumes: finished runs and evaluations are kept, interrupted ones continue from
their checkpoint.
"""
from __future__ import annotations

import json
import logging
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from engines.backends.base import load_engine
from engines.benchmark import interleaved_throughput
from engines.data.multilabel import load_multilabel, stratified_multilabel_folds, stratified_multilabel_split
from engines.data.segmentation import load_dataset, stratified_folds, stratified_split, three_way_split
from engines.errors import InputError, TrainingDiverged
from engines.evaluate import DEFAULT_SWEEP, evaluate_station_verdicts, save_pr_curve
from engines.evaluate_cls import evaluate_classifier, save_class_figure
from engines.train import TrainSettings, train_segmentation
from engines.models import model_spec
from engines.train_cls import ClsTrainSettings, train_classifier
from engines.weights import load_model, resolve_weights
from inspection.judging import Judging
from inspection_core.defaults import DEFAULT_MIN_AREA_PX, DEFAULT_OVERLAP, DEFAULT_SCORE_THRESHOLD

log = logging.getLogger(__name__)

# Variant name → (registry model, config overrides). The bffn-* rows are the paper's Table 4 ablation.
VARIANTS: dict[str, tuple[str, dict]] = {
    "bffn": ("bffn", {}),
    "fcn": ("fcn", {}),
    "unet": ("unet", {}),
    "deeplabv3plus": ("deeplabv3plus", {}),
    "bisenet": ("bisenet", {}),
    "bffn-nosam": ("bffn", {"use_sam": False}),
    "bffn-sum": ("bffn", {"fusion": "sum"}),
    "bffn-concat": ("bffn", {"fusion": "concat"}),
    "bffn-nosam-sum": ("bffn", {"use_sam": False, "fusion": "sum"}),
}
# Multi-label classifiers (paper 001): name → (registry model, config overrides, training overrides). The gr-* rows
# are the paper's ablations (Tables 3–4).
CLS_VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "gr": ("gr", {}, {}),
    "gr-nogr": ("gr", {"use_gr": False}, {}),
    "gr-nopretrain": ("gr", {}, {"pretrain_epochs": 0}),
    "gr-linear": ("gr", {"cosine": False}, {}),
    "gr-resnet50": ("gr", {"backbone": "resnet50"}, {}),  # the paper's backbone whatever --backbone says
    "resnet50": ("resnet50", {}, {}),
    "vgg16": ("vgg16", {}, {}),
    "inceptionv3": ("inceptionv3", {}, {}),
}
CLS_METRICS = ("accuracy", "precision", "recall", "f_measure", "exact_match")
DEFAULT_MODELS = ("bffn", "fcn", "unet", "deeplabv3plus", "bisenet")
ABLATION_MODELS = ("bffn", "bffn-nosam", "bffn-sum", "bffn-nosam-sum")
METRICS = ("f1", "precision", "recall", "fp_fn", "f1_at_default", "pixel_iou", "pixel_dice", "threshold")


@dataclass
class CompareSettings:
    data: str
    out: str
    models: tuple[str, ...] = DEFAULT_MODELS
    folds: int = 4
    seed: int = 0
    validation: float = 0.1  # the paper sets 10 % of each training part aside for tuning
    threshold: float = DEFAULT_SCORE_THRESHOLD
    min_area_px: int = DEFAULT_MIN_AREA_PX
    overlap: int = DEFAULT_OVERLAP
    backend: str = "onnxruntime"
    threads: int = 0
    bench_batch: int = 32
    bench_seconds: float = 20.0
    only_folds: tuple[int, ...] = ()  # run a subset of the folds (1-based); the table says how many it holds
    group_by: str = "part"  # "part": every view of a physical part in one fold (engines.data.parts); "file"
    backbone: str = ""  # classifiers: GR's backbone (resnet18 for CPU work; the paper's resnet50 by default)
    train: dict = field(default_factory=dict)  # TrainSettings overrides (epochs, steps_per_epoch, optimizer, ...)

    @property
    def judging(self) -> Judging:
        """How every fold's networks are judged (the threshold is then tuned per network on its validation part)."""
        return Judging.from_rule(None, threshold=self.threshold, min_area=self.min_area_px, overlap=self.overlap,
                                 where="engines compare")


def check_models(models) -> tuple[str, ...]:
    unknown = [m for m in models if m not in VARIANTS and m not in CLS_VARIANTS]
    if unknown:
        raise InputError(f"unknown model(s) {', '.join(unknown)}; choose segmentation networks from "
                         f"{', '.join(VARIANTS)} or classifiers from {', '.join(CLS_VARIANTS)}")
    kinds = {m in CLS_VARIANTS for m in models}
    if len(kinds) > 1:
        raise InputError("compare segmentation networks and classifiers in separate runs (they need different data)")
    return tuple(models)


def _run_done(run: Path) -> bool:
    return (run / "config.json").exists() and (run / "model.safetensors").exists()


def run_compare(settings: CompareSettings, progress: bool = True) -> dict:
    """Train and judge every model on every fold, measure throughput, write ``compare.json`` and ``results.md``."""
    models = check_models(settings.models)
    if models[0] in CLS_VARIANTS:
        return run_compare_classifiers(settings, progress)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_dataset(settings.data)
    parts = None
    if settings.group_by == "part":
        from engines.data.parts import part_ids

        parts = part_ids(samples).ids
    folds = stratified_folds(samples, settings.folds, settings.seed, parts=parts)
    fold_numbers = settings.only_folds or tuple(range(1, settings.folds + 1))
    bad = [f for f in fold_numbers if not 1 <= f <= settings.folds]
    if bad:
        raise InputError(f"fold(s) {bad} do not exist; folds are numbered 1..{settings.folds}")
    named = [[samples[i].name for i in f] for f in folds]
    folds_file = out / "folds.json"
    if folds_file.exists() and json.loads(folds_file.read_text()) != named:
        raise InputError(f"{folds_file} holds other folds (an earlier run with another --group-by, --folds or "
                         "--seed); resume it with the same options or choose a new --out")
    folds_file.write_text(json.dumps(named, indent=1))
    judging = settings.judging
    results: dict[str, list[dict]] = {m: [] for m in models}
    for k in fold_numbers:
        test = [samples[i] for i in folds[k - 1]]
        rest_idx = [i for j, f in enumerate(folds) if j != k - 1 for i in f]
        rest = [samples[i] for i in rest_idx]
        if parts is None:
            fit_idx, val_idx = stratified_split(rest, settings.validation, settings.seed + k)
            fit, val = [rest[i] for i in fit_idx], [rest[i] for i in val_idx]
        else:  # the validation part of the training folds is cut by part too
            inner = three_way_split(rest, settings.validation, 0.0, settings.seed + k, parts=[parts[i] for i in rest_idx])
            chosen = set(inner["validation"])
            fit, val = [s for s in rest if s.name not in chosen], [s for s in rest if s.name in chosen]
        for name in models:
            model, overrides = VARIANTS[name]
            run = out / f"fold{k}" / name
            report_file = run / "eval.json"
            if not _run_done(run):
                log.info("fold %d/%d: training %s on %d images (%d for validation)", k, settings.folds, name,
                         len(fit), len(val))
                train_settings = replace(TrainSettings(model=model, data=settings.data, out=str(run),
                                                       seed=settings.seed + k, model_config=dict(overrides)),
                                         **{k: v for k, v in settings.train.items()
                                            if k in TrainSettings.__dataclass_fields__})
                train_segmentation(train_settings, progress=progress, train_samples=fit, held_samples=val)
                report_file.unlink(missing_ok=True)
            tuned = _tuned_threshold(run, val, settings, judging) if val else settings.threshold
            if not report_file.exists() or json.loads(report_file.read_text())["threshold"] != tuned:
                engine = load_engine(run, backend=settings.backend, threads=settings.threads)
                inspector = judging.replace(score_threshold=tuned).inspector(engine)
                t0 = time.time()
                shutil.rmtree(run / "failures", ignore_errors=True)  # overlays of an earlier judgement
                metrics, records = evaluate_station_verdicts(inspector, test, failures_dir=run / "failures",
                                                             max_failures=6)
                report = {"model": name, "fold": k, "images": len(test), "engine_id": engine.engine_id,
                          "threshold": tuned, "min_area_px": settings.min_area_px,
                          "seconds": round(time.time() - t0, 1), **metrics, "images_detail": records}
                report_file.write_text(json.dumps(report, indent=1) + "\n")
                save_pr_curve(metrics["sweep"], run / "pr.png", title=f"{name}, fold {k}",
                              operating_threshold=tuned)
                engine.close()
            report = json.loads(report_file.read_text())
            at = min(report["sweep"], key=lambda p: abs(p["threshold"] - tuned))
            default = min(report["sweep"], key=lambda p: abs(p["threshold"] - settings.threshold))
            row = {"f1": at["f1"], "precision": at["precision"], "recall": at["recall"], "fp_fn": at["fp_fn"],
                   "tp": at["tp"], "fp": at["fp"], "fn": at["fn"], "tn": at["tn"], "threshold": tuned,
                   "f1_at_default": default["f1"], "pixel_iou": report["pixel_iou"],
                   "pixel_dice": report["pixel_dice"], "images": report["images"]}
            results[name].append(row)
            log.info("fold %d %s: %s", k, name, {m: row[m] for m in METRICS})
    throughput = {}
    if settings.bench_seconds > 0:
        first = fold_numbers[0]
        engines = {name: load_engine(out / f"fold{first}" / name, backend=settings.backend, threads=settings.threads)
                   for name in models}
        throughput = interleaved_throughput(engines, batch=settings.bench_batch, seconds=settings.bench_seconds)
        for engine in engines.values():
            engine.close()
    summary = {
        "data": settings.data, "images": len(samples), "folds": settings.folds, "folds_run": list(fold_numbers),
        "threshold": settings.threshold, "min_area_px": settings.min_area_px, "backend": settings.backend,
        "bench_batch": settings.bench_batch, "train": settings.train, "command": " ".join(sys.argv),
        "per_fold": results, "throughput": throughput,
        "mean": {m: {k: _mean_std([r[k] for r in rs]) for k in METRICS} for m, rs in results.items()},
    }
    (out / "compare.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(results_markdown(summary))
    return summary


class _TorchClassifier:
    """Just enough of the engine interface (``infer``, ``spec``, ``tile``) to time a classifier with
    :func:`engines.benchmark.interleaved_throughput` (torch on the CPU: classifiers have no ONNX engine yet)."""

    def __init__(self, run: Path) -> None:
        bundle = resolve_weights(run)
        self.model, self.spec, self.tile = load_model(bundle), bundle.input_spec(), bundle.tile

    def infer(self, batch):
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).sigmoid().numpy()


def run_compare_classifiers(settings: CompareSettings, progress: bool = True) -> dict:
    """The same protocol for multi-label classifiers: every model trained on k-1 folds (10 % of them set aside as
    the held-out score) and judged on the remaining fold with the paper's class-averaged metrics (label present
    when its score > 0.5; GR scored with its batch = 32 test images, and its batch/bank agreement recorded)."""
    models = settings.models
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_multilabel(settings.data)
    folds = stratified_multilabel_folds(data.samples, settings.folds, settings.seed)
    fold_numbers = settings.only_folds or tuple(range(1, settings.folds + 1))
    bad = [f for f in fold_numbers if not 1 <= f <= settings.folds]
    if bad:
        raise InputError(f"fold(s) {bad} do not exist; folds are numbered 1..{settings.folds}")
    (out / "folds.json").write_text(json.dumps([[data.samples[i].name for i in f] for f in folds], indent=1))
    allowed = set(ClsTrainSettings.__dataclass_fields__)
    train_overrides = {k: v for k, v in settings.train.items() if k in allowed}
    plans = {name: equal_budget(name, train_overrides) for name in models}  # training overrides per model
    results: dict[str, list[dict]] = {m: [] for m in models}
    for k in fold_numbers:
        test = data.subset(folds[k - 1])
        rest = data.subset([i for j, f in enumerate(folds) if j != k - 1 for i in f])
        fit_idx, val_idx = stratified_multilabel_split(rest.samples, settings.validation, settings.seed + k)
        fit, val = rest.subset(fit_idx), rest.subset(val_idx)
        for name in models:
            model, config, _ = CLS_VARIANTS[name]
            run = out / f"fold{k}" / name
            report_file = run / "eval.json"
            diverged = run / "diverged.txt"  # a run whose loss became NaN: recorded, not retried (delete to retry)
            if not _run_done(run) and not diverged.exists():
                log.info("fold %d/%d: training %s on %d images", k, settings.folds, name, len(fit))
                model_config = {**({"backbone": settings.backbone}
                                   if model_spec(model).backbones and settings.backbone else {}),
                                **config}
                cls_settings = replace(ClsTrainSettings(model=model, data=settings.data, out=str(run),
                                                        seed=settings.seed + k, model_config=model_config),
                                       **plans[name])
                try:
                    train_classifier(cls_settings, progress=progress, train_set=fit, held_set=val)
                except TrainingDiverged as exc:
                    diverged.write_text(f"{exc}\n")
                    log.warning("fold %d %s: %s", k, name, exc)
                report_file.unlink(missing_ok=True)
            if diverged.exists():
                results[name].append({"diverged": diverged.read_text().strip(), "images": len(test)})
                continue
            if not report_file.exists():
                report, _ = evaluate_classifier(run, test, mode="batch", batch=32, threads=settings.threads)
                report["fold"] = k
                report_file.write_text(json.dumps(report, indent=1, default=float) + "\n")
                save_class_figure(report, run / "classes.png", title=f"{name}, fold {k}")
            report = json.loads(report_file.read_text())
            row = {m: report["mean"][m] for m in CLS_METRICS}
            row["agreement"] = report.get("agreement")
            row["images"] = report["images"]
            results[name].append(row)
            log.info("fold %d %s: %s", k, name, row)
    throughput = {}
    if settings.bench_seconds > 0:
        first = fold_numbers[0]
        engines = {name: _TorchClassifier(out / f"fold{first}" / name) for name in models
                   if _run_done(out / f"fold{first}" / name)}  # not the diverged ones
        if engines:
            throughput = interleaved_throughput(engines, batch=settings.bench_batch, seconds=settings.bench_seconds)
    summary = {
        "data": settings.data, "images": len(data), "classes": list(data.classes), "folds": settings.folds,
        "folds_run": list(fold_numbers), "train": settings.train, "backbone": settings.backbone,
        "sizes": {m: plans[m].get("size", ClsTrainSettings.size) for m in models},
        "bench_batch": settings.bench_batch, "command": " ".join(sys.argv), "per_fold": results,
        "throughput": throughput,
        "mean": {m: {k: _mean_std([r[k] for r in rs if "diverged" not in r]) for k in CLS_METRICS}
                 for m, rs in results.items()},
    }
    (out / "compare.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(classifier_markdown(summary))
    return summary


def equal_budget(name: str, train: dict) -> dict:
    """Training settings for classifier ``name`` such that every model gets the same number of passes over the
    training images: GR's two phases together (``pretrain_epochs`` + ``epochs``) are the budget; a model with one
    phase (a torchvision baseline, GR without its GR-module) trains for all of it in that phase, and GR without
    the pre-training phase spends all of it in phase 2. A model that cannot take inputs as small as ``size``
    gets its smallest side instead (the table says so)."""
    model, config, extra = CLS_VARIANTS[name]
    spec = model_spec(model)
    epochs = train.get("epochs", ClsTrainSettings.epochs)
    pretrain = train.get("pretrain_epochs", ClsTrainSettings.pretrain_epochs)
    budget = epochs + (epochs if pretrain == -1 else pretrain)
    settings = {**train, **extra}
    smallest = spec.sides.minimum
    if settings.get("size", ClsTrainSettings.size) < smallest:  # Inception-v3's stem: 75 px at least
        log.warning("%s cannot take %d-px inputs; it is trained and judged at %d px, its smallest",
                    name, settings["size"], smallest)
        settings["size"] = smallest
    if not spec.pretrains or config.get("use_gr") is False:
        settings.update(epochs=budget, pretrain_epochs=-1)
    elif extra.get("pretrain_epochs") == 0:
        settings.update(epochs=budget)
    return settings


def classifier_markdown(summary: dict) -> str:
    runs = len(summary["folds_run"])
    lines = [
        f"Data: `{summary['data']}` ({summary['images']} images, classes {', '.join(summary['classes'])}), "
        f"{summary['folds']}-fold cross-validation"
        + ("" if runs == summary["folds"] else f" (**{runs} of {summary['folds']} folds run**)")
        + "; a label is present when its score > 0.5; metrics averaged over the classes (paper 001, §4.1). GR "
        "is scored with the test images in batches of 32 (its image-wise relations see the batch).",
        "",
        f"Training: {json.dumps(summary['train']) if summary['train'] else 'the paper defaults'}"
        + (f"; GR backbone {summary['backbone']}" if summary.get("backbone") else "") + ". Equal budget: every "
        "model makes the same number of passes over the training images; GR splits them into its two phases, "
        "models with one phase (the baselines, gr-nogr) and gr-nopretrain spend them all in that phase.",
        "",
    ]
    sizes = summary.get("sizes", {})
    if len(set(sizes.values())) > 1:
        lines += ["Input sides: " + ", ".join(f"{m} {s} px" for m, s in sizes.items())
                  + " (a model that cannot take the requested side gets its smallest).", ""]
    lines += ["| model | accuracy | precision | recall | F-measure | exact match | tiles/s (torch CPU) |",
              "|---|---|---|---|---|---|---|"]
    throughput = summary.get("throughput", {})
    diverged_notes = []
    for model, stats in summary["mean"].items():
        diverged = [r["diverged"] for r in summary["per_fold"][model] if "diverged" in r]
        if diverged:
            diverged_notes.append(f"{model}: {diverged[0]}")
        if len(diverged) == len(summary["per_fold"][model]):
            cells = [f"diverged ({len(diverged)} of {len(diverged)} runs)"] + [""] * (len(CLS_METRICS) - 1)
        else:
            cells = [f"{stats[k][0]:.3f} ± {stats[k][1]:.3f}" for k in CLS_METRICS]
            if diverged:
                cells[0] += f" ({len(diverged)} diverged run(s) left out)"
        tps = throughput.get(model, {}).get("tiles_per_s")
        cells.append(f"{tps:.1f}" if tps else "—")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if diverged_notes:
        lines += ["", "Diverged (the loss became NaN or infinite; training stopped there): "
                  + "; ".join(diverged_notes)]
    agreement = {m: [r["agreement"] for r in rs if r.get("agreement") is not None]
                 for m, rs in summary["per_fold"].items()}
    agreement = {m: a for m, a in agreement.items() if a}
    if agreement:
        lines += ["", "GR batch vs reference-bank agreement (fraction of label decisions): "
                  + ", ".join(f"{m} {statistics.fmean(a):.4f}" for m, a in agreement.items()) + "."]
    lines += ["", f"Command: `{summary['command']}`", ""]
    return "\n".join(lines)


def _tuned_threshold(run: Path, val, settings: CompareSettings, judging: Judging) -> float:
    """The decision threshold with the best image-level F1 on the run's validation images (the 10 % of the
    training part the paper sets aside for tuning), from the evaluation sweep; cached in ``validation.json``."""
    cache = run / "validation.json"
    if not cache.exists():
        engine = load_engine(run, backend=settings.backend, threads=settings.threads)
        metrics, _ = evaluate_station_verdicts(judging.inspector(engine), val)
        engine.close()
        best = max(metrics["sweep"], key=lambda p: (p["f1"], -abs(p["threshold"] - settings.threshold)))
        cache.write_text(json.dumps({"threshold": best["threshold"], "f1": best["f1"], "images": len(val),
                                     "sweep": metrics["sweep"]}, indent=1) + "\n")
    threshold = float(json.loads(cache.read_text())["threshold"])
    return min(DEFAULT_SWEEP, key=lambda t: abs(t - threshold))


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def results_markdown(summary: dict) -> str:
    """The comparison as Markdown: quality (mean ± std over the folds) and throughput, side by side."""
    runs = len(summary["folds_run"])
    lines = [
        f"Data: `{summary['data']}` ({summary['images']} images), {summary['folds']}-fold cross-validation"
        + ("" if runs == summary["folds"] else f" (**{runs} of {summary['folds']} folds run**)")
        + f"; an image is defective when its stitched score map holds a component of ≥ {summary['min_area_px']} px "
        "at or above the decision threshold, judged by the station's own tiler, stitcher and rules on whole images.",
        "",
        f"Training: {json.dumps(summary['train']) if summary['train'] else 'the paper defaults'}.",
        "",
        "Every figure is at the decision threshold chosen on each run's own validation images (best image-level F1 "
        "there; the paper's 10 % tuning split, never the test fold), except \"F1 at default\" (threshold "
        f"{summary['threshold']}).",
        "",
        "| model | F1 | precision | recall | FP+FN | F1 at default | pixel IoU | pixel Dice | tuned threshold "
        "| tiles/s | vs bffn |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    throughput = summary.get("throughput", {})
    base = throughput.get("bffn", {}).get("tiles_per_s")
    for model, stats in summary["mean"].items():
        cells = []
        for key in METRICS:
            mean, std = stats[key]
            cells.append(f"{mean:.1f} ± {std:.1f}" if key == "fp_fn" else f"{mean:.2f} ± {std:.2f}"
                         if key == "threshold" else f"{mean:.3f} ± {std:.3f}")
        tps = throughput.get(model, {}).get("tiles_per_s")
        cells.append(f"{tps:.0f}" if tps else "—")
        cells.append(f"{tps / base:.2f}×" if tps and base else "—")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if throughput:
        lines += ["", f"Throughput: {summary['backend']} backend, batch {summary['bench_batch']} tiles, the engines "
                      "taking turns batch by batch in one run (`engines.benchmark.interleaved_throughput`); "
                      "p50/p99 batch latency in `compare.json`."]
    lines += ["", f"Command: `{summary['command']}`", ""]
    return "\n".join(lines)
