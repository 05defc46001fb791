"""Inspect a part while it is still arriving: tile rows are cut and scored as soon as their lines are in.

>>> streaming = StreamingInspector.from_inspector(inspector)          # doctest: +SKIP
>>> source = LineScanSource(replay, part_lines=10240, listener=streaming)  # doctest: +SKIP
>>> Line(source, streaming, reject_log).run()                          # doctest: +SKIP

The source's assembler tells the inspector (a :class:`station.linescan.PartListener`) when a part starts, after
every block and when the part ends. A worker thread then cuts every tile row whose lines are all in (the rows of
the station's tiler: origins every ``tile - overlap`` lines) for each stage — BFFN segmentation through the engine
interface, the GR patch classifier of :mod:`station.classify` — and scores it while acquisition goes on. When the
last line is in, only the rows that need it remain: the regular rows it completes and the tiler's last row, shifted
back to end at the part's border (its height is known only now in trigger mode). Then the scores are stitched, and
the verdict is decided by the same code as :class:`station.inspector.Inspector`. With a calibration profile
(``calibration``, as the ``Inspector`` has it) the flat-field is applied to the new lines of every block, before
tiling, row for row as the whole part's correction would (its rounding dither follows the part's row numbers).

The result is the whole-image result, not an approximation:

- tiles are cut from the same rows with the same padding (each row is cut by :func:`inspection_core.tiling.tile_image`
  with a one-row plan, whose column origins and padding are those of the whole-image plan);
- segmentation tiles go to the engine in chunks of ``batch`` in plan order, and the classifier's patches in GR's
  chunks of :data:`station.classify.MAX_BATCH` in plan order (``mode = "batch"``: GR's relations span the same
  patches), so every network call sees the same tensors; in ``mode = "bank"`` a patch's scores do not depend on the
  others, and each row is scored as soon as it is cut;
- the stitcher accumulates tile scores times the Hann window in plan order, exactly as
  :func:`inspection_core.tiling.untile`, and divides the lines no later tile can reach (tests check equality to the
  bit).

An incomplete part (lines missing, cut short...) always fails: each missing line range becomes a defect labelled
``"incomplete"`` spanning those rows (one spanning the whole part for the other reasons), and its scores in missing
rows are zeroed before defects are found, so the zero rows cannot make defects of their own. The reject log, the
export and the panel show these like any defect.

``inspect(frame)`` makes the class a drop-in inspector for :class:`station.pipeline.Line`: for a streamed part it
waits for the worker's result (``latency_ms`` runs from the part's last line to the verdict); any other frame, or
a part the worker could not take (more than ``max_parts_in_flight`` unfinished), is inspected whole, on the calling
thread, through the same code.
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

from inspection_core.preprocess import defect_scores, normalize_tiles, prepare_image
from inspection_core.records import Defect, Frame, InspectionResult, Verdict
from inspection_core.tiling import blend_window, plan_tiles, tile_image
from inspection_core.verdict import DecisionRules, decide, find_defects
from station.errors import StationError

log = logging.getLogger(__name__)

INCOMPLETE_LABEL = "incomplete"  # the label of the defects that mark missing lines


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
    """Engine tiles of one part: cut, scored in chunks of ``batch`` in plan order, stitched as in ``untile``."""

    name = "segment"

    def __init__(self, engine, overlap: int, batch: int, width: int, expected_lines: int | None) -> None:
        self.engine, self.batch, self.tile = engine, batch, engine.tile
        self.rows = _Rows(engine.tile, overlap)
        self.width, self.padded_width = width, max(width, engine.tile)
        self.pending = np.empty((0, engine.spec.channels, self.tile, self.tile), np.float32)
        self.pending_origins: list[tuple[int, int]] = []
        self.window = blend_window(self.tile)
        # stitch accumulators hold lines base .. base + len - 1 only (a few tile heights), not the whole part
        self.base = 0
        self.acc = np.zeros((3 * self.tile, self.padded_width), np.float32)
        self.weight = np.zeros_like(self.acc)
        self.top = 0  # one past the last line any scored tile covers
        self.final = 0  # lines 0 .. final - 1 of the mask are divided
        self.last_row = -1  # origin of the last row cut
        self.mask = np.zeros((expected_lines or 4096, width), np.float32)
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
        t, window = self.tile, self.window
        for tile_out, (y, x) in zip(scores, origins):
            self._room(y + t)
            r = y - self.base
            self.acc[r:r + t, x:x + t] += tile_out.astype(np.float32, copy=False) * window
            self.weight[r:r + t, x:x + t] += window
            self.top = max(self.top, y + t)
        self.timings["infer"] += t1 - t0
        self.timings["stitch"] += time.perf_counter() - t1

    def _room(self, line: int) -> None:
        """Make the accumulators reach line ``line`` (exclusive)."""
        need = line - self.base
        if need <= self.acc.shape[0]:
            return
        rows = max(need, 2 * self.acc.shape[0])
        for name in ("acc", "weight"):
            old = getattr(self, name)
            new = np.zeros((rows, self.padded_width), np.float32)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def _divide(self, upto: int, height: int | None = None) -> None:
        """Divide lines ``final .. upto - 1`` (no tile still to come reaches them) into the mask."""
        t0 = time.perf_counter()
        if height is not None:
            upto = min(upto, height)
        if upto > self.final:
            if upto > self.mask.shape[0]:
                grown = np.zeros((max(upto, 2 * self.mask.shape[0]), self.width), np.float32)
                grown[: self.final] = self.mask[: self.final]
                self.mask = grown
            a, b = self.final - self.base, upto - self.base
            self.mask[self.final:upto] = self.acc[a:b, : self.width] / self.weight[a:b, : self.width]
            self.final = upto
            # drop the divided lines from the accumulators once they take up half of them
            if self.final - self.base > self.acc.shape[0] // 2:
                keep = max(0, self.top - self.final)
                shift = self.final - self.base
                for arr in (self.acc, self.weight):
                    arr[:keep] = arr[shift:shift + keep]
                    arr[keep:] = 0
                self.base = self.final
        self.timings["stitch"] += time.perf_counter() - t0

    def finish(self, lines: np.ndarray) -> np.ndarray:
        """Score what is pending and divide the rest of the mask (every row is cut by now)."""
        height = lines.shape[0]
        if len(self.pending):
            self._score(len(self.pending))
        self._divide(height, height)
        mask = self.mask[:height]
        return mask.copy() if self.mask.shape[0] > height * 5 // 4 else mask


class _Classification:
    """Classifier patches of one part: cut row by row, scored in GR's chunks (batch mode) or at once (bank)."""

    name = "classify"

    def __init__(self, classifier) -> None:
        from station.classify import MAX_BATCH

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
            raise StationError(f"streamed {len(scores)} patch scores but the plan has {plan.n_tiles} patches")
        out = self.classifier.summarize(plan, scores)
        self.timings["classify"] += time.perf_counter() - t0
        return out


