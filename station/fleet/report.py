"""``station fleet report``: yield, rejects by class and not-inspected counts across the fleet.

>>> rows = fleet_report("postgresql://qa@db.factory/fleet", since="2024-05-01", by="station")   # doctest: +SKIP
>>> print(format_table(rows))                                                                    # doctest: +SKIP

Grouped ``by`` station, day (UTC), shift (shifts start at the given UTC hours; a shift that runs past midnight
belongs to the day it started) or class. Yield is PASS parts over all parts the line saw (PASS + FAIL +
NOT_INSPECTED); GAP rows count as lost frames, outside the yield. ``by="class"`` lists FAIL parts by defect class
(a part with two classes counts under both; ``(none)`` for a part without labels) and NOT_INSPECTED parts by reason.
"""
from __future__ import annotations

import csv
import enum
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from station.fleet.central import FleetError, central_where, connect, destination, schema_version

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
    """``"6,14,22"`` -> ``(6, 14, 22)``: the UTC hours at which shifts start."""
    try:
        hours = tuple(sorted({int(h) for h in text.split(",") if h.strip()}))
    except ValueError:
        hours = ()
    if not hours or any(not 0 <= h < 24 for h in hours):
        raise FleetError(f"--shifts {text!r} is not allowed; give the UTC hours shifts start at, e.g. 6,14,22")
    return hours


def shift_of(moment: datetime, shifts: tuple[int, ...]) -> str:
    """The shift holding ``moment`` (a UTC hour), named by the day it started and its number from 1."""
    day = moment.date()
    started = [i for i, h in enumerate(shifts) if h <= moment.hour]
    if not started:  # before the first shift of the day: the last shift of the day before
        day = day.fromordinal(day.toordinal() - 1)
        index = len(shifts) - 1
    else:
        index = started[-1]
    return f"{day.isoformat()} S{index + 1} ({shifts[index]:02d}:00)"


def fleet_report(url: str, since: str | datetime, until: str | datetime | None = None, by: str = "station",
                 station: str | None = None, shifts: tuple[int, ...] = DEFAULT_SHIFTS) -> list[dict[str, Any]]:
    """The report's rows (dicts), in the order to show them."""
    import psycopg

    group = GroupBy(str(getattr(by, "value", by)))
    where, params = central_where(since, until, "all", station)
    with connect(url, "station fleet report") as conn:
        if schema_version(conn) == 0:
            raise FleetError(f"{destination(url)} has no fleet schema; run station fleet init --to URL first")
        try:
            if group is GroupBy.CLASS:
                return _by_class(conn, where, params)
            counts = conn.execute(
                "SELECT station_id, date_trunc('hour', time_utc AT TIME ZONE 'UTC') AS hour, verdict, count(*), "
                f"sum(frame_count), count(*) FILTER (WHERE rejected = 1) FROM parts{where} GROUP BY 1, 2, 3",
                params).fetchall()
        except psycopg.Error as exc:
            raise FleetError(f"cannot read {destination(url)}: {str(exc).strip()}; the user needs SELECT on parts "
                             "(GRANT fleet_qa TO user)") from None
    groups: dict[str, dict[str, Any]] = {}
    for station_id, hour, verdict, rows, frames, rejected in counts:
        key = {GroupBy.STATION: station_id, GroupBy.DAY: hour.date().isoformat(),
               GroupBy.SHIFT: shift_of(hour, shifts)}[group]
        g = groups.setdefault(key, {group.value: key, "parts": 0, "pass": 0, "fail": 0, "not_inspected": 0,
                                    "rejected": 0, "lost_frames": 0, "yield_pct": None})
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
