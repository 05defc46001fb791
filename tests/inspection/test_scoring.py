"""The one scoring path: a frame inspected whole and the same frame streamed as a line-scan part go through the same
row-by-row scoring, so they give the same scores, report the same stage names in ``InspectionResult.timings`` and
run the classifier once per frame; a whole frame's inference stops between batches when its checkpoint raises."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from inspection.classifier import ClassifierStage
from inspection.inspector import Inspector
from inspection.scoring import SCORE_STAGES
from inspection_core.preprocess import InputSpec
from inspection_core.records import STAGES, Frame
from inspection_core.tiling import plan_tiles
from inspection_core.verdict import DecisionRules

from tests.inspection.test_inspector import CountingEngine as BrightEngine  # bright pixels are defects; counts calls

CLASSES = ("scratch", "dust")


class MeanEngine:
    """Classification: "scratch" scores a patch's mean brightness, "dust" its chunk's mean (so a patch's scores
    depend on the patches it is scored with, as GR's in mode "batch"); counts its calls."""

    engine_id = "mean@numpy"

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        own = batch.reshape(len(batch), -1).mean(axis=1) * 0.25 + 0.5
        return np.stack([own, np.full(len(batch), own.mean())], axis=1).astype(np.float32)


class CountingClassifier(ClassifierStage):
    """A real classifier stage that counts how often it labels a frame and how many patches it scores."""

    def __init__(self, mode: str = "batch") -> None:
        super().__init__(MeanEngine(), CLASSES, InputSpec(), size=16, patch=48, overlap=8, threshold=0.4, mode=mode)
        self.summaries = 0
        self.patches_scored = 0

    def score_patches(self, patches, batch=32):
        self.patches_scored += len(patches)
        return super().score_patches(patches, batch)

    def summarize(self, plan, scores):
        self.summaries += 1
        return super().summarize(plan, scores)


class FlatCalibration:
    """A calibration profile whose flat-field adds 1 to every pixel (row for row, as a line-scan correction)."""

    name = "flat+1"
    flatfield = "on"

    def prepare(self, frame: Frame) -> np.ndarray:
        return self.correct_rows(frame.image, 0)

    def check(self, image, pixel_format=None, what="the image") -> None:
        pass

    def correct_rows(self, lines: np.ndarray, start: int) -> np.ndarray:
        return np.minimum(lines[start:].astype(np.int16) + 1, 255).astype(np.uint8)


@dataclass
class Part:
    """What a line-scan assembler hands the listener when a part ends (station.strips.Part's fields it reads)."""

    index: int
    image: np.ndarray
    gaps: list = field(default_factory=list)
    issues: list = field(default_factory=list)


def image(lines: int = 150, width: int = 110, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.integers(60, 140, (lines, width)).astype(np.uint8)
    out[100:108, 30:40] = 255  # a defect
    return out


def whole(inspector: Inspector, img: np.ndarray):
    return inspector.inspect(Frame(img, 1, time.monotonic_ns(), "whole"))


def streamed(inspector: Inspector, img: np.ndarray, block_lines: int = 40):
    """``img`` streamed into ``inspector`` (streaming=True) as one line-scan part, ``block_lines`` at a time."""
    lines, width = img.shape[:2]
    inspector.part_started(7, width, lines)
    for end in range(block_lines, lines + block_lines, block_lines):
        inspector.lines_arrived(7, img[:min(end, lines)])
    inspector.part_ended(Part(7, img))
    result = inspector.inspect(Frame(img, 7, time.monotonic_ns(), "part", {"part": 7, "first_line": 0}))
    assert inspector.reports[-1].streamed
    return result


def both_forms(engine=None, classifier=None, calibration=None, **settings):
    """The whole-frame and the streaming form of one inspector."""
    kwargs = dict(overlap=8, batch=4, rules=DecisionRules(score_threshold=0.5, min_area_px=20), classifier=classifier,
                  calibration=calibration, **settings)
    return Inspector(engine, **kwargs), Inspector(engine, streaming=True, **kwargs)


@pytest.mark.parametrize("stages", ["segmentation", "classifier", "both", "both+calibration"])
def test_both_forms_report_the_same_stage_names_and_scores(stages):
    engine = BrightEngine() if stages != "classifier" else None
    classifier = CountingClassifier() if stages != "segmentation" else None
    calibration = FlatCalibration() if stages.endswith("calibration") else None
    at_once, streaming = both_forms(engine, classifier, calibration)
    img = image()
    a = whole(at_once, img)
    b = streamed(streaming, img)
    streaming.close()
    names = list(a.timings)
    assert names[-1] == "total" and set(names[:-1]) <= set(STAGES)
    assert list(b.timings) == names + ["finish", "backlog"], "same stage names, then the streaming extras"
    expected = (["calibrate"] if calibration else []) + (list(SCORE_STAGES[:4]) if engine else []) + ["verdict"]
    assert names == expected + (["classify"] if classifier else []) + ["total"]
    assert np.array_equal(a.mask, b.mask) and a.patches == b.patches
    assert a.defects == b.defects and a.labels == b.labels and a.verdict == b.verdict
    if engine is not None:
        assert [d.label for d in a.defects] == ["defect"]


@pytest.mark.parametrize("mode", ["batch", "bank"])
def test_the_classifier_labels_each_frame_once_in_each_form(mode):
    img = image(lines=170, width=130, seed=1)
    n_patches = plan_tiles(img.shape, 48, 8).n_tiles
    results = {}
    for form in ("whole", "streamed"):
        classifier = CountingClassifier(mode)
        at_once, streaming = both_forms(BrightEngine(), classifier)
        if form == "whole":
            results[form] = [whole(at_once, img) for _ in range(2)]
        else:
            results[form] = [streamed(streaming, img) for _ in range(2)]
            streaming.close()
        assert classifier.summaries == 2, f"{form}: the classifier labels each frame once"
        assert classifier.patches_scored == 2 * n_patches, f"{form}: each patch is scored once per frame"
        assert all(len(r.patches) == n_patches for r in results[form])
    first = results["whole"][0]
    assert first.labels == ("scratch",), "the patches with the defect are brighter"
    assert classifier.classify(img) == (first.labels, list(first.patches)), "the stage alone gives the same answer"


def test_the_same_network_calls_in_both_forms():
    img = image(lines=200, seed=2)
    counts = []
    for form in ("whole", "streamed"):
        engine, classifier = BrightEngine(), CountingClassifier()
        at_once, streaming = both_forms(engine, classifier)
        if form == "whole":
            whole(at_once, img)
        else:
            streamed(streaming, img, block_lines=30)
            report = streaming.reports[-1]
            streaming.close()
            assert {r.stage for r in report.rows} == {"segment", "classify"}
            assert sum(c.tiles for c in report.calls if c.stage == "segment") == at_once.tile_count(img.shape)
        counts.append((engine.calls, classifier.engine.calls))
    assert counts[0] == counts[1]


def test_a_whole_frame_is_checkpointed_before_each_batch_and_stops_when_it_raises():
    img = image()
    inspector = Inspector(BrightEngine(), overlap=8, batch=4, rules=DecisionRules())
    total = inspector.tile_count(img.shape)
    seen = []
    inspector.inspect(Frame(img, 1, 0, "test"), checkpoint=lambda done, n: seen.append((done, n)))
    assert seen == [(done, total) for done in range(0, total, 4)]

    class Stop(Exception):
        pass

    def stop_after_two(done: int, n: int) -> None:
        if done >= 8:
            raise Stop

    engine = BrightEngine()
    inspector = Inspector(engine, overlap=8, batch=4, rules=DecisionRules())
    with pytest.raises(Stop):
        inspector.inspect(Frame(img, 1, 0, "test"), checkpoint=stop_after_two)
    assert engine.calls == 2


def test_weights_that_prepare_whole_frames_score_the_bordered_frame_and_are_not_streamed():
    class Bordered(BrightEngine):
        spec = InputSpec(border=8, gain_target=100.0)

    img = image()
    at_once, streaming = both_forms(Bordered())
    assert streaming.streams is None, "a frame-wide gain and mirrored borders need the whole frame"
    result = whole(at_once, img)
    assert result.mask.shape == img.shape and list(result.timings)[:4] == list(SCORE_STAGES[:4])
    assert at_once.engine.calls == -(-at_once.tile_count(img.shape) // 4)
