"""Decision thresholds chosen on a labelled validation folder for a target escape rate.

The *escape rate* is the share of defective parts (images) that pass (FN / defective); the *false-reject rate*
the share of good parts that fail (FP / good). Among the operating points of a sweep whose escape rate is at or
below the target, the one with the fewest false rejects is chosen (ties: the lower escape rate, then the higher
threshold). When no point reaches the target the step says so and stores nothing unless asked to keep the best.

* Segmentation (one defect class): the operating point is the defect score threshold and the minimum defect
  area. Every image is judged as the line judges it, by the line's own :class:`~inspection.inspector.Inspector`
  (the profile's flat-field, tiles, stitching and the decision rules) through
  :func:`engines.evaluate.evaluate_station_verdicts` over :data:`engines.evaluate.DEFAULT_SWEEP`; the score maps are
  computed once and reused for every minimum area (the inspector's ``reuse_scores``). With a profile that holds a
  flat-field every validation image must have the camera's size and pixel format, as every frame on the line must
  (an image that does not fit is refused, naming the difference); the profile's ROI applies when every image has
  the camera's size.
* Multi-label classifier: one threshold per class on its label score (a label is present when its score is
  above it), chosen on that class's escape rate (images with the label whose score stays at or below).

The validation folder is any layout ``engines eval`` reads (``images/`` + ``masks/``, magnetic tile, NEU-Seg;
classifiers: ``images/`` + ``labels.csv`` + ``classes.txt``), or, for segmentation, a folder of images with a
``truth.csv`` (``file,defective`` with 1/0; image-level truth is all a threshold needs) like
``station/samples/magnetic-tile``.
"""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from calibration.errors import CalibrationError
from calibration.profile import pixel_format_of
from engines.backends.base import load_engine
from engines.data.multilabel import label_matrix, load_multilabel, resize_images
from engines.data.segmentation import DatasetError, SegSample, load_dataset, read_grey
from engines.evaluate import DEFAULT_SWEEP, evaluate_station_verdicts, image_level_metrics, write_figure
from engines.evaluate_cls import classifier_bundle
from inspection.inspector import Inspector
from inspection.judging import Judging
from inspection_core.defaults import DEFAULT_MIN_AREA_PX, DEFAULT_OVERLAP
from inspection_core.preprocess import normalize_tiles


# ------------------------------------------------------------------------------------------------ operating point
def with_rates(point: dict) -> dict:
    """Adds ``escape_rate`` = FN / (TP + FN) and ``false_reject_rate`` = FP / (FP + TN) to a metrics dict."""
    tp, fp, fn, tn = (int(point[k]) for k in ("tp", "fp", "fn", "tn"))
    return {**point, "escape_rate": round(fn / (tp + fn), 4) if tp + fn else 0.0,
            "false_reject_rate": round(fp / (fp + tn), 4) if fp + tn else 0.0}


def choose_operating_point(sweep: Sequence[dict], target_escape: float) -> tuple[dict, bool]:
    """``(point, target_met)``: the point of ``sweep`` (dicts with tp, fp, fn, tn, threshold) with escape rate
    <= ``target_escape`` and the fewest false rejects; when none meets it, the one with the lowest escape rate
    (then fewest false rejects)."""
    if not sweep:
        raise CalibrationError("the sweep is empty: no operating point to choose from")
    points = [with_rates(p) for p in sweep]
    meeting = [p for p in points if p["escape_rate"] <= target_escape + 1e-12]
    if meeting:
        return min(meeting, key=lambda p: (p["fp"], p["escape_rate"], -p["threshold"],
                                           -p.get("min_area_px", 0))), True
    return min(points, key=lambda p: (p["escape_rate"], p["fp"], -p["threshold"])), False


def check_target(target: float) -> float:
    if not (isinstance(target, (int, float)) and 0 <= target < 1):
        raise CalibrationError(f"--escape-rate must be a fraction in [0, 1), e.g. 0.02 for 2 % missed defects; got "
                               f"{target!r}")
    return float(target)


