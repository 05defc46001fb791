"""The line: three threads, bounded queues, exact frame counts, drops counted, clean drain on stop."""
from __future__ import annotations

import collections
import sqlite3
import time
from pathlib import Path

import cv2

import numpy as np
import pytest

from engines.backends.base import load_engine
from inspection_core.records import Frame, Verdict
from inspection_core.verdict import DecisionRules
from inspection.inspector import Inspector
from station.pipeline import BoundedQueue, Line
from station.recipe import QueuePolicy
from station.rejectlog import RejectLog
from station.sources import GenICamSource, ReplaySource
from tests.station.test_genicam_source import needs_viky

SAMPLES = __import__("station.cli", fromlist=["SAMPLES"]).SAMPLES


@pytest.fixture(scope="module")
def inspector(untrained_bffn):
    engine = load_engine(untrained_bffn, "onnxruntime", threads=2)
    return Inspector(engine, overlap=32, batch=16, rules=DecisionRules(score_threshold=0.5, min_area_px=30))


def rows(db) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT frame_id, file, verdict FROM inspections ORDER BY id").fetchall()


def test_drop_oldest_queue_keeps_the_newest_and_counts_the_rest():
    q = BoundedQueue(2, QueuePolicy.DROP_OLDEST)
    for i in range(5):
        q.put(i)
    assert q.dropped == 3 and [q.get(), q.get()] == [3, 4]


def test_blocking_queue_applies_back_pressure():
    import threading

    q = BoundedQueue(1, QueuePolicy.BLOCK)
    q.put("a")
    done = threading.Event()
    threading.Thread(target=lambda: (q.put("b"), done.set()), daemon=True).start()
    assert not done.wait(0.3), "a full blocking queue must make the producer wait"
    assert q.get() == "a" and done.wait(2) and q.dropped == 0


def test_inspector_turns_a_frame_into_a_result_with_a_full_size_mask(inspector):
    image = np.random.default_rng(0).integers(0, 255, (200, 300), dtype=np.uint8)
    result = inspector.inspect(Frame(image, 1, time.monotonic_ns(), "test"))
    assert result.mask.shape == (200, 300) and result.mask.dtype == np.float32
    assert 0.0 <= result.mask.min() and result.mask.max() <= 1.0
    assert result.verdict in (Verdict.PASS, Verdict.FAIL) and result.engine_id.startswith("bffn-")
    assert set(result.timings) >= {"prepare", "tile", "infer", "stitch", "verdict", "total"}


def test_inspector_refuses_a_non_8_bit_frame_with_a_hint(inspector):
    with pytest.raises(ValueError, match="uint8"):
        inspector.inspect(Frame(np.zeros((64, 64), np.float32), 1, time.monotonic_ns(), "test"))


def test_line_records_exactly_max_frames_rows(inspector, tmp_path):
    db = tmp_path / "log.db"
    line = Line(ReplaySource(SAMPLES, loop=True, pattern="*.jpg"), inspector, RejectLog(db),
                frames_policy=QueuePolicy.BLOCK, max_frames=7)
    stats = line.run()
    assert stats.inspected == 7 and stats.dropped == 0 and stats.acquired == 7
    assert len(rows(db)) == 7
    assert [r[0] for r in rows(db)] == list(range(1, 8))
    assert line.feed.latest()[0] == 7
    # where a part's time goes, in the order it meets the stages
    assert list(stats.stage_ms) == ["acquire", "prepare", "tile", "infer", "stitch", "verdict", "log"]
    assert all(ms >= 0 for ms in stats.stage_ms.values()) and stats.stage_ms["infer"] > 0
    assert stats.stage_ms["log"] > 0  # every row is committed with an fsync


