"""QA's review window (``station review --db DB``, issue 29): the ledger's rejects and sampled passes, newest first,
with the image, the overlay, the verdict and the defects; ``G`` says the part is good, ``D`` that it is defective.

The window displays and forwards: what it lists and what a mark records come from a :class:`ReviewSource` (the
station gives it the ledger's, :class:`station.review_ledger.LedgerReviewSource`). Keys:

- ``G`` good part, ``D`` defect: recorded at once (a new, append-only review), then the next part is shown;
- ``↓`` / ``→`` the next (older) part, ``↑`` / ``←`` the previous one, ``PgDn`` / ``PgUp`` ten at a time,
  ``Home`` / ``End`` the newest and the oldest listed;
- ``N`` the next part without a review; ``F5`` reads the ledger again (the station may still be writing it).

Filters (the bar at the top, or ``station review`` flags): time (from, to: the row's UTC time), class (a defect's
label or a classifier label), station id, part id, verdict and review (unreviewed, reviewed, false reject, escape,
confirmed).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from PyQt6.QtCore import Qt
from PyQt6.QtGui import QCloseEvent, QColor, QImage, QKeySequence, QShortcut
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ui.panel import AMBER, GREEN, GREY, RED, STYLE, ImageView
from ui.review_records import ANY, REVIEW_CHOICES, VERDICT_CHOICES, ReviewFilters, ReviewItem, ReviewSource

log = logging.getLogger(__name__)

PAGE = 10  # rows a PgUp / PgDn moves
COLUMNS = ("Row", "Time (UTC)", "Verdict", "Part", "Station", "Review")
VERDICT_COLOURS = {"PASS": "#81c995", "FAIL": "#f28b82", "NOT_INSPECTED": "#fdd663"}  # text on the dark ground

def review_text(review: dict[str, Any] | None) -> str:
    """The latest review in a few words: ``good part (false reject) by alice, 2026-12-01T08:00:00.000Z``."""
    if not review:
        return "not reviewed"
    what = "good part" if review["mark"] == "good" else "defect"
    more = f" ({review['count']} reviews; the latest counts)" if review.get("count", 1) > 1 else ""
    note = f" — {review['note']}" if review.get("note") else ""
    return f"{what} ({review['finding']}) by {review['reviewer']}, {review['time_utc']}{more}{note}"


def defects_text(item: ReviewItem) -> str:
    """The defects of a row, one a line (label, area, box, peak score), and its classifier labels."""
    if item.verdict == "NOT_INSPECTED":
        return f"not inspected: {item.reason or '?'}" + (f" ({item.detail})" if item.detail else "")
    lines = []
    for d in item.defects:
        x, y, w, h = d.get("bbox", (0, 0, 0, 0))
        mm = f", {d['area_mm2']:.3g} mm²" if d.get("area_mm2") is not None else ""
        lines.append(f"{d.get('label', 'defect')}: {d.get('area_px', 0):,} px{mm} at x {x}, y {y} ({w}×{h}), "
                     f"peak score {d.get('max_score', 0):.2f}")
    if item.labels:
        lines.append("classifier labels: " + ", ".join(item.labels))
    return "\n".join(lines) or "no defects"


def image_placeholder(item: ReviewItem) -> str:
    """What the image view says when a row's image cannot be shown."""
    if item.image is None:
        if item.verdict == "PASS":
            return "no image saved: this pass was not among the sampled ones ([log] save_pass_share)"
        if item.verdict == "NOT_INSPECTED":
            return f"no image saved: the part was not inspected ({item.reason or '?'})"
        return "no image saved for this row" + (f" ({item.detail})" if item.detail else "")
    return ("IMAGE PRUNED: retention ([log] images_max_mb) deleted the image of this row;\n"
            f"the ledger row is kept and still names {item.image.name}")


