"""Promotion: a candidate engine becomes the production engine by a recipe change, recorded in the ledger (issue 29).

For example::

    station promote --db station-data/rejects.db --recipe my_product_v2.toml --by alice --note "QA sign-off 12/06"

The line switches engines the way it switches any recipe: a restart with the new recipe (``station run --recipe
NEW.toml``) or an OPC UA ``PrepareRecipe`` of it (its file in ``[opcua] recipes``). What is recorded, append-only, in
the ledger's ``promotions`` table (:mod:`station.shadow_tables`): who (``--by``, else the OS user; the OPC UA
session's user for a PrepareRecipe), when, via what, from which recipe and engine (the ledger's latest row, or the
recipe switched from) to which (the recipe's product and fingerprint, its engine id, weights, their SHA-256 and the
fingerprint of how it judges), and the shadow report's summary of those weights at that moment (agreement, parts
that differ, how each engine fared on reviewed parts; :mod:`station.shadow_report`).

``station promote`` records the decision before it goes live and says how to apply it. It refuses (exit 2, nothing
recorded) weights the ledger never shadowed, or shadowed judging otherwise than the new recipe will (another rule:
the new recipe should leave out ``[rules] score_threshold`` / ``min_area_px`` so that the weights' own rule applies,
as in the shadow), unless ``--force``. An OPC UA PrepareRecipe whose recipe runs other weights is recorded as it
happens, whatever the shadow says (the PLC has switched: the record says so). A station started with weights other
than those that judged the ledger's latest parts, with no promotion of them recorded first, records the switch itself
(:func:`record_restart`, via ``station run (restart)``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engines.backends.registry import resolve_backend
from engines.weights import WeightsError, resolve_weights
from inspection.judging import Judging
from inspection_core.engine import weights_of
from station.errors import LedgerError, RecipeError, RejectLogError
from station.judge import ledger_label
from station.line_calibration import judging_for
from station.recipe import Recipe, load_recipe
from station.rejectlog import RejectLog, format_utc, open_readonly
from station.review import default_reviewer
from station.shadow_report import latest_reviews, promotion_line, shadow_rows, summarise
from station.shadow_tables import PROMOTION_COLUMNS, has_table

log = logging.getLogger(__name__)
PROG = "station promote"
VIA_CLI = "station promote"
VIA_OPCUA = "opcua PrepareRecipe"
VIA_RESTART = "station run (restart)"
RESTART_NOTE = ("the station started with other weights than judged the ledger's latest parts, and no station "
                "promote of them came first")
DESCRIPTION = ("Record that a candidate engine is promoted: the new recipe (its [engine] weights the candidate's) "
               "becomes the line's. Records who (--by), when, from which recipe and engine (the ledger's latest row) "
               "to which (the recipe's fingerprint, its engine, weights and their SHA-256, how it judges), and what "
               "the shadow report says of those weights at this moment, in the ledger's append-only promotions "
               "table. It does not change the running line: apply the promotion by restarting the station with the "
               "new recipe, or by an OPC UA PrepareRecipe of it.")
EPILOG = ("Example: station promote --db station-data/rejects.db --recipe my_product_v2.toml --by alice. Exit status: "
          "0 recorded, 1 the ledger cannot be written, 2 bad input (no ledger, a recipe that does not load, weights "
          "never shadowed in this ledger or shadowed with another rule, without --force): said in one line, nothing "
          "recorded.")


def weights_changed(old: Recipe, new: Recipe) -> bool:
    """Whether switching from ``old`` to ``new`` changes the engine's weights: another weights file (SHA-256) or
    another weights folder (the same network with another learned rule)."""
    if old.engine is None or new.engine is None:
        return (old.engine is None) != (new.engine is None)
    try:
        a, b = resolve_weights(old.engine.weights), resolve_weights(new.engine.weights)
    except (WeightsError, OSError):
        return old.engine.weights != new.engine.weights
    return a.path.resolve() != b.path.resolve() or a.sha256() != b.sha256()


def identity(recipe: Recipe, judging: Judging | None = None) -> dict[str, Any]:
    """What ``recipe`` runs, as a promotion records it: ``to_recipe``, ``to_engine`` (the engine id it will run
    under), ``to_weights``, ``to_sha256``, ``to_judging`` (``judging``'s fingerprint; default: the recipe's judging,
    :func:`station.line_calibration.judging_for`, without loading its engine) and ``recipe_path``."""
    if recipe.engine is None:
        raise RecipeError(f"{recipe.path}: no [engine]: a promotion puts a segmentation engine on the line")
    try:
        bundle = resolve_weights(recipe.engine.weights)
        sha = bundle.sha256()
    except (WeightsError, OSError) as exc:
        raise RecipeError(f"{recipe.path}: [engine] weights: {exc}") from None
    backend, _ = resolve_backend(recipe.engine.backend.value)
    judging = judging or judging_for(recipe)
    return {"to_recipe": ledger_label(recipe), "to_engine": f"{bundle.model}-{sha[:8]}@{backend}-{recipe.engine.precision}",
            "to_weights": recipe.engine.weights, "to_sha256": sha, "to_judging": judging.fingerprint(),
            "to_rule": judging.describe(), "recipe_path": str(Path(recipe.path).resolve())}


def shadow_evidence(conn: sqlite3.Connection, sha256: str, judging: str) -> tuple[str | None, dict[str, Any], list[str]]:
    """``(candidate, summary, other rules)`` of weights ``sha256`` judging as ``judging`` in this ledger's shadow
    table: the candidate id (None: never shadowed so), its :func:`~station.shadow_report.summarise` (no parts: an empty
    one), and the rules the same weights were shadowed with otherwise."""
    rows = shadow_rows(conn, "s.candidate_sha256 = ? AND s.candidate_judging = ?", (sha256, judging))
    summary = summarise(rows, latest_reviews(conn))
    summary.pop("differ")  # the record keeps the figures; the parts stay in the shadow table
    others = [] if not has_table(conn, "shadow") else [rule for (rule,) in conn.execute(
        "SELECT DISTINCT candidate_rule FROM shadow WHERE candidate_sha256 = ? AND candidate_judging != ?",
        (sha256, judging))]
    return (rows[-1]["candidate"] if rows else None), summary, others


def latest_judge(conn: sqlite3.Connection) -> tuple[str | None, str | None]:
    """``(recipe, engine id)`` of the ledger's latest inspected row: what judges the line now, as far as it knows."""
    found = conn.execute("SELECT recipe, engine_id FROM inspections WHERE verdict IN ('PASS', 'FAIL') "
                         "ORDER BY id DESC LIMIT 1").fetchone()
    return (found[0], found[1]) if found else (None, None)


