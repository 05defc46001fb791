"""The ledger's tables for shadowing and promoting a candidate engine (schema 7, issue 29): ``shadow`` and
``promotions``, beside ``inspections`` in the same SQLite file, both append-only (triggers refuse an UPDATE or a
DELETE). :func:`station.rejectlog.RejectLog` creates them when it creates or upgrades a ledger; the shadow worker
(:mod:`station.shadow`) writes ``shadow``, ``station promote`` and an OPC UA PrepareRecipe that changes the weights
write ``promotions`` (:mod:`station.promotion`); ``station shadow report`` reads both (:mod:`station.shadow_report`).

``shadow`` holds one row per shadowed part, agreeing or not (``agree``), so that the agreement rate can be computed;
``station shadow report`` lists the rows where they differ. A part's two verdicts are compared as PASS or FAIL; each
side's mask is summed up as its defect count, total defect area (pixels), defect classes (a JSON list) and the peak
score of its score map (``*_max_score``: how close a PASS came to failing).
"""
from __future__ import annotations

import sqlite3

#: What a shadow row holds, in order (``id`` first).
SHADOW_COLUMNS = ("id", "inspection_id", "time_utc", "station_id", "run_id", "candidate", "candidate_weights",
                  "candidate_sha256", "candidate_judging", "candidate_rule", "production_engine",
                  "production_verdict", "candidate_verdict", "agree",
                  "production_defects", "production_area_px", "production_classes", "production_max_score",
                  "candidate_defects", "candidate_area_px", "candidate_classes", "candidate_max_score",
                  "candidate_ms", "waited_ms")

SHADOW_TABLE = """
CREATE TABLE IF NOT EXISTS shadow (
    id                   INTEGER PRIMARY KEY,
    inspection_id        INTEGER NOT NULL REFERENCES inspections (id), -- the ledger row (production verdict) shadowed
    time_utc             TEXT    NOT NULL,  -- when the candidate's verdict was recorded
    station_id           TEXT,
    run_id               TEXT,
    candidate            TEXT    NOT NULL,  -- <engine id>#<judging fingerprint>, e.g. bffn-860977ab@onnxruntime-fp32#3f9a0c1d2e4b
    candidate_weights    TEXT    NOT NULL,  -- [shadow] weights, as the recipe names them
    candidate_sha256     TEXT    NOT NULL,  -- SHA-256 of the candidate's model.safetensors
    candidate_judging    TEXT    NOT NULL,  -- fingerprint of how it judged (inspection.judging.Judging.fingerprint)
    candidate_rule       TEXT    NOT NULL,  -- the same for people: score >= 0.95, min area 30 px, overlap 32 px (from ...)
    production_engine    TEXT    NOT NULL,  -- engine id of the production verdict (the row's engine_id)
    production_verdict   TEXT    NOT NULL CHECK (production_verdict IN ('PASS', 'FAIL')),
    candidate_verdict    TEXT    NOT NULL CHECK (candidate_verdict IN ('PASS', 'FAIL')),
    agree                INTEGER NOT NULL CHECK (agree IN (0, 1)), -- 1: the same verdict
    production_defects   INTEGER NOT NULL,  -- defects the production rules kept
    production_area_px   INTEGER NOT NULL,  -- their total area
    production_classes   TEXT    NOT NULL,  -- JSON list of their classes
    production_max_score REAL    NOT NULL,  -- peak of the production score map
    candidate_defects    INTEGER NOT NULL,
    candidate_area_px    INTEGER NOT NULL,
    candidate_classes    TEXT    NOT NULL,
    candidate_max_score  REAL    NOT NULL,
    candidate_ms         REAL    NOT NULL,  -- the candidate's inspection of the part (its low-priority worker)
    waited_ms            REAL    NOT NULL   -- from the production row's commit to the start of the candidate's
);
CREATE INDEX IF NOT EXISTS shadow_candidate ON shadow (candidate_sha256, candidate_judging, inspection_id);
CREATE INDEX IF NOT EXISTS shadow_inspection ON shadow (inspection_id);
CREATE TRIGGER IF NOT EXISTS shadow_no_update BEFORE UPDATE ON shadow
    BEGIN SELECT RAISE(ABORT, 'the shadow table is append-only'); END;
CREATE TRIGGER IF NOT EXISTS shadow_no_delete BEFORE DELETE ON shadow
    BEGIN SELECT RAISE(ABORT, 'the shadow table is append-only'); END
"""

#: What a promotion row holds, in order (``id`` first).
PROMOTION_COLUMNS = ("id", "time_utc", "station_id", "promoted_by", "via", "from_recipe", "from_engine", "to_recipe",
                     "to_engine", "to_weights", "to_sha256", "to_judging", "recipe_path", "candidate", "summary_json",
                     "note")

PROMOTIONS_TABLE = """
CREATE TABLE IF NOT EXISTS promotions (
    id            INTEGER PRIMARY KEY,
    time_utc      TEXT NOT NULL,      -- when it was recorded
    station_id    TEXT,
    promoted_by   TEXT NOT NULL,      -- who: station promote --by (default the OS user), or the OPC UA session's user
    via           TEXT NOT NULL,      -- "station promote" or "opcua PrepareRecipe"
    from_recipe   TEXT,               -- "<product> <fingerprint>" judging before (NULL: no row yet)
    from_engine   TEXT,               -- engine id judging before
    to_recipe     TEXT NOT NULL,      -- "<product> <fingerprint>" of the recipe promoted
    to_engine     TEXT NOT NULL,      -- its engine id, e.g. bffn-1a2b3c4d@onnxruntime-fp32
    to_weights    TEXT NOT NULL,      -- its [engine] weights
    to_sha256     TEXT NOT NULL,      -- SHA-256 of its model.safetensors
    to_judging    TEXT NOT NULL,      -- fingerprint of how it judges (inspection.judging.Judging.fingerprint)
    recipe_path   TEXT NOT NULL,      -- the recipe file
    candidate     TEXT,               -- the shadow candidate that judged as it will (NULL: never shadowed so here)
    summary_json  TEXT NOT NULL,      -- the shadow report's summary of those weights at that moment
    note          TEXT
);
CREATE TRIGGER IF NOT EXISTS promotions_no_update BEFORE UPDATE ON promotions
    BEGIN SELECT RAISE(ABORT, 'promotions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS promotions_no_delete BEFORE DELETE ON promotions
    BEGIN SELECT RAISE(ABORT, 'promotions are append-only'); END
"""


def statements(ddl: str) -> list[str]:
    """The statements of a DDL text (split between statements, never inside a trigger's body)."""
    return [s for s in ddl.split(";\n") if s.strip()]


def create_tables(conn: sqlite3.Connection) -> None:
    """Create ``shadow`` and ``promotions`` where they are missing (in the caller's transaction)."""
    for statement in statements(SHADOW_TABLE) + statements(PROMOTIONS_TABLE):
        conn.execute(statement)


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None
