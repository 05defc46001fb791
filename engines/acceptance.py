"""Acceptance of segmentation weights, decided honestly: the decision rule is learned on the validation part of a
split only, then the held-out part is judged once with it, exactly as the station judges (tiles, stitching, the
rules of :mod:`inspection_core.verdict`), and the figures are checked against the line's goals.

``engines accept`` is the command; :func:`held_out_goals` is the goal check, on the held-out records alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb


@dataclass(frozen=True)
class Goals:
    """What the line asks of a segmentation network on parts nobody trained or tuned on (issues 12 and 25)."""

    f1: float = 0.95  # image-level F1
    false_alarms: float = 0.03  # at most this share of defect-free images judged FAIL (issue 25; 0.05 before)
    pixel_iou: float = 0.5
    class_recall: float = 0.90  # recall of each defect class ...
    class_min_images: int = 10  # ... that has at least this many held-out images
    exposure_spread: float = 0.05  # recall, and false alarms, may differ by this much between lightings


def class_recall(records: list[dict]) -> dict[str, dict]:
    """Per defect class: held-out images, how many were judged FAIL, and the recall (records of
    :func:`engines.evaluate.evaluate_station_verdicts`, which carry each image's ``category``)."""
    table: dict[str, dict] = {}
    for r in records:
        if r.get("category") is None:
            continue
        row = table.setdefault(r["category"], {"images": 0, "found": 0})
        row["images"] += 1
        row["found"] += r["verdict"] == "FAIL"
    for row in table.values():
        row["recall"] = round(row["found"] / row["images"], 4)
    return dict(sorted(table.items()))


def breakdown(records: list[dict], key: str) -> dict[str, dict]:
    """Recall and false alarms per value of ``key`` in the records (``exposure``: the lighting of the image;
    ``at_edge``: whether the defect reaches the image's edge, for defective images only): for each value, the
    defective images and how many were judged FAIL, the defect-free images and how many were judged FAIL.
    Records whose ``key`` is missing or None are left out."""
    table: dict[str, dict] = {}
    for r in records:
        value = r.get(key)
        if value is None:
            continue
        row = table.setdefault(str(value), {"defective": 0, "found": 0, "clean": 0, "false_alarms": 0})
        if r["defective"]:
            row["defective"] += 1
            row["found"] += r["verdict"] == "FAIL"
        else:
            row["clean"] += 1
            row["false_alarms"] += r["verdict"] == "FAIL"
    for row in table.values():
        row["recall"] = round(row["found"] / row["defective"], 4) if row["defective"] else None
        row["false_alarm_rate"] = round(row["false_alarms"] / row["clean"], 4) if row["clean"] else None
    return dict(sorted(table.items()))


def auc(positives: list[float], negatives: list[float]) -> float | None:
    """The area under the ROC curve of scores meant to be higher for ``positives``: the chance that a random
    positive outscores a random negative, ties counting half (the Mann-Whitney U over both counts); None when
    either side is empty."""
    if not positives or not negatives:
        return None
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # tied scores share their mean rank (1-based)
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        rank_sum += sum(flag for _, flag in ranked[i:j]) * (i + j + 1) / 2
        i = j
    u = rank_sum - len(positives) * (len(positives) + 1) / 2
    return u / (len(positives) * len(negatives))


def class_separation(records: list[dict], score: str = "max_score") -> dict[str, dict]:
    """How well each image's peak defect score (``max_score`` of the per-image records) tells each defect class
    from the defect-free images, whatever the rule: per class, and for all defective images together (``all``), the
    images and the AUC against the defect-free images (1.0: some threshold separates them; 0.5: the network does
    not see the class at all, and no rule can find it). Records without the score are left out; {} without
    defect-free images."""
    scored = [r for r in records if r.get(score) is not None]
    clean = [r[score] for r in scored if not r["defective"]]
    if not clean:
        return {}
    groups: dict[str, list[float]] = {"all": [r[score] for r in scored if r["defective"]]}
    for r in scored:
        if r["defective"] and r.get("category") is not None:
            groups.setdefault(r["category"], []).append(r[score])
    return {name: {"images": len(values), "auc": round(auc(values, clean), 4)}
            for name, values in groups.items() if values}


#: A lighting takes part in the spread goals only with at least this many images of the kind the figure counts
#: (defective for recall, defect-free for false alarms): the magnetic-tile set has two odd `exp0` images.
SPREAD_MIN_IMAGES = 5


def spread(rows: dict[str, dict], figure: str, min_images: int = SPREAD_MIN_IMAGES) -> float | None:
    """max - min of ``figure`` over the rows that have it and at least ``min_images`` images behind it (defective
    ones for ``recall``, defect-free ones for ``false_alarm_rate``); None with fewer than two such rows."""
    count = "defective" if figure == "recall" else "clean"
    values = [row[figure] for row in rows.values() if row.get(figure) is not None and row.get(count, 0) >= min_images]
    return round(max(values) - min(values), 4) if len(values) >= 2 else None


def false_alarm_rate(metrics: dict) -> float:
    """The share of defect-free images judged FAIL, from image-level metrics (FP and TN)."""
    clean = metrics["fp"] + metrics["tn"]
    return metrics["fp"] / clean if clean else 0.0


def held_out_goals(metrics: dict, records: list[dict], goals: Goals) -> list[dict]:
    """Each goal with its measured value and whether it is met. ``metrics`` are the image-level metrics and pixel
    IoU of the held-out part; ``records`` its per-image records."""
    false_alarms = false_alarm_rate(metrics)
    checks = [
        {"goal": "image-level F1", "at_least": goals.f1, "value": metrics["f1"], "met": metrics["f1"] >= goals.f1},
        {"goal": "false alarms on defect-free images", "at_most": goals.false_alarms,
         "value": round(false_alarms, 4), "met": false_alarms <= goals.false_alarms},
        {"goal": "pixel IoU", "at_least": goals.pixel_iou, "value": metrics["pixel_iou"],
         "met": metrics["pixel_iou"] >= goals.pixel_iou},
    ]
    for name, row in class_recall(records).items():
        if row["images"] >= goals.class_min_images:
            measure = f"recall of {name}"  # the goal's name without its image count, which differs between parts
            checks.append({"goal": f"{measure} ({row['images']} images)", "measure": measure, "images": row["images"],
                           "at_least": goals.class_recall, "value": row["recall"],
                           "met": row["recall"] >= goals.class_recall})
    exposures = breakdown(records, "exposure")
    for figure, what, count in (("recall", "recall", "defective"), ("false_alarm_rate", "false alarms", "clean")):
        gap = spread(exposures, figure)
        if gap is not None:
            n = sum(row.get(count, 0) >= SPREAD_MIN_IMAGES for row in exposures.values())
            checks.append({"goal": f"{what} spread across {n} exposures (max - min)",
                           "at_most": goals.exposure_spread, "value": gap, "met": gap <= goals.exposure_spread})
    return checks


def beats(candidate: dict, reference: dict) -> bool:
    """Whether a candidate's learned validation rule beats a reference's: higher F1, or the same F1 with fewer
    errors (how shipped weights are replaced)."""
    return (candidate["f1"], -candidate["fp_fn"]) > (reference["f1"], -reference["fp_fn"])


def paired_comparison(candidate: list[dict], reference: list[dict], verdict: str = "best_rule_verdict") -> dict:
    """The two weights' verdicts on the same images, each under its own learned rule (``best_rule_verdict`` of the
    validation records; ``verdict="verdict"``: the held-out records' verdicts): how many images the candidate judges
    right where the reference is wrong (``fixed``), the reverse (``broken``), and the exact two-sided McNemar
    p-value of that split. A small validation part often separates weights by one or two images; p says whether
    such a difference is more than chance."""
    ref = {r["name"]: (r[verdict] == "FAIL") == r["defective"] for r in reference}
    cand = {r["name"]: (r[verdict] == "FAIL") == r["defective"] for r in candidate}
    if set(cand) != set(ref):
        raise ValueError("the candidate and the reference were judged on different images")
    fixed = sum(cand[n] and not ref[n] for n in ref)
    broken = sum(ref[n] and not cand[n] for n in ref)
    n = fixed + broken
    p = min(1.0, 2 * sum(comb(n, k) for k in range(min(fixed, broken) + 1)) / 2 ** n) if n else 1.0
    return {"images": len(ref), "fixed": fixed, "broken": broken, "p_value": float(f"{p:.3g}")}  # 3 figures: 2e-05, not 0.0
