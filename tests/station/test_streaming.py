"""Streaming inspection: a part inspected row by row while it arrives gives exactly the whole-image result (masks
to the bit, defects, GR labels and patch grid, verdict), incomplete parts fail explicitly, and `station run` on a
line-scan recipe records parts into a real SQLite reject log."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engines.backends.base import load_engine
from engines.data.synthetic_screen import ScreenSpec, make_screen
from inspection_core.records import Frame, Verdict
from inspection_core.verdict import DecisionRules
from station.classify import PatchClassifier
from inspection.inspector import Inspector
from station.strips import PartMode
from station.pipeline import Line
from station.recipe import QueuePolicy
from station.rejectlog import RejectLog
from station.sources.linescan import LineScanReplay, LineScanSource
from inspection.inspector import StreamingInspector
from inspection_core.verdict import INCOMPLETE_LABEL
from tests.conftest import save_tiny_gr

CLASSES = ["bubble", "pinhole", "scratch", "tin_ash"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_gr(tmp_path_factory) -> Path:
    """An untrained tiny GR with the screen classes (64 px input) and a reference bank."""
    return save_tiny_gr(tmp_path_factory.mktemp("tiny-gr"), CLASSES)


@pytest.fixture(scope="module")
def engine(untrained_bffn):
    return load_engine(untrained_bffn, "torch", threads=1)


def screen(lines: int, width: int, seed: int = 1) -> np.ndarray:
    return make_screen(seed, ScreenSpec(size=(max(lines, 128), max(width, 128)))).image[:lines, :width]


def classifier(tiny_gr, mode: str = "batch", patch: int = 96, overlap: int = 16) -> PatchClassifier:
    return PatchClassifier(str(tiny_gr), patch=patch, overlap=overlap, mode=mode)


def whole(inspector: Inspector, img: np.ndarray):
    return inspector.inspect(Frame(img, 1, time.monotonic_ns(), "whole"))


def streamed(streaming: StreamingInspector, img: np.ndarray, block_lines: int, **part_settings):
    """Stream ``img`` through a replay and an assembler into ``streaming``; the results, one per part."""
    if part_settings.get("part_mode") == "trigger":
        replay = LineScanReplay(img, block_lines=block_lines, gap_lines=7)
    else:
        replay = LineScanReplay(img, block_lines=block_lines)
        part_settings.setdefault("part_lines", img.shape[0])
    source = LineScanSource(replay, listener=streaming, **part_settings)
    with source:
        return [streaming.inspect(frame) for frame in source]


def assert_same(a, b, exact_scores: bool = True) -> None:
    if exact_scores:
        assert np.array_equal(a.mask, b.mask), f"masks differ by up to {np.abs(a.mask - b.mask).max()}"
        assert a.patches == b.patches
    else:
        np.testing.assert_array_equal(a.mask, b.mask)
        assert len(a.patches) == len(b.patches)
        for p, q in zip(a.patches, b.patches):
            assert (p["row"], p["col"], p["y"], p["x"]) == (q["row"], q["col"], q["y"], q["x"])
            np.testing.assert_allclose(list(p["scores"].values()), list(q["scores"].values()), atol=2e-4)
    assert a.defects == b.defects and a.labels == b.labels and a.verdict == b.verdict


# ------------------------------------------------------------------------------- streamed equals whole-image
@pytest.mark.parametrize("lines, width, block_lines, mode", [
    (420, 300, 64, PartMode.FIXED),  # the last tile row is shifted back to the border
    (420, 300, 50, PartMode.TRIGGER),  # the height is known only when the signal falls
    (100, 140, 32, PartMode.FIXED),  # shorter than one tile: padded, cut at the end
])
def test_streamed_segmentation_and_gr_equal_whole_image_inspection(engine, tiny_gr, lines, width, block_lines, mode):
    img = screen(lines, width)
    inspector = Inspector(engine, overlap=32, batch=5, rules=DecisionRules(score_threshold=0.5, min_area_px=20),
                          classifier=classifier(tiny_gr))
    reference = whole(inspector, img)
    streaming = StreamingInspector.from_inspector(inspector)
    (result,) = streamed(streaming, img, block_lines, part_mode=mode)
    assert_same(result, reference)
    assert result.frame.image.shape == img.shape and result.engine_id == reference.engine_id
    report = streaming.reports[-1]
    assert report.streamed and {r.stage for r in report.rows} == {"segment", "classify"}


def test_the_flat_field_is_applied_per_block_exactly_as_on_the_whole_part(engine, tiny_gr, tmp_path):
    from calibration.flatfield import FlatField
    from calibration.line import LineCalibration
    from calibration.profile import CameraGeometry, Profile

    img = screen(300, 200, seed=8)
    rng = np.random.default_rng(0)
    flatfield = FlatField(rng.uniform(0, 4, 200).astype(np.float32), rng.uniform(0.9, 1.3, 200).astype(np.float32),
                          line_scan=True)
    profile = Profile("line-1", 1, "2026-11-22T00:00:00+00:00", CameraGeometry(200, 1, "Mono8", line_scan=True),
                      {}, {}, tmp_path)
    calibration = LineCalibration(profile, flatfield=flatfield)
    inspector = Inspector(engine, overlap=32, batch=6, rules=DecisionRules(score_threshold=0.5, min_area_px=20),
                          classifier=classifier(tiny_gr), calibration=calibration)
    reference = whole(inspector, img)
    (result,) = streamed(StreamingInspector.from_inspector(inspector), img, 50)  # 50: not a multiple of the dither
    assert_same(result, reference)
    assert result.timings["calibrate"] > 0 and np.array_equal(result.frame.image, img)
    narrow = screen(300, 160, seed=8)
    with pytest.raises(Exception, match="200 px per line"):
        streamed(StreamingInspector.from_inspector(inspector), narrow, 50)


def test_bank_mode_rows_are_scored_alone_and_agree(engine, tiny_gr):
    img = screen(300, 200, seed=2)
    inspector = Inspector(engine, overlap=0, batch=32, rules=DecisionRules(), classifier=classifier(tiny_gr, "bank"))
    (result,) = streamed(StreamingInspector.from_inspector(inspector), img, 64)
    assert_same(result, whole(inspector, img), exact_scores=False)


def test_classifier_only_streaming_gives_the_classifier_labels(tiny_gr):
    img = screen(400, 300, seed=3)
    gr = classifier(tiny_gr, patch=128, overlap=0)
    gr.threshold = 0.4
    streaming = StreamingInspector(classifier=gr)
    (result,) = streamed(streaming, img, 100)
    labels, patches = gr.classify(img)
    assert result.labels == labels and list(result.patches) == patches and result.defects == ()
    assert result.verdict is (Verdict.FAIL if labels else Verdict.PASS)
    assert not result.mask.any() and result.engine_id.startswith("gr-")


def test_tile_rows_are_scored_while_the_part_is_still_arriving(tiny_gr):
    img = screen(1024, 256, seed=4)
    gr = classifier(tiny_gr, mode="bank", patch=128, overlap=0)
    gr.classify(img[:128])  # warm up: the first call to a network is slow
    streaming = StreamingInspector(classifier=gr)
    replay = LineScanReplay(img, block_lines=64, line_rate_hz=1000)  # the part takes 1 s to arrive
    source = LineScanSource(replay, part_lines=1024, line_rate_hz=1000, listener=streaming)
    with source:
        (frame,) = list(source)
        result = streaming.inspect(frame)
    report = streaming.reports[-1]
    assert len(report.rows) == 8 and sum(c.tiles for c in report.calls) == 16
    assert sum(r.done_ns < frame.timestamp_ns for r in report.rows) >= 3, "rows are cut before the last line"
    assert sum(c.done_ns < frame.timestamp_ns for c in report.calls) >= 2, "... and scored"
    assert result.latency_ms == pytest.approx((report.verdict_ns - frame.timestamp_ns) / 1e6)
    assert result.timings["finish"] > 0 and "backlog" in result.timings


def test_a_part_that_could_not_be_streamed_is_inspected_whole(tiny_gr):
    from station.strips import StripAssembler

    img = screen(256, 128, seed=5)
    streaming = StreamingInspector(classifier=classifier(tiny_gr, patch=128, overlap=0), max_parts_in_flight=1)
    assembler = StripAssembler(part_lines=256)  # the test makes the listener calls itself
    parts = [p for block in LineScanReplay(img, block_lines=64, passes=2) for p in assembler.feed(block)]
    streaming.part_started(1, 128, 256)
    streaming.part_started(2, 128, 256)  # part 1 is still in flight
    assert streaming.not_streamed == 1
    streaming.lines_arrived(1, parts[0].image)
    streaming.part_ended(parts[0])
    results = [streaming.inspect(p.to_frame("test")) for p in parts]
    assert [r.frame.frame_id for r in results] == [1, 2]
    assert [report.streamed for report in streaming.reports] == [True, False]
    assert results[0].labels == results[1].labels and results[0].patches == results[1].patches


# ------------------------------------------------------------------------------------------ incomplete parts
def test_an_incomplete_part_fails_with_its_missing_rows_as_defects(engine, tiny_gr):
    img = screen(256, 200, seed=6)
    rules = DecisionRules(score_threshold=1.0, min_area_px=10**6)  # nothing else can fail it
    streaming = StreamingInspector(engine, overlap=0, batch=8, rules=rules)
    source = LineScanSource(LineScanReplay(img, block_lines=64, drop_blocks={1}), part_lines=256, listener=streaming)
    with source:
        (result,) = [streaming.inspect(f) for f in source]
    assert result.verdict is Verdict.FAIL and result.frame.meta["gaps"] == [[64, 128]]
    (defect,) = result.defects
    assert defect.label == INCOMPLETE_LABEL and defect.bbox == (0, 64, 200, 64) and defect.area_px == 64 * 200
    assert not result.mask[64:128].any() and result.mask[:64].any()


def test_line_records_streamed_parts_an_incomplete_one_and_the_gaps_in_sqlite(tiny_gr, tmp_path):
    img = screen(256, 128, seed=7)
    gr = classifier(tiny_gr, patch=128, overlap=0)
    gr.threshold = 1.0  # no label: only the missing block can fail a part
    streaming = StreamingInspector(classifier=gr)
    # block 5 = part 2's rows 64..127; blocks 8..11 = all of part 3
    replay = LineScanReplay(img, block_lines=64, passes=4, drop_blocks={5, 8, 9, 10, 11})
    source = LineScanSource(replay, part_lines=256, listener=streaming)
    db = tmp_path / "scan.db"
    stats = Line(source, streaming, RejectLog(db), frames_policy=QueuePolicy.BLOCK).run()
    assert (stats.inspected, stats.passed, stats.failed, stats.errors) == (3, 2, 1, 0)
    assert stats.acquired == stats.passed + stats.failed + stats.not_inspected == 3
    assert (stats.gaps, stats.lost) == (2, 1), "two runs of missing lines, one part lost entirely"
    assert stats.source.lost_frames == 5 and stats.source.incomplete_frames == 1
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT frame_id, verdict, defects_json FROM inspections WHERE verdict != 'GAP' "
                           "ORDER BY frame_id").fetchall()
        gaps = con.execute("SELECT frame_id, last_frame_id, frame_count, reason, detail, source, rejected "
                           "FROM inspections WHERE verdict = 'GAP' ORDER BY frame_id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(1, "PASS"), (2, "FAIL"), (4, "PASS")]
    (missing,) = json.loads(rows[1][2])
    assert missing["label"] == INCOMPLETE_LABEL and missing["bbox"] == [0, 64, 128, 64]
    (cut, lost) = gaps
    assert cut[:4] == (2, 1, 0, "lost_ids") and "part 2 keeps them as zero rows" in cut[4]
    assert lost[:4] == (3, 3, 1, "lost_ids") and "part 3 lost entirely" in lost[4]
    assert all(g[5] == source.name and g[6] is None for g in gaps)
    ids = [r[0] for r in rows] + [i for g in gaps for i in range(g[0], g[1] + 1)]
    assert sorted(ids) == [1, 2, 3, 4], "every part id is in the ledger exactly once"


def test_a_part_still_arriving_at_max_frames_gets_a_stopped_row(tiny_gr, tmp_path):
    gr = classifier(tiny_gr, patch=128, overlap=0)
    streaming = StreamingInspector(classifier=gr)
    # blocks of 100 lines, parts of 256: block 3 ends part 1 and brings part 2's first 44 lines
    source = LineScanSource(LineScanReplay(screen(512, 128, seed=9), block_lines=100), part_lines=256,
                            listener=streaming)
    db = tmp_path / "stop.db"
    stats = Line(source, streaming, RejectLog(db), frames_policy=QueuePolicy.BLOCK, max_frames=1).run()
    assert (stats.acquired, stats.inspected, stats.not_inspected) == (2, 1, 1)
    assert dict(stats.not_inspected_reasons) == {"stopped": 1}
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT frame_id, verdict, reason, detail, rejected FROM inspections ORDER BY frame_id"
                           ).fetchall()
    assert [r[:3] for r in rows[1:]] == [(2, "NOT_INSPECTED", "stopped")] and rows[0][1] in ("PASS", "FAIL")
    assert "while part 2 was arriving (44 of" in rows[1][3] and rows[1][4] == 1


# --------------------------------------------------------------------------------------- station run, end to end
def test_station_run_on_a_line_scan_recipe(untrained_bffn, tiny_gr, tmp_path):
    recipe = tmp_path / "scan.toml"
    recipe.write_text(f"""
