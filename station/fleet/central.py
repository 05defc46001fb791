"""The central PostgreSQL database: addresses, connections, schema migrations, and reading the fleet's rows.

Passwords never travel on the command line or in a recipe: a URL holding one is refused, and libpq takes the
password from ``PGPASSWORD`` or the ``.pgpass`` file (``PGPASSFILE``), as ``psql`` does.

>>> apply_migrations("postgresql://admin@db.factory/fleet")                    # doctest: +SKIP
['001_parts', '002_roles']
>>> rows = fetch_central("postgresql://qa@db.factory/fleet", since="2024-05-01", station="line-3")  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from importlib import resources
from typing import Any

from station.errors import StationError
from station.rejectlog import COLUMNS, RejectLogError, format_utc, row_filter

#: Columns of the central ``parts`` table that a station's ledger row does not have (exported after COLUMNS).
CENTRAL_EXTRA = ("image_size", "image_sha256", "image_copy", "overlay_size", "overlay_sha256", "camera_timestamp_ns",
                 "forwarded_utc")
CONNECT_TIMEOUT_S = 5


class FleetError(StationError):
    """The fleet database cannot be reached, is not set up, or an address or option is wrong."""


def check_url(url: str, what: str = "--to") -> dict[str, str]:
    """The connection parameters of a ``postgresql://`` URL; refuses other schemes and URLs that hold a password."""
    import psycopg.conninfo

    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        raise FleetError(f"{what}: {url!r} is not a PostgreSQL URL; use postgresql://USER@HOST[:PORT]/DB")
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise FleetError(f"{what}: {url!r} is not a valid PostgreSQL URL ({exc}); use postgresql://USER@HOST/DB") \
            from None
    if params.get("password"):
        raise FleetError(f"{what}: the URL holds a password; remove it (postgresql://USER@HOST/DB) and give the "
                         "password in the environment (PGPASSWORD) or a .pgpass file (chmod 600), never on the "
                         "command line or in a recipe")
    return {k: str(v) for k, v in params.items()}


def destination(url: str) -> str:
    """The name of the destination behind ``url`` (host, port, database; no user), e.g. for an outbox mark."""
    params = check_url(url)
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    return f"postgresql://{host}:{port}/{params.get('dbname', '')}"


def connect(url: str, application: str = "station", **kwargs: Any):
    """A psycopg connection to ``url`` (password from the environment or .pgpass), with TCP keep-alives so a
    vanished server is noticed; raises :class:`FleetError` saying what to check."""
    import psycopg

    check_url(url)
    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, application_name=application, keepalives=1,
                               keepalives_idle=10, keepalives_interval=5, keepalives_count=3, **kwargs)
    except psycopg.OperationalError as exc:
        raise FleetError(f"cannot connect to {destination(url)}: {str(exc).strip()}; check the server runs and "
                         "accepts this user (pg_hba.conf), and the password in PGPASSWORD or .pgpass") from None


# -- migrations ------------------------------------------------------------------------------------------------

def migrations() -> list[tuple[str, str]]:
    """``(name, sql)`` of the shipped migrations, in order (``station/fleet/migrations/NNN_name.sql``)."""
    folder = resources.files("station.fleet") / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name[:-4], f.read_text(encoding="utf-8")) for f in files]


_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    sha256      text NOT NULL,
    applied_utc timestamptz NOT NULL DEFAULT now()
)"""


def apply_migrations(url: str, station_users: tuple[str, ...] = (), qa_users: tuple[str, ...] = ()) -> list[str]:
    """Bring the database at ``url`` to the newest schema, each migration in its own transaction (under an advisory
    lock, so two inits never race), and let the given login roles join ``fleet_station`` / ``fleet_qa`` (created
    without a password when missing). Returns the names applied now. The user needs CREATE on the database and
    CREATEROLE."""
    import psycopg
    from psycopg import sql

    applied_now = []
    with connect(url, "station fleet init") as conn:
        try:
            conn.execute("SELECT pg_advisory_lock(hashtext('station fleet init'))")
            conn.execute(_MIGRATIONS_TABLE)
            conn.commit()
            done = dict(conn.execute("SELECT version, sha256 FROM schema_migrations").fetchall())
            for name, text in migrations():
                version = int(name.split("_", 1)[0])
                digest = hashlib.sha256(text.encode()).hexdigest()
                if version in done:
                    if done[version] != digest:
                        raise FleetError(f"migration {name} applied to {destination(url)} differs from this "
                                         "station's copy; never edit an applied migration, add a new one")
                    continue
                with conn.transaction():
                    conn.execute(text)
                    conn.execute("INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                                 (version, name, digest))
                applied_now.append(name)
            for role, users in (("fleet_station", station_users), ("fleet_qa", qa_users)):
                for user in users:
                    with conn.transaction():
                        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone() is None:
                            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(user)))
                        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(user)))
            conn.commit()
        except psycopg.Error as exc:
            raise FleetError(f"cannot set up {destination(url)}: {str(exc).strip()}; the user needs CREATE on the "
                             "database and CREATEROLE (a superuser or the database owner with CREATEROLE)") from None
    return applied_now


def schema_version(conn) -> int:
    """The newest migration applied (0: none; the database has no fleet schema)."""
    import psycopg

    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    try:
        return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])
    except psycopg.errors.InsufficientPrivilege:
        raise FleetError("this user may not read the fleet database; use a QA login (GRANT fleet_qa TO user), "
                         "stations' logins may only insert") from None


# -- reading -----------------------------------------------------------------------------------------------------

def central_where(since: str | datetime | None = None, until: str | datetime | None = None, verdict: str = "all",
                  station: str | None = None) -> tuple[str, list[Any]]:
    """SQL filter over ``parts``, as :func:`station.rejectlog.fetch_rows` filters a local log, plus a station."""
    try:
        return row_filter(since, until, verdict, station, mark="%s", time_param=lambda moment: moment)
    except RejectLogError as exc:
        raise FleetError(str(exc)) from None


def central_columns() -> list[str]:
    """The keys of an exported central row: the ledger's columns, then the central ones."""
    return list(COLUMNS) + [c for c in CENTRAL_EXTRA if c not in COLUMNS]


def fetch_central(url: str, since: str | datetime | None = None, until: str | datetime | None = None,
                  verdict: str = "all", station: str | None = None) -> list[dict[str, Any]]:
    """The matching rows of the fleet database as dicts keyed like a local ledger's rows (``COLUMNS``: ``id`` is
    the station's row id, ``time_utc`` the same ISO text) plus :data:`CENTRAL_EXTRA`; ordered by time, station,
    run, row."""
    import psycopg

    where, params = central_where(since, until, verdict, station)
    keys = central_columns()
    names = ["row_id AS id" if c == "id" else c for c in keys]
    with connect(url, "station export") as conn:
        if schema_version(conn) == 0:
            raise FleetError(f"{destination(url)} has no fleet schema; run station fleet init --to URL first")
        try:
            cursor = conn.execute(f"SELECT {', '.join(names)} FROM parts{where} "
                                  "ORDER BY time_utc, station_id, run_id, row_id", params)
            rows = [dict(zip(keys, r)) for r in cursor]
        except psycopg.Error as exc:
            raise FleetError(f"cannot read {destination(url)}: {str(exc).strip()}; the user needs SELECT on parts "
                             "(GRANT fleet_qa TO user)") from None
    for row in rows:
        row["time_utc"] = format_utc(row["time_utc"])
        row["forwarded_utc"] = format_utc(row["forwarded_utc"])
        if row["run_id"] == "":
            row["run_id"] = None
    return rows
