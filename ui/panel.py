# Over 500 lines on purpose: the one operator window; layout, refresh and counters share its widgets.
"""The operator panel: live image with the defect overlay, verdict, line counters, camera health, recent rejects.

The GUI thread only draws. A ``QTimer`` polls :meth:`ResultFeed.latest` every ``refresh_ms``; the image is
redrawn only when the feed's sequence number changed, and the counters come from ``stats_fn()`` (a cheap
snapshot supplied by the pipeline) on the same tick. Nothing here fetches frames or runs models, so a slow
panel never holds up the line: it just skips to the newest result.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

from PyQt6.QtCore import QRect, QSize, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QCloseEvent, QFont, QImage, QPainter, QPaintEvent, QPixmap, QResizeEvent
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from inspection.feed import ResultFeed
from inspection_core.records import CameraState, InspectionResult, LineState, LineStats, NotInspectedReason, Verdict
from ui.overlay import overlay_for_display, to_qimage
from ui.panel_review import PanelReviewKeys
from ui.review_records import ReviewDesk

log = logging.getLogger(__name__)

GREEN, RED, AMBER, GREY = "#2e7d32", "#c62828", "#ef8f00", "#5f6368"
STATE_COLOURS: dict[CameraState, str] = {
    CameraState.CONNECTED: "#43a047",
    CameraState.CONNECTING: AMBER,
    CameraState.RECONNECTING: AMBER,
    CameraState.LOST: "#e53935",
    CameraState.STOPPED: "#9e9e9e",
}

STYLE = """
QMainWindow, QWidget#central { background: #1e2124; }
QLabel { color: #e8eaed; }
QGroupBox { color: #9aa0a6; font-weight: bold; border: 1px solid #3c4043; border-radius: 6px;
            margin-top: 14px; padding: 8px 8px 6px 8px; }
QGroupBox::title { subcontrol-origin: margin; left: 10px; padding: 0 4px; }
QLabel[role="name"] { color: #9aa0a6; font-size: 11pt; }
QLabel[role="value"] { color: #e8eaed; font-weight: bold; font-size: 11pt; }
QLabel#caption { color: #bdc1c6; }
QTableWidget { font-size: 10pt; background: #26292c; color: #e8eaed; gridline-color: #3c4043; border: none;
               alternate-background-color: #2b2e31; }
QHeaderView::section { background: #303336; color: #9aa0a6; border: none; padding: 3px 6px; }
QScrollBar:vertical { background: #26292c; width: 10px; margin: 0; }
QScrollBar::handle:vertical { background: #5f6368; border-radius: 4px; min-height: 24px; }
QScrollBar::add-line:vertical, QScrollBar::sub-line:vertical { height: 0; }
QLabel#last_error { color: #f28b82; font-size: 10pt; }
QLabel[role="warning"] { color: #f28b82; font-weight: bold; font-size: 11pt; }
QStatusBar { color: #f28b82; }
"""

REJECT_COLUMNS = ("Time", "Part", "Defects", "Largest px", "Labels")
MAX_LABEL_CHARS = 16  # of the Labels column of the rejects table; the tooltip holds them all
MAX_ERROR_CHARS = 90  # about two lines of the side column; the tooltip holds the whole message


class ImageView(QWidget):
    """Draws one ``QImage`` scaled to fit (aspect kept, centred); the scaled pixmap is cached per widget size."""

    resized = pyqtSignal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image: QImage | None = None
        self._scaled: QPixmap | None = None
        self._placeholder = "waiting for the first image…"
        self.setMinimumSize(QSize(320, 240))
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

    def set_image(self, image: QImage | None, placeholder: str = "waiting for the first image…") -> None:
        """Show ``image`` (or, when None, the ``placeholder`` text)."""
        self._image = image
        self._placeholder = placeholder
        self._scaled = None
        self.update()

    def image(self) -> QImage | None:
        return self._image

    def placeholder(self) -> str:
        """The text shown while there is no image."""
        return self._placeholder

    def image_rect(self) -> QRect:
        """Where the image lands inside the widget (empty before the first image)."""
        if self._image is None or self._image.isNull():
            return QRect()
        size = self._image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        return QRect((self.width() - size.width()) // 2, (self.height() - size.height()) // 2,
                     size.width(), size.height())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        self._scaled = None
        super().resizeEvent(event)
        self.resized.emit()

    def device_size(self) -> QSize:
        """The widget's size in device pixels (what an image needs to look sharp here)."""
        ratio = self.devicePixelRatioF()
        return QSize(round(self.width() * ratio), round(self.height() * ratio))

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.fillRect(self.rect(), Qt.GlobalColor.black)
        target = self.image_rect()
        if target.isEmpty():
            painter.setPen(Qt.GlobalColor.gray)
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self._placeholder)
        else:
            if self._scaled is None or self._scaled.size() != target.size():
                self._scaled = QPixmap.fromImage(self._image.scaled(
                    target.size(), Qt.AspectRatioMode.IgnoreAspectRatio,
                    Qt.TransformationMode.SmoothTransformation))
            painter.drawPixmap(target.topLeft(), self._scaled)
        painter.end()


def _value_label(text: str = "–") -> QLabel:
    label = QLabel(text)
    label.setProperty("role", "value")
    label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return label


def _name_label(text: str) -> QLabel:
    label = QLabel(text)
    label.setProperty("role", "name")
    return label


def _grid(box: QGroupBox, rows: list[tuple[str, str]]) -> dict[str, QLabel]:
    """Fill ``box`` with ``name: value`` rows; return the value labels by key."""
    grid = QGridLayout(box)
    grid.setContentsMargins(8, 4, 8, 4)
    grid.setHorizontalSpacing(12)
    grid.setVerticalSpacing(2)
    values: dict[str, QLabel] = {}
    for row, (key, name) in enumerate(rows):
        values[key] = _value_label()
        grid.addWidget(_name_label(name), row, 0)
        grid.addWidget(values[key], row, 1)
    grid.setColumnStretch(1, 1)
    return values


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis; long tokens (paths, hex dumps) get
    zero-width spaces so a word-wrapping label can still break them instead of clipping."""
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
    return " ".join("\u200b".join(word[i:i + 24] for i in range(0, len(word), 24)) for word in text.split(" "))


def wall_time_of(timestamp_ns: int) -> float:
    """Wall-clock seconds of a ``time.monotonic_ns()`` stamp (how ``Frame.timestamp_ns`` is taken)."""
    return time.time() - (time.monotonic_ns() - timestamp_ns) / 1e9


def frame_name(result: InspectionResult) -> str:
    """``#frame_id`` plus the replayed file name when there is one."""
    name = f"#{result.frame.frame_id}"
    return f"{name}  {result.frame.file}" if result.frame.file else name


def part_name(result: InspectionResult) -> str:
    """The part's id with its frame (``P-1  #41``), or :func:`frame_name` when the part id is the file's name or the
    part has none."""
    part = result.identity.part_id
    if part is None or part == result.frame.file:
        return frame_name(result)
    return f"{part}  #{result.frame.frame_id}"


def identity_text(result: InspectionResult | None) -> str:
    """Who the part is, for the panel: ``Part P-1``, then ``meas M-1  ·  product X-7`` on a second line (what is
    known of it)."""
    if result is None:
        return ""
    identity = result.identity
    more = [f"{name} {value}" for name, value in (("meas", identity.meas_id), ("product", identity.product_id))
            if value]
    return f"Part {identity.part_id or '–'}" + ("\n" + "  ·  ".join(more) if more else "")


def labels_text(result: InspectionResult | None) -> str:
    """The classifier's labels of a part, comma-separated, or "none"."""
    return ", ".join(result.labels) if result is not None and result.labels else "none"


def labels_where(result: InspectionResult | None) -> str:
    """Each label with the patch cells (``r<row>c<col>``) it was found in, one label a line."""
    if result is None:
        return ""
    lines = []
    for label in result.labels:
        cells = [f"r{p['row']}c{p['col']}" for p in result.patches if label in p.get("labels", ())]
        lines.append(f"{label}: {' '.join(cells)}" if cells else label)
    return "\n".join(lines)


def stages_text(stats: LineStats) -> str:
    """The mean time per part of each stage, e.g. ``Stage times (ms): acquire 12 · infer 180 · log 3``."""
    if not stats.stage_ms:
        return "Stage times: –"
    return "Stage times (ms): " + " · ".join(f"{k} {v:.0f}" if v >= 10 else f"{k} {v:.1f}"
                                             for k, v in stats.stage_ms.items())


#: A link whose rows wait longer than this is shown in amber.
LINK_LAG_WARN_S = 30.0


def links_text(stats: LineStats) -> tuple[str, bool]:
    """The integrations in one line, e.g. ``Links: mqtt connected, up to date · fleet DISCONNECTED, 120 rows behind
    (42 s) · shadow 40 judged, 2 differ, 3 skipped``, and whether one needs a look (disconnected, rows waiting longer
    than :data:`LINK_LAG_WARN_S`, or a shadow that fails on parts)."""
    parts, warn = [], False
    for name, status in stats.links.items():
        words = []
        if "error" in status:
            words.append(f"status unavailable ({status['error']})")
            warn = True
        if status.get("connected") is not None:
            words.append("connected" if status["connected"] else "DISCONNECTED")
            warn = warn or not status["connected"]
        if status.get("serving") is not None:
            words.append("serving" if status["serving"] else "NOT SERVING")
            warn = warn or not status["serving"]
        if "lag_rows" in status:
            rows, seconds = int(status["lag_rows"]), float(status.get("lag_seconds") or 0.0)
            words.append(f"{rows:,} rows behind ({seconds:.0f} s)" if rows else "up to date")
            warn = warn or (rows > 0 and seconds > LINK_LAG_WARN_S)
        if "shadowed" in status:  # [shadow]: the candidate beside the line (station.shadow)
            words.append(f"{int(status['shadowed']):,} judged, {int(status.get('disagreements', 0)):,} differ"
                         + (f", {int(status['skipped']):,} skipped" if status.get("skipped") else "")
                         + (f", {int(status['errors']):,} ERRORS" if status.get("errors") else ""))
            warn = warn or bool(status.get("errors"))
        parts.append(f"{name} " + ", ".join(words) if words else name)
    return ("Links: " + " · ".join(parts) if parts else ""), warn


def not_inspected_text(stats: LineStats) -> str:
    """The parts not inspected by reason, one a line (the tooltip of the counter)."""
    if not stats.not_inspected:
        return "every part delivered was inspected"
    lines = []
    for key, count in sorted(stats.not_inspected_reasons.items()):
        try:
            words = NotInspectedReason(key).text
        except ValueError:
            words = key
        lines.append(f"{words}: {count:,}")
    policy = "count as rejects" if stats.not_inspected_is_reject else "are left out of the yield"
    return "\n".join(lines + [f"(they {policy})"])


class StationPanel(QMainWindow):
    """Main window of the station. See the module docstring for the threading contract.

    Public widgets (read them in tests or embed them elsewhere): ``image_view``, ``caption_label``,
    ``verdict_label``, ``defects_label``, ``labels_label`` (the classifier's labels; hidden without a classifier
    stage), ``counter_labels`` (keys: inspected, passed, failed, not_inspected, yield, dropped,
    errors, throughput, latency, engine, calibration), ``camera_labels`` (keys: state, lost, incomplete, reconnects,
    last_error), ``line_state_label`` (hidden while the line runs; the drain, the stop, or in red the error that
    stopped the line and what to do) and ``rejects_table``.

    With ``reviews`` (a :class:`~ui.panel_review.ReviewDesk`) the operator marks parts with ``review_keys``
    (:class:`~ui.panel_review.PanelReviewKeys`): ``G`` a good part, ``D`` a defect, for the reject selected in
    ``rejects_table``, else the part on screen.
    """

    def __init__(
        self,
        feed: ResultFeed,
        stats_fn: Callable[[], LineStats],
        on_close: Callable[[], None] | None = None,
        refresh_ms: int = 50,
        parent: QWidget | None = None,
        *,
        calibration: tuple[str, bool] = ("", False),
        reviews: ReviewDesk | None = None,
    ) -> None:
        """``calibration`` is ``(text, warning)`` from :func:`station.judge.calibration_status`: the profile version
        in use, or why there is none; ``warning`` shows it in red (the recipe's profile is missing). ``reviews``:
        where the review keys' marks go (none: the panel has no review keys)."""
        super().__init__(parent)
        self._reviews = reviews
        self.review_keys: PanelReviewKeys | None = None
        self._calibration = calibration
        self._feed = feed
        self._stats_fn = stats_fn
        self._on_close = on_close
        self._closed = False
        self._seq = 0
        self._rejects_shown: list[InspectionResult] = []
        self._shown: InspectionResult | None = None
        self._stats_error: str | None = None
        self.frames_drawn = 0
        """How many images were converted and drawn (only when the feed's sequence number changed)."""

        self.setWindowTitle("Inspection station")
        self.setStyleSheet(STYLE)
        self._build()
        self.resize(1280, 800)

        self._timer = QTimer(self)
        self._timer.setInterval(max(1, int(refresh_ms)))
        self._timer.timeout.connect(self.refresh)
        self._timer.start()
        self.refresh()

    # ----------------------------------------------------------------------------------------- layout
    def _build(self) -> None:
        central = QWidget(objectName="central")
        root = QHBoxLayout(central)
        root.setContentsMargins(10, 10, 10, 10)
        root.setSpacing(12)

        left = QVBoxLayout()
        self.image_view = ImageView()
        self.image_view.resized.connect(self._sharpen_after_resize)
        self.caption_label = QLabel("no frame yet", objectName="caption")
        self.caption_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.caption_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        caption_font = self.caption_label.font()
        caption_font.setPointSizeF(caption_font.pointSizeF() * 1.15)
        self.caption_label.setFont(caption_font)
        left.addWidget(self.image_view, 1)
        left.addWidget(self.caption_label)
        root.addLayout(left, 1)

        side = QWidget()
        side.setFixedWidth(400)
        right = QVBoxLayout(side)
        right.setContentsMargins(0, 0, 0, 0)
        right.setSpacing(8)

        self.verdict_label = QLabel()
        self.verdict_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.verdict_label.setMinimumHeight(100)
        verdict_font = QFont(self.verdict_label.font())
        verdict_font.setPointSize(44)
        verdict_font.setBold(True)
        self.verdict_label.setFont(verdict_font)
        self.defects_label = QLabel()
        self.defects_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        defects_font = QFont(self.defects_label.font())
        defects_font.setPointSize(14)
        self.defects_label.setFont(defects_font)
        self.part_label = QLabel(objectName="part")  # who the part is: the PLC's part id, else the source's
        self.part_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.part_label.setWordWrap(True)
        self.part_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        part_font = QFont(self.part_label.font())
        part_font.setPointSize(15)
        part_font.setBold(True)
        self.part_label.setFont(part_font)
        self.labels_label = QLabel()
        self.labels_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.labels_label.setWordWrap(True)
        self.labels_label.setVisible(False)
        self.line_state_label = QLabel("", objectName="line_state")
        self.line_state_label.setWordWrap(True)
        self.line_state_label.setVisible(False)
        right.addWidget(self.line_state_label)
        right.addWidget(self.verdict_label)
        right.addWidget(self.part_label)
        right.addWidget(self.defects_label)
        right.addWidget(self.labels_label)
        self._show_verdict(None)

        line_box = QGroupBox("Line")
        self.counter_labels = _grid(line_box, [
            ("inspected", "Inspected"), ("passed", "Pass"), ("failed", "Fail"), ("not_inspected", "Not inspected"),
            ("yield", "Yield"),
            ("dropped", "Dropped frames"), ("errors", "Errors"), ("throughput", "Throughput"),
            ("latency", "Latency p50 / p99"),
        ])
        # the running engines (one line per stage) are too long for the value column: full width, wrapped
        engine_label = QLabel("Engine: –", objectName="engine")
        engine_label.setWordWrap(True)
        engine_label.setProperty("role", "name")
        line_box.layout().addWidget(engine_label, len(self.counter_labels), 0, 1, 2)
        self.counter_labels["engine"] = engine_label
        text, warning = self._calibration
        calibration_label = QLabel(f"Calibration: {text or '–'}", objectName="calibration")
        calibration_label.setWordWrap(True)
        calibration_label.setProperty("role", "warning" if warning else "name")
        line_box.layout().addWidget(calibration_label, len(self.counter_labels), 0, 1, 2)
        self.counter_labels["calibration"] = calibration_label
        stages_label = QLabel("Stage times: –", objectName="stages")  # where a part's time goes, mean ms
        stages_label.setWordWrap(True)
        stages_label.setProperty("role", "name")
        line_box.layout().addWidget(stages_label, len(self.counter_labels), 0, 1, 2)
        self.counter_labels["stages"] = stages_label
        links_label = QLabel("", objectName="links")  # the integrations: OPC UA, MQTT, metrics, fleet lag
        links_label.setWordWrap(True)
        links_label.setProperty("role", "name")
        links_label.setVisible(False)
        line_box.layout().addWidget(links_label, len(self.counter_labels), 0, 1, 2)
        self.counter_labels["links"] = links_label
        right.addWidget(line_box)

        camera_box = QGroupBox("Camera")
        self.camera_labels = _grid(camera_box, [
            ("state", "State"), ("lost", "Lost frames"), ("incomplete", "Incomplete frames"),
            ("reconnects", "Reconnects"),
        ])
        error_label = QLabel("", objectName="last_error")  # full width under the counters, at most two lines
        error_label.setWordWrap(True)
        error_label.setVisible(False)
        camera_box.layout().addWidget(error_label, 4, 0, 1, 2)
        self.camera_labels["last_error"] = error_label
        right.addWidget(camera_box)

        rejects_box = QGroupBox("Recent rejects")
        rejects_layout = QVBoxLayout(rejects_box)
        rejects_layout.setContentsMargins(4, 4, 4, 4)
        self.rejects_table = QTableWidget(0, len(REJECT_COLUMNS))
        self.rejects_table.setHorizontalHeaderLabels(REJECT_COLUMNS)
        self.rejects_table.verticalHeader().setVisible(False)
        self.rejects_table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        self.rejects_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.rejects_table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.rejects_table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.rejects_table.setAlternatingRowColors(True)
        self.rejects_table.setFrameShape(QFrame.Shape.NoFrame)
        self.rejects_table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # a long part name keeps its end
        header = self.rejects_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        # under the image, full width: five rows and the part names readable (the side column has no room left)
        rows = self.rejects_table.verticalHeader().defaultSectionSize()
        self.rejects_table.setFixedHeight(rows * 5 + self.rejects_table.horizontalHeader().sizeHint().height() + 10)
        rejects_layout.addWidget(self.rejects_table)
        left.addWidget(rejects_box)
        right.addStretch(1)
        if self._reviews is not None:  # the review keys, under the image: G good part, D defect (issue 29)
            self.review_keys = PanelReviewKeys(self, self._reviews, REJECT_COLUMNS, part_name)
            left.addWidget(self.review_keys.box)

        root.addWidget(side)
        self.setCentralWidget(central)

    # ----------------------------------------------------------------------------------------- refresh
    def refresh(self) -> None:
        """One timer tick: redraw the newest result if the feed moved on, then the counters. Never blocks."""
        seq, result = self._feed.latest()
        if seq != self._seq and result is not None:
            self._seq = seq
            try:
                self._show_result(result)
                self._show_rejects(self._feed.recent_rejects())
            except Exception as exc:  # an exception escaping a Qt slot would abort the process
                log.exception("cannot show result %s", seq)
                self.statusBar().showMessage(f"cannot show result: {exc}", 5000)
        try:
            stats = self._stats_fn()
        except Exception as exc:  # the panel must outlive a broken stats source
            message = f"stats unavailable: {type(exc).__name__}: {exc}"
            if message != self._stats_error:
                log.warning("%s", message)
            self._stats_error = message
            self.statusBar().showMessage(message)
            return
        if self._stats_error is not None:
            self._stats_error = None
            self.statusBar().clearMessage()
        self._show_stats(stats)
        if self.review_keys is not None:
            self.review_keys.take_outcomes()

    def _render(self, result: InspectionResult) -> None:
        """Overlay and hand the image to the view, shrunk to the view's size (a 5 MP frame costs < 10 ms)."""
        target = self.image_view.device_size().expandedTo(QSize(640, 480))
        try:
            rgb = overlay_for_display(result.frame.image, result.decided, 0.5, result.defects,  # the decision
                                      target.width(), target.height())
        except ValueError as exc:  # a malformed result must not take the panel down: show what can be shown
            log.warning("cannot overlay frame %s: %s", result.frame.frame_id, exc)
            self.statusBar().showMessage(f"overlay failed: {exc}", 5000)
            try:
                rgb = overlay_for_display(result.frame.image, None, 1.0, (), target.width(), target.height())
            except ValueError:
                self.image_view.set_image(None, placeholder=f"frame {result.frame.frame_id}: image cannot be drawn")
                return
        self.image_view.set_image(to_qimage(rgb))

    def _sharpen_after_resize(self) -> None:
        """Re-render the shown frame when the view grew past the resolution it was shrunk to."""
        shown, image = self._shown, self.image_view.image()
        if shown is None or image is None:
            return
        try:
            full_h, full_w = shown.frame.image.shape[:2]
            view = self.image_view.device_size()
            wanted = min(view.width() / full_w, view.height() / full_h, 1.0)
            if image.width() < 0.8 * wanted * full_w:
                self._render(shown)
        except Exception:  # an exception escaping a Qt slot would abort the process
            log.exception("cannot re-render frame %s after a resize", shown.frame.frame_id)

    def _show_result(self, result: InspectionResult) -> None:
        self._shown = result
        self._render(result)
        self.frames_drawn += 1
        height, width = result.frame.image.shape[:2]
        parts = [f"frame {frame_name(result)}", f"{width}×{height}", result.frame.source]
        if result.labels:
            parts.append(", ".join(result.labels))
        parts.append(f"{result.latency_ms:.1f} ms")
        self.caption_label.setText("   ·   ".join(p for p in parts if p))
        self._show_verdict(result)
        if self.review_keys is not None:
            self.review_keys.show_target()

    def _show_verdict(self, result: InspectionResult | None) -> None:
        if result is None:
            text, colour, detail = "WAITING", GREY, "no result yet"
        else:
            passed = result.verdict is Verdict.PASS
            text, colour = ("PASS", GREEN) if passed else ("FAIL", RED)
            count = len(result.defects)
            detail = "no defects" if count == 0 else f"{count} defect{'s' if count != 1 else ''}"
        self.verdict_label.setText(text)
        self.verdict_label.setStyleSheet(
            f"QLabel {{ background: {colour}; color: white; border-radius: 8px; }}")
        self.defects_label.setText(detail)
        self.part_label.setText(identity_text(result))
        self.part_label.setVisible(result is not None)
        classified = result is not None and bool(result.labels or result.patches)
        self.labels_label.setVisible(classified)
        self.labels_label.setText(f"Labels: {labels_text(result)}" if classified else "")
        self.labels_label.setToolTip(labels_where(result) if classified else "")
        self.labels_label.setStyleSheet(f"color: {AMBER}; font-size: 12pt;" if classified and result.labels else
                                        "font-size: 12pt;")

    def _show_calibration(self, text: str, warning: bool) -> None:
        label = self.counter_labels["calibration"]
        label.setText(f"Calibration: {text or '–'}")
        if label.property("role") != ("warning" if warning else "name"):
            label.setProperty("role", "warning" if warning else "name")
            label.style().unpolish(label)
            label.style().polish(label)

    def _show_stats(self, stats: LineStats) -> None:
        links, links_warn = links_text(stats)
        values = {
            "inspected": f"{stats.inspected:,}",
            "passed": f"{stats.passed:,}",
            "failed": f"{stats.failed:,}",
            "not_inspected": f"{stats.not_inspected:,}",
            "yield": f"{stats.yield_pct:.1f} %" if stats.judged else "–",
            "dropped": f"{stats.dropped:,}",
            "errors": f"{stats.errors:,}",
            "throughput": f"{stats.throughput_fps:.1f} fps",
            "latency": f"{stats.latency_ms_p50:.1f} / {stats.latency_ms_p99:.1f} ms",
            # one line per stage (segmentation, classifier): "model-sha@backend-precision"
            "engine": "Engine: " + "\n".join((stats.engine_id or "–").split("+")),
            "stages": stages_text(stats),
            "links": links,
        }
        for key, text in values.items():
            self.counter_labels[key].setText(text)
        self.counter_labels["engine"].setToolTip(stats.engine_id or "")
        if stats.calibration:  # what judges now: a recipe switch may bring another profile
            self._show_calibration(stats.calibration, stats.calibration_warning)
        self.counter_labels["dropped"].setStyleSheet(f"color: {AMBER};" if stats.dropped else "")
        self.counter_labels["errors"].setStyleSheet(f"color: {AMBER};" if stats.errors else "")
        self.counter_labels["links"].setVisible(bool(stats.links))
        self.counter_labels["links"].setStyleSheet(f"color: {AMBER};" if links_warn else "")
        self.counter_labels["not_inspected"].setStyleSheet(f"color: {AMBER};" if stats.not_inspected else "")
        self.counter_labels["not_inspected"].setToolTip(not_inspected_text(stats))
        self.counter_labels["yield"].setToolTip(
            "parts not inspected count as rejects" if stats.not_inspected_is_reject else
            "parts not inspected are left out of the yield")
        self._show_line_state(stats)

        health = stats.source
        state = self.camera_labels["state"]
        state.setText(health.state.value)
        state.setStyleSheet(f"color: {STATE_COLOURS.get(health.state, GREY)};")
        self.camera_labels["lost"].setText(f"{health.lost_frames:,}")
        self.camera_labels["incomplete"].setText(f"{health.incomplete_frames:,}")
        self.camera_labels["reconnects"].setText(f"{health.reconnects:,}")
        error = self.camera_labels["last_error"]
        message = health.last_error or ""
        error.setText(f"Last error: {shorten(message, MAX_ERROR_CHARS)}" if message else "")
        error.setToolTip(message)
        error.setVisible(bool(message))

    def _show_line_state(self, stats: LineStats) -> None:
        """The banner above the verdict: hidden while the line runs (amber when this start found that the previous
        run ended uncleanly), amber while it drains, red with the reason and what to do when it stopped on an error."""
        label = self.line_state_label
        if stats.state is LineState.ERROR:
            text = f"LINE STOPPED ON AN ERROR: {stats.failure or 'see the log'}"
            if stats.refused and "refused" not in text:
                text += f" ({stats.refused} part(s) refused: no row in the ledger)"
            colour = RED
        elif stats.state is LineState.DRAINING:
            text, colour = "Stopping: inspecting and recording the queued frames…", AMBER
        elif stats.state is LineState.STOPPED:
            text, colour = "Line stopped", GREY
        elif stats.unclean_end:  # found at this start: the previous run was killed or crashed (station.journal)
            text, colour = f"Unclean end before this run: {stats.unclean_end}", AMBER
        else:
            label.setVisible(False)
            return
        label.setText(shorten(text, 400))
        label.setToolTip(text)
        label.setStyleSheet(f"QLabel {{ background: {colour}; color: white; border-radius: 6px; padding: 6px; "
                            "font-weight: bold; }")
        label.setVisible(True)

    def _show_rejects(self, rejects: list[InspectionResult]) -> None:
        if len(rejects) == len(self._rejects_shown) and all(a is b for a, b in zip(rejects, self._rejects_shown)):
            return
        self._rejects_shown = rejects
        table = self.rejects_table
        table.blockSignals(True)  # rows change under a selection: the review keys put it back on its part
        table.setRowCount(len(rejects))
        for row, result in enumerate(rejects):
            largest = max((d.area_px for d in result.defects), default=0)
            labels = ", ".join(result.labels)
            cells = (
                time.strftime("%H:%M:%S", time.localtime(wall_time_of(result.frame.timestamp_ns))),
                part_name(result),
                str(len(result.defects)),
                f"{largest:,}",
                labels if len(labels) <= MAX_LABEL_CHARS else labels[:MAX_LABEL_CHARS - 1] + "…",
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column in (2, 3):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if column == 1:
                    item.setToolTip(text)
                if column == 4 and result.labels:
                    item.setToolTip(labels_where(result))
                table.setItem(row, column, item)
        table.blockSignals(False)
        table.setColumnHidden(4, not any(r.labels for r in rejects))  # Labels: only with a classifier's labels
        if self.review_keys is not None:
            self.review_keys.rows_changed()

    @property
    def shown_result(self) -> InspectionResult | None:
        """The part on screen (None before the first)."""
        return self._shown

    @property
    def rejects_shown(self) -> list[InspectionResult]:
        """The rejects in ``rejects_table``, one per row, newest first."""
        return self._rejects_shown

    # ----------------------------------------------------------------------------------------- lifecycle
    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        """Stop polling, tell the pipeline once (it drains its queues), and accept the close."""
        self._timer.stop()
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                try:
                    self._on_close()
                except Exception:  # closing must always succeed
                    log.exception("on_close raised while closing the panel")
        event.accept()

    def grab_png(self, path: str | os.PathLike[str]) -> None:
        """Save a screenshot of the whole window to ``path`` (PNG)."""
        if not self.grab().save(str(path), "PNG"):
            raise OSError(f"could not write the panel screenshot to {path}; check the folder exists and is writable")
