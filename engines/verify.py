"""``engines verify``: run a built engine and a reference on the same real images through the station's own code
and report what matters to the user, judged with tolerances that fit the engine's precision.

Segmentation engines are compared image by image through the line's own :class:`inspection.inspector.Inspector`
with a recipe's tiling and decision rules (the ``engines`` command reads the recipe, by default the shipped
``magnetic_tile``): verdict agreement, IoU of the defect masks, and the max / mean absolute difference of
the stitched defect scores. Classifier engines are compared patch by patch: agreement of the labels (score above
0.5), agreement of each image's whole label set, and the score differences. Images are fed in the same batches
to both, so GR's image-wise relations see the same neighbours.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import InputError
from engines.folders import open_engine
from engines.inputs import batches, named_images, network_inputs
from engines.parity import reference_engine, significant
from inspection.judging import Judging
from inspection_core.records import Frame
from inspection_core.defaults import DEFAULT_LABEL_THRESHOLD

log = logging.getLogger(__name__)

# What each precision must reach against the fp32 reference. Verdicts and labels are what the line acts on; the
# score differences show how far the arithmetic drifted (fp16 ~1e-3 relative, int8 a few per cent).
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"verdict_agreement": 1.0, "label_agreement": 1.0, "min_mask_iou": 0.98, "mean_abs": 1e-4},
    "fp16": {"verdict_agreement": 0.995, "label_agreement": 0.995, "min_mask_iou": 0.90, "mean_abs": 5e-3},
    # int8 (issue 17): verdicts as fp16's, masks judged by their mean IoU; a lone speck under the min-area rule makes
    # one image's IoU 0 without changing its verdict, so the minimum is not judged (docs/int8.md)
    "int8": {"verdict_agreement": 0.995, "label_agreement": 0.98, "min_mask_iou": 0.0, "mean_mask_iou": 0.90,
             "mean_abs": 3e-2},
}


def _iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = np.logical_or(a, b).sum()
    return None if union == 0 else float(np.logical_and(a, b).sum() / union)


def verify_segmentation(engine, reference, images: list[tuple[str, np.ndarray]], judging: Judging) -> dict[str, Any]:
    """Both engines through the line's inspector, judged by ``judging`` (its tiling, rules and calibration profile;
    not its classifier stage: the segmentation engines are compared), image by image."""
    judging = judging.replace(classifier=None)
    rules = judging.rules
    a, b = judging.inspector(engine), judging.inspector(reference)
    agree, ious, max_abs, sum_abs, pixels, differing = 0, [], 0.0, 0.0, 0, []
    seconds = [0.0, 0.0]  # inspecting with the engine, with the reference: in turns, each first every other image
    for i, (name, image) in enumerate(images):
        frame = Frame(image, i + 1, time.monotonic_ns(), "verify", {"file": name})
        results = [None, None]
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            results[k] = (a, b)[k].inspect(frame)
            seconds[k] += time.perf_counter() - t0
        result_a, result_b = results
        mask_a, mask_b = result_a.mask, result_b.mask
        verdict_a, verdict_b = result_a.verdict.value, result_b.verdict.value
        agree += verdict_a == verdict_b
        if verdict_a != verdict_b:
            differing.append({"image": name, "engine": verdict_a, "reference": verdict_b})
        iou = _iou(mask_a >= rules.score_threshold, mask_b >= rules.score_threshold)
        if iou is not None:
            ious.append(iou)
        diff = np.abs(mask_a.astype(np.float64) - mask_b)
        max_abs = max(max_abs, float(diff.max()))
        sum_abs += float(diff.sum())
        pixels += diff.size
    n, share = len(images), engine.guard_share()
    return {"images": n, "verdict_agreement": round(agree / n, 6), "verdicts_differing": differing,
            "images_with_defect_pixels": len(ious),
            "mean_mask_iou": round(float(np.mean(ious)), 6) if ious else None,
            "min_mask_iou": round(float(np.min(ious)), 6) if ious else None,
            "max_abs": significant(max_abs), "mean_abs": significant(sum_abs / max(pixels, 1)),
            "seconds": {"engine": round(seconds[0], 3), "reference": round(seconds[1], 3),
                        "speedup": round(seconds[1] / seconds[0], 3) if seconds[0] else None},
            "guard_share": None if share is None else round(share, 5)}


def verify_classifier(engine, reference, images: list[tuple[str, np.ndarray]], batch: int = 32,
                      threshold: float = DEFAULT_LABEL_THRESHOLD) -> dict[str, Any]:
    """Both engines on the same batches of resized images: label and label-set agreement, score differences."""
    x = network_inputs([im for _, im in images], "classification", engine.tile, engine.spec)
    got = np.concatenate([engine.infer(part) for part in batches(x, batch)])
    want = np.concatenate([reference.infer(part) for part in batches(x, batch)])
    on_a, on_b = got > threshold, want > threshold
    same_set = (on_a == on_b).all(axis=1)
    diff = np.abs(got.astype(np.float64) - want)
    differing = [{"image": images[i][0]} for i in np.flatnonzero(~same_set)]
    return {"images": len(images), "label_agreement": round(float((on_a == on_b).mean()), 6),
            "label_set_agreement": round(float(same_set.mean()), 6), "label_sets_differing": differing,
            "max_abs": significant(diff.max()), "mean_abs": significant(diff.mean())}


def judge(report: dict[str, Any], precision: str, tolerances: dict[str, float] | None = None) -> list[str]:
    """The tolerances of ``precision`` (or ``tolerances``, e.g. a build's stricter ones) that ``report`` misses
    (empty when it passes)."""
    tol = tolerances or TOLERANCES[precision]
    failed = []
    for key in ("verdict_agreement", "label_agreement"):
        if key in report and report[key] < tol[key]:
            failed.append(f"{key} {report[key]:.4f} < {tol[key]}")
    if report.get("min_mask_iou") is not None and report["min_mask_iou"] < tol["min_mask_iou"]:
        failed.append(f"min_mask_iou {report['min_mask_iou']:.4f} < {tol['min_mask_iou']}")
    if report.get("mean_mask_iou") is not None and report["mean_mask_iou"] < tol.get("mean_mask_iou", 0.0):
        failed.append(f"mean_mask_iou {report['mean_mask_iou']:.4f} < {tol['mean_mask_iou']}")
    if report["mean_abs"] > tol["mean_abs"]:
        failed.append(f"mean_abs {report['mean_abs']:.2e} > {tol['mean_abs']:.0e}")
    return failed


def verify(folder: str | Path, data: str | Path, against: str = "torch", judging: Judging | None = None, limit: int = 0,
           threads: int = 0, batch: int = 32) -> dict[str, Any]:
    """Open the engine folder (manifest checked), its reference (``"torch"``: torch fp32 on the CPU from the
    weights the folder carries; or another engine folder), run both on ``data`` and return the report with the
    tolerances applied (``passed``, ``failed``). A segmentation engine is judged by ``judging`` (see
    :func:`verify_segmentation`; the ``engines`` command passes the judging of the shipped ``magnetic_tile`` recipe's
    line unless told otherwise)."""
    engine = open_engine(folder, threads=threads)
    reference = reference_engine(folder, threads=threads) if against == "torch" else open_engine(against, threads)
    images = named_images(data, limit)
    try:
        if engine.kind == "segmentation":
            if judging is None:
                raise InputError(f"{folder} holds a segmentation engine: verifying it needs a recipe's tiling and "
                                 "decision rules (`engines verify --recipe NAME_OR_TOML`, default magnetic_tile)")
            body = verify_segmentation(engine, reference, images, judging)
            body["rules"] = {"score_threshold": judging.rules.score_threshold, "min_area_px": judging.rules.min_area,
                             "overlap": judging.overlap, "from": judging.source, "judging": judging.fingerprint()}
        else:
            body = verify_classifier(engine, reference, images, batch=batch)
    finally:
        engine.close()
        reference.close()
    precision = engine.precision
    failed = judge(body, precision)
    return {"engine": str(folder), "engine_id": engine.engine_id, "against": against if against != "torch" else
            "torch fp32 cpu", "data": str(data), "precision": precision, "tolerances": TOLERANCES[precision],
            **body, "passed": not failed, "failed": failed}