def test_a_replay_faster_than_the_line_gets_exactly_one_row_per_acquired_frame(inspector, tmp_path):
    """The part ledger's promise: 200 frames/s into an engine far slower than that drops frames, and every frame
    the source delivered still has exactly one row; the summary's counts add up. ``max_frames`` is N parts: the
    source stops after delivering 8, some of which the queue dropped (issue 26: nothing beyond N)."""
    db = tmp_path / "log.db"
    source = ReplaySource(SAMPLES, loop=True, pattern="*.jpg", fps=200.0)
    line = Line(source, inspector, RejectLog(db, run_id="r"), frames_queue=2, frames_policy=QueuePolicy.DROP_OLDEST,
                max_frames=8)
    stats = line.run()
    logged = rows(db)
    assert stats.acquired == 8 and stats.dropped > 0 and stats.inspected + stats.dropped == 8
    assert len(logged) == stats.acquired == stats.recorded, "one row per acquired frame, no more, no less"
    assert stats.acquired == stats.passed + stats.failed + stats.not_inspected
    assert sorted(r[0] for r in logged) == list(range(1, stats.acquired + 1)), "every frame id exactly once"
    verdicts = collections.Counter(r[2] for r in logged)
    assert verdicts["PASS"] + verdicts["FAIL"] == stats.inspected and verdicts["NOT_INSPECTED"] == stats.not_inspected
    with sqlite3.connect(db) as con:
        reasons = dict(con.execute("SELECT reason, COUNT(*) FROM inspections WHERE verdict = 'NOT_INSPECTED' "
                                   "GROUP BY reason").fetchall())
    assert reasons == dict(stats.not_inspected_reasons) and reasons["dropped"] == stats.dropped
    assert set(reasons) == {"dropped"}, "the source stops at N parts: none is stopped"
    assert stats.rejects == stats.failed + stats.not_inspected  # fail-safe: not inspected counts as a reject
    assert stats.yield_pct == pytest.approx(100 * stats.passed / stats.acquired)


def test_stop_drains_every_inspected_frame_into_the_log(inspector, tmp_path):
    db = tmp_path / "log.db"
    line = Line(ReplaySource(SAMPLES, loop=True, pattern="*.jpg", fps=20.0), inspector, RejectLog(db))
    line.start()
    deadline = time.monotonic() + 60
    while line.stats().inspected < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    line.stop()
    assert line.join(timeout=60), "the line must end after stop()"
    stats = line.stats()
    assert stats.inspected >= 3
    assert sum(r[2] != "NOT_INSPECTED" for r in rows(db)) == stats.inspected, \
        "every inspected frame must be recorded before the log closes"
    assert len(rows(db)) == stats.acquired, "and every acquired one has its row"
    files = {r[1] for r in rows(db)}
    assert files <= {p.name for p in SAMPLES.glob("*.jpg")}