# --------------------------------------------------------------------------------------------------- data
def load_validation(data: str | Path) -> list:
    """Segmentation validation samples (:class:`engines.data.segmentation.SegSample`): any ``engines eval``
    layout, or images with a ``truth.csv`` (``file,defective``)."""
    root = Path(data)
    truth_file = root / "truth.csv"
    if root.is_dir() and truth_file.is_file() and not (root / "images").is_dir():
        samples = []
        with open(truth_file, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"file", "defective"} <= set(reader.fieldnames):
                raise CalibrationError(f"{truth_file} must have the columns file and defective (1 or 0)")
            for line, row in enumerate(reader, start=2):
                value = row["defective"].strip().lower()
                if value not in ("0", "1", "true", "false", "yes", "no"):
                    raise CalibrationError(f"{truth_file}:{line}: defective must be 1 or 0, got {row['defective']!r}")
                path = root / row["file"]
                if not path.is_file():
                    raise CalibrationError(f"{truth_file}:{line}: {path} does not exist")
                try:
                    image = read_grey(path)
                except DatasetError as exc:
                    raise CalibrationError(str(exc)) from None
                defective = value in ("1", "true", "yes")
                samples.append(SegSample(row["file"], image, np.zeros(image.shape, bool),
                                         "defect" if defective else None))
    else:
        try:
            samples = load_dataset(root)
        except DatasetError as exc:
            raise CalibrationError(f"{exc} (or a folder of images with truth.csv: file,defective)") from None
    if not samples:
        raise CalibrationError(f"no validation images in {root}")
    defective = sum(s.defective for s in samples)
    if defective == 0:
        raise CalibrationError(f"the validation folder {root} has no defective image: an escape rate cannot be "
                               "measured; add labelled defective parts")
    if defective == len(samples):
        raise CalibrationError(f"every image of {root} is defective: false rejects cannot be measured; add good parts")
    return samples


def sweep_segmentation(inspector: Inspector, samples: Sequence, min_areas: Sequence[int],
                       thresholds: Sequence[float] | None = None) -> list[dict]:
    """Image-level metrics at every (score threshold, minimum area) pair, judged as the station judges (give an
    inspector with ``reuse_scores=True`` so each image runs through the networks once)."""
    sweep = []
    for area in min_areas:
        inspector.rules = replace(inspector.rules, min_area_px=int(area))
        metrics, _ = evaluate_station_verdicts(inspector, samples, thresholds or DEFAULT_SWEEP)
        sweep.extend(with_rates({**p, "min_area_px": int(area)}) for p in metrics["sweep"])
    return sweep


def check_flatfield_fits(calibration, samples: Sequence) -> None:
    """Refuse validation images that the profile's flat-field cannot be applied to (another size or pixel
    format than the camera's), as the line refuses such frames."""
    misfits = [s for s in samples if not calibration.fits(s.image)]
    if misfits:
        first = misfits[0]
        h, w = first.image.shape[:2]
        others = f" (and {len(misfits) - 1} more of the {len(samples)} images)" if len(misfits) > 1 else ""
        calibration.profile.check_fits(
            w, h, pixel_format_of(first.image), what=f"the validation image {first.name}{others}",
            fix=f"its flat-field applies only to the camera's frames, and the thresholds must be chosen on images "
                f"judged as the line judges them: take the validation images with camera "
                f"{calibration.profile.camera} ({calibration.profile.geometry.describe()})")


