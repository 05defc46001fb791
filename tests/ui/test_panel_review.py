"""The operator's review keys on the panel (issue 29): G marks a part good, D a defect, recorded append-only on the
line's own ledger by the operator. Real Qt widgets offscreen, the real line on the bundled frames (shipped recipe,
ONNX Runtime) and real SQLite ledgers."""
from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from inspection.feed import ResultFeed
from inspection_core.records import Verdict
from station.cli import SAMPLES
from station.panel_reviews import LineReviews
from station.rejectlog import RejectLog
from tests.ui.conftest import StatsSource, make_result

pytestmark = pytest.mark.gui


def reviews(db: Path) -> list[tuple]:
    """``(inspection_id, reviewer, mark)`` of every review, oldest first."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT inspection_id, reviewer, mark FROM reviews ORDER BY id").fetchall()


def row_of_file(db: Path, file: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as con:
        (row_id,) = con.execute("SELECT id FROM inspections WHERE file = ?", (file,)).fetchone()
    return row_id


def press(qtbot, panel, key: str) -> None:
    from PyQt6.QtCore import Qt

    qtbot.keyClick(panel, {"G": Qt.Key.Key_G, "D": Qt.Key.Key_D, "Esc": Qt.Key.Key_Escape}[key])


def click_reject(qtbot, panel, row: int) -> None:
    from PyQt6.QtCore import Qt

    table = panel.rejects_table
    rect = table.visualRect(table.model().index(row, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def status(panel) -> str:
    return panel.review_keys.box.status_label.text()


@pytest.fixture
def line_panel(qtbot, tmp_path: Path):
    """The real line replaying the bundled frames in a loop (3 per second) behind the real panel, with the review
    keys as `station run` wires them (operator "op-anna"); returned running, once two rejects are listed."""
    from station.app import build_line
    from station.recipe import load_recipe, shipped_recipe_path
    from ui.panel import StationPanel

    db = tmp_path / "line.db"
    recipe = load_recipe(shipped_recipe_path("magnetic_tile")).with_overrides({
        "source.path": str(SAMPLES), "source.loop": True, "source.fps": 3, "log.db": str(db), "engine.threads": 2})
    line = build_line(recipe)
    desk = LineReviews(line.reject_log, "op-anna")
    line.listeners.append(desk)
    panel = StationPanel(line.feed, line.stats, on_close=line.stop, refresh_ms=20, reviews=desk)
    qtbot.addWidget(panel)
    panel.show()
    panel.activateWindow()
    qtbot.waitUntil(panel.isActiveWindow, timeout=2_000)  # the keys are the active window's shortcuts
    line.start()
    try:
        qtbot.waitUntil(lambda: len(panel.rejects_shown) >= 2, timeout=120_000)
        yield panel, line, db
    finally:
        line.stop()
        line.join()
        desk.close()


def row_part(db: Path, row_id: int) -> tuple:
    """``(frame_id, timestamp_ns, file)`` of a ledger row: which part it is."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT frame_id, timestamp_ns, file FROM inspections WHERE id = ?", (row_id,)).fetchone()


def part_of(result) -> tuple:
    return result.frame.frame_id, result.frame.timestamp_ns, result.frame.file


def marker(panel, result) -> str:
    """The Review cell of ``result``'s row in the rejects table (rows shift as new rejects arrive)."""
    from ui.review_records import part_key

    rows = [i for i, r in enumerate(panel.rejects_shown) if part_key(r) == part_key(result)]
    return panel.rejects_table.item(rows[0], 5).text()


