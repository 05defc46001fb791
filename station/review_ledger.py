"""What QA's review window (:mod:`ui.review_window`) reads and writes on a ledger: the rows worth a review with their
latest review, and new reviews through :meth:`RejectLog.add_reviews` (append-only, as ``station review --mark``).

The rows worth a review are the rejects (``rejected = 1``: FAIL, and NOT_INSPECTED when it counts as a reject), the
passes with a saved image (the sampled share, ``[log] save_pass_share``) and any row that already has a review;
never a GAP row. For example::

    with LedgerReviewSource("station-data/rejects.db", reviewer="alice") as source:
        items, matching = source.items(ReviewFilters(review="unreviewed", defect_class="crack"), limit=100)
        source.mark(items[0].row_id, "good")
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from station.errors import RejectLogError
from station.rejectlog import RejectLog, decode_labels, open_readonly, parse_time, review_finding, row_filter
from ui.review_records import REVIEW_CHOICES, VERDICT_CHOICES, ReviewFilters, ReviewItem

#: The row's columns the window shows (``i.``: the inspections row).
_ROW = ("id", "time_utc", "verdict", "station_id", "part_id", "file", "defects_json", "labels_json", "image_path",
        "overlay_path", "reason", "detail", "engine_id")
_LATEST = ("mark", "reviewer", "time_utc", "note", "id")
#: A row worth a review (``i``: the inspections row, ``lr``: its latest review, if any).
_REVIEWABLE = ("i.verdict != 'GAP' AND (i.rejected = 1 OR (i.verdict = 'PASS' AND i.image_path IS NOT NULL) "
               "OR lr.rid IS NOT NULL)")
#: The rows a class names: a defect's label, or a classifier label (a list, or ``{"labels": [...]}``).
_CLASS = ("(EXISTS (SELECT 1 FROM json_each(i.defects_json) d WHERE json_extract(d.value, '$.label') = ?) "
          "OR EXISTS (SELECT 1 FROM json_each(CASE json_type(i.labels_json) WHEN 'array' THEN i.labels_json "
          "ELSE json_extract(i.labels_json, '$.labels') END) c WHERE c.value = ?))")
#: What the latest review says (``r``) of the verdict, for the review filter.
_FINDINGS = {
    "unreviewed": "lr.rid IS NULL",
    "reviewed": "lr.rid IS NOT NULL",
    "false reject": "r.mark = 'good' AND i.verdict = 'FAIL'",
    "escape": "r.mark = 'defect' AND i.verdict = 'PASS'",
    "confirmed": "((r.mark = 'defect' AND i.verdict = 'FAIL') OR (r.mark = 'good' AND i.verdict = 'PASS'))",
}


class LedgerReviewSource:
    """The :class:`~ui.review_window.ReviewSource` of the ledger at ``db``: reads on a read-only connection (the
    station may be writing the file), reviews by ``reviewer`` recorded by a :class:`RejectLog` opened for them (which
    brings a ledger older than schema 6 up to date first, as ``station review --mark`` does)."""

    def __init__(self, db: str | Path, reviewer: str) -> None:
        self.db = Path(db)
        self.where = str(self.db)
        if not reviewer.strip():
            raise RejectLogError("the reviewer's name is empty; give --by NAME")
        self.reviewer = reviewer
        open_readonly(self.db).close()  # a ledger, not some other file: refused before it is upgraded or written
        self._writer: RejectLog | None = RejectLog(self.db, save_images=False)
        self._reader: sqlite3.Connection | None = open_readonly(self.db)

    def __enter__(self) -> LedgerReviewSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the ledger; safe to call twice."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RejectLogError(f"the review of {self.db} is closed")
        return self._reader

    def items(self, filters: ReviewFilters, limit: int) -> tuple[list[ReviewItem], int]:
        """The rows ``filters`` select, newest first, at most ``limit``; and how many match."""
        if filters.verdict not in VERDICT_CHOICES:
            raise RejectLogError(f"verdict {filters.verdict!r}: use one of {', '.join(VERDICT_CHOICES)}")
        if filters.review not in REVIEW_CHOICES:
            raise RejectLogError(f"review {filters.review!r}: use one of {', '.join(REVIEW_CHOICES)}")
        for name, value in (("From", filters.since), ("to", filters.until)):
            if value is not None:
                try:
                    parse_time(value)
                except RejectLogError as exc:
                    raise RejectLogError(f"{name}: {exc}") from None
        where, params = row_filter(filters.since, filters.until, filters.verdict, filters.station,
                                   part_id=filters.part_id)
        clauses = [_REVIEWABLE]
        if filters.defect_class:
            clauses.append(_CLASS)
            params += [filters.defect_class, filters.defect_class]
        if filters.review in _FINDINGS:
            clauses.append(_FINDINGS[filters.review])
        body = (f"FROM (SELECT * FROM inspections{where}) AS i "
                "LEFT JOIN (SELECT inspection_id, MAX(id) AS rid, COUNT(*) AS n FROM reviews "
                "GROUP BY inspection_id) AS lr ON lr.inspection_id = i.id "
                "LEFT JOIN reviews AS r ON r.id = lr.rid WHERE " + " AND ".join(clauses))
        columns = ", ".join([f"i.{c}" for c in _ROW] + [f"r.{c}" for c in _LATEST] + ["lr.n"])
        conn = self._read()
        try:
            matching = int(conn.execute(f"SELECT COUNT(*) {body}", params).fetchone()[0])
            found = conn.execute(f"SELECT {columns} {body} ORDER BY i.id DESC LIMIT ?", [*params, int(limit)])
            return [self._item(values) for values in found], matching
        except sqlite3.Error as exc:
            raise RejectLogError(f"cannot read {self.db}: {exc}") from None

    def _item(self, values: tuple) -> ReviewItem:
        row = dict(zip(_ROW, values[:len(_ROW)]))
        mark, reviewer, time_utc, note, review_id = values[len(_ROW):len(_ROW) + len(_LATEST)]
        review = None
        if review_id is not None:
            review = {"id": review_id, "mark": mark, "finding": review_finding(row["verdict"], mark),
                      "reviewer": reviewer, "time_utc": time_utc, "note": note, "count": int(values[-1])}
        labels, _ = decode_labels(row["labels_json"] or "[]")
        return ReviewItem(
            row_id=int(row["id"]), time_utc=row["time_utc"], verdict=row["verdict"], station_id=row["station_id"],
            part_id=row["part_id"], file=row["file"], defects=tuple(json.loads(row["defects_json"] or "[]")),
            labels=tuple(labels), image=self._path(row["image_path"]), overlay=self._path(row["overlay_path"]),
            reason=row["reason"], detail=row["detail"], engine_id=row["engine_id"] or "", review=review)

    def _path(self, relative: str | None) -> Path | None:
        return None if not relative else (self.db.parent / relative).resolve()

    def choices(self) -> dict[str, list[str]]:
        """The defect classes (defect labels and classifier labels) and station ids in the ledger, sorted."""
        conn = self._read()
        try:
            classes = {value for (value,) in conn.execute(
                "SELECT DISTINCT json_extract(d.value, '$.label') FROM inspections AS i, json_each(i.defects_json) "
                "AS d WHERE i.defects_json != '[]'") if value}
            classes |= {value for (value,) in conn.execute(
                "SELECT DISTINCT c.value FROM inspections AS i, json_each(CASE json_type(i.labels_json) WHEN 'array' "
                "THEN i.labels_json ELSE json_extract(i.labels_json, '$.labels') END) AS c "
                "WHERE i.labels_json NOT IN ('[]', '') AND c.type = 'text'") if value}
            stations = [value for (value,) in conn.execute(
                "SELECT DISTINCT station_id FROM inspections WHERE station_id IS NOT NULL ORDER BY station_id")]
        except sqlite3.Error as exc:
            raise RejectLogError(f"cannot read {self.db}: {exc}") from None
        return {"classes": sorted(classes), "stations": stations}

    def mark(self, row_id: int, mark: str) -> dict[str, Any]:
        """Record one review of ``row_id`` by :attr:`reviewer`; returns the row's latest review (this one), with how
        many it has."""
        if self._writer is None:
            raise RejectLogError(f"the review of {self.db} is closed")
        recorded = self._writer.add_reviews([(row_id, mark)], self.reviewer)[0]
        count = self._read().execute("SELECT COUNT(*) FROM reviews WHERE inspection_id = ?", (row_id,)).fetchone()[0]
        return {key: recorded[key] for key in ("id", "mark", "finding", "reviewer", "time_utc", "note")} | {
            "count": int(count)}