class ReviewWindow(QMainWindow):
    """QA's review window over a :class:`ReviewSource`. Public widgets, for tests: ``table`` (the rows listed),
    ``image_view`` and ``overlay_view`` (:class:`~ui.panel.ImageView`), ``title_label``, ``details_label``,
    ``review_label``, ``status_label`` and the filter fields ``since_edit``, ``until_edit``, ``class_box``,
    ``station_box``, ``part_edit``, ``verdict_box``, ``review_box``. ``items`` are the rows listed (newest first),
    :attr:`current` the one shown."""

    def __init__(self, source: ReviewSource, filters: ReviewFilters = ReviewFilters(), limit: int = 5000,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.source = source
        self.limit = int(limit)
        self.items: list[ReviewItem] = []
        self.matching = 0
        self._index = -1
        self.setWindowTitle(f"Review - {source.where}")
        self.setStyleSheet(STYLE + """
            QLineEdit, QComboBox { background: #303336; color: #e8eaed; border: 1px solid #5f6368; padding: 2px 4px; }
            QPushButton { background: #3c4043; color: #e8eaed; border: 1px solid #5f6368; padding: 3px 10px; }
            QTableWidget::item:selected { background: #1a73e8; color: white; }
            QLabel#title { font-size: 16pt; font-weight: bold; }
            QLabel#details { color: #e8eaed; font-size: 11pt; }
            QLabel#hint { color: #9aa0a6; font-size: 10pt; }
        """)
        self._build()
        self.resize(1400, 860)
        self._fill_choices()
        self.set_filters(filters)

    # -------------------------------------------------------------------------------------------- layout
    def _build(self) -> None:
        central = QWidget(objectName="central")
        root = QVBoxLayout(central)
        root.setContentsMargins(10, 8, 10, 8)
        bar = QHBoxLayout()
        self.since_edit = QLineEdit(placeholderText="YYYY-MM-DD")
        self.until_edit = QLineEdit(placeholderText="YYYY-MM-DD")
        for edit in (self.since_edit, self.until_edit):
            edit.setToolTip("the row's time (UTC): YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]; a bare date in 'to' "
                            "includes that day")
        self.class_box = QComboBox()
        self.station_box = QComboBox()
        self.part_edit = QLineEdit(placeholderText="any part")
        self.verdict_box = QComboBox()
        self.verdict_box.addItems(VERDICT_CHOICES)
        self.review_box = QComboBox()
        self.review_box.addItems(REVIEW_CHOICES)
        for name, widget in (("From", self.since_edit), ("to", self.until_edit), ("Class", self.class_box),
                             ("Station", self.station_box), ("Part", self.part_edit), ("Verdict", self.verdict_box),
                             ("Review", self.review_box)):
            label = QLabel(name)
            label.setProperty("role", "name")
            bar.addWidget(label)
            bar.addWidget(widget, 1)
        reload_button = QPushButton("Reload (F5)")
        reload_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        reload_button.clicked.connect(self.reload)
        bar.addWidget(reload_button)
        for edit in (self.since_edit, self.until_edit, self.part_edit):
            edit.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # the keys G, D, N... stay with the window
            edit.returnPressed.connect(self._leave_field)
            edit.editingFinished.connect(self._edited)
        for box in (self.class_box, self.station_box, self.verdict_box, self.review_box):
            box.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
            box.activated.connect(lambda _=0: self._leave_field())
        root.addLayout(bar)

        body = QHBoxLayout()
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the keys stay with the window
        self.table.setAlternatingRowColors(True)
        self.table.setFrameShape(QFrame.Shape.NoFrame)
        self.table.setFixedWidth(600)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        body.addWidget(self.table)

        right = QVBoxLayout()
        self.title_label = QLabel("", objectName="title")
        self.title_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        right.addWidget(self.title_label)
        images = QHBoxLayout()
        self.image_view, self.overlay_view = ImageView(), ImageView()
        for view, name in ((self.image_view, "Image"), (self.overlay_view, "Overlay: the defects the station kept")):
            column = QVBoxLayout()
            caption = QLabel(name)
            caption.setProperty("role", "name")
            column.addWidget(caption)
            column.addWidget(view, 1)
            images.addLayout(column, 1)
        right.addLayout(images, 1)
        self.details_label = QLabel("", objectName="details")
        self.details_label.setWordWrap(True)
        self.details_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.review_label = QLabel("", objectName="review")
        self.review_label.setWordWrap(True)
        right.addWidget(self.details_label)
        right.addWidget(self.review_label)
        body.addLayout(right, 1)
        root.addLayout(body, 1)

        self.hint_label = QLabel(
            f"G good part · D defect (recorded as {self.source.reviewer}, then the next part) · ↑↓ ←→ previous / next"
            " · PgUp PgDn ten · N next unreviewed · F5 reload", objectName="hint")
        self.status_label = QLabel("", objectName="status")
        self.status_label.setWordWrap(True)
        root.addWidget(self.hint_label)
        root.addWidget(self.status_label)
        central.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setCentralWidget(central)
        central.setFocus()

        for keys, action in ((("G",), lambda: self.mark("good")), (("D",), lambda: self.mark("defect")),
                             (("N",), self.next_unreviewed), (("Down", "Right"), lambda: self.step(1)),
                             (("Up", "Left"), lambda: self.step(-1)), (("PgDown",), lambda: self.step(PAGE)),
                             (("PgUp",), lambda: self.step(-PAGE)), (("Home",), lambda: self.show_index(0)),
                             (("End",), lambda: self.show_index(len(self.items) - 1)), (("F5",), self.reload)):
            for key in keys:
                QShortcut(QKeySequence(key), self, activated=action)

    def _fill_choices(self) -> None:
        try:
            choices = self.source.choices()
        except Exception as exc:  # noqa: BLE001 - shown, the window stays
            log.exception("cannot read the filters' choices")
            choices = {}
            self._say(f"cannot read the classes and stations: {exc}", RED)
        for box, values in ((self.class_box, choices.get("classes", [])),
                            (self.station_box, choices.get("stations", []))):
            box.clear()
            box.addItem(ANY)
            box.addItems(values)

    # -------------------------------------------------------------------------------------------- filters
    def filters(self) -> ReviewFilters:
        """The filters as the fields say now."""
        def text(edit: QLineEdit) -> str | None:
            return edit.text().strip() or None

        def chosen(box: QComboBox) -> str | None:
            value = box.currentText()
            return None if value == ANY else value

        return ReviewFilters(since=text(self.since_edit), until=text(self.until_edit),
                             defect_class=chosen(self.class_box), station=chosen(self.station_box),
                             part_id=text(self.part_edit), verdict=self.verdict_box.currentText(),
                             review=self.review_box.currentText())

    def set_filters(self, filters: ReviewFilters) -> None:
        """Put ``filters`` in the fields and list the rows they select."""
        self.since_edit.setText(filters.since or "")
        self.until_edit.setText(filters.until or "")
        self.part_edit.setText(filters.part_id or "")
        for box, value in ((self.class_box, filters.defect_class), (self.station_box, filters.station),
                           (self.verdict_box, filters.verdict), (self.review_box, filters.review)):
            value = value or ANY
            if box.findText(value) < 0:  # a class or station the ledger does not have (yet): offered anyway
                box.addItem(value)
            box.setCurrentIndex(box.findText(value))
        self.reload()

    def _leave_field(self) -> None:
        """A filter was set (Enter in a field, a choice in a list): list its rows, and give the keys back."""
        self.centralWidget().setFocus()
        self._edited()

    def _edited(self) -> None:
        if self.filters() != self._applied:
            self.reload()

    def reload(self) -> None:
        """Read the rows the filters select again, and show the one shown before if it is still listed."""
        filters = self.filters()
        self._applied = filters
        keep = self.current.row_id if self.current is not None else None
        try:
            items, matching = self.source.items(filters, self.limit)
        except Exception as exc:  # noqa: BLE001 - a bad time in a field, a locked file: said, the window stays
            log.debug("cannot list rows", exc_info=True)
            self._say(f"cannot list the rows: {exc}", RED)
            return
        self.items, self.matching = items, matching
        self._fill_table()
        index = next((i for i, item in enumerate(items) if item.row_id == keep), 0)
        self.show_index(index if items else -1)
        shown = f"{len(items):,}" if matching <= len(items) else f"the newest {len(items):,} of {matching:,}"
        self._say(f"{shown} row(s) listed, newest first, from {self.source.where}", GREY)

    # -------------------------------------------------------------------------------------------- moving
    @property
    def current(self) -> ReviewItem | None:
        """The row shown (None when nothing is listed)."""
        return self.items[self._index] if 0 <= self._index < len(self.items) else None

    def show_index(self, index: int) -> None:
        """Show the ``index``-th row listed (clamped; -1 or an empty list: nothing)."""
        if not self.items or index < 0:
            self._index = -1
            self.table.clearSelection()
            self._show(None)
            return
        self._index = max(0, min(index, len(self.items) - 1))
        self.table.blockSignals(True)
        self.table.selectRow(self._index)
        self.table.blockSignals(False)
        self.table.scrollToItem(self.table.item(self._index, 0))
        self._show(self.items[self._index])

    def step(self, by: int) -> None:
        """Move ``by`` rows down the list (older parts; negative: newer)."""
        if self.items:
            self.show_index(max(0, min(self._index + by, len(self.items) - 1)))

    def next_unreviewed(self) -> None:
        """Show the next row after this one without a review (from the top when there is none below)."""
        order = list(range(self._index + 1, len(self.items))) + list(range(0, self._index + 1))
        found = next((i for i in order if self.items[i].review is None), None)
        if found is None:
            self._say("every row listed has a review", GREEN)
            return
        self.show_index(found)

    def _selection_changed(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows and rows[0].row() != self._index:
            self.show_index(rows[0].row())

    # -------------------------------------------------------------------------------------------- marking
    def mark(self, mark: str) -> None:
        """Record ``mark`` (good or defect) of the row shown, as a new review, then show the next row."""
        item = self.current
        if item is None:
            self._say("no row to mark: nothing is listed (change the filters)", AMBER)
            return
        try:
            review = self.source.mark(item.row_id, mark)
        except Exception as exc:  # noqa: BLE001 - a refused or failed write is said; nothing was recorded
            log.debug("review not recorded", exc_info=True)
            self._say(f"row {item.row_id} NOT marked: {exc}", RED)
            return
        self.items[self._index] = replace(item, review=review)
        self._set_row(self._index)
        self._say(f"✔ row {item.row_id} marked {'GOOD PART' if mark == 'good' else 'DEFECT'} by "
                  f"{review['reviewer']}: {review['finding']} (review {review['id']})", GREEN)
        if self._index < len(self.items) - 1:
            self.show_index(self._index + 1)
        else:
            self._show(self.items[self._index])

    # -------------------------------------------------------------------------------------------- drawing
    def _fill_table(self) -> None:
        self.table.blockSignals(True)
        self.table.clearSelection()
        self.table.setRowCount(len(self.items))
        for row in range(len(self.items)):
            self._set_row(row)
        self.table.blockSignals(False)

    def _set_row(self, row: int) -> None:
        item = self.items[row]
        review = item.review
        cells = (str(item.row_id), item.time_utc[:19].replace("T", " "), item.verdict,
                 item.part_id or item.file or "–", item.station_id or "–",
                 "" if review is None else f"{review['mark']} ({review['finding']})")
        for column, text in enumerate(cells):
            cell = QTableWidgetItem(text)
            if column == 0:
                cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if column == 2:
                cell.setForeground(QColor(VERDICT_COLOURS.get(item.verdict, GREY)))
            if column in (3, 5):
                cell.setToolTip(text)
            self.table.setItem(row, column, cell)

    def _show(self, item: ReviewItem | None) -> None:
        if item is None:
            self.title_label.setText("no rows: change the filters, or F5 when the station has written more")
            for view in (self.image_view, self.overlay_view):
                view.set_image(None, placeholder="nothing to show")
            self.details_label.setText("")
            self.review_label.setText("")
            return
        colour = VERDICT_COLOURS.get(item.verdict, GREY)
        count = len(item.defects)
        self.title_label.setText(
            f"Row {item.row_id}  ·  <span style='color:{colour}'>{item.verdict}</span>  ·  "
            f"{count} defect{'s' if count != 1 else ''}  ·  {self._index + 1} of {len(self.items)}")
        for view, path in ((self.image_view, item.image), (self.overlay_view, item.overlay)):
            self._load(view, item, path)
        who = [f"part {item.part_id or '–'}", f"station {item.station_id or '–'}", f"time {item.time_utc}"]
        if item.file and item.file != item.part_id:
            who.append(f"file {item.file}")
        if item.engine_id:
            who.append(f"engine {item.engine_id}")
        self.details_label.setText("   ·   ".join(who) + "\n" + defects_text(item))
        self.review_label.setText("Review: " + review_text(item.review))
        self.review_label.setStyleSheet(f"color: {GREY if item.review is None else GREEN}; font-size: 12pt; "
                                        "font-weight: bold;")

    @staticmethod
    def _load(view: ImageView, item: ReviewItem, path: Path | None) -> None:
        if path is None or not path.is_file():
            saved = item.image is not None and item.image.is_file()  # only the overlay is missing
            view.set_image(None, placeholder="no overlay saved for this row" if saved else image_placeholder(item))
            return
        image = QImage(str(path))
        if image.isNull():
            view.set_image(None, placeholder=f"cannot read {path.name}")
            return
        view.set_image(image)

    def _say(self, text: str, colour: str) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet(f"color: {colour}; font-size: 11pt; font-weight: bold;")

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        close = getattr(self.source, "close", None)
        if close is not None:
            close()
        event.accept()

    def grab_png(self, path: str | Path) -> None:
        """Save a screenshot of the window to ``path`` (PNG)."""
        if not self.grab().save(str(path), "PNG"):
            raise OSError(f"could not write the review window's screenshot to {path}; check the folder is writable")


def run_review_window(source: ReviewSource, filters: ReviewFilters = ReviewFilters()) -> int:
    """Show a :class:`ReviewWindow` and run the Qt event loop until it closes; returns the exit status."""
    app = QApplication.instance() or QApplication(sys.argv[:1] or ["station review"])
    window = ReviewWindow(source, filters)
    window.show()
    window.activateWindow()  # the keys are its shortcuts
    return int(app.exec())
