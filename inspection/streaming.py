"""The streaming option of the :class:`~inspection.inspector.Inspector`: a line-scan part is inspected while it is
still arriving, tile rows cut and scored as soon as their lines are in.

>>> inspector = Inspector(engine, overlap=32, batch=32, rules=rules, streaming=True)      # doctest: +SKIP
>>> source = LineScanSource(replay, part_lines=10240, listener=inspector)                  # doctest: +SKIP
>>> Line(source, inspector, reject_log).run()                                              # doctest: +SKIP

The source's assembler tells the inspector (a :class:`station.strips.PartListener`) when a part starts, after
every block and when the part ends; the inspector hands these calls to its :class:`PartStreams`. A worker thread
then cuts every tile row whose lines are all in (the rows of the tiler: origins every ``tile - overlap`` lines) for
each of the inspector's stages — segmentation through its engine, its classifier stage
(:class:`inspection.classifier.ClassifierStage`) — and scores it while acquisition goes on. When the last line is
in, only the rows that need it remain: the regular rows it completes and the tiler's last row, shifted back to end
at the part's border (its height is known only now in trigger mode). Then the scores are stitched, and the
inspector itself judges the part (:meth:`Inspector.judge <inspection.inspector.Inspector.judge>`), as it judges a
whole frame. With a calibration profile the flat-field is applied to the new lines of every block, before tiling,
row for row as the whole part's correction would (the profile's ``correct_rows``).

The result is the whole-image result, not an approximation:

- tiles are cut from the same rows with the same padding (each row is cut by :func:`inspection_core.tiling.tile_image`
  with a one-row plan, whose column origins and padding are those of the whole-image plan);
- segmentation tiles go to the engine in chunks of ``batch`` in plan order, and the classifier's patches in GR's
  chunks of :data:`inspection.classifier.MAX_BATCH` in plan order (``mode = "batch"``: GR's relations span the same
  patches), so every network call sees the same tensors; in ``mode = "bank"`` a patch's scores do not depend on the
  others, and each row is scored as soon as it is cut;
- the tile scores are stitched by :class:`inspection_core.tiling.Stitcher`, the stitcher of
  :func:`~inspection_core.tiling.untile`, fed in plan order; the lines no later tile can reach are divided as soon
  as the row is in (tests check equality to the bit).

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
from typing import Any, Sequence

import numpy as np

from inspection.classifier import MAX_BATCH
from inspection.errors import InspectionError
from inspection_core.preprocess import defect_scores, normalize_tiles, prepare_image
from inspection_core.records import Frame, InspectionResult
from inspection_core.tiling import Stitcher, plan_tiles, tile_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowTiming:
    """One tile row scored by one stage: where, how many tiles, how long, when it was done (monotonic ns)."""

    stage: str  # "segment" or "classify"
    y: int
    tiles: int
    seconds: float
    done_ns: int


@dataclass(frozen=True)
class NetworkCall:
    """One network call of a stage: how many tiles, how long, when it ended (monotonic ns)."""

    stage: str
    tiles: int
    seconds: float
    done_ns: int


@dataclass
class PartReport:
    """How one part was inspected: ``rows`` in the order they were cut (a row's time includes the network calls
    it completed), ``calls`` the network calls (segmentation chunks of ``batch`` tiles, GR chunks of up to 32
    patches); ``backlog_ms`` how long the part's
    finish waited behind earlier work after its last line; ``finish_ms`` the finish itself (the last rows, the
    stitch and the verdict); ``verdict_ns`` when the verdict was known; ``streamed`` False when it was inspected
    whole."""

    index: int
    streamed: bool
    rows: list[RowTiming] = field(default_factory=list)
    calls: list[NetworkCall] = field(default_factory=list)
    ended_ns: int = 0
    backlog_ms: float = 0.0
    finish_ms: float = 0.0
    verdict_ns: int = 0


def _row_origins(height: int, tile: int, overlap: int) -> list[int]:
    """The tile-row origins of the whole-image plan for ``height`` lines."""
    return sorted({y for y, _ in plan_tiles((height, 1), tile, overlap).origins})


def _band(lines: np.ndarray, y: int, tile: int) -> np.ndarray:
    """The lines of the tile row at ``y`` (the whole image when it is shorter than a tile: it is padded)."""
    return lines[y:y + tile] if lines.shape[0] >= tile else lines


class _Rows:
    """Which tile rows of a stage are cut; the part's height is known only at its end."""

    def __init__(self, tile: int, overlap: int) -> None:
        self.tile, self.overlap, self.stride = tile, overlap, tile - overlap
        self.next = 0  # index k of the next regular row (origin k * stride)

    def ready(self, lines_in: int) -> list[int]:
        """Regular rows whose lines are all in and that are not cut yet. Every one of them belongs to the final
        plan whatever the height turns out to be (its origin k * stride <= height - tile)."""
        out = []
        while self.next * self.stride + self.tile <= lines_in:
            out.append(self.next * self.stride)
            self.next += 1
        return out

    def rest(self, height: int) -> list[int]:
        """The rows of the final plan not cut yet (the ones cut so far are a prefix of it); they count as cut."""
        origins = _row_origins(height, self.tile, self.overlap)
        out, self.next = origins[self.next:], len(origins)
        return out


