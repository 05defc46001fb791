"""``station shadow report``: how a shadowed candidate engine compares with the production engine, from the ledger.

For example::

    station shadow report --db station-data/rejects.db                   # every candidate shadowed in this ledger
    station shadow report --db station-data/rejects.db --candidate bffn-1a2b3c4d --json

Per candidate (:mod:`station.shadow`, one per weights and judging): the parts it judged, the agreement rate (the same
PASS or FAIL as the production verdict), the parts where they differ with both masks' summaries, and how each engine
fared on the shadowed parts QA reviewed (``station review``; the latest review of a part counts): a verdict the review
confirms is *correct*, a FAIL of a part reviewed good a *false reject*, a PASS of a part reviewed defective an
*escape*. Then the promotions recorded in the ledger (``station promote``, OPC UA PrepareRecipe), each with the shadow
summary it was made on. The ledger is opened read-only and never upgraded.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from station.errors import RejectLogError
from station.rejectlog import open_readonly
from station.shadow_tables import PROMOTION_COLUMNS, SHADOW_COLUMNS, has_table

PROG = "station shadow report"
OUTCOMES = ("correct", "false_reject", "escape")
DESCRIPTION = ("How a candidate engine shadowed beside the line ([shadow] in the recipe) compares with the production "
               "engine: the parts it judged, the agreement rate, the parts where the two verdicts differ (row, part, "
               "both verdicts, both masks' defect count, area, classes and peak score), and how each engine fared on "
               "the shadowed parts QA reviewed (correct, false reject, escape; the latest review of a part counts). "
               "Then the promotions recorded in the ledger. The ledger is read, never changed.")
EPILOG = ("Examples: station shadow report --db station-data/rejects.db; station shadow report --db "
          "station-data/rejects.db --candidate bffn-1a2b3c4d --json. Exit status: 0 done, 2 no ledger at --db or no "
          "such candidate (said in one line).")


def fared(verdict: str, mark: str) -> str:
    """What a review makes of a verdict: ``correct``, ``false_reject`` (FAIL, reviewed good) or ``escape`` (PASS,
    reviewed defect)."""
    if verdict == "FAIL":
        return "false_reject" if mark == "good" else "correct"
    return "escape" if mark == "defect" else "correct"


def latest_reviews(conn: sqlite3.Connection) -> dict[int, str]:
    """``{ledger row id: mark}`` of the latest review of each reviewed row (``{}`` before schema 6)."""
    if not has_table(conn, "reviews"):
        return {}
    sql = ("SELECT r.inspection_id, r.mark FROM reviews r JOIN (SELECT inspection_id, MAX(id) AS id FROM reviews "
           "GROUP BY inspection_id) last ON last.id = r.id")
    return {int(row): mark for row, mark in conn.execute(sql)}


def shadow_rows(conn: sqlite3.Connection, where: str = "", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """The shadow rows (``where``: an SQL condition on them), oldest first, each with its ledger row's ``part_id``,
    ``file`` and ``row_time_utc``; ``[]`` in a ledger older than schema 7."""
    if not has_table(conn, "shadow"):
        return []
    columns = ", ".join(f"s.{c}" for c in SHADOW_COLUMNS)
    sql = (f"SELECT {columns}, i.part_id, i.file, i.time_utc FROM shadow s JOIN inspections i ON i.id = s.inspection_id"
           f"{' WHERE ' + where if where else ''} ORDER BY s.id")
    keys = (*SHADOW_COLUMNS, "part_id", "file", "row_time_utc")
    rows = [dict(zip(keys, row)) for row in conn.execute(sql, tuple(params))]
    for row in rows:
        for side in ("production", "candidate"):
            row[f"{side}_classes"] = json.loads(row[f"{side}_classes"])
    return rows


def _side(row: dict[str, Any], side: str) -> dict[str, Any]:
    return {"verdict": row[f"{side}_verdict"], "defects": row[f"{side}_defects"], "area_px": row[f"{side}_area_px"],
            "classes": row[f"{side}_classes"], "max_score": row[f"{side}_max_score"]}


def summarise(rows: list[dict[str, Any]], reviews: dict[int, str]) -> dict[str, Any]:
    """The report of one candidate's shadow rows: counts, agreement, the parts where the verdicts differ, and how each
    engine fared on the reviewed ones. ``agreement`` is None before any part."""
    shadowed = len(rows)
    agree = sum(r["agree"] for r in rows)
    latest = rows[-1] if rows else {}
    times = sorted(r["candidate_ms"] for r in rows)
    reviewed = {"parts": 0, **{side: dict.fromkeys(OUTCOMES, 0) for side in ("production", "candidate")}}
    for row in rows:
        mark = reviews.get(int(row["inspection_id"]))
        if mark is None:
            continue
        reviewed["parts"] += 1
        for side in ("production", "candidate"):
            reviewed[side][fared(row[f"{side}_verdict"], mark)] += 1
    return {
        "candidate": latest.get("candidate"), "weights": latest.get("candidate_weights"),
        "sha256": latest.get("candidate_sha256"), "judging": latest.get("candidate_judging"),
        "rule": latest.get("candidate_rule"),
        "shadowed": shadowed, "agree": agree, "disagreements": shadowed - agree,
        "agreement": round(agree / shadowed, 4) if shadowed else None,
        "production_fail_candidate_pass": sum(r["production_verdict"] == "FAIL" and not r["agree"] for r in rows),
        "production_pass_candidate_fail": sum(r["production_verdict"] == "PASS" and not r["agree"] for r in rows),
        "runs": len({r["run_id"] for r in rows}), "first_utc": rows[0]["time_utc"] if rows else None,
        "last_utc": latest.get("time_utc"), "candidate_ms_p50": times[len(times) // 2] if times else None,
        "reviewed": reviewed,
        "differ": [{"row": r["inspection_id"], "part_id": r["part_id"], "file": r["file"],
                    "time_utc": r["row_time_utc"], "production": _side(r, "production"),
                    "candidate": _side(r, "candidate"), "review": reviews.get(int(r["inspection_id"]))}
                   for r in rows if not r["agree"]],
    }


def candidates(conn: sqlite3.Connection) -> list[str]:
    """The candidate ids shadowed in this ledger, first shadowed first."""
    if not has_table(conn, "shadow"):
        return []
    return [c for (c,) in conn.execute("SELECT candidate FROM shadow GROUP BY candidate ORDER BY MIN(id)")]


def pick_candidates(conn: sqlite3.Connection, wanted: str | None) -> list[str]:
    """The candidates ``wanted`` names: an id, the start of one, or the start of a weights SHA-256 (at least 6 hex
    digits); all of them when None. :class:`RejectLogError` when it names none."""
    known = candidates(conn)
    if wanted is None:
        return known
    chosen = [c for c in known if c == wanted or c.startswith(wanted)]
    if not chosen and len(wanted) >= 6:
        chosen = [c for (c,) in conn.execute("SELECT DISTINCT candidate FROM shadow WHERE candidate_sha256 LIKE ?",
                                             (f"{wanted.lower()}%",))] if known else []
    if not chosen:
        raise RejectLogError(f"--candidate {wanted!r}: no such candidate in the shadow table; shadowed here: "
                             f"{', '.join(known) or 'none (run the line with a [shadow] table first)'}")
    return chosen


def fetch_promotions(conn: sqlite3.Connection, where: str = "",
                     params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Every promotion recorded (or those a ``WHERE`` clause with its parameters picks, as
    :func:`station.rejectlog.row_filter` writes it), oldest first, its ``summary`` decoded (``[]`` before schema 7)."""
    if not has_table(conn, "promotions"):
        return []
    found = [dict(zip(PROMOTION_COLUMNS, row)) for row in
             conn.execute(f"SELECT {', '.join(PROMOTION_COLUMNS)} FROM promotions{where} ORDER BY id", params)]
    for item in found:
        item["summary"] = json.loads(item.pop("summary_json"))
    return found