def _tiny_parts(folder: Path) -> Path:
    """Four good 64 px parts, one 1x1 image, an empty file and a corrupt one (in natural order)."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in (1, 2, 4, 7):
        cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(60, 200, (64, 64), dtype=np.uint8))
    cv2.imwrite(str(folder / "p3.png"), np.full((1, 1), 128, np.uint8))
    (folder / "p5.png").write_bytes(b"")
    (folder / "p6.png").write_bytes(b"\x89PNG not really")
    return folder


def test_unreadable_and_too_small_parts_get_not_inspected_rows_with_the_reason(inspector, tmp_path):
    db = tmp_path / "guard.db"
    line = Line(ReplaySource(_tiny_parts(tmp_path / "parts")), inspector, RejectLog(db, station_id="st", run_id="r1"),
                frames_policy=QueuePolicy.BLOCK)
    stats = line.run()
    logged = rows(db)
    # (rows come in the order they were settled: a file that cannot be read is settled before earlier frames are)
    assert sorted((r[1], r[2]) for r in logged if r[2] == "NOT_INSPECTED") == [
        ("p3.png", "NOT_INSPECTED"), ("p5.png", "NOT_INSPECTED"), ("p6.png", "NOT_INSPECTED")]
    with sqlite3.connect(db) as con:
        by_file = {f: (reason, detail, rejected, station, run) for f, reason, detail, rejected, station, run in
                   con.execute("SELECT file, reason, detail, rejected, station_id, run_id FROM inspections")}
    assert by_file["p3.png"][:1] == ("too_small",) and "1x1 px" in by_file["p3.png"][1]
    assert by_file["p5.png"][:2] == ("unreadable", "empty file") and by_file["p6.png"][0] == "unreadable"
    assert {v[2] for k, v in by_file.items() if k in ("p3.png", "p5.png", "p6.png")} == {1}
    assert {(v[3], v[4]) for v in by_file.values()} == {("st", "r1")}
    assert stats.acquired == 7 == len(logged) and stats.inspected == 4 and stats.not_inspected == 3
    assert sorted(r[0] for r in logged) == list(range(1, 8))
    assert dict(stats.not_inspected_reasons) == {"too_small": 1, "unreadable": 2}


def test_stop_with_no_drain_time_gives_queued_frames_stopped_rows(inspector, tmp_path):
    db = tmp_path / "stop.db"
    # a full-speed replay with back-pressure: the frames queue is always full while the engine works
    line = Line(ReplaySource(SAMPLES, loop=True, pattern="*.jpg"), inspector, RejectLog(db),
                frames_queue=4, frames_policy=QueuePolicy.BLOCK, drain_timeout_s=0.0)
    line.start()
    deadline = time.monotonic() + 60
    while line.stats().inspected < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    line.stop("test")
    assert line.join(timeout=60)
    stats = line.stats()
    logged = rows(db)
    assert len(logged) == stats.acquired == stats.passed + stats.failed + stats.not_inspected
    assert stats.not_inspected_reasons.get("stopped", 0) >= 3, stats
    with sqlite3.connect(db) as con:
        details = [d for (d,) in con.execute("SELECT detail FROM inspections WHERE reason = 'stopped'")]
    assert all("drain timeout" in d or "the line stopped" in d for d in details), details


def test_a_ledger_locked_beyond_its_timeout_stops_the_line_and_names_what_it_refused(inspector, tmp_path):
    db = tmp_path / "locked.db"
    line = Line(ReplaySource(SAMPLES, loop=True, pattern="*.jpg", fps=20.0), inspector,
                RejectLog(db, busy_timeout_s=0.3), frames_queue=4)
    line.start()
    deadline = time.monotonic() + 60
    while line.stats().recorded < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another program takes the write lock and keeps it
    try:
        assert line.join(timeout=60), "a ledger that cannot be written must stop the line"
    finally:
        other.execute("ROLLBACK")
        other.close()
    stats = line.stats()
    assert stats.state.value == "error" and stats.refused >= 1
    assert "locked" in stats.failure and "refused" in stats.failure and "frame ids" in stats.failure
    assert stats.recorded + stats.refused == stats.acquired + stats.gaps
    assert len(rows(db)) == stats.recorded
    assert stats.acquired <= stats.recorded + stats.refused  # nothing acquired slipped through uncounted


def test_an_implausible_black_frame_is_not_inspected_and_its_row_says_why(inspector, tmp_path):
    """Issue 26: a frame the station cannot judge never passes (it was a PASS row with the warning)."""
    folder = tmp_path / "black"
    folder.mkdir()
    cv2.imwrite(str(folder / "cap.png"), np.zeros((64, 64), np.uint8))
    db = tmp_path / "black.db"
    stats = Line(ReplaySource(folder), inspector, RejectLog(db), frames_policy=QueuePolicy.BLOCK).run()
    with sqlite3.connect(db) as con:
        verdict, reason, detail, rejected = con.execute("SELECT verdict, reason, detail, rejected FROM inspections"
                                                        ).fetchone()
    assert stats.warnings == 1 and detail.startswith("implausible frame: all black")
    assert (verdict, reason, rejected) == ("NOT_INSPECTED", "implausible", 1) and stats.passed == 0


def test_the_bounded_queue_hands_dropped_items_to_its_callback():
    dropped: list[int] = []
    q = BoundedQueue(2, QueuePolicy.DROP_OLDEST, on_drop=dropped.append)
    for i in range(5):
        q.put(i)
    assert dropped == [0, 1, 2] and q.dropped == 3


def test_a_frame_from_the_camera_that_came_short_is_not_inspected(inspector, tmp_path):
    from station.frameguard import FrameGuard

    short = Frame(np.zeros((64, 64), np.uint8), 4, time.monotonic_ns(), "genicam:x", {"incomplete": True})
    refused = FrameGuard().refuse(short)
    assert refused.reason.value == "incomplete" and refused.frame_id == 4
    big = Frame(np.zeros((40, 20000), np.uint8), 5, 0, "s")
    assert FrameGuard().refuse(big).reason.value == "too_large"
    assert FrameGuard().refuse(Frame(np.zeros((64, 64), np.uint8), 6, 0, "s")) is None


@pytest.mark.camera
@pytest.mark.slow
@needs_viky
def test_a_camera_outage_is_one_gap_row_and_frame_ids_keep_counting(inspector, tmp_path):
    """viky.cti through harvesters: pull the cable (close the device) mid-run; the ledger holds every frame the
    camera delivered plus one outage row, and ids 1..N are covered exactly once."""
    db = tmp_path / "cam.db"
    source = GenICamSource(frame_rate=20, width=128, height=128, timeout_s=0.3)
    line = Line(source, inspector, RejectLog(db), frames_queue=2)
    line.start()
    try:
        deadline = time.monotonic() + 60
        while line.stats().recorded < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        source._simulate_disconnect("device")
        while (source.health().reconnects < 1 or line.stats().recorded < 20) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        line.stop("test")
        assert line.join(timeout=60)
    stats = line.stats()
    assert source.health().reconnects == 1 and stats.gaps >= 1
    assert len(rows(db)) == stats.acquired + stats.gaps == stats.recorded
    with sqlite3.connect(db) as con:
        parts = [i for (i,) in con.execute("SELECT frame_id FROM inspections WHERE verdict != 'GAP'")]
        gaps = con.execute("SELECT reason, frame_id, last_frame_id, frame_count, detail FROM inspections "
                           "WHERE verdict = 'GAP'").fetchall()
    assert [g[0] for g in gaps].count("outage") == 1
    covered = parts + [i for _, first, last, _, _ in gaps for i in range(first, last + 1)]
    assert sorted(covered) == list(range(1, max(covered) + 1)), "every id once: a part's row or a gap's range"
    assert sum(g[3] for g in gaps) == stats.lost


@pytest.mark.slow
def test_free_space_falling_below_the_threshold_stops_the_line_cleanly(inspector, tmp_path):
    """A real file fills the disk past the threshold while the line runs: it stops in the error state, but cleanly:
    every acquired frame is recorded (the threshold leaves room for that), nothing is refused."""
    import os

    from station.rejectlog import free_mb

    free = free_mb(tmp_path)
    if free < 1000:
        pytest.skip(f"needs 1 GB free at {tmp_path}, has {free:.0f} MB")
    db = tmp_path / "space.db"
    line = Line(ReplaySource(SAMPLES, loop=True, pattern="*.jpg", fps=10.0), inspector, RejectLog(db),
                min_free_mb=free - 150)
    filler = tmp_path / "filler.bin"
    line.start()
    try:
        deadline = time.monotonic() + 60
        while line.stats().recorded < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            os.posix_fallocate(fd, 0, 400 * 10**6)
        finally:
            os.close(fd)
        assert line.join(timeout=60), "the line must stop when free space falls below the threshold"
    finally:
        line.stop("test")
        line.join(timeout=60)
        filler.unlink(missing_ok=True)
    stats = line.stats()
    assert stats.state.value == "error" and "min_free_mb" in stats.failure and stats.refused == 0
    assert len(rows(db)) == stats.acquired == stats.recorded


def test_stop_with_drain_time_inspects_the_frames_still_queued(inspector, tmp_path):
    """Issue 26: ``Line.stop`` ignoring its drain timeout passed every test. With frames queued at the stop and
    time to drain, each of them is inspected: no row says the drain timeout ran out."""
    db = tmp_path / "drain.db"
    line = Line(ReplaySource(SAMPLES, loop=True, pattern="*.jpg"), inspector, RejectLog(db),
                frames_queue=4, frames_policy=QueuePolicy.BLOCK, drain_timeout_s=120.0)
    line.start()
    deadline = time.monotonic() + 60
    while line.stats().inspected < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    line.stop("test")
    assert line.join(timeout=120)
    stats = line.stats()
    assert len(rows(db)) == stats.acquired == stats.passed + stats.failed + stats.not_inspected
    with sqlite3.connect(db) as con:
        ran_out = con.execute("SELECT COUNT(*) FROM inspections WHERE detail LIKE '%drain timeout%'").fetchone()[0]
    assert ran_out == 0 and stats.inspected >= 4, stats  # the first, and the queue of 4 drained


def test_the_first_stop_signal_drains_with_the_lines_timeout_and_a_second_cuts_it_short():
    """Issue 26: the first SIGTERM/SIGINT/SIGHUP stopping with a drain timeout of 0 passed every test."""
    import signal

    from station.app import StopSignals

    calls = []
    signals = StopSignals(lambda reason, **kw: calls.append((reason, kw.get("drain_timeout_s"))))
    signals.handle(signal.SIGTERM)
    signals.handle(signal.SIGHUP)
    assert calls == [("SIGTERM received", None), ("SIGHUP received again", 0.0)]
    assert signals.received == signal.SIGTERM and signals.count == 2
