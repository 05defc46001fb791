"""The `station` command end to end, as a user runs it: real processes, real SQLite files, real signals."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from station.cli import SAMPLES

STATION = [sys.executable, "-m", "station.cli"]


def run_station(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*STATION, *args], capture_output=True, text=True, timeout=timeout)


def count_rows(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM inspections").fetchone()[0]


def wait_for_rows(db: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"station ended early: {proc.stderr.read() if proc.stderr else ''}"
        if db.exists():
            try:
                if (count := count_rows(db)) >= n:
                    return count
            except sqlite3.OperationalError:
                pass  # the schema is being created
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} rows after {timeout} s")


def test_help_reads_like_a_manual():
    out = run_station("--help").stdout
    assert "run" in out and "demo" in out and "export" in out and "Exit codes" in out
    run_help = run_station("run", "--help").stdout
    for option in ("--recipe", "--source", "--headless", "--max-frames", "--db"):
        assert option in run_help


def test_run_records_exactly_n_rows_and_export_returns_them(tmp_path):
    db = tmp_path / "line.db"
    done = run_station("run", "--source", f"replay:{SAMPLES}", "--headless", "--max-frames", "6", "--fps", "0",
                       "--db", str(db), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["inspected"] == 6 and summary["dropped"] == 0 and summary["errors"] == 0
    assert count_rows(db) == 6
    out = tmp_path / "all.json"
    exported = run_station("export", "--db", str(db), "--format", "json", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    records = json.loads(out.read_text())
    assert len(records) == 6 and all(r["file"].endswith(".jpg") for r in records)
    # the shipped recipe with this run's overrides, uncalibrated (it has no [calibration] table)
    assert {r["calibration"] for r in records} == {None} and len({r["recipe"] for r in records}) == 1
    assert re.fullmatch(r"magnetic_tile [0-9a-f]{12}", records[0]["recipe"]), records[0]["recipe"]
    assert summary["calibration"] == "none (the recipe has no [calibration])"
    assert sum(r["verdict"] == "FAIL" for r in records) == summary["failed"]


def test_missing_folder_and_bad_recipe_exit_2_with_a_message(tmp_path):
    missing = run_station("run", "--source", f"replay:{tmp_path / 'nope'}", "--headless", "--max-frames", "1",
                          "--db", str(tmp_path / "x.db"))
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[product]\nname = 'x'\n[source]\nkind = 'replay'\npath = '.'\n[engine]\nweights = 'w'\n"
                   "[tiling]\ntile = 'big'\n")
    wrong = run_station("run", "--recipe", str(bad), "--headless", "--max-frames", "1")
    assert wrong.returncode == 2 and "tile" in wrong.stderr and "Traceback" not in wrong.stderr


def test_killing_a_running_station_loses_no_committed_row(tmp_path):
    db = tmp_path / "kill.db"
    proc = subprocess.Popen([*STATION, "run", "--source", f"replay:{SAMPLES}", "--fps", "20", "--headless",
                             "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_for_rows(db, 4, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT verdict, image_path FROM inspections").fetchall()
    assert len(rows) >= seen
    for verdict, image_path in rows:
        if verdict == "FAIL" and image_path:
            assert cv2.imread(str(db.parent / image_path)) is not None, f"reject image {image_path} unreadable"


def test_ctrl_c_drains_the_queues_and_closes_the_log(tmp_path):
    db = tmp_path / "sigint.db"
    proc = subprocess.Popen([*STATION, "run", "--source", f"replay:{SAMPLES}", "--fps", "20", "--headless",
                             "--db", str(db), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rows(db, 3, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["inspected"] >= 3
    assert count_rows(db) == summary["inspected"], "every inspected frame must be in the log after Ctrl-C"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0, "log closed with a checkpoint"


@pytest.mark.camera
def test_run_against_the_simulated_camera_reports_rate_and_no_lost_frames(tmp_path):
    pytest.importorskip("harvesters", reason="needs harvesters for the GenICam source")
    genicam = pytest.importorskip("genicam", reason="needs the genicam package (it ships viky.cti)")
    if not (Path(genicam.__file__).parent / "viky.cti").exists():
        pytest.skip("the genicam package has no viky.cti")
    done = run_station("run", "--source", "genicam", "--headless", "--max-frames", "15", "--db",
                       str(tmp_path / "cam.db"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["inspected"] == 15 and summary["lost_frames"] == 0
    assert summary["acquisition_fps"] == pytest.approx(20.0, rel=0.2), "viky streams at 20 frames/s by default"
    assert summary["source"].startswith("genicam:") and count_rows(tmp_path / "cam.db") == 15


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`station demo` as `make demo` runs it on a machine without a display (one pass, headless)."""
    cwd = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([*STATION, "demo", "--db", str(cwd / "demo.db"), "--fps", "0"], capture_output=True,
                          text=True, timeout=600, env=env, cwd=cwd)
    line = next((l for l in done.stdout.splitlines() if "agreement with the ground truth" in l), None)
    agree, total = map(int, line.rsplit(" ", 1)[1].split("/")) if line else (0, 0)
    return done, agree, total, cwd / "demo.db"


def test_demo_headless_replays_every_bundled_frame_once_and_scores_itself(demo_run):
    done, agree, total, db = demo_run
    assert done.returncode == 0, done.stderr
    assert total == len(list(SAMPLES.glob("*.jpg"))) == count_rows(db) == 16
    assert "inspected 16 frames" in done.stdout


DEMO_AGREEMENT_GOAL = 0.75  # issue 2: "good enough that the demo's verdicts are mostly right"


def test_demo_verdicts_are_mostly_right(demo_run):
    _, agree, total, _ = demo_run
    assert total and agree / total >= DEMO_AGREEMENT_GOAL, f"{agree}/{total} verdicts agree with the ground truth"
