"""QA's review window (`station review --db DB`, issue 29): real Qt widgets offscreen on real SQLite ledgers with
saved images, written by RejectLog as the line writes them (and one by the real line on the bundled frames)."""
from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from inspection_core.records import Defect, Frame, FrameGap, GapKind, InspectionResult, NotInspected, \
    NotInspectedReason, PartIdentity, Verdict
from station import rejectlog
from station.rejectlog import RejectLog
from station.review_ledger import LedgerReviewSource
from ui.review_records import ReviewFilters

pytestmark = pytest.mark.gui


def defect(label: str) -> Defect:
    return Defect(label=label, bbox=(8, 6, 10, 4), area_px=40, centroid=(13.0, 8.0), mean_score=0.8, max_score=0.97)


def part(frame_id: int, verdict: Verdict, part_id: str, label: str | None = None) -> InspectionResult:
    """A part as the line records it: a 48×64 image whose grey level is its frame id (so the image shown can be told
    apart), a FAIL with one defect of class ``label``."""
    image = np.full((48, 64), 10 * frame_id, np.uint8)
    frame = Frame(image=image, frame_id=frame_id, timestamp_ns=1_000 + frame_id, source="replay:test",
                  meta={"file": f"f{frame_id}.png"}, identity=PartIdentity(part_id=part_id))
    mask = np.zeros((48, 64), np.float32)
    defects = (defect(label),) if verdict is Verdict.FAIL else ()
    if defects:
        mask[6:10, 8:18] = 0.97
    return InspectionResult(frame=frame, mask=mask, defects=defects, verdict=verdict, engine_id="bffn/onnxruntime",
                            latency_ms=1.0, decided=mask >= 0.5 if defects else None)


#: (day of November 2026, station, frame id, verdict, part id, class); what each row of the ledger is
PARTS = [
    (1, "line-1", 1, Verdict.FAIL, "P-1", "crack"),
    (2, "line-1", 2, Verdict.PASS, "P-2", None),       # sampled: its image is saved
    (2, "line-1", 3, Verdict.FAIL, "P-3", "blowhole"),
    (3, "line-2", 4, Verdict.FAIL, "P-4", "crack"),
    (3, "line-2", 5, Verdict.PASS, "P-5", None),       # not sampled: no image, not listed
    (4, "line-2", 6, Verdict.FAIL, "P-6", "fray"),
]


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch) -> Path:
    """Rows of two stations over four days: rejects of three classes, a sampled pass, a pass without an image, a
    part not inspected (a reject) and a gap (never listed); rows 1 to 8."""
    db = tmp_path / "qa" / "rejects.db"
    clock = {"now": datetime(2026, 11, 1, tzinfo=timezone.utc)}
    monkeypatch.setattr(rejectlog, "_utc_now", lambda: clock["now"])
    logs = {station: RejectLog(db, station_id=station, save_pass_share=0.0) for station in ("line-1", "line-2")}
    for day, station, frame_id, verdict, part_id, label in PARTS:
        clock["now"] = datetime(2026, 11, day, 8, frame_id, tzinfo=timezone.utc)
        logs[station].save_pass_share = 1.0 if part_id == "P-2" else 0.0
        logs[station].record(part(frame_id, verdict, part_id, label))
    clock["now"] = datetime(2026, 11, 4, 9, 0, tzinfo=timezone.utc)
    frame = Frame(image=np.zeros((4, 4), np.uint8), frame_id=7, timestamp_ns=1_007, source="replay:test",
                  meta={"file": "f7.png"}, identity=PartIdentity(part_id="P-7"))
    logs["line-2"].record(NotInspected.of(frame, NotInspectedReason.DROPPED, "frames queue full"))
    logs["line-2"].record(FrameGap(source="replay:test", kind=GapKind.LOST_IDS, first_id=8, last_id=9, count=2, start_ns=1, end_ns=2))
    for log in logs.values():
        log.close()
    return db


def rows(window) -> list[int]:
    return [item.row_id for item in window.items]


