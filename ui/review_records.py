"""The records of the review keys and QA's review window (issue 29), without Qt: what the station hands the panel and
the window, and what they hand back. ``station`` builds on these; the widgets are in :mod:`ui.panel_review` and
:mod:`ui.review_window`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from inspection_core.records import InspectionResult

GOOD, DEFECT = "good", "defect"
#: What each mark is called on screen.
MARK_WORDS = {GOOD: "GOOD PART", DEFECT: "DEFECT"}

PartKey = tuple[str, int, int]


def part_key(result: InspectionResult) -> PartKey:
    """Which part a result is, for the desk and the panel: its source, frame id and acquisition time stamp (the same
    for the result the panel shows and the entry the ledger records)."""
    frame = result.frame
    return frame.source, int(frame.frame_id), int(frame.timestamp_ns)


@dataclass(frozen=True)
class ReviewOutcome:
    """What became of one mark handed to a :class:`ReviewDesk`: recorded (``row_id``, ``review_id``, ``finding``:
    false reject, escape, confirmed, not inspected) or not (``error`` says why, nothing was recorded)."""

    part: PartKey
    mark: str
    reviewer: str
    row_id: int | None = None
    review_id: int | None = None
    finding: str = ""
    error: str | None = None

    @property
    def recorded(self) -> bool:
        return self.error is None and self.review_id is not None


class ReviewDesk(Protocol):
    """Where the panel's marks go. ``submit`` must return at once (the GUI thread calls it); ``outcomes`` returns,
    and forgets, what became of the marks since the last call, oldest first."""

    reviewer: str

    def submit(self, result: InspectionResult, mark: str) -> None: ...

    def outcomes(self) -> list[ReviewOutcome]: ...


def outcome_text(outcome: ReviewOutcome, name: str) -> str:
    """The confirmation line of a mark, e.g. ``✔ row 123 (P-1 #41): GOOD PART by alice: false reject``."""
    if outcome.recorded:
        return (f"✔ row {outcome.row_id} ({name}): {MARK_WORDS[outcome.mark]} by {outcome.reviewer}"
                + (f": {outcome.finding}" if outcome.finding else ""))
    return f"✘ {name} not marked {MARK_WORDS.get(outcome.mark, outcome.mark)}: {outcome.error}"


def marker_text(outcome: ReviewOutcome | None) -> str:
    """The Review cell of a part in the rejects table: ``✔ good`` / ``✔ defect`` once recorded, else empty."""
    return "" if outcome is None or not outcome.recorded else f"✔ {outcome.mark}"


#: The verdict filter's choices (the ledger's verdicts of reviewable rows; ``all`` = every reviewable row).
VERDICT_CHOICES = ("all", "fail", "pass", "not_inspected")
#: The review filter's choices: what the latest review of a row says, or whether it has one.
REVIEW_CHOICES = ("any", "unreviewed", "reviewed", "false reject", "escape", "confirmed")
ANY = "any"


@dataclass(frozen=True)
class ReviewFilters:
    """Which rows the window lists. ``since`` / ``until``: the row's time, ``YYYY-MM-DD`` or ISO 8601 (no zone:
    UTC; a bare ``until`` date includes that day); ``defect_class``: a defect's label or a classifier label;
    ``verdict``: one of :data:`VERDICT_CHOICES`; ``review``: one of :data:`REVIEW_CHOICES`. None: no filter."""

    since: str | None = None
    until: str | None = None
    defect_class: str | None = None
    station: str | None = None
    part_id: str | None = None
    verdict: str = "all"
    review: str = ANY


@dataclass(frozen=True)
class ReviewItem:
    """One ledger row as the window shows it. ``image`` / ``overlay``: the files the row names (absolute; a file
    that no longer exists was pruned by retention), None when none was saved. ``review``: its latest review
    (``mark``, ``finding``, ``reviewer``, ``time_utc``, ``note``, ``count``: how many it has), None when it has none."""

    row_id: int
    time_utc: str
    verdict: str
    station_id: str | None = None
    part_id: str | None = None
    file: str | None = None
    defects: tuple[dict[str, Any], ...] = ()
    labels: tuple[str, ...] = ()
    image: Path | None = None
    overlay: Path | None = None
    reason: str | None = None
    detail: str | None = None
    engine_id: str = ""
    review: dict[str, Any] | None = field(default=None, compare=False)


class ReviewSource(Protocol):
    """What the window reads and writes. ``items``: the rows ``filters`` select, newest first, at most ``limit``,
    and how many match; ``choices``: the classes and stations to offer in the filters; ``mark``: record one review
    of row ``row_id`` by :attr:`reviewer` and return the row's latest review as :attr:`ReviewItem.review` holds it
    (raises with a message for the user when it cannot)."""

    reviewer: str
    where: str

    def items(self, filters: ReviewFilters, limit: int) -> tuple[list[ReviewItem], int]: ...

    def choices(self) -> dict[str, list[str]]: ...

    def mark(self, row_id: int, mark: str) -> dict[str, Any]: ...