class _Segmentation:
    """Engine tiles of one part: cut, scored in chunks of ``batch`` in plan order, stitched as by ``untile``."""

    name = "segment"

    def __init__(self, engine, overlap: int, batch: int, width: int, expected_lines: int | None) -> None:
        self.engine, self.batch, self.tile = engine, batch, engine.tile
        self.rows = _Rows(engine.tile, overlap)
        self.pending = np.empty((0, engine.spec.channels, self.tile, self.tile), np.float32)
        self.pending_origins: list[tuple[int, int]] = []
        # the accumulators hold the lines not divided yet only (a few tile heights), not the whole part
        self.stitcher = Stitcher(self.tile, width, lines=expected_lines or 4096, sliding=True)
        self.last_row = -1  # origin of the last row cut
        self.timings = collections.Counter()
        self.calls: list[NetworkCall] = []

    def cut(self, band: np.ndarray, y: int) -> int:
        t0 = time.perf_counter()
        spec = self.engine.spec
        prepared = prepare_image(band, spec)
        plan = plan_tiles(prepared.shape[:2], self.tile, self.rows.overlap)
        tiles = normalize_tiles(tile_image(prepared, plan), spec)
        self.pending = np.concatenate([self.pending, tiles]) if len(self.pending) else tiles
        self.pending_origins += [(y + oy, ox) for oy, ox in plan.origins]
        self.last_row = y
        self.timings["preprocess"] += time.perf_counter() - t0
        while len(self.pending) >= self.batch:
            self._score(self.batch)
        self._divide(min(self.pending_origins[0][0] if self.pending_origins else self.last_row + 1,
                         self.last_row + 1))
        return plan.n_tiles

    def _score(self, n: int) -> None:
        chunk, self.pending = self.pending[:n], self.pending[n:]
        origins, self.pending_origins = self.pending_origins[:n], self.pending_origins[n:]
        t0 = time.perf_counter()
        scores = defect_scores(self.engine.infer(np.ascontiguousarray(chunk)))
        t1 = time.perf_counter()
        self.calls.append(NetworkCall(self.name, n, t1 - t0, time.monotonic_ns()))
        for tile_out, (y, x) in zip(scores, origins):
            self.stitcher.add(tile_out, y, x)
        self.timings["infer"] += t1 - t0
        self.timings["stitch"] += time.perf_counter() - t1

    def _divide(self, upto: int, height: int | None = None) -> None:
        """Divide the lines up to ``upto`` (no tile still to come reaches them) into the mask."""
        t0 = time.perf_counter()
        self.stitcher.divide(upto if height is None else min(upto, height))
        self.timings["stitch"] += time.perf_counter() - t0

    def finish(self, lines: np.ndarray) -> np.ndarray:
        """Score what is pending and divide the rest of the mask (every row is cut by now)."""
        height = lines.shape[0]
        if len(self.pending):
            self._score(len(self.pending))
        self._divide(height, height)
        return self.stitcher.result(height)


