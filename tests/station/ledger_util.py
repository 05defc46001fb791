"""Helpers for ledger tests: a truly read-only file (also for root), rows by verdict."""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` read-only for this process and its children. Root ignores file modes, so for root the file is
    made immutable (``chattr +i``; skipped where the file system cannot); the file is writable again afterwards."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a file read-only for root")
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {done.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(mode)


def ledger_rows(db: Path, columns: str = "verdict, reason, frame_id, frame_count") -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute(f"SELECT {columns} FROM inspections ORDER BY id").fetchall()
