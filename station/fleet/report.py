"""``station fleet report``: yield, rejects by class and not-inspected counts across the fleet.

For example (a PostgreSQL server is needed)::

    rows = fleet_report("postgresql://qa@db.factory/fleet", since="2024-05-01", by="shift", tz="Europe/Berlin")
    print(format_table(rows))

Grouped ``by`` station, day, shift or class. Days and shifts are local to ``tz`` (an IANA zone, UTC by default;
:mod:`zoneinfo`): shifts start at the given local hours, a shift that runs past midnight belongs to the day it
started, and a day or shift spanning a daylight-saving change is as long as the clock says (column ``hours``: 7 or 9
for an eight-hour night shift on a change night in Europe). Their bounds are computed here as UTC instants and the
rows are counted between them in the database (``width_bucket``), so no row is misplaced around a change. A shift
that starts in the hour the clock skips starts when the clock jumps; one that starts in the hour that repeats
starts at its first occurrence. Yield is PASS parts over all parts the line saw (PASS + FAIL + NOT_INSPECTED); GAP
rows count as lost frames, outside the yield. ``by="class"`` lists FAIL parts by defect class (a part with two
classes counts under both; ``(none)`` for a part without labels) and NOT_INSPECTED parts by reason.
"""
from __future__ import annotations

import csv
import enum
import io
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from station.fleet.central import (FleetError, central_where, check_identity_columns, connect, destination,
                                   schema_version)
from station.rejectlog import RejectLogError, parse_time

DEFAULT_SHIFTS = (6, 14, 22)
_PART_VERDICTS = ("PASS", "FAIL", "NOT_INSPECTED")


class GroupBy(str, enum.Enum):
    STATION = "station"
    DAY = "day"
    SHIFT = "shift"
    CLASS = "class"


