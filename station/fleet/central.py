"""The central PostgreSQL database: addresses, connections, schema migrations, and reading the fleet's rows.

Passwords never travel on the command line or in a recipe: a URL holding one is refused, and libpq takes the
password from ``PGPASSWORD`` or the ``.pgpass`` file (``PGPASSFILE``), as ``psql`` does.

For example (a PostgreSQL server is needed; the first call returns the migrations applied,
``['001_parts', '002_roles', '003_row_security', '004_part_identity']`` on a new database)::

    apply_migrations("postgresql://admin@db.factory/fleet", station_users=["line3=line-3"])
    add_station("postgresql://admin@db.factory/fleet", "line4", ["line-4"])
    rows = fetch_central("postgresql://qa@db.factory/fleet", since="2024-05-01", station="line-3")
    rows = fetch_central("postgresql://qa@db.factory/fleet", part_id="P-1")      # the part with serial P-1
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from importlib import resources
from typing import Any, Iterable, Sequence

from station.errors import StationError
from station.rejectlog import COLUMNS, IDENTITY_COLUMNS, RejectLogError, format_utc, row_filter

#: Columns of the central ``parts`` table that a station's ledger row does not have (exported after COLUMNS).
CENTRAL_EXTRA = ("image_size", "image_sha256", "image_copy", "overlay_size", "overlay_sha256", "camera_timestamp_ns",
                 "forwarded_utc")
CONNECT_TIMEOUT_S = 5
#: The migration that added the part's identity columns (``part_id``, ``meas_id``, ``product_id``, ``job_id``).
IDENTITY_MIGRATION = 4


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


def apply_migrations(url: str, station_users: Iterable[str | tuple[str, Sequence[str]]] = (),
                     qa_users: Iterable[str] = (), months_back: int | None = None) -> list[str]:
    """Bring the database at ``url`` to the newest schema, each migration in its own transaction (under an advisory
    lock, so two inits never race); give each station login its policy (:func:`add_station`; ``"NAME"``,
    ``"NAME=ID,ID"`` or ``(NAME, IDS)``), let the QA logins join ``fleet_qa`` (logins are created without a password
    when missing), and set how many months back a station may open (``months_back``). Returns the names applied
    now. The user needs CREATE on the database and CREATEROLE."""
    import psycopg
    from psycopg import sql

    stations = [parse_station_user(u) if isinstance(u, str) else (u[0], tuple(u[1])) for u in station_users]
    for name, ids in stations:
        _check_station(name, ids)
    if months_back is not None and months_back < 0:
        raise FleetError(f"--months-back {months_back} is not allowed; use 0 (this month only) or more")
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
            for name, ids in stations:
                with conn.transaction():
                    _station_policy(conn, name, ids)
            for user in qa_users:
                with conn.transaction():
                    _login(conn, user)
                    conn.execute(sql.SQL("GRANT fleet_qa TO {}").format(sql.Identifier(user)))
            if months_back is not None:
                with conn.transaction():
                    conn.execute("UPDATE fleet_settings SET station_months_back = %s", (months_back,))
            conn.commit()
        except psycopg.Error as exc:
            raise FleetError(f"cannot set up {destination(url)}: {str(exc).strip()}; the user needs CREATE on the "
                             "database and CREATEROLE (a superuser or the database owner with CREATEROLE)") from None
    return applied_now


# -- station logins: one row-level security policy each (migration 003) ----------------------------------------

def parse_station_user(text: str) -> tuple[str, tuple[str, ...]]:
    """``"line3"`` -> ``("line3", ("line3",))``; ``"line3=line-3,line-3b"`` -> ``("line3", ("line-3", "line-3b"))``:
    a station login and the station ids it may write (without ``=``, the login's own name)."""
    name, sep, ids = text.partition("=")
    name = name.strip()
    found = tuple(i.strip() for i in ids.split(",") if i.strip()) if sep else (name,)
    _check_station(name, found)
    return name, found


def _check_station(name: str, ids: Sequence[str]) -> None:
    if not name or len(name) > 55:
        raise FleetError(f"station login {name!r} is not allowed; give a role name of 1 to 55 characters")
    if not ids or any(not i or "*" in i[:-1] for i in ids):
        raise FleetError(f"station ids {list(ids)!r} for {name} are not allowed; give one or more ids (the "
                         "stations' [station] id), e.g. line-3; a trailing * allows every id that starts so (line-3*)")


def station_check(ids: Sequence[str]) -> Any:
    """The SQL condition on ``station_id`` that ``ids`` allow: exact ids, and ``PREFIX*`` for ids that start so."""
    from psycopg import sql

    exact = [i for i in ids if not i.endswith("*")]
    terms = [sql.SQL("station_id IN ({})").format(sql.SQL(", ").join(map(sql.Literal, exact)))] if exact else []
    terms += [sql.SQL("starts_with(station_id, {})").format(sql.Literal(i[:-1])) for i in ids if i.endswith("*")]
    return sql.SQL(" OR ").join(terms)


def policy_name(login: str) -> str:
    """The name of a station login's policy on ``parts``."""
    return f"station {login}"


def _login(conn: Any, user: str) -> None:
    from psycopg import sql

    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(user)))


