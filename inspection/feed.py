"""Thread-safe hand-over of results from the pipeline to displays.

The pipeline publishes every result; a display polls on its own timer and draws only the latest one, so a
slow display never makes a queue grow and never blocks inference.
"""
from __future__ import annotations

import collections
import threading

from inspection_core.records import InspectionResult, Verdict


class ResultFeed:
    """The latest result (with a sequence number, so a display redraws only when it changed) and the last
    ``keep_rejects`` rejected results, newest first.

    >>> feed = ResultFeed()
    >>> feed.latest()
    (0, None)
    """

    def __init__(self, keep_rejects: int = 20) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._latest: InspectionResult | None = None
        self._rejects: collections.deque[InspectionResult] = collections.deque(maxlen=keep_rejects)

    def publish(self, result: InspectionResult) -> None:
        with self._lock:
            self._seq += 1
            self._latest = result
            if result.verdict is Verdict.FAIL:
                self._rejects.appendleft(result)

    def latest(self) -> tuple[int, InspectionResult | None]:
        with self._lock:
            return self._seq, self._latest

    def recent_rejects(self) -> list[InspectionResult]:
        with self._lock:
            return list(self._rejects)
