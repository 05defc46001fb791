"""Issue 26, the ledger's edges: a kill -9 leaves no unmarked hole, lost evidence stops the line, a folder given as
the log and a second station on one log are refused at once. Real processes, real SQLite files, real signals, and a
real full disk (a 4 kB tmpfs, where mounting is allowed)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inspection_core.records import Frame, InspectionResult, Verdict
from station import rejectlog
from station.cli import SAMPLES
from station.errors import EvidenceError, LedgerInUseError, RejectLogError
from station.ledgerlock import LedgerLock, check_db_path
from station.rejectlog import RejectLog, recover_interrupted
from tests.station.ledger_util import ledger_rows
from tests.station.test_cli import _recipe_with
from tests.station.waiting import free_port, wait_until

STATION = [sys.executable, "-m", "station.cli"]


class Station:
    """A ``station run`` subprocess whose stderr is read line by line as it comes (so a test can wait for a log
    line), killed at the end of the test if still running."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen([*STATION, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        """The first log line matching ``pattern``, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.proc.poll() is not None
            if ended:
                self._reader.join(10)
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            assert not ended, f"the station ended ({self.proc.returncode}) before {pattern!r}: {self.stderr[-3000:]}"
            assert time.monotonic() < deadline, f"no log line {pattern!r} after {timeout} s: {self.stderr[-3000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        out = self.proc.stdout.read() if self.proc.stdout else ""
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def stations():
    started: list[Station] = []
    yield lambda *args, **kw: started.append(Station(*args, **kw)) or started[-1]
    for station in started:
        station.kill()


def _big_part(folder: Path, side: int = 1600) -> Path:
    """One plausible part large enough that inspecting it takes seconds on a CPU (hundreds of tiles)."""
    folder.mkdir(parents=True, exist_ok=True)
    tile = cv2.imread(str(sorted(SAMPLES.glob("free_*.jpg"))[0]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / "big_part.png"), cv2.resize(tile, (side, side)))
    return folder


# -- 3. kill -9 -----------------------------------------------------------------------------------------------------
def test_a_part_being_inspected_when_the_station_is_killed_gets_an_interrupted_row_at_the_next_start(tmp_path,
                                                                                                     stations):
    db = tmp_path / "line.db"
    first = stations("--source", f"replay:{_big_part(tmp_path / 'big')}", "--pattern", "*.png", "--fps", "0",
                     "--no-loop", "--headless", "--db", str(db))
    run_id = first.wait_for(r"reject log .*: station \S+, run (\S+);").group(1)
    first.wait_for(r"replay:.*big: connected -> stopped")  # its one part is delivered: now it is being inspected
    time.sleep(1.0)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)
    assert ledger_rows(db) == [], "the part was being inspected: it has no row yet (the hole to be marked)"

    port = free_port()
    second = stations("--source", f"replay:{SAMPLES}", "--fps", "2", "--headless", "--db", str(db), "--json",
                      "--drain-timeout", "2", "--metrics", f"127.0.0.1:{port}")
    wait_until(lambda: _scraped(port), 120, "/metrics served by the second station")
    metrics = _scraped(port)
    assert metrics[("station_unclean_end", ())] == 1 and metrics[("station_interrupted_parts_total", ())] == 1
    second.proc.send_signal(signal.SIGTERM)
    code, out = second.finish()
    assert code == 143, second.stderr[-3000:]
    summary = json.loads(out)
    unclean = summary["unclean_end"]
    assert unclean["runs"] == [run_id] and unclean["pids"] == [first.proc.pid] and unclean["interrupted"] == 1
    assert unclean["frame_ids"] == [1] and "killed" in unclean["message"]
    assert summary["acquired"] == summary["recorded"], "the earlier run's part is not counted in this run"

    with contextlib.closing(sqlite3.connect(db)) as con:
        (interrupted,) = con.execute("SELECT run_id, frame_id, file, verdict, reason, rejected, detail, station_id, "
                                     "engine_id, part_id FROM inspections WHERE run_id != ?",
                                     (summary["run_id"],)).fetchall()
    assert interrupted[:6] == (run_id, 1, "big_part.png", "NOT_INSPECTED", "interrupted", 1)
    assert f"PID {first.proc.pid}" in interrupted[6] and summary["run_id"] in interrupted[6]
    assert interrupted[7] == summary["station_id"] and interrupted[8] == summary["engine_id"]
    assert interrupted[9] == "big_part.png"  # who the part was: journaled when it was acquired
    assert len(ledger_rows(db)) == 1 + summary["recorded"]
    # recorded once, and the second run ended cleanly with every part recorded: a later start finds nothing to report
    assert recover_interrupted(db, "a-later-run") is None


