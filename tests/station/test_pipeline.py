"""The line: three threads, bounded queues, exact frame counts, drops counted, clean drain on stop."""
from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest

from engines.backends.base import load_engine
from inspection_core.records import Frame, Verdict
from inspection_core.verdict import DecisionRules
from inspection.inspector import Inspector
from station.pipeline import BoundedQueue, Line
from station.recipe import QueuePolicy
from station.rejectlog import RejectLog
from station.sources import ReplaySource

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
    assert set(result.timings) >= {"preprocess", "infer", "stitch", "verdict", "total"}


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


def test_a_slow_engine_with_drop_oldest_drops_and_counts_frames(inspector, tmp_path):
    db = tmp_path / "log.db"
    source = ReplaySource(SAMPLES, loop=True, pattern="*.jpg", fps=200.0)
    line = Line(source, inspector, RejectLog(db), frames_queue=2, frames_policy=QueuePolicy.DROP_OLDEST, max_frames=3)
    stats = line.run()
    assert stats.inspected == 3 and len(rows(db)) == 3
    assert stats.dropped > 0, "200 frames/s into an engine far slower than that must drop frames"
    assert stats.acquired >= stats.inspected + stats.dropped - 2


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
    assert len(rows(db)) == stats.inspected, "every inspected frame must be recorded before the log closes"
    files = {r[1] for r in rows(db)}
    assert files <= {p.name for p in SAMPLES.glob("*.jpg")}
