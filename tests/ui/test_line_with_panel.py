"""The real line behind the real panel: closing the window stops the line, drains it and closes the log."""
from __future__ import annotations

import sqlite3
import time

import pytest

from engines.backends.base import load_engine
from inspection_core.verdict import DecisionRules
from station.app import run_with_panel
from station.cli import SAMPLES
from inspection.inspector import Inspector
from station.pipeline import Line
from station.rejectlog import RejectLog
from station.sources import ReplaySource


@pytest.mark.gui
def test_closing_the_panel_drains_the_line_into_the_log(untrained_bffn, tmp_path, qapp):
    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication

    from ui.panel import StationPanel

    engine = load_engine(untrained_bffn, "onnxruntime", threads=2)
    db = tmp_path / "panel.db"
    line = Line(ReplaySource(SAMPLES, loop=True, pattern="*.jpg", fps=20.0),
                Inspector(engine, overlap=32, batch=16, rules=DecisionRules()), RejectLog(db))
    started = time.monotonic()
    shot = tmp_path / "panel.png"

    def close_when_three_are_shown() -> None:
        panels = [w for w in QApplication.topLevelWidgets() if isinstance(w, StationPanel) and w.isVisible()]
        if panels and panels[0].frames_drawn >= 3:
            panels[0].grab_png(shot)
            panels[0].close()
        elif time.monotonic() - started < 120:
            QTimer.singleShot(50, close_when_three_are_shown)

    QTimer.singleShot(50, close_when_three_are_shown)
    stats = run_with_panel(line, title="test")
    assert not line.running and stats.inspected >= 3
    with sqlite3.connect(db) as con:  # every part the camera delivered has its row, inspected or not
        assert con.execute("SELECT COUNT(*) FROM inspections").fetchone()[0] == stats.acquired == stats.recorded
        assert con.execute("SELECT COUNT(*) FROM inspections WHERE verdict IN ('PASS', 'FAIL')").fetchone()[0] == \
            stats.inspected
    assert stats.acquired == stats.passed + stats.failed + stats.not_inspected
    assert shot.stat().st_size > 10_000