def test_g_and_d_record_the_right_rows_by_the_operator_and_the_panel_shows_them(qtbot, line_panel) -> None:
    """While the line runs: G marks the part on screen, a click and D a reject; each review names that part's
    ledger row and the operator, and the panel says so (status line, the table's Review column)."""
    panel, line, db = line_panel
    keys = panel.review_keys
    assert panel.rejects_table.horizontalHeaderItem(5).text() == "Review"
    assert panel.counter_labels["links"].text() == "", "the review keys listen to the line's rows, but are no link"

    # G with nothing selected: the part on screen when the key is pressed
    shown = panel.shown_result
    assert keys.box.target_label.text().startswith("G / D marks the part on screen: #")
    press(qtbot, panel, "G")
    assert line.running
    qtbot.waitUntil(lambda: len(reviews(db)) == 1 and status(panel).startswith("✔"), timeout=10_000)
    ((shown_row, by, mark),) = reviews(db)
    assert (by, mark) == ("op-anna", "good") and row_part(db, shown_row) == part_of(shown)
    finding = "false reject" if shown.verdict is Verdict.FAIL else "confirmed"
    assert status(panel).startswith(f"✔ row {shown_row} (#{shown.frame.frame_id}  {shown.frame.file}): GOOD PART")
    assert status(panel).endswith(f"by op-anna: {finding}")

    # a click on a reject, then D: that reject's row, marked in the table
    click_reject(qtbot, panel, 1)
    reject = keys.target()
    assert reject is panel.rejects_shown[1] or keys.selected is not None
    assert keys.box.target_label.text().startswith("G / D marks the selected reject")
    press(qtbot, panel, "D")
    qtbot.waitUntil(lambda: len(reviews(db)) == 2 and status(panel).endswith("DEFECT by op-anna: confirmed"),
                    timeout=10_000)
    reject_row = reviews(db)[1][0]
    assert reviews(db)[1] == (reject_row, "op-anna", "defect") and row_part(db, reject_row) == part_of(reject)
    qtbot.waitUntil(lambda: marker(panel, reject) == "✔ defect", timeout=2_000)

    # correctable, never undone: a second mark of the same part is one more review; the table shows the latest
    assert keys.target() is reject or part_of(keys.target()) == part_of(reject)
    press(qtbot, panel, "G")
    qtbot.waitUntil(lambda: len(reviews(db)) == 3, timeout=10_000)
    qtbot.waitUntil(lambda: marker(panel, reject) == "✔ good", timeout=2_000)
    assert reviews(db) == [(shown_row, "op-anna", "good"), (reject_row, "op-anna", "defect"),
                           (reject_row, "op-anna", "good")]
    assert status(panel).endswith("GOOD PART by op-anna: false reject")

    # Esc: back to the part on screen; the buttons do what the keys do
    press(qtbot, panel, "Esc")
    assert keys.selected is None
    on_screen = panel.shown_result
    keys.box.defect_button.click()
    qtbot.waitUntil(lambda: len(reviews(db)) == 4, timeout=10_000)
    assert reviews(db)[3][1:] == ("op-anna", "defect") and row_part(db, reviews(db)[3][0]) == part_of(on_screen)
    assert line.running, "the line ran on while the operator marked parts"


@pytest.fixture
def ledger_panel(qtbot, tmp_path: Path):
    """A panel with review keys over a real ledger that the test fills as the line's logging thread does:
    ``record(result)`` commits the row, tells the desk and publishes the result."""
    from ui.panel import StationPanel

    ledger = RejectLog(tmp_path / "rows.db")
    feed = ResultFeed()
    desk = LineReviews(ledger, "op-ben", wait_s=0.3)
    panel = StationPanel(feed, StatsSource(), refresh_ms=20, reviews=desk)
    qtbot.addWidget(panel)
    panel.show()
    panel.activateWindow()
    qtbot.waitUntil(panel.isActiveWindow, timeout=2_000)  # the keys are the active window's shortcuts

    def record(result, publish: bool = True) -> int:
        row = ledger.record_row(result)
        desk.on_row(row, result)
        if publish:
            feed.publish(result)
        return int(row["id"])

    yield panel, ledger, feed, record
    desk.close()
    ledger.close()