def calibrate_segmentation(weights: str, data: str | Path, target_escape: float,
                           min_areas: Sequence[int] = (DEFAULT_MIN_AREA_PX,), overlap: int = DEFAULT_OVERLAP,
                           batch: int = 32, backend: str = "onnxruntime", threads: int = 0, calibration=None,
                           label: str = "defect") -> tuple[dict, list[dict]]:
    """``(section, sweep)`` for a segmentation network (see the module docstring)."""
    target_escape = check_target(target_escape)
    if not min_areas or any(int(a) < 1 for a in min_areas):
        raise CalibrationError(f"--min-area values must be whole pixels >= 1, got {list(min_areas)}")
    samples = load_validation(data)
    flatfield = calibration is not None and calibration.flatfield is not None
    if flatfield:
        check_flatfield_fits(calibration, samples)
    engine = load_engine(weights, backend=backend, threads=threads)
    # the profile's ROI is in pixels of the camera's frames: it applies when every image has that size
    roi = calibration.roi if calibration is not None else None
    roi_applied = roi is not None and all(calibration.fits(s.image) for s in samples)
    # judged as the line judges (the profile's flat-field and ROI); the threshold and area are swept from here
    judging = Judging.from_rule(None, min_area=int(min_areas[0]), overlap=overlap, batch=batch,
                                where="calibration thresholds").replace(
        label=label, roi=roi if roi_applied else None, calibration=calibration if flatfield else None)
    inspector = judging.inspector(engine, reuse_scores=True)
    sweep = sweep_segmentation(inspector, samples, sorted({int(a) for a in min_areas}))
    point, met = choose_operating_point(sweep, target_escape)
    defective = sum(s.defective for s in samples)
    section = {
        "kind": "segmentation", "label": label,
        "score_threshold": float(point["threshold"]), "min_area_px": int(point["min_area_px"]),
        "target_escape_rate": target_escape, "target_met": met,
        **{k: point[k] for k in ("precision", "recall", "f1", "escape_rate", "false_reject_rate", "tp", "fp", "fn",
                                 "tn")},
        "images": len(samples), "defective_images": defective, "good_images": len(samples) - defective,
        "flatfield_applied_images": len(samples) if flatfield else 0, "roi_applied": roi_applied,
        "weights": str(weights), "model": engine.model, "weights_sha256": engine.weights_sha256,
        "engine_id": engine.engine_id, "overlap": overlap, "data": str(Path(data).resolve()),
    }
    return section, sweep


