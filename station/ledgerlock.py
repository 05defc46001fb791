"""Who may write a reject log: one ``station run`` at a time, and only to a file.

>>> import tempfile
>>> folder = tempfile.TemporaryDirectory()
>>> db = Path(folder.name) / "rejects.db"
>>> lock = LedgerLock(db).acquire(run_id="20241101T080000Z-3f9a0c")
>>> LedgerLock(db).acquire(run_id="20241101T081500Z-77aa01")  # the run: no other station can take this log meanwhile
Traceback (most recent call last):
...
station.errors.LedgerInUseError: ...
>>> lock.release()                               # the log closed (the kernel also releases it when the process dies)
>>> folder.cleanup()

The lock is an advisory ``flock`` on ``<db>.lock`` beside the database, held for the life of the run. The file
keeps the holder's PID, run id, station id and start time, so the station that is refused can say who holds the log.
A killed station leaves the file behind but not the lock (the kernel drops a dead process's locks), so the next
start takes it at once; the file is never deleted (deleting a lock file another process has open is a race).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from station.errors import LedgerError, LedgerInUseError, RejectLogError

__all__ = ["LedgerLock", "check_db_path", "lock_path"]


def lock_path(db_path: str | Path) -> Path:
    """The lock file of a reject log: ``rejects.db`` → ``rejects.db.lock``, beside it."""
    db = Path(db_path)
    return db.with_name(db.name + ".lock")


def check_db_path(db_path: str | Path) -> None:
    """Bad input, said before anything loads (:class:`RejectLogError`, exit status 2): ``--db`` / ``[log] db`` naming a
    folder, or a path below something that is a file."""
    db = Path(db_path)
    if db.is_dir():
        raise RejectLogError(f"the reject log {db} is a folder; --db (or [log] db in the recipe) takes the database "
                             f"file, e.g. --db {db / 'rejects.db'}")
    parent = db.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise RejectLogError(f"the reject log {db} cannot be made: {parent} is a file, not a folder; choose another "
                             "path with --db (or [log] db in the recipe)")


class LedgerLock:
    """An exclusive, non-blocking ``flock`` on ``<db>.lock``; :meth:`acquire` raises :class:`LedgerInUseError`
    naming the holder when another process has it. Safe to :meth:`release` twice."""

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self.path = lock_path(db_path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, run_id: str | None = None, station_id: str | None = None) -> LedgerLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise LedgerError(f"cannot write beside the reject log {self.db_path}: {exc.strerror or exc} "
                              f"({self.path}); make its folder writable or choose another path with --db") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LedgerError(f"cannot lock the reject log {self.db_path} ({self.path}): {exc}") from None
            raise LedgerInUseError(
                f"another station is writing the reject log {self.db_path}: {_describe(holder)}. Two stations must "
                f"never write one log: stop that one first{_how_to_stop(holder)}, or give this station its own log "
                "with --db (or [log] db in the recipe)") from None
        started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = (f"pid={os.getpid()}\nhost={socket.gethostname()}\nrun={run_id or '-'}\nstation={station_id or '-'}\n"
                f"started={started}\n")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
        except OSError:  # the lock is held all the same; only the holder's name is missing for a refused station
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # drops the flock; the file stays (see the module docstring)

    def __enter__(self) -> LedgerLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict[str, str]:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _describe(holder: dict[str, str]) -> str:
    if not holder.get("pid"):
        return "a process holds its lock file (it has not written its PID yet)"
    where = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    return (f"PID {holder['pid']}{where}, run {holder.get('run', '-')}, station {holder.get('station', '-')}, "
            f"since {holder.get('started', '?')}")


def _how_to_stop(holder: dict[str, str]) -> str:
    return f" (kill -TERM {holder['pid']} drains it and closes the log)" if holder.get("pid") else ""