def reviews(db: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT inspection_id, reviewer, mark FROM reviews ORDER BY id").fetchall()


@pytest.fixture
def open_window(qtbot):
    from ui.review_window import ReviewWindow

    sources = []

    def opener(db: Path, filters: ReviewFilters = ReviewFilters(), by: str = "qa-ben") -> ReviewWindow:
        source = LedgerReviewSource(db, by)
        sources.append(source)
        window = ReviewWindow(source, filters)
        qtbot.addWidget(window)
        window.show()
        window.activateWindow()
        qtbot.waitUntil(window.isActiveWindow, timeout=2_000)  # the keys are the active window's shortcuts
        return window

    yield opener
    for source in sources:
        source.close()


def key(qtbot, window, name: str) -> None:
    from PyQt6.QtCore import Qt

    qtbot.keyClick(window, getattr(Qt.Key, f"Key_{name}"))


def grey_level(view) -> int:
    image = view.image()
    return image.pixelColor(2, 2).red()


def test_the_window_lists_rejects_and_sampled_passes_newest_first_and_shows_the_row(qtbot, open_window,
                                                                                   ledger) -> None:
    window = open_window(ledger)
    # rows 1..8: 5 (a pass without an image) and 8 (a gap) are not listed
    assert rows(window) == [7, 6, 4, 3, 2, 1]
    item = window.current
    assert item.row_id == 7 and item.verdict == "NOT_INSPECTED"
    assert window.image_view.image() is None
    assert "no image saved: the part was not inspected (dropped)" in window.image_view.placeholder()
    key(qtbot, window, "Down")  # row 6: the fray reject of line-2
    assert window.current.row_id == 6
    assert "Row 6" in window.title_label.text() and "FAIL" in window.title_label.text()
    image = window.image_view.image()
    assert image is not None and (image.width(), image.height()) == (64, 48) and grey_level(window.image_view) == 60
    overlay = window.overlay_view.image()
    assert overlay is not None and overlay.pixelColor(12, 8).red() > overlay.pixelColor(12, 8).green() + 60
    details = window.details_label.text()
    assert "part P-6" in details and "station line-2" in details and "2026-11-04T08:06:00.000Z" in details
    assert "fray: 40 px at x 8, y 6 (10×4)" in details
    assert window.review_label.text() == "Review: not reviewed"
    assert window.status_label.text() == f"6 row(s) listed, newest first, from {ledger}"


def test_paging_keys_move_through_the_rows(qtbot, open_window, ledger) -> None:
    window = open_window(ledger)
    key(qtbot, window, "End")
    assert window.current.row_id == 1 and grey_level(window.image_view) == 10
    key(qtbot, window, "Up")
    assert window.current.row_id == 2 and grey_level(window.image_view) == 20  # the sampled pass's own image
    key(qtbot, window, "Left")
    assert window.current.row_id == 3
    key(qtbot, window, "Right")
    assert window.current.row_id == 2
    key(qtbot, window, "PageUp")  # ten rows up: the newest
    assert window.current.row_id == 7
    key(qtbot, window, "PageDown")  # ten rows down: the oldest
    assert window.current.row_id == 1
    key(qtbot, window, "Home")
    assert window.current.row_id == 7
    assert [i.row() for i in window.table.selectionModel().selectedRows()] == [0]


@pytest.mark.parametrize(("filters", "expected"), [
    (ReviewFilters(defect_class="crack"), [4, 1]),
    (ReviewFilters(station="line-1"), [3, 2, 1]),
    (ReviewFilters(part_id="P-3"), [3]),
    (ReviewFilters(since="2026-11-02", until="2026-11-03"), [4, 3, 2]),
    (ReviewFilters(since="2026-11-03T08:05"), [7, 6]),
    (ReviewFilters(verdict="pass"), [2]),
    (ReviewFilters(verdict="not_inspected"), [7]),
    (ReviewFilters(station="line-2", defect_class="crack"), [4]),
])
def test_filters_select_the_right_rows(open_window, ledger, filters: ReviewFilters, expected: list[int]) -> None:
    window = open_window(ledger, filters)
    assert rows(window) == expected
    assert window.filters() == filters  # and the fields say so


def test_the_filter_fields_select_rows_and_a_bad_time_is_said(qtbot, open_window, ledger) -> None:
    window = open_window(ledger)
    assert window.class_box.findText("blowhole") > 0 and window.station_box.findText("line-2") > 0
    window.class_box.setCurrentText("blowhole")
    window.class_box.activated.emit(window.class_box.currentIndex())
    assert rows(window) == [3]
    window.class_box.setCurrentText("any")
    window.part_edit.setText("P-4")
    qtbot.keyClick(window.part_edit, "\r")
    assert rows(window) == [4]
    window.part_edit.setText("")
    window.since_edit.setText("yesterday")
    window.reload()
    assert rows(window) == [4], "a bad time keeps the rows listed"
    assert window.status_label.text().startswith("cannot list the rows: From: 'yesterday' is not an ISO time")


def test_a_key_records_the_review_and_moves_on(qtbot, open_window, ledger) -> None:
    window = open_window(ledger, ReviewFilters(station="line-1"), by="qa-ben")
    assert window.current.row_id == 3
    key(qtbot, window, "G")  # row 3, a FAIL the station found: good part, a false reject
    assert reviews(ledger) == [(3, "qa-ben", "good")]
    assert window.current.row_id == 2, "the next part is shown"
    assert window.status_label.text() == "✔ row 3 marked GOOD PART by qa-ben: false reject (review 1)"
    assert window.table.item(0, 5).text() == "good (false reject)"
    key(qtbot, window, "D")  # row 2, a sampled PASS: defect, an escape
    assert reviews(ledger) == [(3, "qa-ben", "good"), (2, "qa-ben", "defect")]
    assert window.current.row_id == 1
    key(qtbot, window, "Up")
    assert window.review_label.text().startswith("Review: defect (escape) by qa-ben, ")
    key(qtbot, window, "Up")
    key(qtbot, window, "D")  # a second review of row 3: one more row; the latest counts
    assert reviews(ledger)[-1] == (3, "qa-ben", "defect")
    key(qtbot, window, "Up")
    assert window.current.row_id == 3
    assert "defect (confirmed) by qa-ben" in window.review_label.text()
    assert "(2 reviews; the latest counts)" in window.review_label.text()
    # read again: the ledger says the same
    window.reload()
    assert window.current.row_id == 3 and window.items[0].review["count"] == 2


def test_n_shows_the_next_unreviewed_and_the_filter_keeps_only_those(qtbot, open_window, ledger) -> None:
    window = open_window(ledger, by="qa-cleo")
    window.show_index(1)  # row 6
    key(qtbot, window, "G")  # row 6 reviewed; row 4 shown
    key(qtbot, window, "G")  # row 4 reviewed; row 3 shown
    window.show_index(0)  # row 7
    key(qtbot, window, "N")
    assert window.current.row_id == 3, "rows 6 and 4 have reviews"
    window.set_filters(ReviewFilters(review="unreviewed"))
    assert rows(window) == [7, 3, 2, 1]
    window.set_filters(ReviewFilters(review="reviewed"))
    assert rows(window) == [6, 4]
    window.set_filters(ReviewFilters(review="false reject"))
    assert rows(window) == [6, 4]
    window.set_filters(ReviewFilters(review="escape"))
    assert rows(window) == []
    assert window.title_label.text().startswith("no rows")
    key(qtbot, window, "G")
    assert "no row to mark" in window.status_label.text() and len(reviews(ledger)) == 2


def test_a_pruned_image_shows_a_placeholder(qtbot, open_window, ledger) -> None:
    """Retention deleted the image and overlay of row 1; the row still names them."""
    with contextlib.closing(sqlite3.connect(ledger)) as con:
        image, overlay = con.execute("SELECT image_path, overlay_path FROM inspections WHERE id = 1").fetchone()
    (ledger.parent / image).unlink()
    (ledger.parent / overlay).unlink()
    window = open_window(ledger)
    key(qtbot, window, "End")
    assert window.current.row_id == 1
    for view in (window.image_view, window.overlay_view):
        assert view.image() is None
        assert view.placeholder().startswith("IMAGE PRUNED: retention ([log] images_max_mb) deleted the image")
        assert Path(image).name in view.placeholder()
    key(qtbot, window, "D")  # a pruned row can still be reviewed: its row is kept
    assert reviews(ledger) == [(1, "qa-ben", "defect")]


def test_the_window_on_the_ledger_of_the_real_line(qtbot, open_window, tmp_path: Path) -> None:
    """`station run` on 5 bundled frames, every pass's image kept: the window lists the 5 parts with their images."""
    from station.cli import SAMPLES
    from tests.station.test_cli import run_station

    db = tmp_path / "line.db"
    recipe = tmp_path / "keep.toml"
    shipped = (Path(rejectlog.__file__).parent / "recipes" / "magnetic_tile.toml").read_text()
    recipe.write_text(shipped.replace('path = "../samples/magnetic-tile"', f'path = "{SAMPLES}"')
                      .replace("save_pass_share = 0.02", "save_pass_share = 1.0"))
    done = run_station("run", "--recipe", str(recipe), "--headless", "--max-frames", "5", "--fps", "0",
                       "--no-loop", "--db", str(db), "--threads", "2")
    assert done.returncode == 0, done.stderr
    window = open_window(db)
    assert rows(window) == [5, 4, 3, 2, 1]
    for index, item in enumerate(window.items):
        window.show_index(index)
        assert window.image_view.image() is not None and window.overlay_view.image() is not None, item
        assert window.image_view.image().size() == window.overlay_view.image().size()
    assert {item.verdict for item in window.items} == {"PASS", "FAIL"}


def test_station_review_without_mark_or_list_opens_the_window_with_its_filters(qapp, ledger, monkeypatch) -> None:
    """The real command in this process: `station review --db DB --station line-1 --finding unreviewed --by qa-dan`
    shows the window on those rows; G there is recorded as qa-dan. (Where no display is, it says so: exit 2,
    tests/station/test_review.py.)"""
    from PyQt6.QtCore import Qt, QTimer
    from PyQt6.QtTest import QTest
    from PyQt6.QtWidgets import QApplication

    import ui.app
    from station.cli import main
    from ui.review_window import ReviewWindow

    monkeypatch.setattr(ui.app, "display_available", lambda: True)  # offscreen here: drawn all the same
    seen: dict = {}

    def look_and_close() -> None:
        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, ReviewWindow) and w.isVisible()]
        if not windows or not windows[0].isActiveWindow():  # the keys are the active window's shortcuts
            QTimer.singleShot(20, look_and_close)
            return
        window = windows[0]
        seen.update(rows=rows(window), filters=window.filters(), title=window.windowTitle())
        QTest.keyClick(window, Qt.Key.Key_G)
        window.close()

    QTimer.singleShot(20, look_and_close)
    assert main(["review", "--db", str(ledger), "--station", "line-1", "--finding", "unreviewed",
                 "--by", "qa-dan"]) == 0
    assert seen["rows"] == [3, 2, 1] and seen["title"] == f"Review - {ledger}"
    assert seen["filters"] == ReviewFilters(station="line-1", review="unreviewed")
    assert reviews(ledger) == [(3, "qa-dan", "good")]
