"""The panel's review keys on the line's own ledger (issue 29): the operator's marks recorded by
:meth:`RejectLog.add_reviews`, the append-only path ``station review --mark`` takes.

The panel knows results, the ledger knows rows: :class:`LineReviews` listens to the line (``on_row``, on the logging
thread, after each row is committed) and remembers which row each recent part got. A mark is handed over by the GUI
thread (:meth:`LineReviews.submit` returns at once) and recorded on the desk's own thread, so neither the panel nor
the line waits for it: the write takes the ledger's lock for one short transaction (one row, one fsync), the time a
part's row takes, and while the line's logging thread holds that lock (a row with its images) the review waits, not
the line. A part whose row is not committed yet is waited for a moment (``wait_s``); one that never got a row (the
line refused it, the ledger failed) is not marked, and the panel says so. After the line has closed its ledger (the
line stopped, the window still open), marks are recorded through a ledger opened for them, as ``station review``
does.

For example, as ``station run`` wires it::

    desk = LineReviews(line.reject_log, reviewer="alice")
    line.listeners.append(desk)                 # before line.start()
    panel = StationPanel(line.feed, line.stats, reviews=desk)
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from inspection_core.records import InspectionResult
from station.errors import LedgerError, RejectLogError
from station.rejectlog import RejectLog
from ui.review_records import PartKey, ReviewOutcome, part_key

log = logging.getLogger(__name__)

#: How many recent parts' ledger rows the desk remembers (the panel lists 20 rejects).
KEEP_PARTS = 4096


class LineReviews:
    """The :class:`~ui.panel_review.ReviewDesk` of a running line: marks by ``reviewer`` recorded on ``ledger`` (the
    line's :class:`~station.rejectlog.RejectLog`). Add it to the line's listeners before the line starts; call
    :meth:`close` when the panel has closed (it waits for the marks still being recorded)."""

    def __init__(self, ledger: RejectLog, reviewer: str, *, wait_s: float = 2.0, keep: int = KEEP_PARTS) -> None:
        if not reviewer.strip():
            raise RejectLogError("the operator's name is empty; pass --operator NAME (default: the OS user)")
        self.ledger = ledger
        self.reviewer = reviewer
        self.wait_s = float(wait_s)
        self._keep = int(keep)
        self._rows: collections.OrderedDict[PartKey, int] = collections.OrderedDict()
        self._changed = threading.Condition()
        self._done: collections.deque[ReviewOutcome] = collections.deque()
        self._done_lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="panel-reviews")

    # -- the line's side (logging thread) ------------------------------------------------------------------
    def on_row(self, row: dict[str, Any], entry: Any) -> None:
        """A ledger row was committed: remember the row of an inspected part (what the panel shows)."""
        if not isinstance(entry, InspectionResult):
            return
        with self._changed:
            self._rows[part_key(entry)] = int(row["id"])
            while len(self._rows) > self._keep:
                self._rows.popitem(last=False)
            self._changed.notify_all()

    def row_of(self, result: InspectionResult) -> int | None:
        """The ledger row of ``result``, None while it has none (not committed yet, or refused)."""
        with self._changed:
            return self._rows.get(part_key(result))

    # -- the panel's side (GUI thread) ----------------------------------------------------------------------
    def submit(self, result: InspectionResult, mark: str) -> None:
        """Record ``mark`` (good or defect) of ``result`` on the desk's thread; returns at once."""
        self._worker.submit(self._record, part_key(result), mark)

    def outcomes(self) -> list[ReviewOutcome]:
        """What became of the marks since the last call, oldest first."""
        with self._done_lock:
            taken = list(self._done)
            self._done.clear()
        return taken

    def close(self) -> None:
        """Wait for the marks being recorded, then stop the desk's thread."""
        self._worker.shutdown(wait=True)

    # -- the desk's thread ------------------------------------------------------------------------------------
    def _wait_for_row(self, key: PartKey) -> int | None:
        deadline = time.monotonic() + self.wait_s
        with self._changed:
            while key not in self._rows:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._rows[key]

    def _record(self, key: PartKey, mark: str) -> None:
        try:
            outcome = self._outcome(key, mark)
        except Exception as exc:  # noqa: BLE001 - the panel must hear of every mark, recorded or not
            log.exception("the review of frame %s could not be recorded", key[1])
            outcome = ReviewOutcome(key, mark, self.reviewer, error=f"{type(exc).__name__}: {exc}")
        with self._done_lock:
            self._done.append(outcome)

    def _outcome(self, key: PartKey, mark: str) -> ReviewOutcome:
        row_id = self._wait_for_row(key)
        if row_id is None:
            return ReviewOutcome(key, mark, self.reviewer, error=(
                "it has no ledger row (not recorded yet, or refused by a failed ledger), so it cannot be "
                "reviewed; mark it once its row is recorded, or with station review"))
        try:
            recorded = self._add(row_id, mark)
        except (RejectLogError, LedgerError) as exc:
            return ReviewOutcome(key, mark, self.reviewer, row_id=row_id, error=str(exc))
        log.info("review %s: row %s marked %s by %s on the panel (%s)", recorded["id"], row_id, mark, self.reviewer,
                 recorded["finding"])
        return ReviewOutcome(key, mark, self.reviewer, row_id=row_id, review_id=int(recorded["id"]),
                             finding=str(recorded["finding"]))

    def _add(self, row_id: int, mark: str) -> dict[str, Any]:
        if not self.ledger.closed:
            try:
                return self.ledger.add_reviews([(row_id, mark)], self.reviewer)[0]
            except RejectLogError:
                if not self.ledger.closed:
                    raise
        # the line has stopped and closed its ledger (the window is still open): record as station review does
        with RejectLog(self.ledger.db_path, save_images=False) as ledger:
            return ledger.add_reviews([(row_id, mark)], self.reviewer)[0]
