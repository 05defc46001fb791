"""Start the operator panel: ``run_panel`` owns the Qt event loop; ``display_available`` says whether it can.

PyQt6 is imported only when the panel is actually run, so ``import ui.app`` (and ``display_available()``)
work on a headless machine without it.

Typical use from the station command::

    if display_available():
        code = run_panel(feed, pipeline.stats, pipeline.stop, title="Station A")
"""
from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Callable

from inspection.feed import ResultFeed
from inspection_core.records import LineStats

if TYPE_CHECKING:
    from ui.review_records import ReviewDesk

HEADLESS_PLATFORMS = frozenset({"offscreen", "minimal", "minimalegl"})
SCREEN_PLATFORMS = frozenset({"eglfs", "linuxfb", "vkkhrdisplay", "vnc"})
"""Qt platforms that show a GUI on Linux without an X11 or Wayland session (kiosk panels, remote views)."""


def display_available() -> bool:
    """True when a Qt window can be shown here.

    False when PyQt6 is missing or ``QT_QPA_PLATFORM`` is offscreen/minimal. On Linux a ``DISPLAY`` or
    ``WAYLAND_DISPLAY`` is needed, unless the platform is one that draws straight to a screen (eglfs, linuxfb,
    vnc); Windows and macOS always have a window server.
    """
    if importlib.util.find_spec("PyQt6") is None:
        return False
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(":", 1)[0].split(";", 1)[0].strip().lower()
    if platform in HEADLESS_PLATFORMS:
        return False
    if not sys.platform.startswith("linux"):
        return True
    if platform in SCREEN_PLATFORMS:
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_panel(
    feed: ResultFeed,
    stats_fn: Callable[[], LineStats],
    on_close: Callable[[], None] | None,
    title: str = "Inspection station",
    refresh_ms: int = 50,
    *,
    calibration: tuple[str, bool] = ("", False),
    on_signal: Callable[[int], None] | None = None,
    reviews: ReviewDesk | None = None,
) -> int:
    """Show a :class:`~ui.panel.StationPanel` and run the Qt event loop until it closes; return the exit code.

    Creates the ``QApplication`` if there is none. Closing the window, or SIGINT (Ctrl+C in the terminal), SIGTERM
    or SIGHUP, calls ``on_close`` once so the pipeline can drain its queues; a signal is first passed to
    ``on_signal`` (so the caller knows which one stopped the run). ``reviews``: where the operator's review keys
    (G good part, D defect) send their marks; none, no review keys.
    """
    try:
        from PyQt6.QtCore import QTimer
        from PyQt6.QtWidgets import QApplication

        from ui.panel import StationPanel
    except ImportError as exc:
        raise ImportError(f"the operator panel needs PyQt6 ({exc}); install it with pip install 'PyQt6>=6.6', "
                          "or run the station without the panel") from exc

    app = QApplication.instance() or QApplication(sys.argv[:1] or ["station"])
    panel = StationPanel(feed, stats_fn, on_close=on_close, refresh_ms=refresh_ms,
                         calibration=calibration, reviews=reviews)
    panel.setWindowTitle(title)
    panel.show()

    # Qt's event loop keeps Python from seeing signals; a short idle timer lets the handler run and close cleanly.
    def stop_by_signal(signum: int, _frame: object) -> None:
        if on_signal is not None:
            on_signal(signum)
        panel.close()

    previous: dict[int, object] = {}
    wake = QTimer()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, stop_by_signal)
        wake.timeout.connect(lambda: None)
        wake.start(200)
    try:
        return int(app.exec())
    finally:
        wake.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if panel.isVisible():  # the loop was quit some other way: still tell the pipeline
            panel.close()
