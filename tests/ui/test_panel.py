"""Operator panel: overlay drawing, live updates from a pipeline thread, slow-consumer behaviour, close, screenshot."""
from __future__ import annotations

import gc
import os
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inspection_core.records import CameraState, PartIdentity, Verdict
from inspection.feed import ResultFeed
from tests.ui.conftest import BLOB, BLOB_DEFECT, StatsSource, make_result, publish_in_thread, synthetic_image, \
    synthetic_mask
from ui.overlay import BOX_COLOUR, overlay_for_display, overlay_mask, to_qimage

# The panel drawn from the invented results of test_screenshot (docs/img/panel.png is the real line, drawn by
# benchmarks/panel_screenshot.py).
FIXTURE_SCREENSHOT = Path(__file__).resolve().parent / "panel-fixture.png"


# ------------------------------------------------------------------------------------------------ overlay
def test_overlay_grey_paints_red_above_threshold_only() -> None:
    image, mask = synthetic_image(), synthetic_mask()
    out = overlay_mask(image, mask, threshold=0.5, alpha=0.5)
    assert out.shape == (300, 400, 3) and out.dtype == np.uint8
    inside = out[BLOB]
    assert (inside[..., 0] > inside[..., 1]).all() and (inside[..., 1] == inside[..., 2]).all()
    assert inside[0, 0].tolist() == [148, 20, 20]  # 40 * 0.5 + 255 * 0.5 in red, 40 * 0.5 elsewhere
    untouched = mask < 0.5
    assert np.array_equal(out[untouched], np.repeat(image[untouched][:, None], 3, axis=1))
    assert np.array_equal(image, synthetic_image()), "the input image must not be modified"


def test_overlay_rgb_input_keeps_colours_outside_mask() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    mask = synthetic_mask()
    out = overlay_mask(image, mask, threshold=0.5)
    untouched = mask < 0.5
    assert np.array_equal(out[untouched], image[untouched])
    assert (out[BLOB][..., 0].astype(int) >= image[BLOB][..., 0]).mean() > 0.9  # pulled towards red
    assert not np.array_equal(out[BLOB], image[BLOB])


def test_overlay_threshold_is_inclusive_and_none_mask_is_plain_copy() -> None:
    image = np.full((2, 2), 100, np.uint8)
    mask = np.array([[0.5, 0.4999], [1.0, 0.0]], np.float32)
    out = overlay_mask(image, mask, threshold=0.5)
    assert out[0, 0, 1] < 100 and out[1, 0, 1] < 100 and out[0, 1].tolist() == [100] * 3
    assert np.array_equal(overlay_mask(image, None), np.full((2, 2, 3), 100, np.uint8))


def test_overlay_draws_defect_box_around_bbox() -> None:
    image = np.zeros((300, 400), np.uint8)
    out = overlay_mask(image, None, defects=[BLOB_DEFECT], box_thickness=2)
    x, y, w, h = BLOB_DEFECT.bbox
    box = np.array(BOX_COLOUR, np.uint8)
    assert (out[y - 1, x:x + w] == box).all() and (out[y + h, x:x + w] == box).all()
    assert (out[y:y + h, x - 1] == box).all() and (out[y:y + h, x + w] == box).all()
    assert (out[y:y + h, x:x + w] == 0).all(), "the box grows outwards and leaves the defect visible"
    assert (out[y - 3] == 0).all()


def test_overlay_mask_shape_mismatch_raises_clear_error() -> None:
    with pytest.raises(ValueError, match=r"mask shape \(300, 401\) does not match image shape \(300, 400\)"):
        overlay_mask(synthetic_image(), np.zeros((300, 401), np.float32))


def test_overlay_rejects_non_uint8_image() -> None:
    with pytest.raises(ValueError, match="uint8"):
        overlay_mask(np.zeros((4, 4), np.float32), None)
    with pytest.raises(ValueError, match=r"grey \(H, W\) or RGB \(H, W, 3\)"):
        overlay_mask(np.zeros((4, 4, 4), np.uint8), None)