def record_promotion(db_path: str | Path, recipe: Recipe, by: str, via: str, *, station_id: str | None = None,
                     from_recipe: str | None = None, from_engine: str | None = None, judging: Judging | None = None,
                     note: str | None = None, force: bool = True, busy_timeout_s: float = 10.0) -> dict[str, Any]:
    """Record the promotion of ``recipe`` in the ledger at ``db_path`` and return the row as
    :func:`~station.shadow_report.fetch_promotions` reads it (``from_*`` default: the ledger's latest inspected row).
    Without ``force`` weights never shadowed as the recipe judges are refused (:class:`RejectLogError`, nothing
    recorded); :class:`LedgerError` when the ledger cannot be written."""
    if not by.strip():
        raise RejectLogError("the promoter's name is empty; give --by NAME")
    target = identity(recipe, judging)
    path = Path(db_path)
    open_readonly(path).close()  # a ledger, not some other file (RejectLogError otherwise)
    with RejectLog(path, save_images=False):  # an older ledger is upgraded to schema 7 first, as station review does
        pass
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if from_recipe is None and from_engine is None:
                from_recipe, from_engine = latest_judge(conn)
            if not force and (from_recipe, from_engine) == (target["to_recipe"], target["to_engine"]):
                raise RejectLogError(f"nothing to promote: the latest parts in {path} were judged by {recipe.path} "
                                     f"({target['to_recipe']}, {target['to_engine']}) already; nothing was recorded")
            candidate, summary, others = shadow_evidence(conn, target["to_sha256"], target["to_judging"])
            if not force and candidate is None:
                if others:
                    raise RejectLogError(
                        f"the shadow judged weights with the SHA-256 of {target['to_weights']} "
                        f"({target['to_sha256'][:12]}...) with {'; '.join(others)}, but {recipe.path} judges with "
                        f"{target['to_rule']}: the agreement measured does not hold for it. "
                        "Leave [rules] score_threshold and min_area_px out of the new recipe so that the weights' own "
                        "rule applies, as in the shadow, or pass --force; nothing was recorded")
                raise RejectLogError(
                    f"the weights {target['to_weights']} (sha256 {target['to_sha256'][:12]}...) were never shadowed in "
                    f"{path}: run the line with [shadow] weights = {target['to_weights']!r} first, or pass --force; "
                    "nothing was recorded")
            values = {"time_utc": format_utc(datetime.now(timezone.utc)), "station_id": station_id, "promoted_by": by,
                      "via": via, "from_recipe": from_recipe, "from_engine": from_engine,
                      **{k: v for k, v in target.items() if k != "to_rule"},
                      "candidate": candidate, "summary_json": json.dumps(summary), "note": note or None}
            cursor = conn.execute(f"INSERT INTO promotions ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                                  list(values.values()))
            row_id = int(cursor.lastrowid)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        found = conn.execute(f"SELECT {', '.join(PROMOTION_COLUMNS)} FROM promotions WHERE id = ?", (row_id,)).fetchone()
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot record the promotion in {path}: {exc}; make the file writable, free disk space or "
                          "stop the program locking it, then run the command again") from None
    finally:
        conn.close()
    row = dict(zip(PROMOTION_COLUMNS, found))
    row["summary"] = json.loads(row.pop("summary_json"))
    log.debug("promotion %d recorded in %s: %s", row_id, path, promotion_line(row))
    return row