def build_report(conn: sqlite3.Connection, candidate: str | None = None) -> dict[str, Any]:
    """The whole report: one summary per candidate (:func:`summarise`) and the promotions."""
    reviews = latest_reviews(conn)
    return {"candidates": [summarise(shadow_rows(conn, "s.candidate = ?", (c,)), reviews)
                           for c in pick_candidates(conn, candidate)],
            "promotions": fetch_promotions(conn)}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _mask(side: dict[str, Any]) -> str:
    classes = f" ({', '.join(side['classes'])})" if side["classes"] else ""
    return (f"{side['verdict']} {side['defects']} defect(s), {side['area_px']} px, max {side['max_score']:.2f}"
            f"{classes}")


def promotion_line(p: dict[str, Any]) -> str:
    """One promotion for people."""
    s = p["summary"]
    shadow = (f"shadow {p['candidate']}: agreement {_percent(s.get('agreement'))} of {s.get('shadowed', 0)}, "
              f"{s.get('disagreements', 0)} differ" if p["candidate"] else "never shadowed so in this ledger")
    reviewed = s.get("reviewed") or {}
    if reviewed.get("parts"):
        shadow += (f"; reviewed {reviewed['parts']}: production {reviewed['production']['correct']} correct, "
                   f"candidate {reviewed['candidate']['correct']} correct")
    return (f"{p['id']:>4}  {p['time_utc']}  {p['promoted_by']} via {p['via']}: {p['from_recipe'] or '-'} -> "
            f"{p['to_recipe']} ({p['from_engine'] or '-'} -> {p['to_engine']}); {shadow}")


