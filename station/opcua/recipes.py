"""Recipe switching over OPC UA: the recipes a PLC may prepare, how one is validated, and the record of each change.

A recipe is known by its id, the file's stem (``magnetic_tile`` for ``station/recipes/magnetic_tile.toml``): the
shipped recipes, the ``[opcua] recipes`` files and the recipe the station started with (which, prepared again,
comes back with its command-line overrides). Preparing one loads and
checks it (:func:`station.recipe.load_recipe`) and builds its inspector (:func:`station.app.build_inspector`) before
anything changes; only then does the line's judge change, between two frames (:meth:`station.pipeline.Line.switch`
with the prepared :class:`~station.judge.ActiveJudge`). The switch replaces what judges parts (engine, tiling, rules,
classifier, calibration); the source, the ledger, the queues and the integrations stay those of the running
station. Each change is one committed row of the table ``recipe_changes`` in the ledger's SQLite file (created on
first use, beside ``inspections``), and the ledger's rows from then on carry the new recipe (each row is recorded
with the judge it was made under).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from station.app import build_inspector  # the builder `station run` uses
from station.errors import RecipeError
from station.judge import ActiveJudge, ledger_label
from station.outbox import connect_beside
from station.recipe import RECIPES_DIR, Recipe, load_recipe
from station.rejectlog import COLUMNS, format_utc

_CHANGES = """CREATE TABLE IF NOT EXISTS recipe_changes (
    id              INTEGER PRIMARY KEY,
    time_utc        TEXT NOT NULL,     -- when the new recipe became active
    station_id      TEXT,
    run_id          TEXT,
    after_row_id    INTEGER NOT NULL,  -- the last inspections row judged by the old recipe (0: none)
    old_recipe      TEXT NOT NULL,     -- "<product> <fingerprint>", as in inspections.recipe
    new_recipe      TEXT NOT NULL,
    old_fingerprint TEXT NOT NULL,
    new_fingerprint TEXT NOT NULL,
    new_path        TEXT NOT NULL,     -- the recipe file
    via             TEXT NOT NULL      -- who asked, e.g. "opcua PrepareRecipe"
)"""


@dataclass(frozen=True)
class Prepared:
    """A recipe loaded and checked, with its judge (its inspector and ledger label) built, ready to become active."""

    id: str
    recipe: Recipe
    judge: ActiveJudge


class RecipeBook:
    """The recipes a PLC may select, by id; ``active`` is the one judging parts now."""

    def __init__(self, running: Recipe, extra: tuple[Path, ...] = ()) -> None:
        self.paths: dict[str, Path] = {p.stem: p.resolve() for p in sorted(RECIPES_DIR.glob("*.toml"))}
        for path in extra:
            self.paths[path.stem] = path.resolve()
        self.active_id = Path(running.path).stem
        self.paths.setdefault(self.active_id, Path(running.path).resolve())
        self.active = self.started = running
        self.started_id = self.active_id

    def ids(self) -> list[str]:
        return sorted(self.paths)

    def prepare(self, recipe_id: str, streaming: bool = False) -> Prepared:
        """Load, check and build ``recipe_id`` (seconds: run it off the server's loop); raises
        :class:`RecipeError` for an unknown id or a recipe that does not load."""
        path = self.paths.get(recipe_id)
        if path is None:
            raise RecipeError(f"no recipe {recipe_id!r} known to this station; known: {', '.join(self.ids())} "
                              "(add files to [opcua] recipes)")
        # the recipe the station started with comes back as it ran (command-line overrides included)
        recipe = self.started if recipe_id == self.started_id else load_recipe(path)
        return Prepared(recipe_id, recipe, ActiveJudge.of(recipe, build_inspector(recipe, streaming=streaming)))


class RecipeChanges:
    """The ``recipe_changes`` table of the ledger file, written through its own connection (WAL: no blocking of
    the line's writes)."""

    def __init__(self, db_path: Path, busy_timeout_s: float = 10.0) -> None:
        self.db_path = Path(db_path)
        self._lock = threading.Lock()
        self._conn = connect_beside(self.db_path, _CHANGES, "record recipe changes", busy_timeout_s)

    def record(self, *, station_id: str | None, run_id: str | None, old: Recipe, new: Recipe, new_path: Path,
               via: str) -> int:
        """One committed row; returns its id."""
        with self._lock:
            after = self._conn.execute("SELECT coalesce(max(id), 0) FROM inspections").fetchone()[0]
            cursor = self._conn.execute(
                "INSERT INTO recipe_changes (time_utc, station_id, run_id, after_row_id, old_recipe, new_recipe, "
                "old_fingerprint, new_fingerprint, new_path, via) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (format_utc(datetime.now(timezone.utc)), station_id, run_id, int(after), ledger_label(old),
                 ledger_label(new), old.fingerprint(), new.fingerprint(), str(new_path), via))
            return int(cursor.lastrowid)

    def row(self, row_id: int) -> dict[str, Any] | None:
        """An ``inspections`` row by id (for GetResultById), or None."""
        with self._lock:
            found = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM inspections WHERE id = ?",
                                       (int(row_id),)).fetchone()
        return None if found is None else dict(zip(COLUMNS, found))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
