"""Issue 26: a first engine build killed before it finished leaves its ``.NAME.building-PID`` work folder in the
engine cache; the next build removes such folders whose process is gone, and leaves a live build's alone."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines.build import remove_stale_builds
from engines.weights import SHIPPED

WORK = re.compile(r"\..+\.building-(\d+)")


def _dead_pid() -> int:
    """The PID of a process that has ended and been reaped."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def _work_folder(parent: Path, name: str, pid: int, mtime: float | None = None) -> Path:
    folder = parent / f".{name}.building-{pid}"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "model.safetensors").write_bytes(b"\0" * 1024)
    if mtime is not None:
        os.utime(folder, (mtime, mtime))
    return folder


def _work_folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if WORK.fullmatch(p.name)) if parent.is_dir() else []


def test_a_build_killed_in_the_engine_cache_is_cleaned_up_by_the_next_build(tmp_path, monkeypatch):
    """The issue's case, with real processes: the station's first use of weights without an ONNX export of their own
    (a training run's; shipped weights carry theirs, issue 30) builds them into the cache ($STATION_CACHE/engines);
    that process is killed with SIGKILL in the middle of the build."""
    cache = tmp_path / "cache"
    engines = cache / "engines"
    weights = tmp_path / "trained"
    weights.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy2(SHIPPED / "bffn-magnetic-tile" / name, weights / name)
    load = f"from engines.backends.base import load_engine; load_engine({str(weights)!r}, 'onnxruntime', threads=1)"
    first = subprocess.Popen([sys.executable, "-c", load], env={**os.environ, "STATION_CACHE": str(cache)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any((p / "weights").is_dir() for p in _work_folders(engines)):
            assert first.poll() is None, f"the build ended before it could be killed: {first.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no work folder appeared in the engine cache"
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait(30)
    (stale,) = _work_folders(engines)
    assert stale.name.endswith(f".building-{first.pid}"), "the killed build leaves its work folder behind"

    live = _work_folder(engines, "another-build", os.getpid())  # a build running now (this process) must be kept
    monkeypatch.setenv("STATION_CACHE", str(cache))
    from engines.backends.base import load_engine

    engine = load_engine(weights, "onnxruntime", threads=1)
    engine.close()
    assert not stale.exists(), "the next build removes the work folder of the killed one"
    assert _work_folders(engines) == [live], "a live build's folder is left alone (and this build's moved in place)"
    assert [p.name for p in engines.iterdir() if not p.name.startswith(".")], "the engine folder was built"


def test_only_folders_of_builds_that_are_gone_are_removed(tmp_path):
    if not Path(f"/proc/{os.getpid()}/stat").exists():
        pytest.skip("no /proc: a PID used again cannot be told from the build that had it")
    dead = _work_folder(tmp_path, "bffn-a", _dead_pid())
    live = _work_folder(tmp_path, "bffn-b", os.getpid())
    # this process's PID, on a folder last written before this process started: a PID used again (a container
    # restarted with the same PID as the build it killed), so the folder is stale
    reused = _work_folder(tmp_path, "bffn-c", os.getpid(), mtime=time.time() - 10 * 24 * 3600)
    other = [tmp_path / ".bffn-d.building-abc", tmp_path / "bffn-e"]
    for folder in other:
        folder.mkdir()
    lookalike = tmp_path / f".bffn-f.building-{_dead_pid()}"
    lookalike.write_text("a file, not a work folder")
    assert sorted(remove_stale_builds(tmp_path)) == sorted([dead, reused])
    assert live.is_dir() and all(p.exists() for p in other) and lookalike.is_file()
    assert remove_stale_builds(tmp_path / "missing") == []