def test_overlay_for_display_shrinks_large_frames_and_keeps_tiny_defects() -> None:
    image = np.full((2048, 2448), 128, np.uint8)
    mask = np.zeros((2048, 2448), np.float32)
    mask[1001, 1501] = 0.95  # a single-pixel defect
    defect = replace(BLOB_DEFECT, bbox=(1501, 1001, 1, 1), area_px=1)
    out = overlay_for_display(image, mask, 0.5, [defect], max_width=800, max_height=600)
    assert out.shape[0] <= 600 and out.shape[1] <= 800 and max(out.shape[:2]) >= 590
    assert ((out[..., 0] > 150) & (out[..., 1] < 100)).sum() >= 1, "a one-pixel defect must survive the shrink"
    assert (out == np.array(BOX_COLOUR, np.uint8)).all(axis=2).sum() > 0
    small = synthetic_image()
    assert np.array_equal(overlay_for_display(small, synthetic_mask(), 0.5, (), 800, 600),
                          overlay_mask(small, synthetic_mask(), 0.5))
    with pytest.raises(ValueError, match="does not match image shape"):
        overlay_for_display(image, np.zeros((10, 10), np.float32), 0.5, (), 800, 600)


@pytest.mark.parametrize("y, x", [(0, 0), (2046, 2448), (2046, 0), (0, 2448), (777, 1313)])
def test_overlay_for_display_keeps_single_pixels_at_edges(y: int, x: int) -> None:
    image = np.zeros((2047, 2449, 3), np.uint8)  # odd sizes: the block average pads the edges
    mask = np.zeros((2047, 2449), np.float32)
    mask[y, x] = 1.0
    out = overlay_for_display(image, mask, 0.5, (), max_width=517, max_height=433)
    assert out.shape[1] <= 517 and out.shape[0] <= 433
    assert (out[..., 0] > 0).sum() >= 1


@pytest.mark.gui
def test_to_qimage_owns_a_copy(qapp) -> None:
    rgb = overlay_mask(synthetic_image(), synthetic_mask())
    expected = rgb[130, 210].tolist()
    qimage = to_qimage(rgb)
    del rgb
    gc.collect()
    colour = qimage.pixelColor(210, 130)
    assert [colour.red(), colour.green(), colour.blue()] == expected
    grey = to_qimage(synthetic_image())
    assert (grey.width(), grey.height()) == (400, 300) and grey.pixelColor(0, 0).red() == 90


# ------------------------------------------------------------------------------------------------ panel
@pytest.fixture
def feed() -> ResultFeed:
    return ResultFeed()


@pytest.fixture
def panel(qtbot, feed: ResultFeed, stats: StatsSource):
    from ui.panel import StationPanel

    closes: list[int] = []
    window = StationPanel(feed, stats, on_close=lambda: closes.append(1), refresh_ms=20,
                          calibration=("cam-A@v3", False))
    window.closes = closes  # type: ignore[attr-defined]
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window