def incomplete_defects(shape: tuple[int, ...], gaps: Sequence[Sequence[int]], issues: Sequence[str]) -> list[Defect]:
    """The ``"incomplete"`` defects of a part: one per missing line range, one over the whole part for other
    issues (their score is 1: a part not fully seen cannot pass)."""
    h, w = int(shape[0]), int(shape[1])
    spans = [(int(a), int(b)) for a, b in gaps] + ([(0, h)] if issues else [])
    return [Defect(label=INCOMPLETE_LABEL, bbox=(0, a, w, b - a), area_px=w * (b - a),
                   centroid=(round((w - 1) / 2, 2), round((a + b - 1) / 2, 2)), mean_score=1.0, max_score=1.0)
            for a, b in spans if b > a]


class _Session:
    """One part being inspected: its stages, its outcome and its report."""

    def __init__(self, owner: StreamingInspector, index: int, width: int, expected_lines: int | None,
                 streamed: bool = True) -> None:
        self.owner, self.index, self.expected_lines = owner, index, expected_lines
        self.segmentation = (_Segmentation(owner.engine, owner.overlap, owner.batch, width, expected_lines)
                             if owner.engine is not None else None)
        self.classification = _Classification(owner.classifier) if owner.classifier is not None else None
        self.report = PartReport(index=index, streamed=streamed)
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
            # the correction's rounding dither repeats every DITHER_ROWS rows of the image: start on a period
            from calibration.flatfield import DITHER_ROWS

            a0 = a - a % DITHER_ROWS
            self.corrected[a:n] = cal.correct(lines[a0:n])[a - a0:]
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
        """The rows that needed the last line, the stitch and the verdict."""
        t0 = time.perf_counter()
        self.report.backlog_ms = (time.monotonic_ns() - self.report.ended_ns) / 1e6 if self.report.ended_ns else 0.0
        raw = image
        if self.calibration is not None:  # the part must fit the camera's profile (width, pixel format)
            from calibration.profile import pixel_format_of

            fmt = pixel_format_of(raw)
            if not self.calibration.fits(raw, fmt):
                self.calibration.profile.check_fits(raw.shape[1], raw.shape[0], fmt, what=f"part {self.index}")
        self.advance(raw)
        image = self._calibrated(raw)
        for stage in self.stages:  # the rows that needed the last line (the last one shifted to the border)
            for y in stage.rows.rest(image.shape[0]):
                self._cut(stage, _band(image, y, stage.rows.tile), y)
        owner = self.owner
        timings: collections.Counter = collections.Counter()
        if self.calibration is not None:
            timings["calibrate"] = self.calibrate_s
        defects: list[Defect] = []
        if self.segmentation is not None:
            mask = self.segmentation.finish(image)
            timings.update(self.segmentation.timings)
            if gaps:
                mask = mask.copy() if not mask.flags.writeable else mask
                for a, b in gaps:
                    mask[a:b] = 0.0
            t1 = time.perf_counter()
            defects = list(find_defects(mask, owner.rules))
            timings["verdict"] += time.perf_counter() - t1
        else:
            mask = np.zeros(image.shape[:2], np.float32)
        labels: tuple[str, ...] = ()
        patches: list = []
        if self.classification is not None:
            labels, patches = self.classification.finish(image)
            timings.update(self.classification.timings)
        verdict = decide(defects, labels, owner.fail_on_labels)
        if gaps or issues:
            defects += incomplete_defects(image.shape, gaps, issues)
            verdict = Verdict.FAIL
        self.report.calls = sorted((c for stage in self.stages for c in stage.calls), key=lambda c: c.done_ns)
        ms = {k: v * 1e3 for k, v in timings.items()}
        ms["total"] = sum(ms.values())
        self.report.finish_ms = (time.perf_counter() - t0) * 1e3
        ms["finish"] = self.report.finish_ms
        ms["backlog"] = self.report.backlog_ms
        self.report.verdict_ns = time.monotonic_ns()
        self.outcome = (mask, tuple(defects), verdict, labels, patches, ms)