[product]
name = "screen"

[source]
kind = "linescan-replay"
screen_seed = 3
screen_size = [256, 384]
block_lines = 64
line_rate_hz = 50000.0
part_mode = "trigger"
gap_lines = 32

[tiling]
tile = 128
overlap = 32

[engine]
weights = "{untrained_bffn}"
backend = "torch"
threads = 1

[queues]
frames = 2
frames_policy = "block"

[classifier]
weights = "does-not-exist"
patch = 128
""")
    db = tmp_path / "run.db"
    done = subprocess.run([sys.executable, "-m", "station.cli", "run", "--recipe", str(recipe), "--headless",
                           "--max-frames", "2", "--db", str(db), "--json", "--classifier-weights", str(tiny_gr),
                           "--block-lines", "100"],
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                            "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["inspected"] == 2 and summary["errors"] == 0 and summary["lost_frames"] == 0
    assert summary["source"].startswith("linescan-replay:synthetic screen 3")
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT frame_id, verdict, labels_json FROM inspections ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [1, 2]
    for _, _, labels in rows:
        assert len(json.loads(labels)["patches"]) == 3 * 2  # 128 px patches of a 256 x 384 screen
    missing = subprocess.run([sys.executable, "-m", "station.cli", "run", "--recipe", str(recipe), "--headless",
                              "--max-frames", "1", "--db", str(db)], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "does-not-exist" in missing.stderr and "Traceback" not in missing.stderr
