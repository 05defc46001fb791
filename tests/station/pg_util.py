"""A real PostgreSQL server for the fleet tests, started in a temporary folder (``initdb`` + ``pg_ctl``).

The server refuses to run as root, so under root it runs as the ``postgres`` user (``runuser``) in a folder that
user owns. Loopback TCP on a free port, and a unix socket in the same folder; ``trust`` authentication (the tests
check roles by privilege, not by password). Tests skip with the reason when the server binaries are absent.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.station.waiting import free_port

PG_BIN_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin",
               "/usr/lib/postgresql/14/bin", "/usr/local/pgsql/bin")
STATION_USER, QA_USER = "fleet_test_line", "fleet_test_qa"
INSTALL_HINT = ("install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql; the binaries land in "
                "/usr/lib/postgresql/<version>/bin) or put initdb and pg_ctl on PATH")


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    for folder in PG_BIN_DIRS:
        if (Path(folder) / "pg_ctl").is_file() and (Path(folder) / "initdb").is_file():
            return Path(folder)
    return None


@dataclass
class PgServer:
    """One server: its binaries, data folder, port; ``url(user)`` is a password-less URL for ``user``."""

    bin: Path
    data: Path
    port: int
    run_as: str | None  # the user the server runs as (root cannot run it), None: this process's user
    superuser: str

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def url(self, user: str | None = None, db: str = "fleet") -> str:
        return f"postgresql://{user or self.superuser}@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "log.txt"),
                                 "-w", "-t", "60", "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1",
                                 "start"), check=True, capture_output=True, text=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"),
                       check=True, capture_output=True, text=True)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.url(db="postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def remove(self) -> None:
        """Stop the server (if it runs) and delete its folder."""
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                       capture_output=True)
        shutil.rmtree(self.data.parent, ignore_errors=True)


def start_server() -> PgServer:
    """initdb and start a server in a fresh folder under the system's temporary folder (readable by the
    ``postgres`` user, unlike pytest's own); skips the test when the binaries are absent. ``remove()`` ends it."""
    pg_bin = find_pg_bin()
    if pg_bin is None:
        pytest.skip(f"no PostgreSQL server binaries (initdb, pg_ctl) here; {INSTALL_HINT}")
    run_as = None
    if os.geteuid() == 0:
        try:
            info = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as (the server refuses "
                        "root); create one (useradd postgres) or run the tests as another user")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start the server as the postgres user")
        run_as = "postgres"
    folder = Path(tempfile.mkdtemp(prefix="station-pg-"))
    if run_as:
        os.chown(folder, info.pw_uid, info.pw_gid)
    data = folder / "data"
    superuser = run_as or pwd.getpwuid(os.geteuid()).pw_name
    done = subprocess.run((["runuser", "-u", run_as, "--"] if run_as else [])
                          + [str(pg_bin / "initdb"), "-D", str(data), "-U", superuser, "-A", "trust",
                             "-E", "UTF8", "--locale=C", "--no-sync"], capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"initdb failed here ({done.stderr.strip()[-300:]}); {INSTALL_HINT}")
    with (data / "postgresql.conf").open("a") as conf:
        # a test server: small, and no fsync (a crash of the server process still keeps committed rows: they are
        # in the OS cache; only an OS crash would lose them)
        conf.write("\nfsync = off\nshared_buffers = 16MB\nmax_connections = 40\nautovacuum = off\n")
    server = PgServer(pg_bin, data, free_port(), run_as, superuser)
    server.start()
    server.wait_ready()
    return server


def create_fleet(server: PgServer, station_users: tuple[str, ...] = (f"{STATION_USER}=line-*",),
                 qa_users: tuple[str, ...] = (QA_USER,), months_back: int | None = 1200) -> str:
    """A fresh database on ``server`` with the fleet schema applied (``station fleet init``); returns its name. By
    default the station login may write the stations ``line-*`` and open months back to the synthetic ledgers'
    2024."""
    import psycopg

    from station.fleet.central import apply_migrations, migrations

    name = f"fleet_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url(db="postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    assert apply_migrations(server.url(db=name), station_users, qa_users, months_back) == [m for m, _ in migrations()]
    return name