class ReportFormat(str, enum.Enum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PNG = "png"


def parse_shifts(text: str) -> tuple[int, ...]:
    """``"6,14,22"`` -> ``(6, 14, 22)``: the local hours at which shifts start."""
    try:
        hours = tuple(sorted({int(h) for h in text.split(",") if h.strip()}))
    except ValueError:
        hours = ()
    if not hours or any(not 0 <= h < 24 for h in hours):
        raise FleetError(f"--shifts {text!r} is not allowed; give the local hours shifts start at, e.g. 6,14,22")
    return hours


def parse_zone(name: str | ZoneInfo) -> ZoneInfo:
    """The time zone ``name`` (IANA, e.g. ``Europe/Berlin``, or ``UTC``) from :mod:`zoneinfo`."""
    if isinstance(name, ZoneInfo):
        return name
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise FleetError(f"--tz {name!r} is not a time zone here; give an IANA name such as Europe/Berlin or UTC "
                         "(the system's zoneinfo files, or pip install tzdata)") from None


@dataclass(frozen=True)
class Period:
    """One day or shift: where it starts (a UTC instant), its name, and its length on the clock in hours."""

    start: datetime
    name: str
    hours: float


def periods(first: date, last: date, zone: ZoneInfo, starts: tuple[int, ...]) -> list[Period]:
    """The periods starting at the local hours ``starts`` of each day from ``first`` to ``last``, in time order,
    plus the first period of the day after (so each one's length is known). A day is ``starts=(0,)``."""
    bounds = []
    day = first
    while day <= last + timedelta(days=1):
        for i, hour in enumerate(starts):
            # fold=0: a skipped hour maps to the moment the clock jumps, a repeated hour to its first occurrence
            moment = datetime(day.year, day.month, day.day, hour, tzinfo=zone).astimezone(timezone.utc)
            name = day.isoformat() if starts == (0,) else f"{day.isoformat()} S{i + 1} ({hour:02d}:00)"
            bounds.append((moment, name))
        day += timedelta(days=1)
    bounds.sort(key=lambda b: b[0])
    out = []
    for (start, name), (end, _) in zip(bounds, bounds[1:]):
        hours = round((end - start).total_seconds() / 3600, 2)
        out.append(Period(start, name, int(hours) if hours == int(hours) else hours))
    return out


def shift_of(moment: datetime, shifts: tuple[int, ...], tz: str | ZoneInfo = "UTC") -> str:
    """The shift holding ``moment`` (naive: UTC) in zone ``tz``, named by the local day it started and its number
    from 1, e.g. ``2024-05-31 S3 (22:00)``."""
    zone = parse_zone(tz)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    local_day = moment.astimezone(zone).date()
    found = [p for p in periods(local_day - timedelta(days=1), local_day, zone, shifts) if p.start <= moment]
    return found[-1].name


def local_time(value: str | datetime, zone: ZoneInfo, end: bool = False) -> datetime:
    """``--since``/``--until`` as an aware datetime: a time without an offset, or a bare date (its local midnight;
    with ``end``, the last microsecond of that local day), is in ``zone``."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=zone)
    text = value.strip()
    try:
        parse_time(text)  # the same formats and message as everywhere else
    except RejectLogError as exc:
        raise FleetError(str(exc)) from None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        day = date.fromisoformat(text) + timedelta(days=1 if end else 0)
        midnight = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(timezone.utc)
        return midnight - timedelta(microseconds=1) if end else midnight
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def fleet_report(url: str, since: str | datetime, until: str | datetime | None = None, by: str = "station",
                 station: str | None = None, shifts: tuple[int, ...] = DEFAULT_SHIFTS,
                 tz: str | ZoneInfo = "UTC", **identity: str | None) -> list[dict[str, Any]]:
    """The report's rows (dicts), in the order to show them; days, shifts and times without an offset in ``tz``;
    ``identity``: only the rows of a product, part or measurement (``product_id``, ``part_id``, ``meas_id``)."""
    import psycopg

    group = GroupBy(str(getattr(by, "value", by)))
    zone = parse_zone(tz)
    where, params = central_where(local_time(since, zone), None if until is None else local_time(until, zone, True),
                                  "all", station, **identity)
    counting = "verdict, count(*), sum(frame_count), count(*) FILTER (WHERE rejected = 1)"
    spans: list[Period] = []
    with connect(url, "station fleet report") as conn:
        if schema_version(conn) == 0:
            raise FleetError(f"{destination(url)} has no fleet schema; run station fleet init --to URL first")
        check_identity_columns(conn, url, identity)
        try:
            if group is GroupBy.CLASS:
                return _by_class(conn, where, params)
            if group is GroupBy.STATION:
                counts = conn.execute(f"SELECT station_id, {counting} FROM parts{where} GROUP BY 1, 2",
                                      params).fetchall()
            else:
                low, high = conn.execute(f"SELECT min(time_utc), max(time_utc) FROM parts{where}", params).fetchone()
                if low is None:
                    return []
                spans = periods(low.astimezone(zone).date() - timedelta(days=1), high.astimezone(zone).date(), zone,
                                shifts if group is GroupBy.SHIFT else (0,))
                scope = f"{where} AND" if where else " WHERE"
                counts = conn.execute(  # bucket i (from 1): the i-th period; rows past `high` wait for the next run
                    f"SELECT width_bucket(time_utc, %s::timestamptz[]), {counting} FROM parts{scope} "
                    "time_utc BETWEEN %s AND %s GROUP BY 1, 2", [[p.start for p in spans], *params, low, high]
                ).fetchall()
        except psycopg.Error as exc:
            raise FleetError(f"cannot read {destination(url)}: {str(exc).strip()}; the user needs SELECT on parts "
                             "(GRANT fleet_qa TO user)") from None
    groups: dict[Any, dict[str, Any]] = {}
    for key, verdict, rows, frames, rejected in counts:
        if group is GroupBy.STATION:
            head = {group.value: key}
        else:
            period = spans[key - 1]
            head = {group.value: period.name, "hours": period.hours}
        g = groups.setdefault(key, {**head, "parts": 0, "pass": 0, "fail": 0, "not_inspected": 0, "rejected": 0,
                                    "lost_frames": 0, "yield_pct": None})
        if verdict in _PART_VERDICTS:
            g["parts"] += rows
            g[verdict.lower()] += rows
            g["rejected"] += rejected
        else:
            g["lost_frames"] += int(frames or 0)
    for g in groups.values():
        g["yield_pct"] = round(100.0 * g["pass"] / g["parts"], 2) if g["parts"] else None
    return [groups[k] for k in sorted(groups)]


def _by_class(conn: Any, where: str, params: list[Any]) -> list[dict[str, Any]]:
    scope = f"{where} AND" if where else " WHERE"
    fails = conn.execute(
        "SELECT cls, count(*), count(DISTINCT station_id) FROM parts CROSS JOIN LATERAL unnest(CASE WHEN "
        "cardinality(defect_classes) = 0 THEN ARRAY['(none)'] ELSE defect_classes END) AS cls"
        f"{scope} verdict = 'FAIL' GROUP BY cls ORDER BY 2 DESC, 1", params).fetchall()
    skipped = conn.execute(
        f"SELECT coalesce(reason, '(none)'), count(*), count(DISTINCT station_id) FROM parts{scope} "
        "verdict = 'NOT_INSPECTED' GROUP BY 1 ORDER BY 2 DESC, 1", params).fetchall()
    return ([{"class": c, "verdict": "FAIL", "parts": n, "stations": s} for c, n, s in fails]
            + [{"class": f"not inspected: {r}", "verdict": "NOT_INSPECTED", "parts": n, "stations": s}
               for r, n, s in skipped])


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a plain text table (``-`` for an empty cell)."""
    if not rows:
        return "(no rows in that window)\n"
    keys = list(rows[0])
    cells = [[("-" if r[k] is None else str(r[k])) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "  ".join
    out = [line(k.ljust(w) for k, w in zip(keys, widths))]
    out += [line((c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(row, widths)))
            for row in cells]
    return "\n".join(out) + "\n"


def render(rows: list[dict[str, Any]], fmt: str, out: str | Path | None, title: str = "") -> str | None:
    """Write the report as a table, CSV, JSON (to ``out``, or return the text when ``out`` is None or ``-``) or a
    PNG chart (``out`` required): yield by group, or parts by class."""
    kind = ReportFormat(str(getattr(fmt, "value", fmt)))
    if kind is ReportFormat.PNG:
        if out is None or str(out) == "-":
            raise FleetError("--format png needs --out FILE.png")
        _chart(rows, Path(out), title)
        return None
    if kind is ReportFormat.TABLE:
        text = format_table(rows)
    elif kind is ReportFormat.JSON:
        text = json.dumps(rows, indent=1) + "\n"
    else:
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        text = buffer.getvalue()
    if out is None or str(out) == "-":
        return text
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"cannot write {out}: {exc}; check the folder exists and is writable") from None
    return None


def _chart(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 4), dpi=100)
    if rows and "yield_pct" in rows[0]:
        key = next(iter(rows[0]))
        ax.bar([str(r[key]) for r in rows], [r["yield_pct"] or 0.0 for r in rows], color="#3a7d44")
        ax.set_ylabel("yield (%)")
        ax.set_ylim(0, 100)
    else:
        ax.bar([str(r["class"]) for r in rows], [r["parts"] for r in rows], color="#b03a2e")
        ax.set_ylabel("parts")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    try:
        fig.savefig(out)
    except OSError as exc:
        raise FleetError(f"cannot write {out}: {exc}; check the folder exists and is writable") from None
    finally:
        plt.close(fig)
