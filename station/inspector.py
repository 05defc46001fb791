"""One frame in, one verdict out: calibrate → preprocess → tile → engine (in batches) → stitch → defects → verdict.

With a calibration profile (:class:`calibration.line.LineCalibration`, the recipe's ``[calibration]`` table) each
frame is first checked against the camera the profile was measured on and flat-fielded; the profile's ROI, scale
and thresholds are already in the decision rules. The result keeps the frame as the camera gave it.

With a classifier stage (:class:`station.classify.PatchClassifier`, the recipe's ``[classifier]`` table) the
frame's large patches are then classified: the part's labels are the union of its patches' labels, and the part
fails when the segmentation fails it or (``fail_on_labels``) when any label is present. A recipe without an
``[engine]`` runs the classifier alone: the score map is then all zeros and the labels alone decide.

The :class:`Inspector` has no threads and no queues; the line (:mod:`station.pipeline`) runs it on its
inference thread, and ``engines eval`` runs the very same code, so both give the same verdicts.
"""
from __future__ import annotations

import functools
import time

import numpy as np

from inspection_core.preprocess import defect_scores, normalize_tiles, prepare_image
from inspection_core.records import Frame, InspectionResult
from inspection_core.tiling import TilePlan, plan_tiles, tile_image, untile
from inspection_core.verdict import DecisionRules, decide, find_defects
from station.errors import StationError


class Inspector:
    """Turns frames into :class:`InspectionResult` records with one engine and one set of decision rules.

    >>> from engines.backends.base import load_engine                     # doctest: +SKIP
    >>> inspector = Inspector(load_engine("bffn-magnetic-tile"), overlap=32, batch=32, rules=DecisionRules())
    >>> inspector.inspect(frame).verdict                                   # doctest: +SKIP
    <Verdict.PASS: 'PASS'>
    """

    def __init__(self, engine, overlap: int, batch: int, rules: DecisionRules, classifier=None,
                 fail_on_labels: bool = True, calibration=None) -> None:
        if batch < 1:
            raise StationError(f"batch must be at least 1 tile, got {batch}")
        if engine is None and classifier is None:
            raise StationError("an inspector needs a segmentation engine, a classifier, or both")
        self.engine = engine  # None: no segmentation stage (the classifier alone judges)
        self.overlap = overlap
        self.batch = batch
        self.rules = rules
        self.classifier = classifier  # a PatchClassifier, or None for no classifier stage
        self.fail_on_labels = fail_on_labels
        self.calibration = calibration  # a calibration.line.LineCalibration, or None: frames used as they come

    @property
    def engine_id(self) -> str:
        """What is running, for the panel and the reject log: the segmentation engine's id, plus the
        classifier's after a ``+`` when both run."""
        ids = [stage.engine_id for stage in (self.engine, self.classifier) if stage is not None]
        return "+".join(ids)

    @functools.lru_cache(maxsize=8)
    def plan(self, shape: tuple[int, int]) -> TilePlan:
        return plan_tiles(shape, self.engine.tile, self.overlap)

    def score_map(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """The stitched float32 defect-score map of one image and the stage timings (ms)."""
        t0 = time.perf_counter()
        prepared = prepare_image(image, self.engine.spec)
        plan = self.plan(prepared.shape[:2])
        tiles = normalize_tiles(tile_image(prepared, plan), self.engine.spec)
        t1 = time.perf_counter()
        scores = np.empty((len(tiles), self.engine.tile, self.engine.tile), np.float32)
        for start in range(0, len(tiles), self.batch):
            chunk = tiles[start:start + self.batch]
            scores[start:start + len(chunk)] = defect_scores(self.engine.infer(chunk))
        t2 = time.perf_counter()
        mask = untile(scores, plan)
        t3 = time.perf_counter()
        return mask, {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "stitch": (t3 - t2) * 1e3}

    def inspect(self, frame: Frame) -> InspectionResult:
        image = frame.image
        calibrate_ms = None
        if self.calibration is not None:
            t0 = time.perf_counter()
            image = self.calibration.prepare(frame)  # ProfileMismatch when the frame does not fit the profile
            calibrate_ms = (time.perf_counter() - t0) * 1e3
        if self.engine is not None:
            mask, timings = self.score_map(image)
        else:
            mask, timings = np.zeros(image.shape[:2], np.float32), {}
        if calibrate_ms is not None:
            timings = {"calibrate": calibrate_ms, **timings}
        t0 = time.perf_counter()
        defects = find_defects(mask, self.rules)
        timings["verdict"] = (time.perf_counter() - t0) * 1e3
        labels: tuple[str, ...] = ()
        patches: list = []
        if self.classifier is not None:
            t0 = time.perf_counter()
            labels, patches = self.classifier.classify(image)
            timings["classify"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = sum(timings.values())
        latency_ms = (time.monotonic_ns() - frame.timestamp_ns) / 1e6
        return InspectionResult(frame=frame, mask=mask, defects=defects,
                                verdict=decide(defects, labels, self.fail_on_labels), engine_id=self.engine_id,
                                labels=labels, timings=timings, latency_ms=latency_ms, patches=patches)
