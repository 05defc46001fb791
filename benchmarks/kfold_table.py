"""The k-fold table of issue 25: each arm's `engines accept` reports over the folds of a split by part, held-out
figures added up over the folds (every image is held out once), beside each fold's own F1, and each arm against the
reference (``ref``) image by image on the held-out images both have judged (exact McNemar p over all those folds),
each lever against the control (``control``: the same fine-tune without a lever, what a lever is measured against)
the same way, and issue 25's goals judged on all of an arm's held-out images together (its per-image records of
every fold).

The reports are ``RUNS/accept-ARM-fI/acceptance.json`` (as ``benchmarks/issue25_kfold.sh`` writes them); a report of
``engines accept --classifier`` counts its fused verdicts. An arm missing some folds is shown with the folds it has.

    python benchmarks/kfold_table.py runs/kfold --out docs/results/issue25/kfold.md --json docs/results/issue25/kfold.json
    python benchmarks/kfold_table.py docs/results/issue25/kfold      # the finished folds copied into the repository
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from engines.acceptance import Goals, breakdown, class_separation, held_out_goals, paired_comparison
from engines.evaluate import image_level_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks beside it: one writer for both tables
from lever_table import write_tables  # noqa: E402

REPORT = re.compile(r"^accept-(?P<arm>.+)-f(?P<fold>\d+)$")
FIT = re.compile(r"^eval-train-(?P<arm>.+)-f(?P<fold>\d+)\.json$")  # `engines eval --split-part train` reports
REFERENCE = "ref"
CONTROL = "control"


def collect(runs: Path) -> dict[str, dict[int, dict]]:
    """``{arm: {fold: acceptance report}}`` of the finished reports under ``runs``."""
    arms: dict[str, dict[int, dict]] = {}
    for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
        found = REPORT.match(folder.name)
        if found and (folder / "acceptance.json").is_file():
            report = json.loads((folder / "acceptance.json").read_text())
            report["records"] = held_out_verdicts(folder, report)
            arms.setdefault(found["arm"], {})[int(found["fold"])] = report
    return arms


def fits(runs: Path) -> dict[str, dict[int, dict]]:
    """``{arm: {fold: separation}}`` of the arms judged on their own training images (``eval-train-ARM-fI.json``
    under ``runs``): what the network learned by heart shows as a class separated there but not held out."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted(runs.glob("eval-train-*.json")) if runs.is_dir() else []:
        match = FIT.match(path.name)
        if match:
            report = json.loads(path.read_text())
            found.setdefault(match["arm"], {})[int(match["fold"])] = {"images": report["images"],
                                                                      **report.get("separation", {})}
    return found


