"""One frame in, one verdict out: calibrate → preprocess → tile → engine (in batches) → stitch → defects → verdict.

This is the only composition of frame → :class:`~inspection_core.records.InspectionResult`. The running line
(:mod:`station.pipeline`), line-scan streaming, ``engines eval``, ``engines verify``, ``engines compare`` and
``calibration thresholds`` all run an :class:`Inspector`; what differs between them are its options:

- ``calibration`` (the calibrated form): a camera's calibration profile (:class:`calibration.line.LineCalibration`,
  the recipe's ``[calibration]`` table). Each frame is first checked against the camera the profile was measured on
  (a frame that does not fit is refused with :class:`~calibration.errors.ProfileMismatch` naming the difference)
  and flat-fielded; the profile's ROI, scale and thresholds are already in the decision rules. The result keeps the
  frame as the camera gave it.
- ``classifier`` (the classifier stage, :class:`inspection.classifier.ClassifierStage`, the recipe's
  ``[classifier]``): the frame's large patches are classified; the part's labels are the union of its patches'
  labels, and the part fails when the segmentation fails it or (``fail_on_labels``) when any label is present. An
  inspector without an ``engine`` runs the classifier alone: the score map is then all zeros and the labels decide.
- ``streaming=True`` (the streaming form, for line-scan parts): tile rows are cut and scored while the part
  arrives (:mod:`inspection.streaming`); the result is the whole-image result to the bit, with the same stage
  timings. Both forms score through the one scoring path, :mod:`inspection.scoring` (:meth:`Inspector.part_scores`):
  a frame inspected whole is scored as a part whose lines are all in.
- ``reuse_scores=True``: each frame's score map and labels are kept (by file name, else frame id), so judging the
  same frames again with other decision rules (a threshold sweep) does not run the networks again.

A part not fully seen (``frame.meta["gaps"]``: missing line ranges, ``frame.meta["issues"]``) always fails, its
missing lines marked as :data:`~inspection_core.verdict.INCOMPLETE_LABEL` defects and zeroed in the score map.

The :class:`Inspector` has no queues; the line runs it on its inference thread (the streaming form keeps one
worker thread of its own), and the tools run the very same code, so all of them give the same verdicts.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Protocol, Sequence

import numpy as np

from inspection.errors import InspectionError
from inspection.scoring import Checkpoint, PartScores, Scores, SegmentationRows
from inspection.streaming import PartStreams
from inspection_core.defaults import DEFAULT_OVERLAP
from inspection_core.engine import Engine
from inspection_core.preprocess import whole_frame
from inspection_core.records import Defect, Frame, InspectionResult, Verdict
from inspection_core.tiling import TilePlan, plan_tiles
from inspection_core.verdict import DecisionRules, decide, incomplete_defects, judge_scores

__all__ = ["Checkpoint", "FrameCalibration", "Inspector", "StreamingInspector"]

log = logging.getLogger(__name__)


class FrameCalibration(Protocol):
    """What the inspector needs of a calibration profile (:class:`calibration.line.LineCalibration` follows it)."""

    name: str
    flatfield: Any  # None: the profile holds no flat-field

    def prepare(self, frame: Frame) -> np.ndarray:
        """The frame's image checked against the profile (raises when it does not fit) and flat-fielded."""

    def check(self, image: np.ndarray, pixel_format: str | None = None, what: str = "the image") -> None:
        """Raise, naming the difference, when ``image`` does not fit the profile's camera."""

    def correct_rows(self, lines: np.ndarray, start: int) -> np.ndarray:
        """Rows ``start ..`` of ``lines`` flat-fielded exactly as the whole image's correction makes them."""