class StreamingInspector:
    """Inspects line-scan parts while they arrive (see the module docstring); at least one of ``engine``
    (segmentation) and ``classifier`` (a :class:`station.classify.PatchClassifier`) is needed.

    ``max_parts_in_flight`` bounds the parts being worked on at once: a part that starts while that many are
    unfinished is not streamed (it is inspected whole when the line asks for it), so memory stays bounded when
    inspection is slower than the camera. ``reports`` keeps the last parts' :class:`PartReport`.
    """

    def __init__(self, engine=None, *, overlap: int = 32, batch: int = 32, rules: DecisionRules | None = None,
                 classifier=None, fail_on_labels: bool = True, calibration=None, max_parts_in_flight: int = 2,
                 keep_reports: int = 16) -> None:
        if engine is None and classifier is None:
            raise StationError("a streaming inspector needs an engine (segmentation), a classifier, or both")
        if batch < 1 or max_parts_in_flight < 1:
            raise StationError(f"batch and max_parts_in_flight must be at least 1, got {batch}, "
                               f"{max_parts_in_flight}")
        self.engine, self.classifier = engine, classifier
        self.overlap, self.batch = overlap, batch
        self.rules = rules or DecisionRules()
        self.fail_on_labels = fail_on_labels
        self.calibration = calibration  # a calibration.line.LineCalibration (flat-field per block), or None
        self.max_parts_in_flight = max_parts_in_flight
        self.reports: collections.deque[PartReport] = collections.deque(maxlen=keep_reports)
        self.not_streamed = 0  # parts inspected whole because too many were in flight
        self.cancelled = 0  # parts whose frames never reached inspect() (dropped by the line)
        self._sessions: dict[int, _Session] = {}
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()  # bounded in effect: max_parts_in_flight parts, a job per block
        self._worker: threading.Thread | None = None
        self._engine_id = "+".join(stage.engine_id for stage in (engine, classifier) if stage is not None)

    @classmethod
    def from_inspector(cls, inspector, **settings: Any) -> StreamingInspector:
        """The streaming form of a :class:`station.inspector.Inspector` (same engine, rules, classifier and
        calibration)."""
        return cls(inspector.engine, overlap=inspector.overlap, batch=inspector.batch, rules=inspector.rules,
                   classifier=inspector.classifier, fail_on_labels=inspector.fail_on_labels,
                   calibration=getattr(inspector, "calibration", None), **settings)

    @property
    def engine_id(self) -> str:
        return self._engine_id

    # -- PartListener (called on the acquisition thread: only bookkeeping and queueing) ----------------------
    def part_started(self, index: int, width: int, expected_lines: int | None) -> None:
        with self._lock:
            busy = sum(not s.done.is_set() for s in self._sessions.values())
            if busy >= self.max_parts_in_flight:
                self.not_streamed += 1
                log.warning("part %d starts while %d parts are still being inspected: it will be inspected whole "
                            "when it is complete (inspection is slower than the camera)", index, busy)
                return
            self._sessions[index] = _Session(self, index, width, expected_lines)
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
        """The result for ``frame``: the streamed part's (waiting for the worker), or the frame inspected whole."""
        index = frame.meta.get("part")
        session = None
        if index is not None and frame.meta.get("first_line") is not None:
            with self._lock:
                session = self._sessions.pop(index, None)
                for older in [i for i in self._sessions if i < index]:  # parts the line never passed on
                    self._sessions.pop(older).cancelled = True
                    self.cancelled += 1
        if session is None:
            session = _Session(self, -1 if index is None else index, frame.image.shape[1], frame.image.shape[0],
                               streamed=False)
            session.finish(frame.image, frame.meta.get("gaps", ()), frame.meta.get("issues", ()))
        else:
            session.done.wait()
        if session.error is not None:
            raise session.error
        assert session.outcome is not None
        mask, defects, verdict, labels, patches, timings = session.outcome
        self.reports.append(session.report)
        return InspectionResult(frame=frame, mask=mask, defects=defects, verdict=verdict, engine_id=self.engine_id,
                                labels=labels, timings=timings, patches=patches,
                                latency_ms=(session.report.verdict_ns - frame.timestamp_ns) / 1e6)

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
