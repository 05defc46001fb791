"""Issue 26, fail-safe at the edges: frames the station cannot judge never pass, one large frame cannot stall the
line or a stop, and ``--max-frames N`` means N parts. Real images, real ledgers, a real ``station run`` process
and a real SIGTERM."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.backends.base import load_engine
from inspection.inspector import Inspector
from inspection_core.records import Frame
from inspection_core.verdict import DecisionRules
from station.app import max_frames_note
from station.cli import SAMPLES
from station.errors import RecipeError
from station.frameguard import FrameGuard, depth_hint, implausible, to_8bit
from station.pipeline import Line
from station.recipe import ImplausiblePolicy, QueuePolicy, load_recipe, shipped_recipe_path
from station.rejectlog import RejectLog
from station.sources import GenICamSource, ReplaySource
from tests.station.test_genicam_source import needs_viky

STATION = [sys.executable, "-m", "station.cli"]


class CountingEngine:
    """An engine that counts its calls (how many batches a frame cost), delegating everything else."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.batches = 0

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        self.batches += 1
        return self._engine.infer(tiles)

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


@pytest.fixture(scope="module")
def onnx_engine(untrained_bffn):
    return load_engine(untrained_bffn, "onnxruntime", threads=2)


@pytest.fixture
def engine(onnx_engine) -> CountingEngine:
    return CountingEngine(onnx_engine)


@pytest.fixture
def inspector(engine) -> Inspector:
    return Inspector(engine, overlap=32, batch=16, rules=DecisionRules(score_threshold=0.5, min_area_px=30))


def ledger(db: Path) -> list[dict]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT frame_id, file, verdict, reason, detail, rejected, defects_json "
                                             "FROM inspections ORDER BY frame_id")]


def run_line(folder: Path, inspector: Inspector, db: Path, guard: FrameGuard | None = None, **replay) -> Line:
    line = Line(ReplaySource(folder, **replay), inspector, RejectLog(db), frames_policy=QueuePolicy.BLOCK,
                guard=guard)
    line.run()
    return line