def label_colour(label) -> tuple[int, int, int]:
    colour = label.grab().toImage().pixelColor(6, label.height() // 2)
    return colour.red(), colour.green(), colour.blue()


@pytest.mark.gui
def test_panel_waits_grey_before_first_result(panel) -> None:
    assert panel.verdict_label.text() == "WAITING"
    red, green, blue = label_colour(panel.verdict_label)
    assert abs(red - green) < 20 and abs(green - blue) < 20
    assert panel.rejects_table.rowCount() == 0 and panel.frames_drawn == 0


@pytest.mark.gui
def test_panel_shows_fail_counters_and_reject(qtbot, panel, feed: ResultFeed, stats: StatsSource) -> None:
    publish_in_thread(lambda: feed.publish(make_result(frame_id=41))).join()
    qtbot.waitUntil(lambda: panel.verdict_label.text() == "FAIL", timeout=2000)
    red, green, blue = label_colour(panel.verdict_label)
    assert red > 150 and green < 90 and blue < 90
    assert panel.defects_label.text() == "1 defect"
    assert "#41" in panel.caption_label.text() and "glass_0001.png" in panel.caption_label.text()
    assert not panel.image_view.image().isNull()
    counters = {key: label.text() for key, label in panel.counter_labels.items()}
    assert counters["inspected"] == "1,234" and counters["passed"] == "1,200" and counters["failed"] == "34"
    assert counters["yield"] == "97.2 %" and counters["dropped"] == "7"
    assert counters["throughput"] == "18.6 fps" and counters["latency"] == "12.3 / 31.7 ms"
    assert counters["engine"] == "Engine: bffn-s/onnxruntime-cpu"
    stats.update(engine_id="bffn-5b2be8c6@onnxruntime-fp32+gr-455cfcea@onnxruntime-fp32")  # both stages
    qtbot.waitUntil(lambda: panel.counter_labels["engine"].text().count("\n") == 1, timeout=2000)
    assert panel.counter_labels["engine"].text() == ("Engine: bffn-5b2be8c6@onnxruntime-fp32\n"
                                                    "gr-455cfcea@onnxruntime-fp32")
    label = panel.counter_labels["engine"]
    assert label.width() >= label.fontMetrics().horizontalAdvance("Engine: bffn-5b2be8c6@onnxruntime-fp32"), \
        "the engine line must show whole, not cut"
    assert panel.camera_labels["state"].text() == "connected"
    assert panel.camera_labels["lost"].text() == "2" and panel.camera_labels["incomplete"].text() == "5"
    table = panel.rejects_table
    assert table.rowCount() == 1
    assert [table.item(0, c).text() for c in (1, 2, 3)] == ["#41  glass_0001.png", "1", "2,000"]
    assert re.fullmatch(r"\d\d:\d\d:\d\d", table.item(0, 0).text())

    stats.update(inspected=1235, failed=35)
    qtbot.waitUntil(lambda: panel.counter_labels["inspected"].text() == "1,235", timeout=2000)
    assert panel.counter_labels["failed"].text() == "35"


@pytest.mark.gui
def test_the_panel_shows_who_the_part_is(qtbot, panel, feed: ResultFeed, tmp_path: Path) -> None:
    """The PLC's part id (with its MeasId and ProductId) under the verdict and in the rejects table; a replayed part
    is known by its file's name."""
    plc = PartIdentity(part_id="P-1", meas_id="M-1", product_id="X-7", job_id="run-1")
    publish_in_thread(lambda: feed.publish(make_result(frame_id=41, identity=plc))).join()
    qtbot.waitUntil(lambda: panel.verdict_label.text() == "FAIL", timeout=2000)
    assert panel.part_label.isVisible()
    assert panel.part_label.text() == "Part P-1\nmeas M-1  ·  product X-7"
    assert panel.rejects_table.item(0, 1).text() == "P-1  #41"
    assert panel.rejects_table.horizontalHeaderItem(1).text() == "Part"
    panel.grab_png(tmp_path / "part.png")
    if os.environ.get("PANEL_PNG_DIR"):  # to look at it
        shutil.copyfile(tmp_path / "part.png", Path(os.environ["PANEL_PNG_DIR"]) / "part.png")
    assert (tmp_path / "part.png").stat().st_size > 10_000
    replayed = make_result(frame_id=42, verdict=Verdict.PASS, identity=PartIdentity(part_id="glass_0001.png"))
    publish_in_thread(lambda: feed.publish(replayed)).join()
    qtbot.waitUntil(lambda: panel.verdict_label.text() == "PASS", timeout=2000)
    assert panel.part_label.text() == "Part glass_0001.png"
    publish_in_thread(lambda: feed.publish(make_result(frame_id=43))).join()
    qtbot.waitUntil(lambda: panel.rejects_table.rowCount() == 2, timeout=2000)
    assert panel.part_label.text() == "Part –"  # a part nobody named
    assert panel.rejects_table.item(0, 1).text() == "#43  glass_0001.png"


@pytest.mark.gui
def test_parts_not_inspected_are_counted_as_rejects_and_explained(qtbot, panel, stats: StatsSource) -> None:

    qtbot.waitUntil(lambda: panel.counter_labels["inspected"].text() == "1,234", timeout=2000)
    assert panel.counter_labels["not_inspected"].text() == "0" and not panel.line_state_label.isVisible()
    stats.update(not_inspected=6, not_inspected_reasons={"dropped": 4, "unreadable": 2})
    qtbot.waitUntil(lambda: panel.counter_labels["not_inspected"].text() == "6", timeout=2000)
    assert panel.counter_labels["yield"].text() == "96.8 %"  # 1200 / (1200 + 34 + 6): fail-safe
    tip = panel.counter_labels["not_inspected"].toolTip()
    assert "dropped by the queue policy: 4" in tip and "unreadable: 2" in tip and "count as rejects" in tip
    stats.update(not_inspected_is_reject=False)
    qtbot.waitUntil(lambda: panel.counter_labels["yield"].text() == "97.2 %", timeout=2000)


@pytest.mark.gui
def test_a_line_stopped_on_an_error_says_why_in_red(qtbot, panel, stats: StatsSource, tmp_path) -> None:
    from inspection_core.records import LineState

    stats.update(state=LineState.DRAINING)
    qtbot.waitUntil(lambda: panel.line_state_label.isVisible(), timeout=2000)
    assert "Stopping" in panel.line_state_label.text()
    stats.update(state=LineState.ERROR, refused=3,
                 failure="cannot write to the reject log x.db: the disk is full; free disk space, then start again")
    qtbot.waitUntil(lambda: "LINE STOPPED" in panel.line_state_label.text(), timeout=2000)
    text = panel.line_state_label.toolTip()
    assert "the disk is full" in text and "free disk space" in text and "3 part(s) refused" in text
    red, green, blue = label_colour(panel.line_state_label)
    assert red > 150 and green < 90 and blue < 90
    panel.grab_png(tmp_path / "error.png")
    assert (tmp_path / "error.png").stat().st_size > 10_000


@pytest.mark.gui
def test_pass_turns_indicator_green_and_keeps_rejects(qtbot, panel, feed: ResultFeed) -> None:
    feed.publish(make_result(frame_id=1))
    qtbot.waitUntil(lambda: panel.verdict_label.text() == "FAIL", timeout=2000)
    publish_in_thread(lambda: feed.publish(make_result(frame_id=2, verdict=Verdict.PASS))).join()
    qtbot.waitUntil(lambda: panel.verdict_label.text() == "PASS", timeout=2000)
    red, green, blue = label_colour(panel.verdict_label)
    assert green > 100 and red < 90 and blue < 90
    assert panel.defects_label.text() == "no defects"
    assert panel.rejects_table.rowCount() == 1  # the earlier reject stays listed
    feed.publish(make_result(frame_id=3, file="glass_0003.png"))
    qtbot.waitUntil(lambda: panel.rejects_table.rowCount() == 2, timeout=2000)
    assert panel.rejects_table.item(0, 1).text().startswith("#3"), "newest reject first"


@pytest.mark.gui
def test_camera_state_follows_stats(qtbot, panel, stats: StatsSource) -> None:
    qtbot.waitUntil(lambda: panel.camera_labels["state"].text() == "connected", timeout=2000)
    stats.update_source(state=CameraState.LOST, lost_frames=9, reconnects=3, last_error="GenTL timeout on fetch")
    qtbot.waitUntil(lambda: panel.camera_labels["state"].text() == "lost", timeout=2000)
    assert "e53935" in panel.camera_labels["state"].styleSheet()
    assert panel.camera_labels["lost"].text() == "9" and panel.camera_labels["reconnects"].text() == "3"
    assert panel.camera_labels["last_error"].text() == "Last error: GenTL timeout on fetch"
    assert panel.camera_labels["last_error"].isVisible()
    stats.update_source(state=CameraState.RECONNECTING)
    qtbot.waitUntil(lambda: panel.camera_labels["state"].text() == "reconnecting", timeout=2000)


@pytest.mark.gui
def test_redraws_only_when_sequence_changes(qtbot, panel, feed: ResultFeed, stats: StatsSource) -> None:
    feed.publish(make_result(frame_id=5))
    qtbot.waitUntil(lambda: panel.frames_drawn == 1, timeout=2000)
    calls = stats.calls
    qtbot.wait(150)  # several 20 ms ticks with nothing new
    assert panel.frames_drawn == 1
    assert stats.calls > calls, "counters keep refreshing on the timer"


@pytest.mark.gui
def test_broken_stats_source_does_not_kill_panel(qtbot, feed: ResultFeed) -> None:
    from ui.panel import StationPanel

    def broken():
        raise RuntimeError("pipeline gone")

    window = StationPanel(feed, broken, refresh_ms=20)
    qtbot.addWidget(window)
    feed.publish(make_result(frame_id=8))
    qtbot.waitUntil(lambda: window.verdict_label.text() == "FAIL", timeout=2000)
    assert "pipeline gone" in window.statusBar().currentMessage()


@pytest.mark.gui
def test_slow_consumer_never_blocks_publisher(qtbot, panel, feed: ResultFeed) -> None:
    fail, ok = make_result(verdict=Verdict.FAIL), make_result(verdict=Verdict.PASS)
    results = [replace(fail if i % 10 == 0 else ok, frame=replace(fail.frame, frame_id=i))  # shared pixels
               for i in range(1, 1001)]
    elapsed: list[float] = []

    def pipeline() -> None:
        start = time.perf_counter()
        for result in results:
            feed.publish(result)
        elapsed.append(time.perf_counter() - start)

    publish_in_thread(pipeline).join(timeout=5)
    assert elapsed and elapsed[0] < 0.25, f"publishing 1000 results took {elapsed}s: the panel held it up"
    qtbot.waitUntil(lambda: "#1000" in panel.caption_label.text(), timeout=2000)
    assert panel.verdict_label.text() == "FAIL"
    assert panel.frames_drawn < 50, "the panel skips to the newest result instead of drawing every one"
    assert panel.rejects_table.rowCount() == 20 and panel.rejects_table.item(0, 1).text().startswith("#1000")


@pytest.mark.gui
def test_close_calls_on_close_exactly_once(qtbot, panel) -> None:
    assert panel.close()
    panel.close()
    qtbot.wait(50)
    assert panel.closes == [1]
    assert not panel.isVisible()


@pytest.mark.gui
def test_malformed_mask_shows_bare_image(qtbot, panel, feed: ResultFeed) -> None:
    bad = replace(make_result(frame_id=9), decided=np.zeros((10, 10), bool))
    feed.publish(bad)
    qtbot.waitUntil(lambda: panel.frames_drawn == 1, timeout=2000)
    assert panel.verdict_label.text() == "FAIL" and "overlay failed" in panel.statusBar().currentMessage()
    assert panel.image_view.image() is not None  # the bare frame is still shown

    base = make_result(frame_id=10)
    feed.publish(replace(base, frame=replace(base.frame, image=np.zeros((300, 400), np.float64))))
    qtbot.waitUntil(lambda: panel.frames_drawn == 2, timeout=2000)
    assert panel.image_view.image() is None and panel.verdict_label.text() == "FAIL"


@pytest.mark.gui
def test_large_frame_is_drawn_at_view_size(qtbot, panel, feed: ResultFeed) -> None:
    big = np.full((2048, 2448), 128, np.uint8)
    base = make_result(frame_id=12, verdict=Verdict.PASS)
    feed.publish(replace(base, frame=replace(base.frame, image=big), mask=np.zeros(big.shape, np.float32)))
    qtbot.waitUntil(lambda: panel.frames_drawn == 1, timeout=2000)
    shown, view = panel.image_view.image(), panel.image_view.device_size()
    assert shown.width() <= max(view.width(), 640) and shown.height() <= max(view.height(), 480)
    assert "2448×2048" in panel.caption_label.text()
    panel.resize(1900, 1200)  # a bigger view re-renders the frame sharper, without counting a new frame
    qtbot.waitUntil(lambda: panel.image_view.image().width() > shown.width(), timeout=2000)
    assert panel.frames_drawn == 1


def red_text_pixels(label) -> int:
    """Pixels of the label drawn in a clear red (the warning colour), against the panel's dark background."""
    image = label.grab().toImage()
    return sum(1 for x in range(image.width()) for y in range(image.height())
               if (c := image.pixelColor(x, y)).red() > 200 and c.green() < 170 and c.blue() < 170)


@pytest.mark.gui
@pytest.mark.parametrize(("calibration", "text", "red"), [
    (("cam-A@v3", False), "Calibration: cam-A@v3", False),
    (("UNCALIBRATED (profile 'cam-A' not found)", True), "Calibration: UNCALIBRATED (profile 'cam-A' not found)", True),
    (("", False), "Calibration: –", False),
])
def test_calibration_line_names_the_profile_and_warns_in_red_without_it(qtbot, feed: ResultFeed, stats: StatsSource,
                                                                        calibration, text: str, red: bool) -> None:
    from ui.panel import StationPanel

    window = StationPanel(feed, stats, refresh_ms=20, calibration=calibration)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    label = window.counter_labels["calibration"]
    assert label.text() == text and label.isVisible()
    assert (red_text_pixels(label) > 20) is red
    window.close()


@pytest.mark.gui
def test_calibration_line_follows_the_active_judge_after_a_recipe_switch(qtbot, feed: ResultFeed,
                                                                         stats: StatsSource) -> None:
    """The label starts from what the start recipe said, then shows what the line's active judge says (its
    ``calibration_note`` in the stats): a switch to a recipe whose profile is missing turns it red, and back."""
    from ui.panel import StationPanel

    window = StationPanel(feed, stats, refresh_ms=20, calibration=("cam-A@v3", False))
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    label = window.counter_labels["calibration"]
    assert label.text() == "Calibration: cam-A@v3" and red_text_pixels(label) <= 20
    stats.update(calibration="UNCALIBRATED (profile 'cam-B' not found)", calibration_warning=True)
    qtbot.waitUntil(lambda: label.text() == "Calibration: UNCALIBRATED (profile 'cam-B' not found)", timeout=2000)
    qtbot.waitUntil(lambda: red_text_pixels(label) > 20, timeout=2000)
    stats.update(calibration="cam-A@v4", calibration_warning=False)
    qtbot.waitUntil(lambda: label.text() == "Calibration: cam-A@v4", timeout=2000)
    qtbot.waitUntil(lambda: red_text_pixels(label) <= 20, timeout=2000)
    window.close()


@pytest.mark.gui
def test_screenshot(qtbot, panel, feed: ResultFeed, stats: StatsSource, tmp_path: Path) -> None:
    for i in range(1, 6):
        feed.publish(make_result(frame_id=i, file=f"glass_{i:04d}.png"))
    feed.publish(make_result(frame_id=6, file="glass_0006.png"))
    stats.update_source(last_error="frame 1187 incomplete: GenTL buffer delivered 412 of 480 lines "
                                   "(packet resend limit reached on the GigE link)")
    qtbot.waitUntil(lambda: panel.rejects_table.rowCount() == 6, timeout=2000)
    qtbot.wait(60)
    path = tmp_path / "panel.png"
    panel.grab_png(path)
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_FIXTURE_SCREENSHOT"):  # refresh the fixture picture on purpose only
        shutil.copyfile(path, FIXTURE_SCREENSHOT)


# ------------------------------------------------------------------------------------------------ app
def test_display_available_follows_environment(monkeypatch) -> None:
    import sys

    from ui import app

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert not app.display_available()
    monkeypatch.setenv("QT_QPA_PLATFORM", "minimal")
    assert not app.display_available()
    monkeypatch.delenv("QT_QPA_PLATFORM")
    assert app.display_available()
    monkeypatch.delenv("DISPLAY")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not app.display_available()
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert app.display_available()
    monkeypatch.delenv("WAYLAND_DISPLAY")
    monkeypatch.setenv("QT_QPA_PLATFORM", "eglfs")
    assert app.display_available()


@pytest.mark.gui
def test_run_panel_runs_loop_until_closed(qapp, feed: ResultFeed, stats: StatsSource) -> None:
    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication

    from ui.app import run_panel
    from ui.panel import StationPanel

    closes: list[int] = []
    seen: list[str] = []
    feed.publish(make_result(frame_id=77))

    def close_panel() -> None:
        for widget in QApplication.topLevelWidgets():
            if isinstance(widget, StationPanel) and widget.isVisible():
                seen.append(widget.windowTitle())
                seen.append(widget.verdict_label.text())
                widget.close()

    QTimer.singleShot(200, close_panel)
    guard = QTimer()  # safety net: never hang the suite (stopped afterwards, so it cannot quit later tests)
    guard.setSingleShot(True)
    guard.timeout.connect(qapp.quit)
    guard.start(5000)
    try:
        code = run_panel(feed, stats, lambda: closes.append(1), "Line 3 - cover glass", refresh_ms=20)
    finally:
        guard.stop()
    assert code == 0
    assert seen == ["Line 3 - cover glass", "FAIL"]
    assert closes == [1]


@pytest.mark.gui
def test_panel_shows_where_a_parts_time_goes(qtbot, panel, stats: StatsSource) -> None:
    qtbot.waitUntil(lambda: panel.counter_labels["inspected"].text() == "1,234", timeout=2000)
    assert panel.counter_labels["stages"].text() == "Stage times: –"
    stats.update(stage_ms={"acquire": 41.5, "prepare": 1.25, "tile": 2.0, "infer": 180.4, "stitch": 0.5,
                           "verdict": 3.0, "log": 4.0})
    qtbot.waitUntil(lambda: "infer 180" in panel.counter_labels["stages"].text(), timeout=2000)
    assert panel.counter_labels["stages"].text() == ("Stage times (ms): acquire 42 · prepare 1.2 · tile 2.0 · "
                                                     "infer 180 · stitch 0.5 · verdict 3.0 · log 4.0")


@pytest.mark.gui
def test_panel_shows_the_links_and_warns_when_rows_wait(qtbot, panel, stats: StatsSource) -> None:
    qtbot.waitUntil(lambda: panel.counter_labels["inspected"].text() == "1,234", timeout=2000)
    assert not panel.counter_labels["links"].isVisible()  # no integration: no line
    stats.update(links={"mqtt": {"connected": True, "lag_rows": 0, "lag_seconds": 0.0},
                        "fleet": {"connected": False, "lag_rows": 1200, "lag_seconds": 95.0}})
    qtbot.waitUntil(lambda: panel.counter_labels["links"].isVisible(), timeout=2000)
    assert panel.counter_labels["links"].text() == ("Links: mqtt connected, up to date · fleet DISCONNECTED, "
                                                    "1,200 rows behind (95 s)")
    assert "color" in panel.counter_labels["links"].styleSheet()
    stats.update(links={"mqtt": {"connected": True, "lag_rows": 3, "lag_seconds": 0.2}})
    qtbot.waitUntil(lambda: "3 rows behind" in panel.counter_labels["links"].text(), timeout=2000)
    assert panel.counter_labels["links"].styleSheet() == ""  # a few rows in flight are normal
    shadow = {"candidate": "bffn-1234abcd@onnxruntime-fp32", "shadowed": 40, "agree": 38, "disagreements": 2,
              "skipped": 3, "errors": 0}
    stats.update(links={"shadow": shadow})  # [shadow]: what the candidate did, not just its name
    qtbot.waitUntil(lambda: "shadow" in panel.counter_labels["links"].text(), timeout=2000)
    assert panel.counter_labels["links"].text() == "Links: shadow 40 judged, 2 differ, 3 skipped"
    assert panel.counter_labels["links"].styleSheet() == ""
    stats.update(links={"shadow": {**shadow, "errors": 1}})
    qtbot.waitUntil(lambda: "ERRORS" in panel.counter_labels["links"].text(), timeout=2000)
    assert "color" in panel.counter_labels["links"].styleSheet()


@pytest.mark.gui
def test_the_panel_paints_the_rules_each_result_was_judged_by(qtbot, panel, feed: ResultFeed) -> None:
    """Issue 27: after a recipe change (OPC UA PrepareRecipe swaps the line's inspector) the panel painted masks at
    the old threshold. It now paints each result's own decision: the same scores judged at 0.5 and at 0.95."""
    from inspection.inspector import Inspector
    from inspection_core.preprocess import InputSpec
    from inspection_core.verdict import DecisionRules

    class Scores:  # the judge needs an engine to exist; it never infers here
        spec, tile, engine_id = InputSpec(), 128, "scores@test"

    base = make_result(frame_id=20)
    shown = []
    for frame_id, threshold in ((21, 0.5), (22, 0.95)):
        inspector = Inspector(Scores(), overlap=32, batch=8, rules=DecisionRules(score_threshold=threshold,
                                                                                  min_area_px=30))
        frame = replace(base.frame, frame_id=frame_id)
        result = inspector.result(frame, inspector.judge(base.mask), (), [], {})
        assert (result.verdict is Verdict.FAIL) == (threshold == 0.5)
        feed.publish(result)
        qtbot.waitUntil(lambda n=len(shown) + 1: panel.frames_drawn == n, timeout=2000)
        image = panel.image_view.image()
        sx, sy = image.width() / base.frame.image.shape[1], image.height() / base.frame.image.shape[0]
        colour = image.pixelColor(int(225 * sx), int(140 * sy))
        shown.append((colour.red(), colour.green()))
    assert shown[0][0] > shown[0][1] + 60, "judged at 0.5: the blob (score 0.9) is painted"
    assert abs(shown[1][0] - shown[1][1]) < 20, "judged at 0.95: nothing is painted"


@pytest.mark.gui
def test_recent_rejects_show_five_whole_rows_with_readable_part_names(qtbot, panel, feed: ResultFeed) -> None:
    """The rejects table sits under the image, full width: five rows in view without scrolling, and a magnetic-tile
    part name whole in its Part column (in the side column it showed two rows and "#16 ...")."""
    names = [f"uneven_exp{k}_num_35257{k}.jpg" for k in range(1, 7)]
    for k, name in enumerate(names, start=11):
        publish_in_thread(lambda k=k, name=name: feed.publish(make_result(frame_id=k, file=name))).join()
        qtbot.waitUntil(lambda k=k: panel.rejects_table.rowCount() == k - 10, timeout=2000)
    table = panel.rejects_table
    assert table.viewport().height() >= 5 * table.verticalHeader().defaultSectionSize()
    part = table.item(0, 1).text()
    assert part == "#16  uneven_exp6_num_352576.jpg"
    assert table.columnWidth(1) >= table.fontMetrics().horizontalAdvance(part) + 8, "the part name must show whole"
