"""Image-level and pixel-level evaluation of segmentation networks (the paper's protocol: an image is defective
when its mask holds a component at or above the minimum area)."""
from __future__ import annotations

import numpy as np

from engines.data.parts import exposure_of
from inspection_core.defaults import DEFAULT_MIN_AREA_PX, DEFAULT_SCORE_THRESHOLD
from inspection_core.preprocess import add_border, crop_border, normalize_tiles, prepare_image
from inspection_core.records import Frame, Verdict
from inspection_core.verdict import DecisionRules, find_defects


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


def evaluate_full_images(model, samples, spec, threshold: float = DEFAULT_SCORE_THRESHOLD,
                         min_area_px: int = DEFAULT_MIN_AREA_PX) -> dict[str, float]:
    """Run ``model`` (torch, eval mode) on whole images padded to a multiple of 32; image-level metrics plus
    pixel IoU and Dice over all images. Used during training for a quick held-out score."""
    import cv2
    import torch


    rules = DecisionRules(score_threshold=threshold, min_area_px=min_area_px)
    sweep = [DecisionRules(score_threshold=float(t), min_area_px=min_area_px) for t in VALIDATION_SWEEP]

    truth, predicted, inter, union, total_pred, total_true = [], [], 0, 0, 0, 0
    swept = []
    with torch.no_grad():
        for s in samples:
            image = add_border(prepare_image(s.image, spec), spec)  # as the station prepares a frame
            h, w = image.shape
            ph, pw = -h % 32, -w % 32
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
            x = torch.from_numpy(normalize_tiles(image[None], spec))
            scores = crop_border(1.0 - model(x).softmax(1)[0, 0, :h, :w].numpy(), spec)
            scores = np.ascontiguousarray(scores, dtype=np.float32)
            binary = scores >= np.float32(threshold)
            truth.append(s.defective)
            predicted.append(bool(find_defects(scores, rules)))  # the station's own rule
            swept.append([bool(find_defects(scores, r)) for r in sweep])
            inter += int((binary & s.mask).sum())
            union += int((binary | s.mask).sum())
            total_pred += int(binary.sum())
            total_true += int(s.mask.sum())
    metrics = image_level_metrics(truth, predicted)
    metrics["pixel_iou"] = round(inter / union, 4) if union else 1.0
    metrics["pixel_dice"] = round(2 * inter / (total_pred + total_true), 4) if total_pred + total_true else 1.0
    if swept:  # the image-level F1 at the best threshold of a short sweep: the model's quality, not the rule's
        table = np.asarray(swept, bool)
        scored = [(image_level_metrics(truth, list(table[:, k]))["f1"], t) for k, t in enumerate(VALIDATION_SWEEP)]
        best_f1, best_t = max(scored)
        metrics["best_f1"], metrics["best_threshold"] = best_f1, best_t
    return metrics


def evaluate_as_station(model, model_name: str, samples, spec, tile: int, overlap: int,
                        threshold: float = DEFAULT_SCORE_THRESHOLD,
                        min_area_px: int = DEFAULT_MIN_AREA_PX, min_areas=None) -> dict[str, float]:
    """Judge ``samples`` during training exactly as the station judges them: the live network (torch, eval mode, on
    the CPU) behind the station's :class:`~inspection.inspector.Inspector` (its tiles, stitching and decision
    rules), through :func:`evaluate_station_verdicts`. Returns the image-level metrics at ``threshold`` /
    ``min_area_px``, pixel IoU and Dice at ``threshold``, and the rule these images teach (:func:`best_rule` over
    :data:`DEFAULT_SWEEP` x ``min_areas``): ``best_f1``, ``best_threshold``, ``best_min_area_px``, ``best_fp_fn`` -
    the same figures ``engines eval --learn-min-areas`` gives for the saved weights."""
    from engines.backends.torch_backend import TorchEngine
    from engines.export import inference_module
    from inspection.judging import Judging

    engine = TorchEngine(inference_module(model), model_name, "training", spec, tile)
    judging = Judging.from_rule(None, threshold=threshold, min_area=min_area_px, overlap=overlap, where="training")
    inspector = judging.inspector(engine)
    metrics, _ = evaluate_station_verdicts(inspector, samples, min_areas=min_areas or RULE_MIN_AREAS)
    metrics.pop("sweep")
    metrics.pop("rule_sweep")
    rule = metrics.pop("best_rule")
    return {**metrics, "best_f1": rule["f1"], "best_threshold": rule["threshold"],
            "best_min_area_px": rule["min_area_px"], "best_fp_fn": rule["fp_fn"], "judged": "station"}