def fit_markdown(fitted: dict[str, dict[int, dict]], table: dict[str, dict]) -> str:
    """Per arm and fold: each class's separation on the training images beside the held-out one."""
    if not fitted:
        return ""
    names = list(dict.fromkeys(n for folds in fitted.values() for f in folds.values() for n in f if n != "images"))
    lines = ["", "The fit: separation (AUC) on the network's own training images, then on its held-out images "
             "(a class separated in training but not held out is learned by heart):", "",
             "| arm | fold | training images | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 3)]
    for arm, folds in fitted.items():
        held = (table.get(arm, {}).get("goals_over_folds") or {}).get("separation", {})
        order = sorted(table.get(arm, {}).get("folds", []))  # auc_per_fold follows the arm's folds in order
        held_by_fold = {n: dict(zip(order, row["auc_per_fold"])) for n, row in held.items()}
        for fold, trained in sorted(folds.items()):
            cells = []
            for n in names:
                held_auc = held_by_fold.get(n, {}).get(fold)
                cells.append(f"{trained[n]['auc'] if n in trained else '-'} / {'-' if held_auc is None else held_auc}")
            lines.append(f"| {arm} | {fold} | {trained['images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def held_out_verdicts(folder: Path, report: dict) -> list[dict]:
    """The per-image held-out records beside a report in ``folder`` (``holdout-fused.json`` for a fused report),
    or []."""
    path = folder / ("holdout-fused.json" if report.get("classifier") else "holdout.json")
    return json.loads(path.read_text()).get("images_detail", []) if path.is_file() else []


def paired_over_folds(reports: dict[int, dict], baseline: dict[int, dict]) -> dict | None:
    """An arm against a baseline (the reference, or the control) on the held-out images of the folds both have
    finished, image by image (:func:`engines.acceptance.paired_comparison`), with the folds it covers; None without
    a common fold."""
    folds = sorted(set(reports) & set(baseline))
    arm, ref = [], []
    for fold in folds:
        arm += reports[fold]["records"]
        ref += baseline[fold]["records"]
    if not arm or not ref:
        return None
    return {"folds": folds, **paired_comparison(arm, ref, verdict="verdict")}


def pooled(reports: dict[int, dict]) -> dict:
    """The held-out figures of one arm added up over its folds: counts, precision, recall, F1, false alarms, recall
    per class, and each fold's held-out F1 beside its validation F1, validation false alarms and learned rule (where
    validation ranks arms otherwise than held-out, it shows here)."""
    counts = dict.fromkeys(("tp", "fp", "fn", "tn"), 0)
    classes: dict[str, list[int]] = {}
    per_fold = {}
    for fold, report in sorted(reports.items()):
        fused = report.get("classifier")
        held = fused["holdout"] if fused else report["holdout"]
        validation = fused["validation"]["fused"] if fused else report["validation"]
        for key in counts:
            counts[key] += held[key]
        for name, row in held.get("class_recall", {}).items():
            found, images = classes.setdefault(name, [0, 0])
            classes[name] = [found + row["found"], images + row["images"]]
        per_fold[fold] = {"holdout_f1": held["f1"], "validation_f1": validation["f1"],
                          "validation_fp": validation.get("fp"), "rule": report.get("rule"),
                          "hindsight_f1": None if fused else held.get("hindsight_rule", {}).get("f1")}
    truth = [True] * (counts["tp"] + counts["fn"]) + [False] * (counts["fp"] + counts["tn"])
    predicted = [True] * counts["tp"] + [False] * counts["fn"] + [True] * counts["fp"] + [False] * counts["tn"]
    metrics = image_level_metrics(truth, predicted)
    clean = counts["fp"] + counts["tn"]
    return {"folds": sorted(reports), **metrics, "false_alarm_rate": round(counts["fp"] / clean, 4) if clean else 0.0,
            "class_recall": {c: f"{found}/{images}" for c, (found, images) in sorted(classes.items())},
            "per_fold": per_fold}


def goals_over_folds(reports: dict[int, dict]) -> dict | None:
    """Issue 25's goals (:class:`engines.acceptance.Goals`) judged on the per-image held-out records of all of an
    arm's folds together, with the recall and false alarms per exposure and the recall of defects at the image edge
    and inside; None when a fold's records are missing.
    Pixel IoU is the folds' mean weighted by their held-out images (it is a figure of each fold's masks)."""
    records, iou, images = [], 0.0, 0
    for _, report in sorted(reports.items()):
        rows = report["records"]
        if not rows:
            return None
        records += rows
        held = report["holdout"]
        iou += held.get("pixel_iou", 0.0) * len(rows)
        images += len(rows)
    metrics = image_level_metrics([r["defective"] for r in records], [r["verdict"] == "FAIL" for r in records])
    metrics["pixel_iou"] = round(iou / images, 4)
    exposures = breakdown(records, "exposure")
    # each fold's own separation (its network's scores are its own), then the mean over the folds
    folds = [class_separation(report["records"]) for _, report in sorted(reports.items())]
    separation = {name: {"auc_per_fold": [f[name]["auc"] if name in f else None for f in folds]}
                  for name in dict.fromkeys(n for f in folds for n in f)}
    for row in separation.values():
        values = [v for v in row["auc_per_fold"] if v is not None]
        row["mean_auc"] = round(sum(values) / len(values), 4)
    edge = breakdown(records, "at_edge")  # defects within 8 px of the image's edge (breaks live there), and inside
    return {"goals": held_out_goals(metrics, records, Goals()),
            "by_exposure": {e: f"{row['found']}/{row['defective']}, {row['false_alarms']}/{row['clean']}"
                            for e, row in exposures.items()},
            "edge_recall": {("at the edge" if e == "True" else "inside"): f"{row['found']}/{row['defective']}"
                            for e, row in edge.items()},
            "separation": separation}


def goals_markdown(table: dict[str, dict]) -> str:
    """One row per arm whose every fold has its per-image records: each goal's value, and whether it is met."""
    judged = {arm: s["goals_over_folds"] for arm, s in table.items() if s.get("goals_over_folds")}
    if not judged:
        return ""
    # a class's recall goal is named with its image count, which differs between arms of different folds: one
    # column per class (its measure), the count in the cell
    def column(goal: dict) -> tuple[str, str]:
        return (goal["measure"], f" ({goal['images']})") if "measure" in goal else (goal["goal"], "")

    names = list(dict.fromkeys(column(g)[0] for j in judged.values() for g in j["goals"]))
    lines = ["", "Issue 25's goals on all held-out images of the folds together (met: **bold**; a class's held-out "
             "images in brackets):", "",
             "| arm | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for arm, j in judged.items():
        by_name = {column(g)[0]: (g, column(g)[1]) for g in j["goals"]}
        cells = ["-" if n not in by_name else
                 (f"**{by_name[n][0]['value']}**" if by_name[n][0]["met"] else f"{by_name[n][0]['value']}")
                 + by_name[n][1] for n in names]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    exposures = sorted({e for j in judged.values() for e in j["by_exposure"]})
    lines += ["", "Held-out recall, false alarms per exposure over the folds:", "",
              "| arm | " + " | ".join(f"exp{e}" for e in exposures) + " |", "|" + " --- |" * (len(exposures) + 1)]
    for arm, j in judged.items():
        lines.append(f"| {arm} | " + " | ".join(j["by_exposure"].get(e, "-") for e in exposures) + " |")
    lines += ["", "Held-out recall of defects within 8 px of the image's edge, and inside, over the folds:", "",
              "| arm | at the edge | inside |", "| --- | --- | --- |"]
    for arm, j in judged.items():
        edge = j.get("edge_recall", {})
        lines.append(f"| {arm} | {edge.get('at the edge', '-')} | {edge.get('inside', '-')} |")
    names = list(dict.fromkeys(n for j in judged.values() for n in j.get("separation", {})))
    if names:
        lines += ["", "Held-out separation from the defect-free images by each image's peak score, whatever the rule "
                  "(AUC: 1 = some threshold separates them, 0.5 = the network does not see the class; each fold's "
                  "own, then their mean):", "", "| arm | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
        for arm, j in judged.items():
            rows = j.get("separation", {})
            cells = [(f"{rows[n]['mean_auc']} (" + ", ".join("-" if v is None else str(v)
                                                                 for v in rows[n]["auc_per_fold"]) + ")")
                     if n in rows else "-" for n in names]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fold_note(fold: dict) -> str:
    """``val 0.759, 3 FA; 0.95 / 30 px; best rule in hindsight 0.78``: what validation said of one fold's arm, and
    the held-out F1 of the best rule chosen on held-out itself (`engines accept` reports it since fold 2) - as much
    as its report holds."""
    note = f"val {fold['validation_f1']}"
    if fold.get("validation_fp") is not None:
        note += f", {fold['validation_fp']} FA"
    rule = fold.get("rule")
    if rule:
        note += f"; {rule['threshold']} / {rule['min_area_px']} px"
    if fold.get("hindsight_f1") is not None:  # the best rule on held-out itself: what a better rule could give
        note += f"; best rule in hindsight {fold['hindsight_f1']}"
    return note


def markdown(table: dict[str, dict]) -> str:
    lines = ["| arm | folds | held-out images | P / R / F1 (added up) | false alarms | each fold's held-out F1 "
             "(validation F1, its false alarms; rule; best rule on held-out in hindsight) | recall per class "
             "| against the reference, image by image | against the control (the same steps, no lever) |",
             "|" + " --- |" * 9]
    for arm, s in table.items():
        images = s["tp"] + s["fp"] + s["fn"] + s["tn"]
        folds = ", ".join(f"{v['holdout_f1']} ({fold_note(v)})" for _, v in sorted(s["per_fold"].items()))
        classes = ", ".join(f"{c} {r}" for c, r in s["class_recall"].items())
        versus = [(f"+{paired['fixed']} / -{paired['broken']}, p = {paired['p_value']} ({paired['images']} images)"
                   if paired else "-") for paired in (s.get("against_reference"), s.get("against_control"))]
        lines.append(f"| {arm} | {len(s['folds'])} | {images} | {s['precision']} / {s['recall']} / **{s['f1']}** | "
                     f"{s['fp']} of {s['fp'] + s['tn']} ({s['false_alarm_rate']:.1%}) | {folds} | {classes} | "
                     f"{versus[0]} | {versus[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="the folder holding accept-ARM-fI report folders (e.g. runs/kfold)")
    parser.add_argument("--out", help="write the markdown table here (default: print it)")
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    arms = collect(Path(args.runs))
    if not arms:
        print(f"error: no accept-ARM-fI/acceptance.json under {args.runs}; run benchmarks/issue25_kfold.sh first",
              file=sys.stderr)
        return 2
    table = {arm: {**pooled(reports), "goals_over_folds": goals_over_folds(reports)} for arm, reports in arms.items()}
    for arm, reports in arms.items():
        if arm != REFERENCE and REFERENCE in arms:
            table[arm]["against_reference"] = paired_over_folds(reports, arms[REFERENCE])
        if arm not in (REFERENCE, CONTROL) and CONTROL in arms:  # a lever against the same fine-tune without it
            table[arm]["against_control"] = paired_over_folds(reports, arms[CONTROL])
    fitted = fits(Path(args.runs))
    for arm, folds in fitted.items():
        if arm in table:
            table[arm]["training_separation"] = folds
    write_tables(markdown(table) + goals_markdown(table) + fit_markdown(fitted, table), table, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