def test_a_part_without_a_ledger_row_cannot_be_marked_and_the_panel_says_so(qtbot, ledger_panel) -> None:
    panel, ledger, feed, record = ledger_panel
    record(make_result(frame_id=1))
    unrecorded = make_result(frame_id=2, file="glass_0002.png")
    feed.publish(unrecorded)  # shown, but the logging thread never committed its row (refused, or not yet)
    qtbot.waitUntil(lambda: panel.shown_result is unrecorded, timeout=2_000)
    press(qtbot, panel, "D")
    qtbot.waitUntil(lambda: status(panel).startswith("✘"), timeout=5_000)
    assert status(panel).startswith("✘ #2  glass_0002.png not marked DEFECT: it has no ledger row")
    assert "cannot be reviewed" in status(panel)
    assert reviews(ledger.db_path) == []
    assert panel.rejects_table.item(0, 5).text() == ""  # no marker where nothing was recorded


def test_a_key_never_waits_on_the_ledger(qtbot, ledger_panel) -> None:
    """Another writer holds the ledger's write lock: the key returns at once, the panel keeps drawing, and the
    review is recorded when the lock is released."""
    panel, ledger, feed, record = ledger_panel
    row_id = record(make_result(frame_id=7))
    qtbot.waitUntil(lambda: panel.shown_result is not None, timeout=2_000)
    blocker = sqlite3.connect(ledger.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.perf_counter()
        press(qtbot, panel, "G")
        assert time.perf_counter() - started < 0.2, "the key waited on the ledger"
        assert status(panel).startswith("recording #7")
        drawn = panel.frames_drawn
        feed.publish(make_result(frame_id=8, verdict=Verdict.PASS))
        qtbot.waitUntil(lambda: panel.frames_drawn > drawn, timeout=2_000)  # the GUI thread is free
        qtbot.wait(300)
        assert reviews(ledger.db_path) == []
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    qtbot.waitUntil(lambda: status(panel).startswith("✔"), timeout=10_000)
    assert reviews(ledger.db_path) == [(row_id, "op-ben", "good")]


def test_the_desk_records_after_the_line_closed_its_ledger(tmp_path: Path) -> None:
    """The line stopped (its logging thread closed the ledger) and the panel is still open: a mark still goes into
    the same ledger, as station review --mark would record it."""
    ledger = RejectLog(tmp_path / "rows.db")
    desk = LineReviews(ledger, "op-cleo")
    result = make_result(frame_id=3)
    row = ledger.record_row(result)
    desk.on_row(row, result)
    ledger.close()
    desk.submit(result, "defect")
    desk.close()
    (outcome,) = desk.outcomes()
    assert outcome.recorded and outcome.row_id == row["id"] and outcome.finding == "confirmed"
    assert reviews(ledger.db_path) == [(row["id"], "op-cleo", "defect")]


def test_the_panel_keeps_the_selected_reject_as_new_rejects_arrive(qtbot, ledger_panel) -> None:
    panel, ledger, feed, record = ledger_panel
    first = record(make_result(frame_id=1, file="a.png"))
    record(make_result(frame_id=2, file="b.png"))
    qtbot.waitUntil(lambda: panel.rejects_table.rowCount() == 2, timeout=2_000)
    click_reject(qtbot, panel, 1)  # a.png, the older reject
    assert panel.review_keys.target().frame.file == "a.png"
    record(make_result(frame_id=3, file="c.png"))  # the table shifts down by one row
    qtbot.waitUntil(lambda: panel.rejects_table.rowCount() == 3, timeout=2_000)
    assert panel.review_keys.target().frame.file == "a.png"
    assert [i.row() for i in panel.rejects_table.selectionModel().selectedRows()] == [2]
    press(qtbot, panel, "D")
    qtbot.waitUntil(lambda: len(reviews(ledger.db_path)) == 1, timeout=5_000)
    assert reviews(ledger.db_path) == [(first, "op-ben", "defect")]


def test_a_panel_without_a_desk_has_no_review_keys(qtbot) -> None:
    from ui.panel import StationPanel

    panel = StationPanel(ResultFeed(), StatsSource(), refresh_ms=20)
    qtbot.addWidget(panel)
    assert panel.review_keys is None and panel.rejects_table.columnCount() == 5