VALIDATION_SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: The minimum areas a decision rule is learned over (with :data:`DEFAULT_SWEEP`'s thresholds).
RULE_MIN_AREAS = (10, 20, 30, 50, 80, 120, 200)
DEFAULT_SWEEP = tuple(round(t, 3) for t in np.concatenate([np.arange(0.05, 0.95, 0.05), [0.95, 0.98, 0.99]]))


def evaluate_station_verdicts(inspector, samples, thresholds=DEFAULT_SWEEP, failures_dir=None,
                              max_failures: int = 12, min_areas=()) -> tuple[dict[str, float], list[dict]]:
    """Judge every sample exactly as the station does (tiles, stitching, decision rules) and compare with the
    image-level truth. Returns the metrics and one record per image (name, truth, verdict, defects).

    The metrics hold pixel IoU and Dice at the operating threshold and ``sweep``: the image-level metrics at each
    of ``thresholds`` (the same stitched score maps judged by the same rules with another score threshold), from
    which :func:`save_pr_curve` draws the precision–recall curve. With ``failures_dir``, the first
    ``max_failures`` missed and false-alarm images are saved there as overlays (:func:`save_failure_overlay`).

    With ``min_areas``, every (threshold, minimum area) pair is judged too: ``rule_sweep`` holds them all and
    ``best_rule`` the one with the best image-level F1 (ties: fewer FP+FN, then the higher threshold and area).
    That is how decision rules are learned, on a validation part only.
    """
    import time
    from dataclasses import replace


    sweep_rules = [replace(inspector.rules, score_threshold=float(t)) for t in thresholds]
    pairs = [(float(t), int(a)) for a in min_areas for t in thresholds]
    pair_rules = [replace(inspector.rules, score_threshold=t, min_area_px=a, min_area_mm2=None) for t, a in pairs]
    pair_decisions = []
    records, inter, union, n_pred, n_true = [], 0, 0, 0, 0
    decisions = []
    saved = 0
    for i, s in enumerate(samples):
        result = inspector.inspect(Frame(s.image, i + 1, time.monotonic_ns(), "eval", {"file": s.name}))
        binary = result.mask >= np.float32(inspector.rules.score_threshold)
        inter += int((binary & s.mask).sum())
        union += int((binary | s.mask).sum())
        n_pred += int(binary.sum())
        n_true += int(s.mask.sum())
        decisions.append([bool(find_defects(result.mask, rules)) for rules in sweep_rules])
        pair_decisions.append([bool(find_defects(result.mask, rules)) for rules in pair_rules])
        verdict = result.verdict.value
        records.append({"name": s.name, "defective": s.defective, "category": s.category, "verdict": verdict,
                        "defects": len(result.defects), "max_score": round(float(result.mask.max()), 4),
                        "exposure": exposure_of(s.name), "at_edge": at_edge(s.mask) if s.defective else None})
        failed = s.defective != (verdict == Verdict.FAIL.value)
        if failures_dir is not None and failed and saved < max_failures:
            save_failure_overlay(s, result, inspector.rules.score_threshold, failures_dir)
            saved += 1
    truth = [r["defective"] for r in records]
    metrics = image_level_metrics(truth, [r["verdict"] == Verdict.FAIL.value for r in records])
    metrics["pixel_iou"] = round(inter / union, 4) if union else 1.0
    metrics["pixel_dice"] = round(2 * inter / (n_pred + n_true), 4) if n_pred + n_true else 1.0
    table = np.asarray(decisions, bool).reshape(len(records), len(sweep_rules))
    metrics["sweep"] = [{"threshold": float(t), **image_level_metrics(truth, list(table[:, k]))}
                        for k, t in enumerate(thresholds)]
    if pairs:
        table = np.asarray(pair_decisions, bool).reshape(len(records), len(pairs))
        metrics["rule_sweep"] = [{"threshold": t, "min_area_px": a, **image_level_metrics(truth, list(table[:, k]))}
                                 for k, (t, a) in enumerate(pairs)]
        metrics["best_rule"] = best = best_rule(metrics["rule_sweep"])
        column = table[:, pairs.index((best["threshold"], best["min_area_px"]))]
        for record, fails in zip(records, column):  # each image's verdict under the learned rule
            record["best_rule_verdict"] = Verdict.FAIL.value if fails else Verdict.PASS.value
    return metrics, records


def at_edge(mask: np.ndarray, px: int = 8) -> bool:
    """Whether a defect mask reaches within ``px`` pixels of the image's edge (a break is a chipped edge)."""
    return bool(mask[:px].any() or mask[-px:].any() or mask[:, :px].any() or mask[:, -px:].any())


def best_rule(rule_sweep: list[dict]) -> dict:
    """The point of a (threshold, minimum area) sweep with the best image-level F1; ties: fewer FP+FN, then the
    higher threshold and area. How a decision rule is learned, on a validation part only."""
    return max(rule_sweep, key=lambda p: (p["f1"], -p["fp_fn"], p["threshold"], p["min_area_px"]))


def save_pr_curve(sweep: list[dict], path, title: str = "", operating_threshold: float | None = None):
    """Draw the image-level precision–recall curve and F1 against the threshold from an evaluation sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    thresholds = [p["threshold"] for p in sweep]
    fig, (ax_pr, ax_f1) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax_pr.plot([p["recall"] for p in sweep], [p["precision"] for p in sweep], "o-", ms=3)
    for p in sweep[::3]:
        ax_pr.annotate(f"{p['threshold']:.2f}", (p["recall"], p["precision"]), fontsize=7, xytext=(3, 3),
                       textcoords="offset points")
    ax_pr.set(xlabel="recall (image level)", ylabel="precision (image level)", xlim=(0, 1.02), ylim=(0, 1.02),
              title="precision–recall (labels: threshold)")
    ax_f1.plot(thresholds, [p["f1"] for p in sweep], "o-", ms=3, label="F1")
    ax_f1.plot(thresholds, [p["fp_fn"] / max(1, p["tp"] + p["fp"] + p["fn"] + p["tn"]) for p in sweep], "s-", ms=3,
               label="(FP+FN) / images")
    if operating_threshold is not None:
        ax_f1.axvline(operating_threshold, color="grey", ls="--", lw=1, label=f"operating {operating_threshold:g}")
    ax_f1.set(xlabel="defect score threshold", ylim=(0, 1.02), title="F1 and error rate vs threshold")
    ax_f1.legend(fontsize=8)
    for ax in (ax_pr, ax_f1):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return write_figure(fig, path)


def write_figure(fig, path):
    """Lay out, save as PNG (making the folder) and close a matplotlib figure; returns the path."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_failure_overlay(sample, result, threshold: float, out_dir):
    """Save ``image | truth (green) and prediction (red) | score map`` for one misjudged image as PNG."""
    from pathlib import Path

    import cv2

    image = sample.image
    grey = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    overlay = grey.copy()
    predicted = result.mask >= np.float32(threshold)
    overlay[predicted] = (0.45 * overlay[predicted] + 0.55 * np.array([0, 0, 255])).astype(np.uint8)
    contours, _ = cv2.findContours(sample.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(overlay, contours, -1, (0, 255, 0), 1)
    heat = cv2.applyColorMap(np.clip(result.mask * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    panel = np.concatenate([grey, overlay, heat], axis=1)
    kind = "missed" if sample.defective else "false-alarm"
    scale = max(1, 256 // max(1, image.shape[0]))
    if scale > 1:
        panel = cv2.resize(panel, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{kind}__{sample.name.replace('/', '__').rsplit('.', 1)[0]}.png"
    cv2.imwrite(str(out_dir / name), panel)
    return out_dir / name
