"""Screenshots of the review keys and QA's review window (issue 29), on the real line and its real ledger: the pictures
in the README (``docs/img/panel-review.png``, ``docs/img/review-window.png``)::

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/review_screenshots.py --out docs/img/

1. The shipped recipe (BFFN on ONNX Runtime) inspects the first ``--parts`` bundled magnetic-tile frames behind the
   real panel, with the review keys as ``station run`` wires them (:class:`station.panel_reviews.LineReviews`, as
   ``--operator``). Once every part is inspected, the operator clicks a reject in the table and presses ``D``, then
   ``Esc`` and ``D`` again for the part on screen, each as the bundled ``truth.csv`` says the part is; the panel is
   grabbed when both reviews are recorded (``panel-review.png``).
2. QA's window (``station review --db``) opens on that ledger as ``--by``, marks the oldest part as the truth says
   (``G`` or ``D``; the window moves on), shows the first reject with a defect and is grabbed
   (``review-window.png``).

The ledger keeps every pass's image here (``[log] save_pass_share = 1``; the shipped recipe keeps 2 %), so the few
parts of the picture include passes, and the station id is ``line-1`` (not this host's name). The ledger goes to a
temporary folder (``--db`` to keep it). Exit status 1 when a step did not happen within ``--timeout`` seconds.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from panel_screenshot import RECIPE, REPO, SAMPLES  # the panel picture's frames and recipe (this folder)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("::", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "img"), help="folder of the PNGs")
    parser.add_argument("--parts", type=int, default=5, help="bundled frames the line inspects (default 5)")
    parser.add_argument("--db", help="ledger to write (default: a temporary one, removed afterwards)")
    parser.add_argument("--operator", default="op-anna", help="the operator's name on the panel")
    parser.add_argument("--by", default="qa-ben", help="QA's name in the review window")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    return parser.parse_args(argv)


def truth_marks(folder: Path) -> dict[str, str]:
    """``file → good|defect`` from the bundled ``truth.csv``."""
    with (folder / "truth.csv").open() as handle:
        return {row["file"]: "defect" if row["defective"] == "1" else "good" for row in csv.DictReader(handle)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(REPO))
    from PyQt6.QtCore import Qt, QTimer
    from PyQt6.QtTest import QTest
    from PyQt6.QtWidgets import QApplication

    from station.app import build_line
    from station.panel_reviews import LineReviews
    from station.recipe import load_recipe
    from station.review_ledger import LedgerReviewSource
    from ui.panel import StationPanel, frame_name
    from ui.review_window import ReviewWindow

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    truth = truth_marks(SAMPLES)
    tmp = tempfile.TemporaryDirectory(prefix="review-shots-")
    db = Path(args.db or Path(tmp.name) / "rejects.db")
    shown = Path(os.path.relpath(SAMPLES)) if SAMPLES.is_relative_to(Path.cwd()) else SAMPLES  # no home folders
    recipe = load_recipe(RECIPE).with_overrides({
        "source.kind": "replay", "source.path": str(shown), "source.loop": False, "source.fps": 0,
        "queues.frames": 1, "log.db": str(db), "log.save_pass_share": 1.0, "station.id": "line-1"})
    line = build_line(recipe, max_frames=args.parts)
    desk = LineReviews(line.reject_log, args.operator)
    line.listeners.append(desk)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    panel = StationPanel(line.feed, line.stats, on_close=line.stop, calibration=line.judge.calibration_note,
                         reviews=desk)
    panel.setWindowTitle(f"Inspection station - {recipe.product.name}")
    panel.resize(1280, 860)
    panel.show()
    started = time.monotonic()
    report: dict = {"out": str(out), "parts": args.parts, "marks": []}

    def later(step, ms: int = 100) -> None:
        if time.monotonic() - started > args.timeout:
            report["error"] = f"timed out after {args.timeout:.0f} s in {step.__name__}"
            panel.close()
        else:
            QTimer.singleShot(ms, step)

    def wait_for_line() -> None:
        stats = line.stats()
        _, last = line.feed.latest()
        if not line.running and stats.inspected + stats.not_inspected >= args.parts and last is not None and \
                panel.caption_label.text().startswith(f"frame {frame_name(last)}"):
            later(mark_a_reject, 300)
        else:
            later(wait_for_line)

    def press(mark: str) -> None:
        QTest.keyClick(panel, Qt.Key.Key_G if mark == "good" else Qt.Key.Key_D)

    def mark_a_reject() -> None:
        table, rejects = panel.rejects_table, panel.rejects_shown
        if rejects:
            row = min(1, len(rejects) - 1)  # the second newest reject, so the selection is visible under the top one
            rect = table.visualRect(table.model().index(row, 1))
            QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
            press(truth[rejects[row].frame.file])
            report["marks"].append(("panel", rejects[row].frame.file, truth[rejects[row].frame.file]))
        later(mark_the_part_on_screen, 200)

    def mark_the_part_on_screen() -> None:
        if len(panel.review_keys.reviewed) < len(report["marks"]):
            later(mark_the_part_on_screen)
            return
        QTest.keyClick(panel, Qt.Key.Key_Escape)
        part = panel.shown_result
        press(truth[part.frame.file])
        report["marks"].append(("panel", part.frame.file, truth[part.frame.file]))
        later(grab_panel, 200)

    def grab_panel() -> None:
        if len(panel.review_keys.reviewed) < len(report["marks"]):
            later(grab_panel)
            return
        panel.refresh()
        panel.grab_png(out / "panel-review.png")
        report["panel_status"] = panel.review_keys.box.status_label.text()
        panel.close()

    line.start()
    QTimer.singleShot(100, wait_for_line)
    app.exec()
    line.stop()
    line.join()
    desk.close()
    if "error" in report:
        print(f"review_screenshots: {report['error']}", file=sys.stderr)
        return 1

    with LedgerReviewSource(db, args.by) as source:
        window = ReviewWindow(source)
        window.resize(1400, 860)
        window.show()
        app.processEvents()
        oldest = len(window.items) - 1
        window.show_index(oldest)
        item = window.current
        mark = truth[item.file]
        QTest.keyClick(window, Qt.Key.Key_G if mark == "good" else Qt.Key.Key_D)
        report["marks"].append(("window", item.file, mark))
        rejects = [i for i, it in enumerate(window.items) if it.verdict == "FAIL" and it.review is None]
        window.show_index(rejects[0] if rejects else 0)
        app.processEvents()
        window.grab_png(out / "review-window.png")
        report["window_status"] = window.status_label.text()
        report["window_rows"] = len(window.items)
        window.close()
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
