"""Image-level and pixel-level evaluation of segmentation networks (the paper's protocol: an image is defective
when its mask holds a component at or above the minimum area)."""
from __future__ import annotations

import numpy as np


def image_level_metrics(truth: list[bool], predicted: list[bool]) -> dict[str, float]:
    """TP, FP, FN, TN, precision, recall, F1 and FP+FN of image-level defect decisions."""
    t, p = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
    tn = int((~t & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(f1, 4), "fp_fn": fp + fn, "accuracy": round((tp + tn) / max(1, len(t)), 4)}


def evaluate_full_images(model, samples, spec, threshold: float = 0.5, min_area_px: int = 20) -> dict[str, float]:
    """Run ``model`` (torch, eval mode) on whole images padded to a multiple of 32; image-level metrics plus
    pixel IoU and Dice over all images. Used during training for a quick held-out score."""
    import cv2
    import torch

    from engines.preprocess import normalize_tiles
    from station.verdict import DecisionRules, find_defects

    rules = DecisionRules(score_threshold=threshold, min_area_px=min_area_px)

    truth, predicted, inter, union, total_pred, total_true = [], [], 0, 0, 0, 0
    with torch.no_grad():
        for s in samples:
            h, w = s.image.shape
            ph, pw = -h % 32, -w % 32
            image = cv2.copyMakeBorder(s.image, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
            x = torch.from_numpy(normalize_tiles(image[None], spec))
            scores = np.ascontiguousarray(1.0 - model(x).softmax(1)[0, 0, :h, :w].numpy(), dtype=np.float32)
            binary = scores >= np.float32(threshold)
            truth.append(s.defective)
            predicted.append(bool(find_defects(scores, rules)))  # the station's own rule
            inter += int((binary & s.mask).sum())
            union += int((binary | s.mask).sum())
            total_pred += int(binary.sum())
            total_true += int(s.mask.sum())
    metrics = image_level_metrics(truth, predicted)
    metrics["pixel_iou"] = round(inter / union, 4) if union else 1.0
    metrics["pixel_dice"] = round(2 * inter / (total_pred + total_true), 4) if total_pred + total_true else 1.0
    return metrics


def evaluate_station_verdicts(inspector, samples) -> tuple[dict[str, float], list[dict]]:
    """Judge every sample exactly as the station does (tiles, stitching, decision rules) and compare with the
    image-level truth. Returns the metrics and one record per image (name, truth, verdict, defects)."""
    import time

    from station.records import Frame, Verdict

    records, inter, union = [], 0, 0
    for i, s in enumerate(samples):
        result = inspector.inspect(Frame(s.image, i + 1, time.monotonic_ns(), "eval", {"file": s.name}))
        binary = result.mask >= inspector.rules.score_threshold
        inter += int((binary & s.mask).sum())
        union += int((binary | s.mask).sum())
        records.append({"name": s.name, "defective": s.defective, "verdict": result.verdict.value,
                        "defects": len(result.defects)})
    metrics = image_level_metrics([r["defective"] for r in records],
                                  [r["verdict"] == Verdict.FAIL.value for r in records])
    metrics["pixel_iou"] = round(inter / union, 4) if union else 1.0
    return metrics, records
