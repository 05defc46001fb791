"""One table for several `engines accept` reports: the levers of a training recipe side by side (issue 25).

Each ``OUT/acceptance.json`` gives the rule learned on validation, validation F1, the held-out figures judged once,
recall and false alarms per exposure (and their spread), recall of defects at the image edge and inside it, and,
where the run was judged ``--against`` a reference, the paired comparison on validation (McNemar p).

    python benchmarks/lever_table.py runs/accept-ref runs/accept-control runs/accept-exposure \\
        --labels reference,control,exposure --out docs/results/levers.md --json docs/results/levers.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engines.acceptance import spread  # the goal's own spread: lightings with at least 5 images of the kind




def summarise(report: dict) -> dict:
    """The figures of one acceptance report that the table shows; a report of `engines accept --classifier` shows
    the fused verdicts (its rule names the labels that fail parts)."""
    fused = report.get("classifier")
    held = fused["holdout"] if fused else report["holdout"]
    validation = fused["validation"]["fused"] if fused else report["validation"]
    exposures = held.get("by_exposure", {})
    edge = held.get("edge_recall", {})
    paired = report.get("reference", {}).get("paired")
    rule = f"{report['rule']['threshold']} / {report['rule']['min_area_px']} px"
    if fused:
        on = [f"{c} > {t}" for c, t in fused["thresholds"].items() if t < 1.0]
        rule += f" + labels {', '.join(on) or 'none'}"
    return {
        "rule": rule,
        "validation_f1": validation["f1"],
        "validation_errors": validation["fp_fn"],
        "holdout_precision": held["precision"], "holdout_recall": held["recall"], "holdout_f1": held["f1"],
        "holdout_false_alarms": f"{held['fp']} of {held['fp'] + held['tn']}",
        "holdout_false_alarm_rate": held["false_alarms"], "holdout_iou": held["pixel_iou"],
        "recall_by_exposure": {k: f"{r['found']}/{r['defective']}" for k, r in exposures.items() if r["defective"]},
        "false_alarms_by_exposure": {k: f"{r['false_alarms']}/{r['clean']}" for k, r in exposures.items()
                                     if r["clean"]},
        "recall_spread": spread(exposures, "recall"), "false_alarm_spread": spread(exposures, "false_alarm_rate"),
        "edge_recall": (f"{edge['True']['found']}/{edge['True']['defective']}" if "True" in edge else None),
        "interior_recall": (f"{edge['False']['found']}/{edge['False']['defective']}" if "False" in edge else None),
        "class_recall": {k: f"{r['found']}/{r['images']}" for k, r in held.get("class_recall", {}).items()},
        "vs_reference": (f"+{paired['fixed']} / -{paired['broken']}, p = {paired['p_value']}" if paired else None),
    }


def markdown(rows: list[tuple[str, dict]]) -> str:
    head = ("| run | rule | validation F1 (errors) | held-out P / R / F1 | false alarms | IoU | recall spread "
            "across exposures | false-alarm spread | edge / interior recall | on validation vs the reference |")
    lines = [head, "|" + " --- |" * 10]
    for label, s in rows:
        lines.append(
            f"| {label} | {s['rule']} | {s['validation_f1']} ({s['validation_errors']}) | "
            f"{s['holdout_precision']} / {s['holdout_recall']} / **{s['holdout_f1']}** | {s['holdout_false_alarms']} "
            f"({s['holdout_false_alarm_rate']:.1%}) | {s['holdout_iou']} | {s['recall_spread']} | "
            f"{s['false_alarm_spread']} | {s['edge_recall']} / {s['interior_recall']} | {s['vs_reference'] or '-'} |")
    lines.append("")
    lines.append("Held-out recall and false alarms per exposure (exp1 darkest … exp6 brightest):")
    lines.append("")
    keys = sorted({k for _, s in rows for k in {**s["recall_by_exposure"], **s["false_alarms_by_exposure"]}})
    lines.append("| run | " + " | ".join(f"exp{k} recall, false alarms" for k in keys) + " |")
    lines.append("|" + " --- |" * (len(keys) + 1))
    for label, s in rows:
        cells = [f"{s['recall_by_exposure'].get(k, '-')}, {s['false_alarms_by_exposure'].get(k, '-')}" for k in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    classes = sorted({k for _, s in rows for k in s["class_recall"]})
    if classes:
        lines += ["", "Held-out recall per defect class:", "",
                  "| run | " + " | ".join(classes) + " |", "|" + " --- |" * (len(classes) + 1)]
        for label, s in rows:
            lines.append(f"| {label} | " + " | ".join(s["class_recall"].get(c, "-") for c in classes) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="`engines accept` output folders (or their acceptance.json)")
    parser.add_argument("--labels", help="comma-separated labels, one per report (default: the folder names)")
    parser.add_argument("--out", help="write the markdown table here (default: print it)")
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    paths = [Path(p) / "acceptance.json" if Path(p).is_dir() else Path(p) for p in args.reports]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no acceptance report at {', '.join(missing)}; run `engines accept --out DIR` first",
              file=sys.stderr)
        return 2
    labels = args.labels.split(",") if args.labels else [p.parent.name for p in paths]
    if len(labels) != len(paths):
        print(f"error: {len(labels)} labels for {len(paths)} reports", file=sys.stderr)
        return 2
    rows = [(label, summarise(json.loads(p.read_text()))) for label, p in zip(labels, paths)]
    write_tables(markdown(rows), dict(rows), args.out, args.json)
    return 0


def write_tables(text: str, figures: dict, out: str | None, json_path: str | None) -> None:
    """The markdown table to ``out`` (None: printed) and the figures as JSON to ``json_path`` (None: not written)."""
    if out:
        Path(out).write_text(text)
    else:
        print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