class _Classification:
    """Classifier patches of one part: cut row by row, scored in GR's chunks (batch mode) or at once (bank)."""

    name = "classify"

    def __init__(self, classifier) -> None:
        self.classifier, self.chunk = classifier, MAX_BATCH
        self.rows = _Rows(classifier.patch, classifier.overlap)
        self.pending: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.timings = collections.Counter()
        self.calls: list[NetworkCall] = []

    def cut(self, band: np.ndarray, y: int) -> int:
        plan = plan_tiles(band.shape, self.classifier.patch, self.classifier.overlap)
        patches = tile_image(band, plan)
        self.pending += list(patches)
        if self.classifier.mode == "bank":
            self._score(len(self.pending))
        while len(self.pending) >= self.chunk:
            self._score(self.chunk)
        return plan.n_tiles

    def _score(self, n: int) -> None:
        if n == 0:
            return
        c = self.classifier
        t0 = time.perf_counter()
        patches, self.pending = np.stack(self.pending[:n]), self.pending[n:]
        self.scores.append(c.score_patches(patches, batch=self.chunk))
        seconds = time.perf_counter() - t0
        self.timings["classify"] += seconds
        self.calls.append(NetworkCall(self.name, n, seconds, time.monotonic_ns()))

    def finish(self, lines: np.ndarray) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        """Score what is pending and summarize the part (every row is cut by now)."""
        self._score(len(self.pending))
        t0 = time.perf_counter()
        plan = plan_tiles(lines.shape, self.classifier.patch, self.classifier.overlap)
        scores = np.concatenate(self.scores) if self.scores else np.zeros((0, len(self.classifier.classes)), np.float32)
        if len(scores) != plan.n_tiles:  # a bug, not a data problem: say so rather than mislabel patches
            raise InspectionError(f"streamed {len(scores)} patch scores but the plan has {plan.n_tiles} patches")
        out = self.classifier.summarize(plan, scores)
        self.timings["classify"] += time.perf_counter() - t0
        return out


class _Session:
    """One part being inspected: its stages, its outcome and its report."""

    def __init__(self, owner, index: int, width: int, expected_lines: int | None) -> None:
        self.owner, self.index, self.expected_lines = owner, index, expected_lines
        self.segmentation = (_Segmentation(owner.engine, owner.overlap, owner.batch, width, expected_lines)
                             if owner.engine is not None else None)
        self.classification = _Classification(owner.classifier) if owner.classifier is not None else None
        self.report = PartReport(index=index, streamed=True)
        self.calibration = owner.calibration
        self.corrected: np.ndarray | None = None  # flat-fielded rows 0 .. corrected_upto - 1
        self.corrected_upto = 0
        self.calibrate_s = 0.0
        self.done = threading.Event()
        self.cancelled = False
        self.error: BaseException | None = None
        self.outcome: tuple | None = None

    @property
    def stages(self) -> list:
        return [s for s in (self.segmentation, self.classification) if s is not None]

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
        lines = self._calibrated(lines)
        for stage in self.stages:
            for y in stage.rows.ready(lines.shape[0]):
                self._cut(stage, lines[y:y + stage.rows.tile], y)

    def _cut(self, stage, band: np.ndarray, y: int) -> None:
        t0 = time.perf_counter()
        n = stage.cut(band, y)
        self.report.rows.append(RowTiming(stage.name, y, n, time.perf_counter() - t0, time.monotonic_ns()))

    def finish(self, image: np.ndarray, gaps: Sequence[Sequence[int]], issues: Sequence[str]) -> None:
        """The rows that needed the last line, the stitch and the decision (the inspector's own)."""
        t0 = time.perf_counter()
        self.report.backlog_ms = (time.monotonic_ns() - self.report.ended_ns) / 1e6 if self.report.ended_ns else 0.0
        raw = image
        if self.calibration is not None:  # the part must fit the camera's profile (width, pixel format)
            self.calibration.check(raw, what=f"part {self.index}")
        self.advance(raw)
        image = self._calibrated(raw)
        for stage in self.stages:  # the rows that needed the last line (the last one shifted to the border)
            for y in stage.rows.rest(image.shape[0]):
                self._cut(stage, _band(image, y, stage.rows.tile), y)
        timings: collections.Counter = collections.Counter()
        if self.calibration is not None:
            timings["calibrate"] = self.calibrate_s
        if self.segmentation is not None:
            mask = self.segmentation.finish(image)
            timings.update(self.segmentation.timings)
        else:
            mask = np.zeros(image.shape[:2], np.float32)
        labels: tuple[str, ...] = ()
        patches: list = []
        if self.classification is not None:
            labels, patches = self.classification.finish(image)
            timings.update(self.classification.timings)
        judged = self.owner.judge(mask, labels, gaps, issues)
        self.report.calls = sorted((c for stage in self.stages for c in stage.calls), key=lambda c: c.done_ns)
        self.report.finish_ms = (time.perf_counter() - t0) * 1e3
        self.report.verdict_ns = time.monotonic_ns()
        self.outcome = (judged, labels, patches, {k: v * 1e3 for k, v in timings.items()})


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
