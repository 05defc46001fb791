"""Verdict rules on hand-built score masks."""
from __future__ import annotations

import numpy as np
import pytest

from inspection_core.records import Verdict
from inspection_core.verdict import DecisionRules, RoiCircle, RoiRect, decide, find_defects


def blank(h: int = 64, w: int = 80) -> np.ndarray:
    return np.zeros((h, w), np.float32)


def test_empty_mask_passes() -> None:
    defects = find_defects(blank(), DecisionRules())
    assert defects == ()
    assert decide(defects) is Verdict.PASS


def test_threshold_edges() -> None:
    mask = blank()
    mask[5:10, 5:10] = 0.5  # exactly the threshold: counts as defect
    mask[30:35, 30:35] = np.nextafter(np.float32(0.5), np.float32(0))  # just below: not a defect
    defects = find_defects(mask, DecisionRules(score_threshold=0.5, min_area_px=1))
    assert [d.bbox for d in defects] == [(5, 5, 5, 5)]
    assert defects[0].mean_score == pytest.approx(0.5) and defects[0].max_score == pytest.approx(0.5)


def test_min_area_boundary() -> None:
    mask = blank()
    mask[10:13, 10:20] = 0.9  # area 30
    assert len(find_defects(mask, DecisionRules(min_area_px=30))) == 1  # area == min is a defect
    assert find_defects(mask, DecisionRules(min_area_px=31)) == ()


def test_two_blobs_give_two_defects_with_stats() -> None:
    mask = blank()
    mask[2:6, 3:10] = 0.8  # x=3, y=2, w=7, h=4
    mask[3, 4] = 1.0
    mask[40:50, 60:65] = 0.6  # x=60, y=40, w=5, h=10
    defects = find_defects(mask, DecisionRules(min_area_px=5, label="scratch"))
    assert [d.bbox for d in defects] == [(3, 2, 7, 4), (60, 40, 5, 10)]
    first, second = defects
    assert first.area_px == 28 and second.area_px == 50
    assert first.label == "scratch"
    assert first.max_score == pytest.approx(1.0)
    assert first.mean_score == pytest.approx((27 * 0.8 + 1.0) / 28, rel=1e-6)
    assert second.centroid == pytest.approx((62.0, 44.5))
    assert decide(defects) is Verdict.FAIL


def test_diagonal_pixels_join_with_8_connectivity() -> None:
    mask = blank()
    for i in range(6):
        mask[10 + i, 10 + i] = 0.9
    defects = find_defects(mask, DecisionRules(min_area_px=6))
    assert len(defects) == 1 and defects[0].bbox == (10, 10, 6, 6)


def test_rect_roi_excludes_blob_outside_and_clips_blob_across_border() -> None:
    mask = blank()
    mask[5:15, 5:15] = 0.9  # inside
    mask[40:50, 60:70] = 0.9  # outside
    mask[20:30, 28:38] = 0.9  # straddles the ROI's right edge at x=33
    rules = DecisionRules(min_area_px=10, roi=RoiRect(x=0, y=0, w=33, h=35))
    defects = find_defects(mask, rules)
    assert [d.bbox for d in defects] == [(5, 5, 10, 10), (28, 20, 5, 10)]


def test_circle_roi() -> None:
    mask = blank()
    mask[30:34, 38:42] = 0.9  # near the centre
    mask[0:4, 0:4] = 0.9  # in the corner, outside the circle
    rules = DecisionRules(min_area_px=4, roi=RoiCircle(cx=40, cy=32, r=20))
    assert [d.bbox for d in find_defects(mask, rules)] == [(38, 30, 4, 4)]
    roi = RoiCircle(cx=2, cy=2, r=1).mask((5, 5))
    assert roi.sum() == 5 and roi[2, 2] and roi[1, 2] and not roi[1, 1]


def test_roi_outside_image_means_no_defects() -> None:
    mask = np.full((20, 20), 0.9, np.float32)
    assert find_defects(mask, DecisionRules(min_area_px=1, roi=RoiRect(100, 100, 10, 10))) == ()
    assert find_defects(mask, DecisionRules(min_area_px=1, roi=RoiRect(-5, -5, 10, 10)))[0].bbox == (0, 0, 5, 5)


def test_nan_scores_are_never_defects() -> None:
    mask = blank()
    mask[:, :] = np.nan
    assert find_defects(mask, DecisionRules(min_area_px=1)) == ()


@pytest.mark.parametrize(
    ("mask", "fragment"),
    [
        (np.zeros((4, 4), np.float64), "float32"),
        (np.zeros((4, 4), np.uint8), "float32"),
        (np.zeros((1, 4, 4), np.float32), "2-D"),
        (np.zeros((4, 4, 1), np.float32), "2-D"),
        (np.zeros((0, 4), np.float32), "non-empty"),
        ([[0.0]], "numpy array"),
    ],
)
def test_wrong_mask_is_a_clear_error(mask: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        find_defects(mask, DecisionRules())  # type: ignore[arg-type]
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"score_threshold": 0.0}, "score_threshold"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"min_area_px": 0}, "min_area_px"),
        ({"min_area_px": 2.5}, "min_area_px"),
        ({"roi": (0, 0, 5, 5)}, "roi"),
        ({"label": ""}, "label"),
    ],
)
def test_rules_validate(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        DecisionRules(**kwargs)
    with pytest.raises(ValueError, match="w > 0"):
        RoiRect(0, 0, 0, 5)
    with pytest.raises(ValueError, match="r > 0"):
        RoiCircle(1, 1, 0)


def test_the_decided_pixels_are_the_kept_defects_after_threshold_roi_and_minimum_area():
    """Issue 27: results carry the decision, so an overlay never paints what the verdict ignored."""
    from inspection_core.verdict import DecisionRules, RoiRect, judge_scores

    scores = np.zeros((40, 60), np.float32)
    scores[5:15, 5:15] = 0.9      # kept: inside the ROI, 100 px
    scores[30:38, 45:55] = 0.99   # outside the ROI
    scores[5:7, 30:32] = 0.9      # inside, but 4 px: below the minimum area
    scores[20:30, 5:15] = 0.4     # below the threshold
    rules = DecisionRules(score_threshold=0.5, min_area_px=10, roi=RoiRect(0, 0, 40, 30))
    defects, decided = judge_scores(scores, rules)
    assert len(defects) == 1 and decided.dtype == bool and decided.shape == scores.shape
    expected = np.zeros_like(decided)
    expected[5:15, 5:15] = True
    assert np.array_equal(decided, expected)
    assert judge_scores(np.zeros((8, 8), np.float32), rules) == ((), None)