# ------------------------------------------------------------------------------ 1. implausible frames never pass
@pytest.mark.shared_data
def test_a_12_bit_crack_read_as_16_bit_is_not_inspected_and_the_row_says_which_bit_depth(
        magnetic_tile: Path, inspector: Inspector, engine: CountingEngine, tmp_path: Path) -> None:
    """The issue's frame: a real crack stored as 12-bit data in a 16-bit PNG, read at the default bit_depth = 16,
    is near black. It was logged PASS; now it is NOT_INSPECTED (a reject), and its row names the fix."""
    crack = sorted((magnetic_tile / "MT_Crack").glob("*.jpg"))[0]
    folder = tmp_path / "deep"
    folder.mkdir()
    deep = cv2.imread(str(crack), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 16  # 12 significant bits
    assert int(deep.max()) <= 4095 and cv2.imwrite(str(folder / "crack.png"), deep)
    assert cv2.imread(str(folder / "crack.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    line = run_line(folder, inspector, tmp_path / "deep.db")
    (row,) = ledger(tmp_path / "deep.db")
    assert (row["verdict"], row["reason"], row["rejected"]) == ("NOT_INSPECTED", "implausible", 1), row
    assert row["detail"].startswith("implausible frame: all black (brightest pixel 8)")
    assert "values never exceed 4095: 12-bit data read as 16-bit; set [frames] bit_depth = 12" in row["detail"]
    assert engine.batches == 0, "a frame the station cannot judge is not inferred"
    stats = line.stats()
    assert stats.passed == 0 and stats.rejects == 1 and stats.warnings == 1
    assert dict(stats.not_inspected_reasons) == {"implausible": 1}

    # read at its real depth, the same file is the crack again, and it is judged
    run_line(folder, inspector, tmp_path / "right.db", bit_depth=12)
    (row,) = ledger(tmp_path / "right.db")
    assert row["verdict"] in ("PASS", "FAIL") and row["reason"] is None and row["detail"] is None


def test_deep_data_reveals_its_bit_depth_even_when_it_is_not_all_black() -> None:
    bright12 = np.full((16, 16), 4095, np.uint16)  # a bright 12-bit frame read at 16 bits: 8-bit max 15, not black
    assert implausible(to_8bit(bright12, 16), depth_hint(4095, 16)) == (
        "implausible frame: dark (brightest pixel 15); values never exceed 4095: 12-bit data read as 16-bit; set "
        "[frames] bit_depth = 12")
    assert depth_hint(200, 12) == "values never exceed 255: 8-bit data read as 12-bit; set [frames] bit_depth = 8"
    assert depth_hint(40000, 16) is None and depth_hint(4095, 12) is None and depth_hint(2047, 14) is None
    assert implausible(np.full((8, 8), 120, np.uint8)) is None  # an ordinary 8-bit frame


@pytest.mark.parametrize(("policy", "verdict", "reason", "rejected"), [
    ("not_inspected", "NOT_INSPECTED", "implausible", 1),  # the fail-safe default
    ("fail", "FAIL", None, 1),
    ("warn", None, None, None),  # inspected as before: the network's verdict, the warning in the row
])
def test_a_saturated_frame_never_passes_unless_the_recipe_says_warn(
        policy: str, verdict: str | None, reason: str | None, rejected: int | None, inspector: Inspector,
        engine: CountingEngine, tmp_path: Path) -> None:
    """The simulated camera's frames 1-3 were 100 % at 255 and logged PASS."""
    folder = tmp_path / "white"
    folder.mkdir()
    cv2.imwrite(str(folder / "white.png"), np.full((96, 160), 255, np.uint8))
    db = tmp_path / f"{policy}.db"
    guard = FrameGuard(on_implausible=ImplausiblePolicy(policy))
    stats = run_line(folder, inspector, db, guard).stats()
    (row,) = ledger(db)
    assert row["detail"].startswith("implausible frame: saturated (100% of the pixels at 255)")
    assert stats.warnings == 1
    if verdict is None:
        assert row["verdict"] in ("PASS", "FAIL") and engine.batches == 1
        return
    assert (row["verdict"], row["reason"], row["rejected"]) == (verdict, reason, rejected)
    assert engine.batches == 0, "a frame the station cannot judge is not inferred"
    if verdict == "FAIL":
        (defect,) = json.loads(row["defects_json"])
        assert defect["label"] == "implausible" and defect["bbox"] == [0, 0, 160, 96]
        assert stats.failed == 1 and stats.passed == 0


def test_the_recipe_says_what_becomes_of_implausible_frames(tmp_path: Path) -> None:
    text = shipped_recipe_path("magnetic_tile").read_text()
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text(text)
    assert load_recipe(recipe_file).frames.implausible is ImplausiblePolicy.NOT_INSPECTED  # the fail-safe default
    recipe_file.write_text(text + '\n[frames]\nimplausible = "fail"\nmax_inspect_s = 5\ntile_ms = 20\n')
    frames = load_recipe(recipe_file).frames
    assert (frames.implausible, frames.max_inspect_s, frames.tile_ms) == (ImplausiblePolicy.FAIL, 5.0, 20.0)
    guard = FrameGuard.from_config(frames)
    assert (guard.on_implausible, guard.max_inspect_s, guard.tile_ms) == (ImplausiblePolicy.FAIL, 5.0, 20.0)
    recipe_file.write_text(text + '\n[frames]\nimplausible = "pass"\n')
    with pytest.raises(RecipeError, match=r"\[frames\] implausible: 'pass' is not allowed; use one of "
                                          r"'not_inspected', 'fail', 'warn'"):
        load_recipe(recipe_file)
    recipe_file.write_text(text + '\n[frames]\nimplausibel = "warn"\n')
    with pytest.raises(RecipeError, match=r"unknown key; did you mean 'implausible'"):
        load_recipe(recipe_file)


@pytest.mark.camera
@needs_viky
def test_the_simulated_cameras_saturated_frames_are_not_inspected(inspector: Inspector, tmp_path: Path) -> None:
    """viky.cti through harvesters: its Mono8 frames are all but white; none may pass."""
    db = tmp_path / "viky.db"
    line = Line(GenICamSource(frame_rate=20, width=128, height=128, timeout_s=0.5), inspector, RejectLog(db),
                max_frames=3)
    stats = line.run()
    rows = ledger(db)
    assert len(rows) == stats.acquired == 3
    assert {(r["verdict"], r["reason"], r["rejected"]) for r in rows} <= {("NOT_INSPECTED", "implausible", 1),
                                                                          ("NOT_INSPECTED", "dropped", 1)}
    assert stats.passed == 0 and any("saturated" in (r["detail"] or "") for r in rows)


# ----------------------------------------------------------------- 2. one large frame cannot stall the line
def _parts(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    """Real magnetic-tile texture at the given (height, width), one PNG per name (played in name order)."""
    folder.mkdir()
    texture = cv2.imread(str(sorted(SAMPLES.glob("free_*.jpg"))[0]), cv2.IMREAD_GRAYSCALE)
    for name, (h, w) in sizes.items():
        reps = (-(-h // texture.shape[0]), -(-w // texture.shape[1]))
        cv2.imwrite(str(folder / name), np.tile(texture, reps)[:h, :w])
    return folder


def test_a_frame_over_the_time_budget_is_refused_before_inference_with_what_to_change(
        inspector: Inspector, engine: CountingEngine, tmp_path: Path) -> None:
    folder = _parts(tmp_path / "parts", {"a_small.png": (200, 300), "b_big.png": (1000, 1000)})
    db = tmp_path / "slow.db"
    guard = FrameGuard(max_inspect_s=2.0, tile_ms=100.0)  # 121 tiles x 100 ms = 12 s > 2 s; 6 tiles = 0.6 s
    stats = run_line(folder, inspector, db, guard).stats()
    small, big = ledger(db)
    assert small["verdict"] in ("PASS", "FAIL")
    assert (big["verdict"], big["reason"], big["rejected"]) == ("NOT_INSPECTED", "too_slow", 1)
    assert "1000x1000 px is 121 tiles at 100.0 ms each ([frames] tile_ms)" in big["detail"]
    assert "max_inspect_s = 2 s" in big["detail"] and "max_width/max_height" in big["detail"]
    assert engine.batches == 1, "the big frame must be refused before any inference"
    assert dict(stats.not_inspected_reasons) == {"too_slow": 1}


def test_the_time_per_tile_is_measured_on_the_line(inspector: Inspector, engine: CountingEngine,
                                                   tmp_path: Path) -> None:
    """No tile_ms in the recipe: a big first frame is refused after its first batch (the time per tile measured
    on it), a later one before any inference (the time per tile measured on the frames before)."""
    folder = _parts(tmp_path / "parts", {"a_big.png": (1500, 1500), "b_small.png": (200, 300),
                                         "c_big.png": (1500, 1500)})
    db = tmp_path / "measured.db"
    stats = run_line(folder, inspector, db, FrameGuard(max_inspect_s=0.5)).stats()
    first, small, later = ledger(db)
    assert (first["reason"], later["reason"]) == ("too_slow", "too_slow"), (first, later)
    assert "measured on its first batch" in first["detail"] and "measured on this line" in later["detail"]
    assert "256 tiles" in first["detail"] and small["verdict"] in ("PASS", "FAIL")
    assert engine.batches == 1 + 1, "one batch of the first big frame, one of the small frame, none of the last"
    assert stats.inspected == 1


def test_the_inspector_can_be_cancelled_between_batches(inspector: Inspector, engine: CountingEngine) -> None:
    seen: list[tuple[int, int]] = []

    class Stop(Exception):
        pass

    def checkpoint(done: int, total: int) -> None:
        seen.append((done, total))
        if done >= 32:
            raise Stop

    image = np.random.default_rng(0).integers(40, 200, (600, 600), dtype=np.uint8)  # 36 tiles, 3 batches of 16
    with pytest.raises(Stop):
        inspector.inspect(Frame(image, 1, time.monotonic_ns(), "t"), checkpoint=checkpoint)
    assert seen == [(0, 36), (16, 36), (32, 36)] and engine.batches == 2
    assert inspector.tile_count(image.shape) == 36


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM inspections").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.slow
def test_sigterm_while_a_big_frame_is_inspected_exits_within_the_drain_timeout(tmp_path: Path) -> None:
    """The issue's stop: SIGTERM during the inspection of a frame that takes many times the drain timeout. The
    inference is cancelled between batches; the frame gets its `stopped` row and the process exits in time."""
    drain = 3.0
    folder = _parts(tmp_path / "parts", {"a_small.jpg": (200, 300), "b_big.jpg": (3000, 4000)})  # 1,302 tiles
    text = shipped_recipe_path("magnetic_tile").read_text().replace(
        'path = "../samples/magnetic-tile"', f'path = "{folder}"')
    recipe = tmp_path / "big.toml"
    recipe.write_text(text + "\n[frames]\nmax_inspect_s = 0\n")  # no time budget: only the stop bounds it
    db = tmp_path / "big.db"
    proc = subprocess.Popen([*STATION, "run", "--recipe", str(recipe), "--fps", "0", "--no-loop", "--headless",
                             "--db", str(db), "--json", "--drain-timeout", str(drain)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while _count(db) < 1:  # the small frame is recorded: the big one is being inspected now
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the small frame was never recorded"
            time.sleep(0.05)
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    rows = ledger(db)
    assert [r["file"] for r in rows] == ["a_small.jpg", "b_big.jpg"], "the big frame has its row, not a gap"
    big = rows[1]
    assert (big["verdict"], big["reason"], big["rejected"]) == ("NOT_INSPECTED", "stopped", 1), big
    assert big["detail"].startswith("inference cancelled after ") and "of 1302 tiles: the drain timeout ran out" \
        in big["detail"]
    assert json.loads(out)["not_inspected_reasons"] == {"stopped": 1}
    # uncancelled, the frame's ~1,300 remaining tiles take far longer (about 100 s for 8000x8000 on 2 cores)
    assert took < 3 * drain, f"took {took:.1f} s from SIGTERM to exit with --drain-timeout {drain:g}"


# ----------------------------------------------------------------------------- 8b. --max-frames N is N parts
def test_max_frames_on_a_paced_replay_delivers_exactly_n_parts_and_says_what_became_of_them(tmp_path: Path) -> None:
    """The issue's run logged 74 rows for --max-frames 20 (46 dropped, 8 stopped) and a 4 % yield."""
    db = tmp_path / "paced.db"
    done = subprocess.run([*STATION, "run", "--source", f"replay:{SAMPLES}", "--fps", "30", "--max-frames", "20",
                           "--headless", "--db", str(db), "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["max_frames"] == 20 and summary["acquired"] == 20 == summary["recorded"] == _count(db)
    assert "stopped" not in summary["not_inspected_reasons"], "nothing beyond N, nothing stopped"
    assert summary["inspected"] + summary["not_inspected"] == 20
    assert set(summary["not_inspected_reasons"]) <= {"dropped"}
    assert summary["yield_pct"] == pytest.approx(100 * summary["passed"] / 20, abs=0.01)
    note = max_frames_note(summary)
    assert note.startswith("  --max-frames 20: the source stopped after delivering 20 part(s); ")
    if summary["not_inspected"]:
        assert (f"{summary['inspected']} inspected, {summary['not_inspected']} not inspected (dropped "
                in note) and "count as rejects" in note
    else:
        assert note.endswith("all inspected")


def test_the_max_frames_note_says_plainly_what_happened() -> None:
    base = {"max_frames": 20, "acquired": 20, "inspected": 12, "signal": None, "failure": None,
            "not_inspected_reasons": {"dropped": 8}, "not_inspected_counts_as": "reject"}
    assert max_frames_note(base) == ("  --max-frames 20: the source stopped after delivering 20 part(s); 12 inspected, "
                                     "8 not inspected (dropped 8): they count as rejects, so the yield is over all "
                                     "of them")
    ended = {**base, "acquired": 5, "inspected": 5, "not_inspected_reasons": {}}
    assert max_frames_note(ended) == "  --max-frames 20: the source ended after 5 of 20 part(s); all inspected"