def calibrate_classifier(weights: str, data: str | Path, target_escape: float, mode: str = "batch",
                         batch: int = 32, threads: int = 0,
                         thresholds: Sequence[float] | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """``(section, sweeps per class)``: one label threshold per class of a multi-label classifier, scored as the
    line's classifier stage scores it (ONNX Runtime on the weights' export, :func:`engines.backends.base.load_engine`;
    in ``mode`` "batch" GR relates the images of each chunk of ``batch``)."""
    target_escape = check_target(target_escape)
    bundle, classes = classifier_bundle(weights)
    try:
        dataset = load_multilabel(data)
    except DatasetError as exc:
        raise CalibrationError(str(exc)) from None
    if set(dataset.classes) != set(classes):
        raise CalibrationError(f"the validation classes {list(dataset.classes)} differ from the classes the weights "
                               f"were trained on {classes}")
    truth = label_matrix(dataset.samples, classes) > 0.5
    scores = engine_label_scores(load_engine(weights, threads=threads, mode=mode), dataset, bundle.tile,
                                 bundle.input_spec(), batch=batch)
    grid = [float(t) for t in (thresholds or DEFAULT_SWEEP)]
    per_class, sweeps = {}, {}
    for j, name in enumerate(classes):
        positives = int(truth[:, j].sum())
        sweep = [with_rates({"threshold": t, **image_level_metrics(list(truth[:, j]), list(scores[:, j] > t))})
                 for t in grid]
        sweeps[name] = sweep
        if positives == 0 or positives == len(truth):
            per_class[name] = {"threshold": 0.5, "target_met": False, "support": positives,
                               "note": "no positive (or no negative) validation image: kept 0.5"}
            continue
        point, met = choose_operating_point(sweep, target_escape)
        per_class[name] = {"threshold": point["threshold"], "target_met": met, "support": positives,
                           **{k: point[k] for k in ("precision", "recall", "escape_rate", "false_reject_rate", "tp",
                                                    "fp", "fn", "tn")}}
    section = {"kind": "classifier", "classes": per_class, "class_order": classes, "target_escape_rate": target_escape,
               "target_met": all(c["target_met"] for c in per_class.values()), "mode": mode, "images": len(truth),
               "weights": str(weights), "model": bundle.model, "weights_sha256": bundle.sha256(),
               "data": str(Path(data).resolve())}
    return section, sweeps


def engine_label_scores(engine, dataset_or_images, size: int, spec, batch: int = 32) -> np.ndarray:
    """Per-label probabilities (N, C) of a classifier engine for the images, resized to ``size`` and normalised as
    the line prepares patches, scored in consecutive chunks of ``batch`` (GR's batch mode relates each chunk)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise CalibrationError(f"batch must be a positive integer, got {batch!r}")
    images = resize_images(dataset_or_images, size, spec)
    try:
        return np.concatenate([np.asarray(engine.infer(normalize_tiles(images[start:start + batch], spec)),
                                          np.float32) for start in range(0, len(images), batch)])
    finally:
        engine.close()


# ---------------------------------------------------------------------------------------------------- figure
def save_operating_curve(sweeps: dict[str, list[dict]], chosen: dict[str, dict], target_escape: float, path,
                         title: str = "") -> Path:
    """Two panels per curve set: precision against recall, and escape / false-reject rate against the
    threshold, with the chosen operating point marked and the target escape rate drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_pr, ax_rate) = plt.subplots(1, 2, figsize=(11, 4.4))
    for name, sweep in sweeps.items():
        line, = ax_pr.plot([p["recall"] for p in sweep], [p["precision"] for p in sweep], "o-", ms=2.5, lw=1,
                           label=name)
        colour = line.get_color()
        ax_rate.plot([p["threshold"] for p in sweep], [p["escape_rate"] for p in sweep], "-", color=colour, lw=1.2,
                     label=f"{name}: escape")
        ax_rate.plot([p["threshold"] for p in sweep], [p["false_reject_rate"] for p in sweep], "--", color=colour,
                     lw=1, label=f"{name}: false reject")
        point = chosen.get(name)
        if point and "recall" in point:
            ax_pr.plot([point["recall"]], [point["precision"]], "*", ms=13, color=colour, mec="black")
            ax_rate.axvline(point["threshold"], color=colour, ls=":", lw=1)
    ax_rate.axhline(target_escape, color="grey", lw=1, label=f"target escape {target_escape:g}")
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
              title="precision-recall (star: chosen point)")
    ax_rate.set(xlabel="threshold", ylabel="rate", ylim=(0, 1.02), title="escape and false-reject rate")
    for ax in (ax_pr, ax_rate):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return write_figure(fig, path)


def sweep_by_area(sweep: list[dict]) -> dict[str, list[dict]]:
    """A segmentation sweep split into one curve per minimum area (for the figure)."""
    out: dict[str, list[dict]] = {}
    for p in sweep:
        out.setdefault(f"min area {p['min_area_px']} px", []).append(p)
    return out


def summary_lines(section: dict[str, Any]) -> list[str]:
    """Human-readable lines about a thresholds section."""
    if section["kind"] == "segmentation":
        s = section
        return [f"operating point: score threshold {s['score_threshold']:g}, min area {s['min_area_px']} px "
                f"({'meets' if s['target_met'] else 'MISSES'} the target escape rate {s['target_escape_rate']:g})",
                f"  escape rate {s['escape_rate']:.4f} ({s['fn']}/{s['defective_images']} defective parts pass), "
                f"false-reject rate {s['false_reject_rate']:.4f} ({s['fp']}/{s['good_images']} good parts fail)",
                f"  precision {s['precision']:.4f}, recall {s['recall']:.4f} on {s['images']} images"]
    lines = [f"per-class thresholds for target escape rate {section['target_escape_rate']:g}:"]
    for name, c in section["classes"].items():
        if "escape_rate" in c:
            lines.append(f"  {name}: threshold {c['threshold']:g}, escape {c['escape_rate']:.4f}, false reject "
                         f"{c['false_reject_rate']:.4f}, precision {c['precision']:.4f}, recall {c['recall']:.4f} "
                         f"({c['support']} positives){'' if c['target_met'] else '  (target MISSED)'}")
        else:
            lines.append(f"  {name}: threshold {c['threshold']:g} ({c['note']})")
    return lines