def _scraped(port: int) -> dict[tuple[str, tuple], float]:
    """``/metrics`` as ``{(sample name, sorted labels): value}``; empty while nothing serves it."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- 4. a full disk loses the evidence ------------------------------------------------------------------------------
@contextlib.contextmanager
def _tiny_tmpfs(where: Path, size: str = "4k"):
    """A real file system of ``size`` mounted at ``where`` (root only; skipped where mounting is refused)."""
    where.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}): the in-process test below injects "
                    "ENOSPC instead")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_fail_whose_image_cannot_be_written_says_so_in_its_row_and_stops_the_line_with_exit_1(tmp_path):
    """A real ENOSPC: the reject images go to a 4 kB tmpfs mounted where they are written, the log itself has room,
    and [station] min_free_mb = 0, as in the issue."""
    recipe = _recipe_with(tmp_path, "[station]\nmin_free_mb = 0\n")
    db = tmp_path / "line.db"
    with _tiny_tmpfs(tmp_path / "line_images"):
        done = subprocess.run([*STATION, "run", "--recipe", str(recipe), "--fps", "0", "--no-loop", "--headless",
                               "--db", str(db), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["line_state"] == "error" and "No space left on device" in summary["failure"]
    assert "station: error:" in done.stderr and "Free disk space" in done.stderr
    rows = ledger_rows(db, "verdict, image_path, detail")
    assert rows, "the FAIL row is recorded"
    verdict, image_path, detail = rows[-1]
    assert (verdict, image_path) == ("FAIL", None), "the line stops at the FAIL whose image could not be written"
    assert "reject image not saved" in detail and f"[Errno {errno.ENOSPC}] No space left on device" in detail
    assert all(v != "FAIL" for v, _, _ in rows[:-1]), "the first FAIL already had no room for its image"
    assert len(rows) < len(list(SAMPLES.glob("*.jpg"))), "the line did not run on"
    assert summary["recorded"] + summary["refused"] == summary["acquired"]


def _fail(frame_id: int = 1) -> InspectionResult:
    image = np.full((24, 32), 90, np.uint8)
    frame = Frame(image=image, frame_id=frame_id, timestamp_ns=1_000, source="replay:test", meta={"file": "a.png"})
    return InspectionResult(frame=frame, mask=np.zeros(image.shape, np.float32), defects=(), verdict=Verdict.FAIL,
                            engine_id="e", latency_ms=1.0)


def test_an_image_write_that_fails_with_enospc_is_named_in_the_committed_row_and_raised(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: ENOSPC injected at the lowest seam the reject images are written through
    (``write_atomically``, the temporary file, fsync and rename), on a real SQLite file."""
    def full(path: Path, data: bytes, fsync: bool = True) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(rejectlog, "write_atomically", full)
    with RejectLog(tmp_path / "r.db", run_id="r") as log:
        with pytest.raises(EvidenceError, match="No space left on device") as raised:
            log.record(_fail())
        (row,) = log.query()
    assert raised.value.row["id"] == row["id"] and row["verdict"] == "FAIL" and row["image_path"] is None
    assert "reject image not saved" in row["detail"] and "No space left on device" in row["detail"]


# -- 5. a folder given as --db ---------------------------------------------------------------------------------------
def test_a_folder_as_the_reject_log_exits_2_at_once_before_any_model_loads(tmp_path):
    cache = tmp_path / "cache"  # an empty engine cache: a model loaded would be built into it
    folder = tmp_path / "logs"
    folder.mkdir()
    done = subprocess.run([*STATION, "run", "--source", f"replay:{SAMPLES}", "--headless", "--max-frames", "1",
                           "--db", str(folder)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STATION_CACHE": str(cache)})
    assert done.returncode == 2, done.stderr[-3000:]
    assert "is a folder" in done.stderr and f"--db {folder / 'rejects.db'}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (cache / "engines").exists(), "no engine may be built or loaded before the log path is checked"
    assert list(folder.iterdir()) == []
    (tmp_path / "x.db").touch()
    with pytest.raises(RejectLogError, match="is a file, not a folder"):  # --db x.db/rejects.db: the same at once
        check_db_path(tmp_path / "x.db" / "sub" / "rejects.db")


# -- 6. two stations, one log ----------------------------------------------------------------------------------------
def test_a_second_station_on_the_same_log_refuses_to_start_with_exit_2_naming_the_first(tmp_path, stations):
    db = tmp_path / "line.db"
    first = stations("--source", f"replay:{SAMPLES}", "--fps", "2", "--headless", "--db", str(db))
    run_id = first.wait_for(r"reject log .*: station \S+, run (\S+);").group(1)
    wait_until(lambda: db.exists() and len(ledger_rows(db)) >= 1, 120, "the first station's first row")

    cache = tmp_path / "cache"
    done = subprocess.run([*STATION, "run", "--source", f"replay:{SAMPLES}", "--fps", "0", "--headless",
                           "--max-frames", "2", "--db", str(db), "--json"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "STATION_CACHE": str(cache)})
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"PID {first.proc.pid}" in done.stderr and run_id in done.stderr and "--db" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (cache / "engines").exists(), "refused before any model is loaded"
    assert first.proc.poll() is None, "the first station runs on"

    first.proc.send_signal(signal.SIGTERM)
    code, _ = first.finish()
    assert code == 143, first.stderr[-3000:]
    assert {r[0] for r in ledger_rows(db, "run_id")} == {run_id}, "only the first station wrote the log"
    with LedgerLock(db).acquire():  # released with the log: the next station may start
        pass


def test_the_ledger_lock_names_its_holder_and_is_free_again_once_released(tmp_path):
    db = tmp_path / "l.db"
    held = LedgerLock(db).acquire(run_id="run-a", station_id="line-3")
    with pytest.raises(LedgerInUseError, match=rf"PID {os.getpid()}, run run-a, station line-3"):
        LedgerLock(db).acquire(run_id="run-b")
    held.release()
    held.release()  # twice is fine
    LedgerLock(db).acquire(run_id="run-b").release()