def _station_policy(conn: Any, login: str, ids: Sequence[str]) -> None:
    """In the caller's transaction: the login (created when missing) joins fleet_station, and its policy on parts
    (and on reviews, from migration 005 on) allows exactly ``ids`` (replacing an earlier one): rows it inserts, and
    rows it could ever update or delete."""
    from psycopg import sql

    if conn.execute("SELECT to_regclass('fleet_settings')").fetchone()[0] is None:
        raise FleetError("the fleet schema has no row-level security yet; run station fleet init --to URL first")
    _login(conn, login)
    conn.execute(sql.SQL("GRANT fleet_station TO {}").format(sql.Identifier(login)))
    policy, check = sql.Identifier(policy_name(login)), station_check(ids)
    conn.execute(sql.SQL("DROP POLICY IF EXISTS {} ON parts").format(policy))
    conn.execute(sql.SQL("CREATE POLICY {} ON parts FOR ALL TO {} USING ({}) WITH CHECK ({})").format(
        policy, sql.Identifier(login), check, check))
    if conn.execute("SELECT to_regclass('reviews')").fetchone()[0] is not None:  # migration 005: the same on reviews
        conn.execute(sql.SQL("DROP POLICY IF EXISTS {} ON reviews").format(policy))
        conn.execute(sql.SQL("CREATE POLICY {} ON reviews FOR ALL TO {} USING ({}) WITH CHECK ({})").format(
            policy, sql.Identifier(login), check, check))


def add_station(url: str, login: str, station_ids: Sequence[str] | None = None) -> None:
    """Let the login ``login`` forward the rows of ``station_ids`` (default: its own name; ``PREFIX*`` for every id
    that starts so), and no others: it is created without a password when missing, joins ``fleet_station``, and
    gets its own row-level security policy on ``parts`` (run again to change the ids). The user of ``url`` needs
    CREATEROLE and must own ``parts`` (the admin who ran ``station fleet init``)."""
    import psycopg

    ids = tuple(station_ids) if station_ids else (login,)
    _check_station(login, ids)
    with connect(url, "station fleet add-station") as conn:
        if schema_version(conn) < 3:
            raise FleetError(f"{destination(url)} has no fleet schema with row-level security; run station fleet "
                             "init --to URL first")
        try:
            with conn.transaction():
                _station_policy(conn, login, ids)
        except psycopg.Error as exc:
            raise FleetError(f"cannot add station login {login} on {destination(url)}: {str(exc).strip()}; the user "
                             "needs CREATEROLE and must own parts (the admin who ran station fleet init)") from None