def format_report(report: dict[str, Any], db: Path, limit: int = 50) -> str:
    lines = [f"shadow report of {db}"]
    if not report["candidates"]:
        lines.append("  no shadowed parts (run the line with a [shadow] table in its recipe)")
    for c in report["candidates"]:
        lines += [f"candidate {c['candidate']}",
                  f"  weights {c['weights']} (sha256 {c['sha256'][:16]}...), judging {c['rule']}",
                  f"  shadowed {c['shadowed']} part(s) in {c['runs']} run(s), {c['first_utc']} to {c['last_utc']}: "
                  f"agree {c['agree']}, differ {c['disagreements']}: agreement {_percent(c['agreement'])}",
                  f"    production FAIL, candidate PASS: {c['production_fail_candidate_pass']}; production PASS, "
                  f"candidate FAIL: {c['production_pass_candidate_fail']}; the candidate took "
                  f"{c['candidate_ms_p50']:.0f} ms a part (median, at low priority)"]
        r = c["reviewed"]
        if r["parts"]:
            lines.append(f"  reviewed shadowed parts: {r['parts']} (the latest review of each counts)")
            lines.append(f"    {'':<12}{'correct':>8}{'false reject':>14}{'escape':>8}")
            for side in ("production", "candidate"):
                lines.append(f"    {side:<12}{r[side]['correct']:>8}{r[side]['false_reject']:>14}{r[side]['escape']:>8}")
        else:
            lines.append("  reviewed shadowed parts: none yet (station review --mark ROW=good|defect)")
        if c["differ"]:
            lines.append(f"  where they differ ({len(c['differ'])}):")
            lines.append(f"    {'row':>6}  {'part':<30}  {'production':<44}  candidate")
            for d in c["differ"][:limit]:
                part = str(d["part_id"] or d["file"] or "-")
                review = f"  [reviewed {d['review']}]" if d["review"] else ""
                lines.append(f"    {d['row']:>6}  {part[:30]:<30}  {_mask(d['production']):<44}  "
                             f"{_mask(d['candidate'])}{review}")
            if len(c["differ"]) > limit:
                lines.append(f"    ... and {len(c['differ']) - limit} more (--json lists them all)")
    promotions = report["promotions"]
    lines.append(f"promotions ({len(promotions)})" + (":" if promotions else ": none recorded (station promote)"))
    lines += [f"  {promotion_line(p)}" for p in promotions]
    return "\n".join(lines)


def add_shadow_arguments(parser: argparse.ArgumentParser) -> None:
    """``station shadow report``'s options, on the ``shadow`` sub-command's parser."""
    sub = parser.add_subparsers(dest="shadow_command", required=True, metavar="ACTION")
    report = sub.add_parser("report", help="agreement, the parts where they differ, how each engine fared on reviewed "
                                           "parts, and the promotions", description=DESCRIPTION, epilog=EPILOG)
    report.add_argument("--db", required=True, metavar="PATH", help="the station's ledger, e.g. station-data/rejects.db")
    report.add_argument("--candidate", metavar="ID",
                        help="only this candidate: its id (as the report prints it), the start of it, or the start of "
                             "its weights' SHA-256")
    report.add_argument("--json", action="store_true", help="the report as one JSON object")
    report.add_argument("--limit", type=int, default=50, metavar="N",
                        help="text: list at most N parts where they differ per candidate (default %(default)s)")


def run_shadow(args: argparse.Namespace) -> int:
    """Run ``station shadow report``; returns the exit status."""
    db = Path(args.db)
    try:
        conn = open_readonly(db)
        try:
            report = build_report(conn, args.candidate)
        finally:
            conn.close()
    except RejectLogError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"{PROG}: error: cannot read {db}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump({"db": str(db), **report}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_report(report, db, args.limit))
    return 0
