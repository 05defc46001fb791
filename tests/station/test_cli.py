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
from tests.station.ledger_util import read_only

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
    for option in ("--recipe", "--source", "--headless", "--max-frames", "--db", "--drain-timeout"):
        assert option in run_help
    words = " ".join(run_help.split())
    assert "143 SIGTERM" in words and "129 SIGHUP" in words and "130 Ctrl-C" in words
    assert "--per-defect" in run_station("export", "--help").stdout


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


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stop_signal_mid_run_drains_records_every_acquired_frame_and_prints_the_summary(tmp_path, signum, code):
    """Ctrl-C, SIGTERM (systemctl stop) and SIGHUP all drain: every frame acquired before the signal has its row,
    the summary is printed, and the exit status is 128 + the signal."""
    db = tmp_path / "signal.db"
    proc = subprocess.Popen([*STATION, "run", "--source", f"replay:{SAMPLES}", "--fps", "20", "--headless",
                             "--db", str(db), "--json", "--drain-timeout", "5"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_rows(db, 3, proc)
    sent = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == code, err
    summary = json.loads(out)
    assert summary["signal"] == signal.Signals(signum).name and summary["line_state"] == "stopped"
    # 3 rows were in before the signal; on a busy machine some are frames the queue dropped (NOT_INSPECTED rows)
    assert summary["acquired"] >= 3 and summary["inspected"] >= 1
    assert summary["refused"] == 0 and summary["failure"] is None
    assert summary["acquired"] == summary["passed"] + summary["failed"] + summary["not_inspected"]
    assert count_rows(db) == summary["acquired"] + summary["gap_rows"] == summary["recorded"], \
        "every frame acquired before the signal must have its row"
    assert took < 5 + 30, f"the drain is bounded by --drain-timeout (took {took:.1f} s)"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0, "log closed with a checkpoint"


def _recipe_with(tmp_path: Path, extra: str) -> Path:
    """The shipped magnetic-tile recipe playing the bundled frames, plus ``extra`` TOML."""
    from station.recipe import shipped_recipe_path

    text = shipped_recipe_path("magnetic_tile").read_text().replace('path = "../samples/magnetic-tile"',
                                                                     f'path = "{SAMPLES}"')
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text + "\n" + extra)
    return recipe


def test_a_replay_paced_faster_than_the_line_has_one_row_per_acquired_frame(tmp_path):
    """The issue's run: --fps 30 into a line that inspects a few frames a second; every dropped frame has its row."""
    db = tmp_path / "paced.db"
    done = run_station("run", "--source", f"replay:{SAMPLES}", "--fps", "30", "--max-frames", "4", "--headless",
                       "--db", str(db), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # how many frames arrive before the 4th verdict (dropped by the queue, or stopped at --max-frames) depends on
    # the machine's speed; what must hold is that every one of them has its NOT_INSPECTED row
    assert summary["inspected"] == 4 and summary["not_inspected"] == summary["acquired"] - 4
    assert summary["acquired"] == summary["passed"] + summary["failed"] + summary["not_inspected"]
    assert count_rows(db) == summary["acquired"] == summary["recorded"]
    with sqlite3.connect(db) as con:
        reasons = dict(con.execute("SELECT reason, COUNT(*) FROM inspections WHERE verdict = 'NOT_INSPECTED' "
                                   "GROUP BY reason").fetchall())
        ids = {r[0] for r in con.execute("SELECT DISTINCT run_id || '|' || station_id FROM inspections")}
    assert reasons == summary["not_inspected_reasons"] and len(ids) == 1 and summary["run_id"] in ids.pop()
    assert summary["rejects"] == summary["failed"] + summary["not_inspected"]


def test_a_read_only_reject_log_stops_the_station_before_it_starts_with_exit_1(tmp_path):
    db = tmp_path / "ro.db"
    first = run_station("run", "--source", f"replay:{SAMPLES}", "--fps", "0", "--max-frames", "1", "--headless",
                        "--db", str(db))
    assert first.returncode == 0, first.stderr
    with read_only(db):
        started = time.monotonic()
        done = run_station("run", "--source", f"replay:{SAMPLES}", "--fps", "0", "--max-frames", "3", "--headless",
                           "--db", str(db))
        took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert "read-only" in done.stderr and "writable" in done.stderr and "Traceback" not in done.stderr
    assert "inspected" not in done.stdout, "no part may be inspected without a record"
    assert count_rows(db) == 1 and took < 60


def test_below_the_free_space_threshold_the_station_refuses_to_start(tmp_path):
    recipe = _recipe_with(tmp_path, "[station]\nmin_free_mb = 1e12\n")
    done = run_station("run", "--recipe", str(recipe), "--headless", "--max-frames", "1", "--db",
                       str(tmp_path / "x.db"))
    assert done.returncode == 1, done.stderr
    assert "MB free" in done.stderr and "min_free_mb" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.db").exists()


def _file_size_limit(limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    return apply


def test_a_full_disk_stops_the_line_at_once_with_exit_1_and_names_the_refused_parts(tmp_path):
    """A real full disk for the process: RLIMIT_FSIZE caps every file it writes at 256 kB, so the WAL fills up."""
    warm = run_station("run", "--source", f"replay:{SAMPLES}", "--fps", "0", "--max-frames", "1", "--headless",
                       "--db", str(tmp_path / "warm.db"))  # the engine cache is built before the limit applies
    assert warm.returncode == 0, warm.stderr
    db = tmp_path / "full.db"
    done = subprocess.run([*STATION, "run", "--source", f"replay:{SAMPLES}", "--fps", "30", "--headless", "--db",
                           str(db), "--json"], capture_output=True, text=True, timeout=300,
                          preexec_fn=_file_size_limit(256 * 1024))
    assert done.returncode == 1, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["line_state"] == "error" and summary["refused"] >= 1
    assert "disk" in summary["failure"] and "refused" in summary["failure"] and "frame ids" in summary["failure"]
    assert "station: error:" in done.stderr and "free disk space" in done.stderr
    assert summary["recorded"] + summary["refused"] == summary["acquired"] + summary["gap_rows"]
    assert summary["refused"] <= 8 + 64 + 2, "acquisition must stop at once: only what was queued is refused"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM inspections").fetchone()[0] == summary["recorded"]


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
    # --max-frames is 15 parts delivered; viky's Mono8 frames are all but white, which the station cannot judge:
    # none passes, each is NOT_INSPECTED "implausible" (or dropped by the queue) (issue 26)
    assert summary["acquired"] == 15 and summary["lost_frames"] == 0 and summary["passed"] == 0
    assert set(summary["not_inspected_reasons"]) <= {"implausible", "dropped"}
    assert summary["not_inspected_reasons"].get("implausible", 0) >= 1
    assert summary["acquisition_fps"] == pytest.approx(20.0, rel=0.2), "viky streams at 20 frames/s by default"
    assert summary["source"].startswith("genicam:")
    # frames dropped by the drop-oldest queue (the CPU inspects slower than 20 frames/s) have their rows too
    assert count_rows(tmp_path / "cam.db") == summary["acquired"] + summary["gap_rows"] == summary["recorded"]
    assert summary["acquired"] == summary["passed"] + summary["failed"] + summary["not_inspected"]


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


def test_a_demo_faster_than_this_machine_says_why_frames_had_no_verdict(tmp_path):
    done = subprocess.run([*STATION, "demo", "--headless", "--db", str(tmp_path / "fast.db"), "--fps", "200"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = next(l for l in done.stdout.splitlines() if "agreement with the ground truth" in l)
    judged = int(line.rsplit("/", 1)[1])
    assert judged < 16 and count_rows(tmp_path / "fast.db") == 16, "a dropped frame keeps its row"
    assert f"{16 - judged} bundled frame(s) had no verdict: the replay delivers 200 frames/s" in done.stdout
    assert "station demo --fps 0" in done.stdout


DEMO_AGREEMENT_GOAL = 0.75  # issue 2: "good enough that the demo's verdicts are mostly right"


def test_demo_verdicts_are_mostly_right(demo_run):
    _, agree, total, _ = demo_run
    assert total and agree / total >= DEMO_AGREEMENT_GOAL, f"{agree}/{total} verdicts agree with the ground truth"


def test_the_example_systemd_unit_agrees_with_the_exit_codes():
    from station.cli import EXIT_HANGUP, EXIT_TERMINATED

    unit = (Path(__file__).resolve().parents[2] / "docs" / "station.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert set(settings["SuccessExitStatus"].split()) == {str(EXIT_TERMINATED), str(EXIT_HANGUP)} == {"143", "129"}
    assert settings["KillSignal"] == "SIGTERM" and settings["RestartPreventExitStatus"] == "2"
    drain = float(re.search(r"--drain-timeout (\d+)", unit).group(1))
    assert float(settings["TimeoutStopSec"]) >= drain + 20, "systemd must wait for the drain before SIGKILL"
