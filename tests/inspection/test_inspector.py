"""The one Inspector and its options: scores reused across decision rules (the calibrated form of `calibration
thresholds`) without losing the classifier's labels, incomplete parts judged whole as when streamed, and the layer
it lives in (engines and calibration use it without importing the station)."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from inspection.classifier import ClassifierStage
from inspection.errors import InspectionError
from inspection.inspector import Inspector
from inspection_core.preprocess import InputSpec
from inspection_core.records import Frame, Verdict
from inspection_core.verdict import INCOMPLETE_LABEL, DecisionRules


class CountingEngine:
    """Defect probability 1 where the input pixel is brighter than 200; counts its calls."""

    tile = 32
    spec = InputSpec()
    engine_id = "stub-bright@numpy"

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        pixels = (batch[:, 0] * self.spec.std + self.spec.mean) * 255
        defect = (pixels > 200).astype(np.float32)
        return np.stack([1 - defect, defect], axis=1)


class LabelEngine:
    """A classifier's engine that finds every class in every patch; counts its calls."""

    engine_id = "stub-labels@numpy"

    def __init__(self, classes: int) -> None:
        self.classes, self.calls = classes, 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.ones((len(batch), self.classes), np.float32)


def label_classifier(labels: tuple[str, ...], patch: int = 64) -> ClassifierStage:
    """A real classifier stage that always finds ``labels`` (its engine counts the calls: ``.engine.calls``)."""
    return ClassifierStage(LabelEngine(len(labels)), labels, InputSpec(), size=16, patch=patch)


def frame(image: np.ndarray, i: int = 1, **meta) -> Frame:
    return Frame(image, i, time.monotonic_ns(), "test", meta)


def spot(size: tuple[int, int] = (64, 96), area: tuple[slice, slice] = (slice(20, 30), slice(40, 50))) -> np.ndarray:
    image = np.full(size, 100, np.uint8)
    image[area] = 255
    return image


def test_reused_scores_are_judged_by_the_new_rules_and_keep_the_classifier_labels():
    engine, classifier = CountingEngine(), label_classifier(("scratch",))
    inspector = Inspector(engine, overlap=8, batch=4, rules=DecisionRules(min_area_px=10), classifier=classifier,
                          reuse_scores=True)
    first = inspector.inspect(frame(spot(), file="a.png"))
    assert first.verdict is Verdict.FAIL and len(first.defects) == 1 and first.labels == ("scratch",)
    calls = engine.calls
    inspector.rules = replace(inspector.rules, min_area_px=1000)  # a sweep: the spot is too small now
    again = inspector.inspect(frame(spot(), 2, file="a.png"))
    assert engine.calls == calls and classifier.engine.calls == 1, "the networks ran once per image"
    assert again.defects == () and np.array_equal(again.mask, first.mask)
    assert again.labels == ("scratch",) and again.verdict is Verdict.FAIL, "the labels still fail the part"
    inspector.fail_on_labels = False
    assert inspector.inspect(frame(spot(), 3, file="a.png")).verdict is Verdict.PASS
    inspector.inspect(frame(spot(), 4, file="b.png"))
    assert engine.calls > calls, "another image is scored"


def test_without_reuse_every_frame_runs_the_networks():
    engine = CountingEngine()
    inspector = Inspector(engine, overlap=8, batch=4, rules=DecisionRules(min_area_px=10))
    inspector.inspect(frame(spot(), file="a.png"))
    calls = engine.calls
    inspector.inspect(frame(spot(), file="a.png"))
    assert engine.calls == 2 * calls


def test_an_incomplete_part_inspected_whole_fails_with_its_missing_lines():
    image = spot((96, 64), (slice(60, 70), slice(10, 20)))
    inspector = Inspector(CountingEngine(), overlap=8, batch=4, rules=DecisionRules(min_area_px=10))
    complete = inspector.inspect(frame(image))
    assert complete.verdict is Verdict.FAIL and [d.label for d in complete.defects] == ["defect"]
    result = inspector.inspect(frame(image, gaps=[[56, 80]]))  # the spot's lines are missing
    assert result.verdict is Verdict.FAIL
    (missing,) = result.defects
    assert missing.label == INCOMPLETE_LABEL and missing.bbox == (0, 56, 64, 24) and not result.mask[56:80].any()
    clean = np.full((96, 64), 100, np.uint8)
    issue = inspector.inspect(frame(clean, issues=["cut short"]))
    assert issue.verdict is Verdict.FAIL and issue.defects[0].bbox == (0, 0, 64, 96)
    assert inspector.inspect(frame(clean)).verdict is Verdict.PASS


def test_a_part_listener_needs_the_streaming_option():
    inspector = Inspector(CountingEngine(), overlap=8, batch=4, rules=DecisionRules())
    with pytest.raises(InspectionError, match="streaming=True"):
        inspector.part_started(1, 64, 64)
    with pytest.raises(InspectionError, match="a segmentation engine, a classifier, or both"):
        Inspector(None, overlap=8, batch=4, rules=DecisionRules())
    streaming = Inspector(CountingEngine(), overlap=8, batch=4, rules=DecisionRules(), streaming=True)
    assert streaming.inspect(frame(spot())).verdict is Verdict.FAIL  # a plain frame is inspected whole
    assert [r.streamed for r in streaming.reports] == [False]
    streaming.close()


def test_engines_and_calibration_run_the_inspector_without_the_station():
    code = ("import sys; import inspection.inspector, inspection.streaming, engines.verify, engines.compare, "
            "engines.evaluate, calibration.thresholds, calibration.line; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'station', 'ui'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    code = ("import sys; import inspection.inspector, inspection.feed; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'station', 'ui', 'engines', 'calibration'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
