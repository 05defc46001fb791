"""The streaming option of the :class:`~inspection.inspector.Inspector`: a line-scan part is inspected while it is
still arriving, tile rows cut and scored as soon as their lines are in.

The source's assembler tells the inspector (a :class:`station.strips.PartListener`: ``Inspector(engine, overlap,
batch, rules, streaming=True)`` is the listener of a ``station.sources.linescan.LineScanSource`` and the inspector
of the ``station.pipeline.Line`` that runs it) when a part starts, after every block and when the part ends; the
inspector hands these calls to its :class:`PartStreams`. A worker thread then feeds each block to the part's
:class:`~inspection.scoring.PartScores`, the inspector's one scoring path, which cuts every tile row whose lines are
all in for each of the inspector's stages (segmentation through its engine, its classifier stage) and scores it while
acquisition goes on. When the last line is in, :meth:`PartScores.finish <inspection.scoring.PartScores.finish>` cuts
the rows that need it (the regular rows it completes and the tiler's last row, shifted back to end at the part's
border: its height is known only now in trigger mode), scores what is pending and stitches, exactly as for a frame
inspected whole, and the inspector itself judges the part (:meth:`Inspector.judge
<inspection.inspector.Inspector.judge>`). With a calibration profile the flat-field is applied to the new lines of
every block, before tiling, row for row as the whole part's correction would (the profile's ``correct_rows``).

The result is therefore the whole-image result to the bit (tests check it), with the same stage timings; a streamed
part's ``timings`` also carry, after ``total``, ``finish`` (the work after its last line) and ``backlog`` (how long
that work waited behind earlier blocks). Weights that prepare whole frames (a frame-wide gain, mirrored borders) are
not streamed: the inspector judges their parts when they are complete.

An incomplete part (lines missing, cut short...) always fails: see :meth:`Inspector.judge
<inspection.inspector.Inspector.judge>`.

For a streamed part :meth:`PartStreams.inspect` waits for the worker's result (``latency_ms`` runs from the part's
last line to the verdict); any other frame, or a part the worker could not take (more than
``max_parts_in_flight`` unfinished), is inspected whole, on the calling thread, by the inspector.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from inspection.errors import InspectionError
from inspection.scoring import NetworkCall, RowTiming
from inspection_core.records import Frame, InspectionResult

__all__ = ["NetworkCall", "PartReport", "PartStreams", "RowTiming"]

log = logging.getLogger(__name__)


@dataclass
class PartReport:
    """How one part was inspected: ``rows`` in the order they were cut (a row's time includes the network calls
    it completed), ``calls`` the network calls (segmentation chunks of ``batch`` tiles, GR chunks of up to 32
    patches); ``backlog_ms`` how long the part's finish waited behind earlier work after its last line;
    ``finish_ms`` the finish itself (the last rows, the stitch and the verdict); ``verdict_ns`` when the verdict
    was known; ``streamed`` False when it was inspected whole."""

    index: int
    streamed: bool
    rows: list[RowTiming] = field(default_factory=list)
    calls: list[NetworkCall] = field(default_factory=list)
    ended_ns: int = 0
    backlog_ms: float = 0.0
    finish_ms: float = 0.0
    verdict_ns: int = 0


class _Session:
    """One part being inspected: its stages, its outcome and its report."""

    def __init__(self, owner, index: int, width: int, expected_lines: int | None) -> None:
        self.owner, self.index, self.expected_lines = owner, index, expected_lines
        self.scores = owner.part_scores(width, expected_lines, streaming=True)  # the inspector's scoring path
        self.report = PartReport(index=index, streamed=True)
        self.calibration = owner.calibration
        self.corrected: np.ndarray | None = None  # flat-fielded rows 0 .. corrected_upto - 1
        self.corrected_upto = 0
        self.calibrate_s = 0.0
        self.done = threading.Event()
        self.cancelled = False
        self.error: BaseException | None = None
        self.outcome: tuple | None = None

    def _calibrated(self, lines: np.ndarray) -> np.ndarray:
        """``lines`` flat-fielded (new rows only; each row exactly as the whole part's correction makes it)."""
        cal = self.calibration
        if cal is None or cal.flatfield is None:
            return lines
        t0 = time.perf_counter()
        n = lines.shape[0]
        if self.corrected is None or self.corrected.shape[0] < n:
            have = 0 if self.corrected is None else self.corrected.shape[0]
            grown = np.empty((max(n, self.expected_lines or 0, 2 * have),) + lines.shape[1:], np.uint8)
            if self.corrected is not None:
                grown[: self.corrected_upto] = self.corrected[: self.corrected_upto]
            self.corrected = grown
        a = self.corrected_upto
        if n > a:
            self.corrected[a:n] = cal.correct_rows(lines[:n], a)
            self.corrected_upto = n
        self.calibrate_s += time.perf_counter() - t0
        return self.corrected[:n]

    def advance(self, lines: np.ndarray) -> None:
        """Cut and score every row whose lines are all in."""
        self.scores.advance(self._calibrated(lines))

    def finish(self, image: np.ndarray, gaps: Sequence[Sequence[int]], issues: Sequence[str]) -> None:
        """The rows that needed the last line, the stitch and the decision (the inspector's own)."""
        t0 = time.perf_counter()
        self.report.backlog_ms = (time.monotonic_ns() - self.report.ended_ns) / 1e6 if self.report.ended_ns else 0.0
        if self.calibration is not None:  # the part must fit the camera's profile (width, pixel format)
            self.calibration.check(image, what=f"part {self.index}")
        scores = self.scores.finish(self._calibrated(image))
        timings = {"calibrate": self.calibrate_s * 1e3} if self.calibration is not None else {}
        timings.update(scores.timings)
        judged = self.owner.judge(scores.mask, scores.labels, gaps, issues)
        self.report.rows, self.report.calls = self.scores.rows, self.scores.calls
        self.report.finish_ms = (time.perf_counter() - t0) * 1e3
        self.report.verdict_ns = time.monotonic_ns()
        self.outcome = (judged, scores.labels, scores.patches, timings)


class PartStreams:
    """The parts an inspector streams (see the module docstring): made by ``Inspector(..., streaming=True)``,
    which passes the part-listener calls and :meth:`inspect` on to it, and judges with its own stages.

    ``max_parts_in_flight`` bounds the parts being worked on at once: a part that starts while that many are
    unfinished is not streamed (it is inspected whole when the line asks for it), so memory stays bounded when
    inspection is slower than the camera. ``reports`` keeps the last parts' :class:`PartReport`.
    """

    def __init__(self, owner, max_parts_in_flight: int = 2, keep_reports: int = 16) -> None:
        if max_parts_in_flight < 1:
            raise InspectionError(f"max_parts_in_flight must be at least 1, got {max_parts_in_flight}")
        self.owner = owner  # the Inspector: its stages, calibration and decision
        self.max_parts_in_flight = max_parts_in_flight
        self.reports: collections.deque[PartReport] = collections.deque(maxlen=keep_reports)
        self.not_streamed = 0  # parts inspected whole because too many were in flight
        self.cancelled = 0  # parts whose frames never reached inspect() (dropped by the line)
        self._sessions: dict[int, _Session] = {}
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()  # bounded in effect: max_parts_in_flight parts, a job per block
        self._worker: threading.Thread | None = None

    # -- PartListener (called on the acquisition thread: only bookkeeping and queueing) ----------------------
    def part_started(self, index: int, width: int, expected_lines: int | None) -> None:
        with self._lock:
            busy = sum(not s.done.is_set() for s in self._sessions.values())
            if busy >= self.max_parts_in_flight:
                self.not_streamed += 1
                log.warning("part %d starts while %d parts are still being inspected: it will be inspected whole "
                            "when it is complete (inspection is slower than the camera)", index, busy)
                return
            self._sessions[index] = _Session(self.owner, index, width, expected_lines)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="streaming-inspection", daemon=True)
                self._worker.start()

    def lines_arrived(self, index: int, lines: np.ndarray) -> None:
        session = self._sessions.get(index)
        if session is not None:
            self._jobs.put((session, "advance", (lines,)))

    def part_ended(self, part) -> None:
        session = self._sessions.get(part.index)
        if session is not None:
            session.report.ended_ns = time.monotonic_ns()
            self._jobs.put((session, "finish", (part.image, part.gaps, part.issues)))

    def part_discarded(self, index: int) -> None:
        with self._lock:
            session = self._sessions.pop(index, None)
        if session is not None:
            session.cancelled = True

    # -- results ---------------------------------------------------------------------------------------------
    def inspect(self, frame: Frame) -> InspectionResult:
        """The result for ``frame``: the streamed part's (waiting for the worker), or the frame inspected whole
        by the inspector."""
        index = frame.meta.get("part")
        session = None
        if index is not None and frame.meta.get("first_line") is not None:
            with self._lock:
                session = self._sessions.pop(index, None)
                for older in [i for i in self._sessions if i < index]:  # parts the line never passed on
                    self._sessions.pop(older).cancelled = True
                    self.cancelled += 1
        if session is None:
            t0 = time.perf_counter()
            result = self.owner.inspect_whole(frame)
            self.reports.append(PartReport(index=-1 if index is None else index, streamed=False,
                                           finish_ms=(time.perf_counter() - t0) * 1e3,
                                           verdict_ns=time.monotonic_ns()))
            return result
        session.done.wait()
        if session.error is not None:
            raise session.error
        assert session.outcome is not None
        judged, labels, patches, timings = session.outcome
        self.reports.append(session.report)
        return self.owner.result(frame, judged, labels, patches, timings, verdict_ns=session.report.verdict_ns,
                                 after_total={"finish": session.report.finish_ms,
                                              "backlog": session.report.backlog_ms})

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the worker after the work already queued."""
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            session, step, args = job
            if session.cancelled or session.done.is_set():
                continue
            try:
                getattr(session, step)(*args)
            except BaseException as exc:  # noqa: BLE001 - reported to whoever waits for this part
                log.exception("streaming inspection of part %d failed", session.index)
                session.error = exc
                session.done.set()
                continue
            if step == "finish":
                session.done.set()