class Inspector:
    """Turns frames into :class:`InspectionResult` records with one engine and one set of decision rules.

    >>> from inspection_core.preprocess import InputSpec
    >>> class Bright:  # an engine (engines.backends.base.load_engine gives real ones): defect where > 200
    ...     tile, spec, engine_id = 32, InputSpec(), "bright@numpy"
    ...     def infer(self, x):
    ...         p = (x[:, 0] * 0.25 + 0.5 > 200 / 255).astype(np.float32)
    ...         return np.stack([1 - p, p], axis=1)
    >>> inspector = Inspector(Bright(), overlap=8, batch=4, rules=DecisionRules(score_threshold=0.5, min_area_px=20))
    >>> image = np.full((60, 80), 100, np.uint8); image[10:16, 20:26] = 255
    >>> result = inspector.inspect(Frame(image, 1, 0, "doc"))
    >>> result.verdict.value, [d.bbox for d in result.defects], list(result.timings)
    ('FAIL', [(20, 10, 6, 6)], ['prepare', 'tile', 'infer', 'stitch', 'verdict', 'total'])

    See the module docstring for the options. With ``streaming=True`` the inspector is also the line-scan source's
    part listener (:class:`station.strips.PartListener`); ``max_parts_in_flight`` and ``keep_reports`` are
    the streaming settings (:class:`inspection.streaming.PartStreams`).
    """

    def __init__(self, engine: Engine | None, overlap: int, batch: int, rules: DecisionRules, classifier=None,
                 fail_on_labels: bool = True, calibration: FrameCalibration | None = None, *,
                 streaming: bool = False, max_parts_in_flight: int = 2, keep_reports: int = 16,
                 reuse_scores: bool = False) -> None:
        if batch < 1:
            raise InspectionError(f"batch must be at least 1 tile, got {batch}")
        if engine is None and classifier is None:
            raise InspectionError("an inspector needs a segmentation engine, a classifier, or both")
        check = getattr(engine, "threshold_problem", None)  # Engine's; objects with only infer() have no limit
        problem = check(rules.score_threshold) if check is not None else None
        if problem:
            raise InspectionError(f"{engine.engine_id} cannot judge at score >= {rules.score_threshold}: {problem}")
        self.engine = engine  # None: no segmentation stage (the classifier alone judges)
        self.overlap = overlap
        self.batch = batch
        self.rules = rules
        self.classifier = classifier  # a ClassifierStage, or None for no classifier stage
        self.fail_on_labels = fail_on_labels
        self.calibration = calibration  # None: frames are used as they come
        spec = getattr(engine, "spec", None)
        if streaming and spec is not None and whole_frame(spec):
            # a frame-wide gain, mirrored borders and the context pass need the whole part: judged when it arrived
            log.warning("%s prepares whole frames (gain_target %s, border %s px, context pass %s): line-scan parts "
                        "are inspected when complete, not streamed row by row", engine.engine_id, spec.gain_target,
                        spec.border, "on" if spec.context else "off")
            streaming = False
        self.streams = PartStreams(self, max_parts_in_flight, keep_reports) if streaming else None
        self._scores: dict[Any, tuple] | None = {} if reuse_scores else None

    @property
    def engine_id(self) -> str:
        """What is running, for the panel and the reject log: the segmentation engine's id, plus the
        classifier's after a ``+`` when both run."""
        ids = [stage.engine_id for stage in (self.engine, self.classifier) if stage is not None]
        return "+".join(ids)

    # -- the stages -----------------------------------------------------------------------------------------
    @functools.lru_cache(maxsize=8)
    def plan(self, shape: tuple[int, int]) -> TilePlan:
        return plan_tiles(shape, self.engine.tile, self.overlap)

    def calibrate(self, frame: Frame) -> tuple[np.ndarray, dict[str, float]]:
        """The image the stages get (checked against the profile and flat-fielded when there is one) and the
        ``calibrate`` timing (ms)."""
        if self.calibration is None:
            return frame.image, {}
        t0 = time.perf_counter()
        image = self.calibration.prepare(frame)  # ProfileMismatch when the frame does not fit the profile
        return image, {"calibrate": (time.perf_counter() - t0) * 1e3}

    def tile_count(self, shape: tuple[int, ...]) -> int:
        """How many tiles the engine scores for a frame of ``shape`` (mirrored borders and the context pass
        included); 0 without a segmentation engine. Known before any work, so a line can refuse a frame it cannot
        afford."""
        if self.engine is None:
            return 0
        b = getattr(self.engine.spec, "border", 0) or 0
        context = 1 if getattr(self.engine.spec, "context", False) else 0  # the whole frame shrunk to one tile
        return self.plan((int(shape[0]) + 2 * b, int(shape[1]) + 2 * b)).n_tiles + context

    def part_scores(self, width: int, expected_lines: int | None = None, *, streaming: bool = False,
                    checkpoint: Checkpoint | None = None, total: int = 0) -> PartScores:
        """The scoring of one frame or line-scan part ``width`` pixels wide by this inspector's stages: the one
        scoring path (:class:`inspection.scoring.PartScores`) of both forms. ``streaming``: a part still arriving
        (the classifier scores each row as soon as it is cut in mode "bank"); ``checkpoint`` and ``total``: see
        :meth:`score`."""
        segmentation = (SegmentationRows(self.engine, self.overlap, self.batch, width, expected_lines, checkpoint,
                                         total) if self.engine is not None else None)
        classification = self.classifier.rows(eager=streaming) if self.classifier is not None else None
        return PartScores(segmentation, classification)

    def score(self, image: np.ndarray, checkpoint: Checkpoint | None = None) -> Scores:
        """What the networks make of one whole image: a part whose lines are all in. ``checkpoint(done, total)``
        is called before each batch of segmentation tiles with the tiles scored so far and in all; it stops the
        work by raising (a line's stop or time limit), the exception going to the caller: a frame's inference can
        be cancelled between batches."""
        total = self.tile_count(image.shape)
        return self.part_scores(image.shape[1], image.shape[0], checkpoint=checkpoint, total=total).finish(image)

    def score_map(self, image: np.ndarray, checkpoint: Checkpoint | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """The stitched float32 defect-score map of one image and its stage timings (ms), without the classifier
        (:meth:`score`)."""
        segmentation = SegmentationRows(self.engine, self.overlap, self.batch, image.shape[1], image.shape[0],
                                        checkpoint, self.tile_count(image.shape))
        scores = PartScores(segmentation).finish(image)
        return scores.mask, scores.timings

    def judge(self, mask: np.ndarray, labels: Sequence[str] = (), gaps: Sequence[Sequence[int]] = (),
              issues: Sequence[str] = ()) -> tuple[np.ndarray, tuple[Defect, ...], Verdict, float, np.ndarray | None]:
        """``(mask, defects, verdict, ms, decided)``: the decision on a stitched score map and the classifier's
        labels, by the decision rules; missing line ranges (``gaps``) are zeroed in the returned mask (so they
        cannot make defects of their own) and, like other ``issues``, become ``"incomplete"`` defects that fail the
        part. ``ms`` is the time spent finding defects (the ``verdict`` timing); ``decided`` the pixels of the
        defects the rules kept (:func:`inspection_core.verdict.judge_scores`)."""
        if gaps:
            mask = mask.copy()
            for a, b in gaps:
                mask[a:b] = 0.0
        t0 = time.perf_counter()
        defects, decided = judge_scores(mask, self.rules) if self.engine is not None else ((), None)
        ms = (time.perf_counter() - t0) * 1e3
        verdict = decide(defects, labels, self.fail_on_labels)
        if gaps or issues:
            defects = (*defects, *incomplete_defects(mask.shape, gaps, issues))
            verdict = Verdict.FAIL
        return mask, tuple(defects), verdict, ms, decided

    def result(self, frame: Frame, judged: tuple[np.ndarray, tuple[Defect, ...], Verdict, float, Any],
               labels: Sequence[str], patches: list, timings: dict[str, float], verdict_ns: int | None = None,
               after_total: dict[str, float] | None = None) -> InspectionResult:
        """The :class:`InspectionResult` of ``frame`` from what :meth:`judge` made of its score map; ``timings``
        (ms) get ``verdict`` (before ``classify``) and ``total``, then the ``after_total`` ones. ``latency_ms``
        runs from the frame's timestamp to ``verdict_ns`` (default: now)."""
        mask, defects, verdict, verdict_ms, decided = judged
        ordered = {k: v for k, v in timings.items() if k not in ("verdict", "classify")}
        ordered["verdict"] = timings.get("verdict", 0.0) + verdict_ms
        if "classify" in timings:
            ordered["classify"] = timings["classify"]
        ordered["total"] = sum(ordered.values())
        ordered.update(after_total or {})
        done_ns = time.monotonic_ns() if verdict_ns is None else verdict_ns
        return InspectionResult(frame=frame, mask=mask, defects=defects, verdict=verdict, engine_id=self.engine_id,
                                labels=tuple(labels), timings=ordered, patches=patches,
                                latency_ms=(done_ns - frame.timestamp_ns) / 1e6, decided=decided)

    # -- frames ---------------------------------------------------------------------------------------------
    def inspect(self, frame: Frame, checkpoint: Checkpoint | None = None) -> InspectionResult:
        """The result for ``frame``. With ``streaming``, a line-scan part streamed while it arrived gets the
        result its rows were scored for (waiting for the worker); every other frame is inspected whole here.
        ``checkpoint``: see :meth:`score` (frames inspected whole only)."""
        if self.streams is not None:
            return self.streams.inspect(frame)
        return self.inspect_whole(frame, checkpoint)

    def inspect_whole(self, frame: Frame, checkpoint: Checkpoint | None = None) -> InspectionResult:
        """``frame`` inspected at once: calibrate, scores (:meth:`score`), decision. ``checkpoint``: see
        :meth:`score`."""
        key = frame.meta.get("file", frame.frame_id) if self._scores is not None else None
        stored = self._scores.get(key) if self._scores is not None else None
        if stored is None:
            image, timings = self.calibrate(frame)
            mask, labels, patches, stage_ms = self.score(image, checkpoint)
            timings.update(stage_ms)
            stored = (mask, labels, patches, timings)
            if self._scores is not None:
                self._scores[key] = stored
        mask, labels, patches, timings = stored
        judged = self.judge(mask, labels, frame.meta.get("gaps", ()), frame.meta.get("issues", ()))
        return self.result(frame, judged, labels, patches, timings)

    # -- the streaming form: a line-scan source's part listener ---------------------------------------------
    def _streams(self) -> PartStreams:
        if self.streams is None:
            raise InspectionError("this inspector does not stream parts; make it with Inspector(..., streaming=True) "
                                  "or StreamingInspector.from_inspector(inspector)")
        return self.streams

    def part_started(self, index: int, width: int, expected_lines: int | None) -> None:
        self._streams().part_started(index, width, expected_lines)

    def lines_arrived(self, index: int, lines: np.ndarray) -> None:
        self._streams().lines_arrived(index, lines)

    def part_ended(self, part) -> None:
        self._streams().part_ended(part)

    def part_discarded(self, index: int) -> None:
        self._streams().part_discarded(index)

    @property
    def reports(self):
        """The last parts' :class:`inspection.streaming.PartReport` (streaming only)."""
        return self._streams().reports

    @property
    def not_streamed(self) -> int:
        """Parts inspected whole because too many were in flight (streaming only)."""
        return self._streams().not_streamed

    @property
    def cancelled(self) -> int:
        """Parts whose frames never reached :meth:`inspect` (dropped by the line; streaming only)."""
        return self._streams().cancelled

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the streaming worker after the work already queued (nothing to do without streaming)."""
        if self.streams is not None:
            self.streams.close(timeout)


class StreamingInspector(Inspector):
    """The streaming form under its own name: an :class:`Inspector` with ``streaming=True`` (settings by keyword,
    the rules defaulting to :class:`DecisionRules`), or :meth:`from_inspector` for an existing one's stages, e.g.
    ``StreamingInspector.from_inspector(inspector)`` as the ``listener`` of a line-scan source."""

    def __init__(self, engine: Engine | None = None, *, overlap: int = DEFAULT_OVERLAP, batch: int = 32,
                 rules: DecisionRules | None = None, classifier=None, fail_on_labels: bool = True,
                 calibration: FrameCalibration | None = None, max_parts_in_flight: int = 2,
                 keep_reports: int = 16) -> None:
        super().__init__(engine, overlap, batch, rules or DecisionRules(), classifier, fail_on_labels, calibration,
                         streaming=True, max_parts_in_flight=max_parts_in_flight, keep_reports=keep_reports)

    @classmethod
    def from_inspector(cls, inspector: Inspector, **settings: Any) -> StreamingInspector:
        """The streaming form of ``inspector`` (same engine, rules, classifier and calibration)."""
        return cls(inspector.engine, overlap=inspector.overlap, batch=inspector.batch, rules=inspector.rules,
                   classifier=inspector.classifier, fail_on_labels=inspector.fail_on_labels,
                   calibration=inspector.calibration, **settings)