def record_restart(db_path: str | Path, recipe: Recipe, engine_id: str, by: str, *,
                   station_id: str | None = None) -> dict | None:
    """At a station's start: when the ledger's latest parts were judged by other weights than the line's engine
    (``engine_id``, ``model-sha8@backend-precision``: the weights are the part before ``@``), and the ledger's latest
    promotion is not of these weights, the switch is recorded as a promotion made by the restart (``via``
    :data:`VIA_RESTART`, by ``by``, with :data:`RESTART_NOTE` and whatever the shadow table says of the weights), so
    that every engine that judged parts has its record. Returns the row, or None when nothing changed (or a new
    ledger, or a recipe without [engine]). A switch that cannot be recorded is logged and the line goes on: an audit
    record never stops production."""
    if recipe.engine is None or not Path(db_path).is_file():
        return None
    weights = weights_of(engine_id)
    try:
        conn = open_readonly(Path(db_path))
        try:
            from_recipe, from_engine = latest_judge(conn)
            last = (conn.execute("SELECT to_engine FROM promotions ORDER BY id DESC LIMIT 1").fetchone()
                    if has_table(conn, "promotions") else None)
        finally:
            conn.close()
        if from_engine is None or weights_of(from_engine) == weights:
            return None
        if last is not None and weights_of(last[0]) == weights:
            return None  # promoted before the restart
        row = record_promotion(db_path, recipe, by, VIA_RESTART, station_id=station_id, from_recipe=from_recipe,
                               from_engine=from_engine, note=RESTART_NOTE, force=True)
    except (RecipeError, RejectLogError, LedgerError, sqlite3.Error) as exc:
        log.error("the weights changed since the ledger's latest parts, but the switch could not be recorded: %s", exc)
        return None
    log.warning("promotion %d recorded: %s (%s; `station promote` records who decided and why before a restart)",
                row["id"], promotion_line(row), RESTART_NOTE)
    return row


def add_promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, metavar="PATH", help="the station's ledger, e.g. station-data/rejects.db")
    parser.add_argument("--recipe", required=True, metavar="NEW.toml",
                        help="the recipe that puts the candidate on the line (its [engine] weights the candidate's)")
    parser.add_argument("--by", metavar="NAME", help="who promotes (default: the OS user)")
    parser.add_argument("--note", metavar="TEXT", help="a note recorded with the promotion")
    parser.add_argument("--force", action="store_true",
                        help="record it even though the ledger never shadowed these weights judging as this recipe "
                             "judges (the record says so: no candidate)")
    parser.add_argument("--json", action="store_true", help="print the promotion recorded as JSON")


def run_promote(args: argparse.Namespace) -> int:
    """Run ``station promote``; returns the exit status (a :class:`LedgerError` is left to the caller: exit 1)."""
    db = Path(args.db)
    try:
        if not db.is_file():
            raise RejectLogError(f"no ledger at {db}; pass --db with the database the station writes")
        recipe = load_recipe(args.recipe)
        row = record_promotion(db, recipe, default_reviewer() if args.by is None else args.by, VIA_CLI,
                               station_id=recipe.station.id, note=args.note, force=args.force)
    except LedgerError:
        raise
    except (RejectLogError, RecipeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(row, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(f"promotion {row['id']} recorded: {promotion_line(row)}")
    stem = Path(args.recipe).stem
    print(f"To apply it, restart the station with the new recipe (station run --recipe {args.recipe}), or have the PLC "
          f"call PrepareRecipe with recipe id {stem!r} (the file listed in [opcua] recipes); a PrepareRecipe that "
          "changes the weights is recorded too, with the OPC UA user.")
    return 0
