"""The integrations' common ground: every committed ledger row reaches the listeners, a broken or unreachable
integration never stops the line, and publishers ship from the log after a durable mark."""
from __future__ import annotations

import re
import sqlite3
import threading

import cv2
import numpy as np
import pytest

from engines.backends.base import load_engine
from inspection.inspector import Inspector
from inspection_core.records import Frame, FrameGap, GapKind, NotInspected, NotInspectedReason, Verdict
from inspection_core.verdict import DecisionRules
from station import integrations
from station.errors import LedgerError, RecipeError
from station.outbox import LedgerCursor
from station.pipeline import Line
from station.recipe import QueuePolicy, load_recipe, shipped_recipe_path
from station.rejectlog import COLUMNS, RejectLog
from station.sources import ReplaySource


@pytest.fixture(scope="module")
def inspector(untrained_bffn):
    engine = load_engine(untrained_bffn, "onnxruntime", threads=1)
    return Inspector(engine, overlap=32, batch=16, rules=DecisionRules(score_threshold=0.5, min_area_px=30))


def _parts(folder):
    """Three good 64 px parts and a corrupt file."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in (1, 2, 4):
        cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(60, 200, (64, 64), dtype=np.uint8))
    (folder / "p3.png").write_bytes(b"\x89PNG not really")
    return folder


class Collector:
    name = "collector"

    def __init__(self, fail_on=None) -> None:
        self.rows, self.entries, self.fail_on = [], [], fail_on
        self.started = self.closed = False

    def start(self, line) -> None:
        self.started = True

    def on_row(self, row, entry) -> None:
        self.rows.append(dict(row))
        self.entries.append(entry)
        if self.fail_on is not None and row["id"] == self.fail_on:
            raise RuntimeError("listener broke")

    def status(self):
        return {"rows": len(self.rows)}

    def close(self) -> None:
        self.closed = True


class WontStart(Collector):
    name = "wont-start"

    def start(self, line) -> None:
        raise ConnectionRefusedError("peer is down")


def test_every_committed_row_reaches_the_listeners_as_stored(inspector, tmp_path):
    db = tmp_path / "ledger.db"
    good, broken, dead = Collector(), Collector(fail_on=1), WontStart()
    line = Line(ReplaySource(_parts(tmp_path / "parts")), inspector, RejectLog(db, station_id="st", run_id="r1"),
                frames_policy=QueuePolicy.BLOCK)
    started = integrations.start_all([broken, dead, good], line)
    assert started == [broken, good] and line.listeners == [broken, good]
    stats = line.run()
    report = integrations.close_all(started)
    assert report == {"collector": {"rows": 4}}
    assert good.closed and broken.closed
    # the broken listener raised on row 1: the ledger and the other listener went on
    assert stats.recorded == 4 and stats.failure is None
    with sqlite3.connect(db) as con:
        stored = [dict(zip(COLUMNS, r)) for r in con.execute(f"SELECT {', '.join(COLUMNS)} FROM inspections ORDER BY id")]
    assert good.rows == stored == broken.rows
    verdicts = sorted(r["verdict"] for r in good.rows)
    assert verdicts.count("NOT_INSPECTED") == 1 and len(verdicts) == 4
    kinds = {type(e).__name__ for e in good.entries}
    assert kinds == {"InspectionResult", "NotInspected"}
    assert all(r["station_id"] == "st" and r["run_id"] == "r1" for r in good.rows)


def test_record_row_is_the_row_query_reads_back(tmp_path):
    with RejectLog(tmp_path / "l.db", station_id="s", run_id="r") as ledger:
        gap = FrameGap(source="cam", first_id=5, last_id=9, count=5, start_ns=1, end_ns=2, kind=GapKind.LOST_IDS)
        row = ledger.record_row(gap)
        missing = ledger.record_row(NotInspected(source="cam", frame_id=10, timestamp_ns=3,
                                                 reason=NotInspectedReason.UNREADABLE, detail="bad"))
        assert ledger.query() == [row, missing]
    assert row["verdict"] == "GAP" and row["frame_count"] == 5 and missing["id"] == row["id"] + 1


def _ledger_with(tmp_path, n: int):
    db = tmp_path / "out.db"
    with RejectLog(db, station_id="s", run_id="r") as ledger:
        for i in range(n):
            ledger.record(NotInspected(source="cam", frame_id=i + 1, timestamp_ns=i,
                                       reason=NotInspectedReason.DROPPED))
    return db


def test_a_cursor_ships_in_order_after_a_durable_mark(tmp_path):
    db = _ledger_with(tmp_path, 7)
    cursor = LedgerCursor(db, "mqtt test")
    assert cursor.mark() == 0 and cursor.last_id() == 7 and cursor.lag()[0] == 7
    batch = cursor.rows_after(cursor.mark(), limit=3)
    assert [r["frame_id"] for r in batch] == [1, 2, 3] and set(batch[0]) == set(COLUMNS)
    cursor.advance(batch[-1]["id"])
    cursor.advance(1)  # a mark never moves back
    cursor.close()
    again = LedgerCursor(db, "mqtt test")  # a restart: the mark survived
    assert again.mark() == 3 and [r["frame_id"] for r in again.rows_after(again.mark())] == [4, 5, 6, 7]
    assert LedgerCursor(db, "another peer").mark() == 0  # marks are per destination
    rows, seconds = again.lag()
    assert rows == 4 and seconds >= 0.0


def test_a_cursor_reads_while_the_line_writes(tmp_path):
    db = _ledger_with(tmp_path, 1)
    cursor = LedgerCursor(db, "reader")
    done = threading.Event()
    seen: list[int] = []

    def read():
        mark = 0
        while not done.is_set() or cursor.last_id() > mark:
            for row in cursor.rows_after(mark, limit=50):
                seen.append(row["frame_id"])
                mark = row["id"]
                cursor.advance(mark)

    reader = threading.Thread(target=read)
    reader.start()
    with RejectLog(db, station_id="s", run_id="r2") as ledger:
        for i in range(2, 201):
            ledger.record(NotInspected(source="cam", frame_id=i, timestamp_ns=i, reason=NotInspectedReason.DROPPED))
    done.set()
    reader.join(30)
    assert seen == list(range(1, 201)) and cursor.mark() == 200


def test_a_cursor_needs_an_existing_log(tmp_path):
    with pytest.raises(LedgerError, match="no reject log"):
        LedgerCursor(tmp_path / "none.db", "x")


def test_integration_tables_pass_through_the_recipe_and_do_not_change_its_fingerprint(tmp_path):
    recipe = load_recipe(shipped_recipe_path("magnetic_tile"))
    assert recipe.integrations == {}
    overrides = integrations.flag_overrides(mqtt="mqtt://127.0.0.1:1883", metrics="127.0.0.1:9400")
    assert overrides == {"mqtt.url": "mqtt://127.0.0.1:1883", "metrics.listen": "127.0.0.1:9400"}
    linked = recipe.with_overrides(overrides)
    assert linked.integrations == {"mqtt": {"url": "mqtt://127.0.0.1:1883"}, "metrics": {"listen": "127.0.0.1:9400"}}
    assert linked.fingerprint() == recipe.fingerprint()
    with pytest.raises(RecipeError, match=r"\[mqt\]: unknown table; did you mean \[mqtt\]"):
        load_recipe(_recipe_with(tmp_path, "[mqt]\nurl = 'x'\n"))
    bad = load_recipe(_recipe_with(tmp_path, "[metrics]\nlisten = '9400'\n"))
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(bad.path))}: \[metrics\] listen: '9400' is not allowed; "
                                          "use HOST:PORT"):
        integrations.configure(bad, integrations.Context(bad, tmp_path / "r.db", "line-3", "run-1"))
    good = recipe.with_overrides({"metrics.listen": "127.0.0.1:0", "fleet.to": "postgresql://u@h/f",
                                  "fleet.images": "img"})
    built = integrations.configure(good, integrations.Context(good, tmp_path / "r.db", "line-3", "run-1"))
    assert [i.name for i in built] == ["metrics", "fleet"]
    assert built[1].images == recipe.path.resolve().parent / "img"  # relative to the recipe, as its own paths


def _recipe_with(tmp_path, extra: str):
    text = shipped_recipe_path("magnetic_tile").read_text(encoding="utf-8")
    path = tmp_path / "r.toml"
    path.write_text(text.replace('path = "../samples/magnetic-tile"',
                                 f'path = "{shipped_recipe_path("magnetic_tile").parent.parent / "samples" / "magnetic-tile"}"')
                    + "\n" + extra, encoding="utf-8")
    return path


def test_a_result_frame_is_what_listeners_get_for_inspected_parts(inspector, tmp_path):
    db = tmp_path / "one.db"
    got = Collector()
    line = Line(ReplaySource(_parts(tmp_path / "p")), inspector, RejectLog(db), frames_policy=QueuePolicy.BLOCK,
                listeners=[got])
    line.run()
    results = [e for e in got.entries if hasattr(e, "verdict")]
    assert results and all(e.verdict in (Verdict.PASS, Verdict.FAIL) for e in results)
    assert isinstance(results[0].frame, Frame) and results[0].mask.shape == (64, 64)
