"""Issue 29, "Promotion": a PLC's PrepareRecipe of a recipe that runs other weights is a promotion, recorded in the
ledger with the OPC UA session's user before the new engine judges; a recipe that changes only the rules is not.
A real asyncua client against the station's server and line (tests/station/test_opcua.py's Station)."""
from __future__ import annotations

import contextlib
import json
import sqlite3

import pytest

pytest.importorskip("asyncua")

from tests.station.test_opcua import USER, Plc, Station, rows, run, session  # noqa: E402
from tests.station.test_shadow import LENIENT, copy_weights, recipe_text, write  # noqa: E402


def promotions(db) -> list[dict]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM promotions ORDER BY id")]


def test_prepare_recipe_with_other_weights_records_a_promotion_with_the_plc_user(tmp_path):
    candidate = copy_weights(tmp_path / "candidate", LENIENT)
    write(tmp_path / "line_v2.toml", recipe_text(weights=str(candidate), rules=False))
    (tmp_path / "station").mkdir()
    station = Station(tmp_path / "station", recipes=[str(tmp_path / "line_v2.toml")])
    try:
        before = station.line.judge

        async def body():
            async with session(station) as client:
                plc = await Plc(client).setup()
                assert (await plc.prepare("magnetic_tile"))[1:] == [True, 0]  # the active recipe: nothing changes
                _, first = await plc.single_job()
                assert promotions(station.db) == []
                _, completed, error = await plc.prepare("line_v2")
                assert (completed, error) == (False, 0)
                await plc.wait_recipe("line_v2")
                await plc.wait_state("Ready")
                _, after = await plc.single_job()
                return int(first.ResultId), int(after.ResultId)

        first, after = run(body())
    finally:
        station.close()
    [promotion] = promotions(station.db)
    assert (promotion["promoted_by"], promotion["via"]) == (USER, "opcua PrepareRecipe")
    assert (promotion["from_recipe"], promotion["from_engine"]) == (before.recipe, before.engine_id)
    [row_before] = rows(station.db, "WHERE id = ?", (first,))
    [row_after] = rows(station.db, "WHERE id = ?", (after,))
    assert row_before["engine_id"] == promotion["from_engine"] and row_before["recipe"] == promotion["from_recipe"]
    assert row_after["recipe"] == promotion["to_recipe"] != promotion["from_recipe"]
    assert promotion["to_weights"] == str(candidate) and promotion["candidate"] is None  # never shadowed here
    assert json.loads(promotion["summary_json"])["shadowed"] == 0
    with contextlib.closing(sqlite3.connect(station.db)) as con:  # recorded before the switch, as the recipe change
        change = con.execute("SELECT time_utc FROM recipe_changes ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert promotion["time_utc"] >= change and promotion["time_utc"] <= row_after["time_utc"]
