"""The operator's review keys on the panel (issue 29): ``G`` says the part is a good part, ``D`` that it is a defect.

The panel does not write anything itself: it hands each mark to a :class:`ReviewDesk` (the station gives it one that
records on the line's own ledger, :class:`station.panel_reviews.LineReviews`) and shows what became of it when the
desk reports back. :meth:`ReviewDesk.submit` returns at once and the desk records on its own thread, so a key never
waits on the ledger and the GUI thread only draws. Which part a key marks: the reject selected in the panel's table,
else the part on screen. A review is never undone: a second mark of the same part is one more review, and the latest
counts.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Sequence

from PyQt6.QtCore import Qt
from PyQt6.QtGui import QColor, QKeySequence, QShortcut
from PyQt6.QtWidgets import (QAbstractItemView, QGroupBox, QHBoxLayout, QLabel, QPushButton, QTableWidgetItem,
                             QVBoxLayout, QWidget)

from inspection_core.records import InspectionResult
from ui.review_records import (DEFECT, GOOD, MARK_WORDS, PartKey, ReviewDesk, ReviewOutcome, marker_text, outcome_text,
                               part_key)

if TYPE_CHECKING:
    from ui.panel import StationPanel

log = logging.getLogger(__name__)

OK_COLOUR, WAIT_COLOUR, ERROR_COLOUR = "#81c995", "#9aa0a6", "#fdd663"

class ReviewBox(QGroupBox):
    """The panel's review keys: two buttons (``good_button``: G, ``defect_button``: D), ``target_label`` (which part
    a key marks now, and its review if it has one) and ``status_label`` (the last mark: recording, recorded with its
    ledger row, or why not)."""

    def __init__(self, reviewer: str, parent: QWidget | None = None) -> None:
        super().__init__(f"Review, as {reviewer}", parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.setSpacing(10)
        self.good_button = QPushButton("G   Good part")
        self.defect_button = QPushButton("D   Defect")
        for button, colour in ((self.good_button, "#2e7d32"), (self.defect_button, "#c62828")):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the keys stay with the window
            button.setStyleSheet(f"QPushButton {{ background: {colour}; color: white; font-weight: bold; "
                                 "font-size: 12pt; border-radius: 4px; padding: 6px 14px; }")
            layout.addWidget(button)
        self.good_button.setToolTip("the part is good: a false reject when the station failed it (key G)")
        self.defect_button.setToolTip("the part is defective: an escape when the station passed it (key D)")
        texts = QVBoxLayout()
        texts.setSpacing(2)
        self.target_label = QLabel("", objectName="review_target")
        self.target_label.setWordWrap(True)
        self.target_label.setStyleSheet("color: #bdc1c6; font-size: 11pt;")
        self.status_label = QLabel("", objectName="review_status")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        texts.addWidget(self.target_label)
        texts.addWidget(self.status_label)
        layout.addLayout(texts, 1)
        self.show_status("", WAIT_COLOUR)

    def show_status(self, text: str, colour: str) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet(f"color: {colour}; font-size: 11pt; font-weight: bold;")
        self.status_label.setVisible(bool(text))


class PanelReviewKeys:
    """The review keys of a :class:`~ui.panel.StationPanel`: ``G`` and ``D`` (and the buttons of ``box``, a
    :class:`ReviewBox`) mark :meth:`target`, the reject selected in the panel's rejects table (a click selects one,
    ``Esc`` clears it), else the part on screen. Marks go to ``desk``; what became of them is taken on the panel's
    timer (:meth:`take_outcomes`), shown in ``box`` and in the table's last column (``Review``)."""

    COLUMN = "Review"

    def __init__(self, panel: StationPanel, desk: ReviewDesk, columns: Sequence[str],
                 describe: Callable[[InspectionResult], str]) -> None:
        """``columns``: the rejects table's columns (the Review column goes after them); ``describe`` names a part
        as the table does (:func:`ui.panel.part_name`)."""
        self.panel, self.desk, self.describe = panel, desk, describe
        self.reviewed: dict[PartKey, ReviewOutcome] = {}  # the latest recorded mark of each part marked here
        self.selected: PartKey | None = None  # the reject selected in the table (None: the part on screen)
        self._column = len(columns)
        table = panel.rejects_table
        table.setColumnCount(len(columns) + 1)
        table.setHorizontalHeaderLabels((*columns, self.COLUMN))
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.itemSelectionChanged.connect(self._selection_changed)
        self.box = ReviewBox(desk.reviewer)
        self.box.good_button.clicked.connect(lambda: self.mark(GOOD))
        self.box.defect_button.clicked.connect(lambda: self.mark(DEFECT))
        self.shortcuts = [QShortcut(QKeySequence(key), panel, activated=action) for key, action in (
            ("G", lambda: self.mark(GOOD)), ("D", lambda: self.mark(DEFECT)), ("Esc", lambda: self.select(None)))]
        self.show_target()

    def target(self) -> InspectionResult | None:
        """The part a key marks now: the reject selected in the table, else the part on screen."""
        if self.selected is not None:
            for result in self.panel.rejects_shown:
                if part_key(result) == self.selected:
                    return result
        return self.panel.shown_result

    def mark(self, mark: str) -> None:
        """Hand a mark of :meth:`target` to the desk, which records it off the GUI thread; what became of it shows on
        a later tick."""
        target = self.target()
        if target is None:
            self.box.show_status("no part to mark yet: wait for the first part", ERROR_COLOUR)
            return
        try:
            self.desk.submit(target, mark)
        except Exception as exc:  # an exception escaping a Qt slot would abort the process
            log.exception("cannot hand the review of frame %s to the desk", target.frame.frame_id)
            self.box.show_status(f"✘ {self.describe(target)} not marked: {exc}", ERROR_COLOUR)
            return
        self.box.show_status(f"recording {self.describe(target)}: {MARK_WORDS[mark]}…", WAIT_COLOUR)

    def take_outcomes(self) -> None:
        """Show what became of the marks since the last tick (the panel's timer calls this)."""
        try:
            outcomes = self.desk.outcomes()
        except Exception as exc:  # an exception escaping a Qt slot would abort the process
            log.exception("cannot read the review desk")
            self.box.show_status(f"reviews unavailable: {exc}", ERROR_COLOUR)
            return
        for outcome in outcomes:
            if outcome.recorded:
                self.reviewed[outcome.part] = outcome
            self.box.show_status(outcome_text(outcome, self._name_of(outcome.part)),
                                 OK_COLOUR if outcome.recorded else ERROR_COLOUR)
        if outcomes:
            self._show_markers()
            self.show_target()

    def rows_changed(self) -> None:
        """The panel refilled its rejects table: mark the reviewed rows and keep the selection on its part."""
        self._show_markers()
        self.select(self.selected)

    def select(self, key: PartKey | None) -> None:
        """Select the reject ``key`` in the table (None, or a part no longer listed: no selection)."""
        table = self.panel.rejects_table
        rows = [i for i, r in enumerate(self.panel.rejects_shown) if part_key(r) == key] if key is not None else []
        table.blockSignals(True)
        table.clearSelection()
        if rows:
            table.selectRow(rows[0])
        table.blockSignals(False)
        table.viewport().update()
        self.selected = key if rows else None
        self.show_target()

    def show_target(self) -> None:
        """Say which part a key marks now, and its review when it has one."""
        target = self.target()
        if target is None:
            text = "G / D marks the part on screen: none yet"
        else:
            where = "the selected reject (Esc: the part on screen)" if self.selected is not None else \
                "the part on screen"
            text = f"G / D marks {where}: {self.describe(target)} ({target.verdict.value})"
            outcome = self.reviewed.get(part_key(target))
            if outcome is not None:
                text += f"  ·  reviewed {MARK_WORDS[outcome.mark]} by {outcome.reviewer} (row {outcome.row_id})"
        self.box.target_label.setText(text)

    def _selection_changed(self) -> None:
        rows = self.panel.rejects_table.selectionModel().selectedRows()
        index = rows[0].row() if rows else -1
        rejects = self.panel.rejects_shown
        self.selected = part_key(rejects[index]) if 0 <= index < len(rejects) else None
        self.show_target()

    def _name_of(self, key: PartKey) -> str:
        for result in (self.panel.shown_result, *self.panel.rejects_shown):
            if result is not None and part_key(result) == key:
                return self.describe(result)
        return f"#{key[1]}"

    def _show_markers(self) -> None:
        for row, result in enumerate(self.panel.rejects_shown):
            outcome = self.reviewed.get(part_key(result))
            item = QTableWidgetItem(marker_text(outcome))
            if outcome is not None:
                item.setForeground(QColor(OK_COLOUR if outcome.mark == GOOD else "#f28b82"))
                item.setToolTip(outcome_text(outcome, self.describe(result)))
            self.panel.rejects_table.setItem(row, self._column, item)