def station_logins(url: str) -> dict[str, str | None]:
    """The members of ``fleet_station`` and the condition of their policy on ``parts`` (None: no policy, so they
    may insert nothing)."""
    with connect(url, "station fleet init") as conn:
        members = [r[0] for r in conn.execute(
            "SELECT m.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid "
            "JOIN pg_roles m ON m.oid = a.member WHERE g.rolname = 'fleet_station' ORDER BY 1")]
        policies = dict(conn.execute("SELECT policyname, with_check FROM pg_policies WHERE tablename = 'parts'")
                        .fetchall())
    return {m: policies.get(policy_name(m)) for m in members}


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
                  station: str | None = None, **identity: str | None) -> tuple[str, list[Any]]:
    """SQL filter over ``parts``, as :func:`station.rejectlog.fetch_rows` filters a local log: times, verdict, a
    station, and the part's identity (``part_id``, ``meas_id``, ``product_id``)."""
    try:
        return row_filter(since, until, verdict, station, mark="%s", time_param=lambda moment: moment, **identity)
    except RejectLogError as exc:
        raise FleetError(str(exc)) from None


def check_identity_columns(conn: Any, url: str, identity: dict[str, str | None]) -> bool:
    """True when ``parts`` has the identity columns (migration 004); a filter on them without it is a
    :class:`FleetError` that says to run ``fleet init``."""
    if schema_version(conn) >= IDENTITY_MIGRATION:
        return True
    wanted = [k for k, v in identity.items() if v is not None]
    if wanted:
        raise FleetError(f"{destination(url)} predates the part identity columns (migration 004), so it cannot "
                         f"filter on {', '.join(wanted)}; an admin runs station fleet init --to ADMIN_URL to add them")
    return False


def central_columns() -> list[str]:
    """The keys of an exported central row: the ledger's columns, then the central ones."""
    return list(COLUMNS) + [c for c in CENTRAL_EXTRA if c not in COLUMNS]


def fetch_central(url: str, since: str | datetime | None = None, until: str | datetime | None = None,
                  verdict: str = "all", station: str | None = None, **identity: str | None) -> list[dict[str, Any]]:
    """The matching rows of the fleet database as dicts keyed like a local ledger's rows (``COLUMNS``: ``id`` is
    the station's row id, ``time_utc`` the same ISO text) plus :data:`CENTRAL_EXTRA`; ordered by time, station,
    run, row. ``identity``: ``part_id``, ``meas_id``, ``product_id`` filters (exact match). A database before
    migration 004 reads NULL identities (and refuses a filter on them)."""
    import psycopg

    where, params = central_where(since, until, verdict, station, **identity)
    keys = central_columns()
    names = ["row_id AS id" if c == "id" else c for c in keys]
    with connect(url, "station export") as conn:
        if schema_version(conn) == 0:
            raise FleetError(f"{destination(url)} has no fleet schema; run station fleet init --to URL first")
        if not check_identity_columns(conn, url, identity):
            names = [f"NULL::text AS {c}" if c in IDENTITY_COLUMNS else c for c in names]
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


def fetch_central_reviews(url: str) -> list[dict[str, Any]]:
    """Every review in the fleet database (migration 005), by station and then oldest first, as dicts with the
    part's key (``station_id``, ``run_id``: ``None`` for ``''``, ``inspection_id``: the part's row id) and the
    review's ``id`` (its id in the station's ledger), ``time_utc`` (ISO text as in the ledger), ``reviewer``,
    ``mark``, ``note``."""
    import psycopg

    keys = ("station_id", "run_id", "inspection_id", "id", "time_utc", "reviewer", "mark", "note")
    with connect(url, "station export") as conn:
        if conn.execute("SELECT to_regclass('reviews')").fetchone()[0] is None:
            raise FleetError(f"{destination(url)} has no reviews yet (migration 005); an admin runs station fleet "
                             "init --to ADMIN_URL, then the stations' forwarders send their reviews")
        try:
            rows = [dict(zip(keys, r)) for r in conn.execute(
                "SELECT station_id, run_id, row_id, review_id, time_utc, reviewer, mark, note FROM reviews "
                "ORDER BY station_id, review_id")]
        except psycopg.Error as exc:
            raise FleetError(f"cannot read {destination(url)}: {str(exc).strip()}; the user needs SELECT on "
                             "reviews (GRANT fleet_qa TO user)") from None
    for row in rows:
        row["time_utc"] = format_utc(row["time_utc"])
        row["run_id"] = row["run_id"] or None
    return rows
