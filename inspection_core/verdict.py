"""Turn a stitched defect-score mask into defects and a PASS / FAIL verdict.

>>> import numpy as np
>>> mask = np.zeros((64, 64), np.float32); mask[10:20, 10:20] = 0.9
>>> defects = find_defects(mask, DecisionRules(min_area_px=30))
>>> [d.bbox for d in defects], decide(defects).value
([(10, 10, 10, 10)], 'FAIL')

A pixel is a defect pixel when its score is at least ``score_threshold``; the defect pixels inside the region
of interest are grouped into 8-connected components, and components of at least ``min_area_px`` pixels are
defects. With a scale (``mm_per_px``, from a calibration profile) every defect also gets its area in mm² and its
size in mm, and ``min_area_mm2``, when set, replaces ``min_area_px`` as the smallest defect.

A part not fully seen (a line-scan part with missing lines, or cut short) never passes: :func:`incomplete_defects`
marks what is missing as defects labelled :data:`INCOMPLETE_LABEL`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import cv2
import numpy as np

from inspection_core.defaults import DEFAULT_MIN_AREA_PX, DEFAULT_SCORE_THRESHOLD
from inspection_core.errors import SettingError
from inspection_core.records import Defect, Verdict


@dataclass(frozen=True)
class RoiRect:
    """An axis-aligned region of interest: top-left ``(x, y)``, ``w`` x ``h`` pixels."""

    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        if self.w <= 0 or self.h <= 0:
            raise SettingError(f"ROI rectangle needs w > 0 and h > 0, got w={self.w}, h={self.h}")

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``(H, W)`` mask, True inside (parts outside the image are clipped away)."""
        out = np.zeros(shape, dtype=bool)
        x0, y0 = max(self.x, 0), max(self.y, 0)
        out[y0 : max(self.y + self.h, 0), x0 : max(self.x + self.w, 0)] = True
        return out


@dataclass(frozen=True)
class RoiCircle:
    """A circular region of interest: centre ``(cx, cy)`` and radius ``r`` in pixels (border included)."""

    cx: float
    cy: float
    r: float

    def __post_init__(self) -> None:
        if not self.r > 0:
            raise SettingError(f"ROI circle needs r > 0, got r={self.r}")

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``(H, W)`` mask, True for pixels whose centre lies within ``r`` of ``(cx, cy)``."""
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        return (xx - self.cx) ** 2 + (yy - self.cy) ** 2 <= self.r**2


Roi = Union[RoiRect, RoiCircle]


@dataclass(frozen=True)
class DecisionRules:
    """How a score mask becomes defects: threshold, smallest defect area, optional ROI, and the defect label.

    ``mm_per_px`` is the scale ``(x, y)`` in millimetres per pixel (``None``: pixels only); ``min_area_mm2``, which
    needs it, is the smallest defect area in mm² and then replaces ``min_area_px``."""

    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    min_area_px: int = DEFAULT_MIN_AREA_PX
    roi: Roi | None = None
    label: str = "defect"
    min_area_mm2: float | None = None
    mm_per_px: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.score_threshold, (int, float)) and 0.0 < self.score_threshold <= 1.0):
            raise SettingError(f"score_threshold must be in (0, 1], got {self.score_threshold!r}")
        if not isinstance(self.min_area_px, (int, np.integer)) or isinstance(self.min_area_px, bool) \
                or self.min_area_px < 1:
            raise SettingError(f"min_area_px must be an integer >= 1, got {self.min_area_px!r}")
        if self.roi is not None and not isinstance(self.roi, (RoiRect, RoiCircle)):
            raise ValueError(f"roi must be None, RoiRect or RoiCircle, got {type(self.roi).__name__}")
        if not self.label:
            raise SettingError("label must be a non-empty string, e.g. 'defect' or 'scratch'")
        if self.min_area_mm2 is not None and not (isinstance(self.min_area_mm2, (int, float))
                                                  and not isinstance(self.min_area_mm2, bool)
                                                  and self.min_area_mm2 > 0):
            raise SettingError(f"min_area_mm2 must be a number of mm² > 0, got {self.min_area_mm2!r}")
        if self.mm_per_px is not None:
            scale = tuple(self.mm_per_px)
            if len(scale) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in scale):
                raise SettingError(f"mm_per_px must be (x, y) millimetres per pixel > 0, got {self.mm_per_px!r}")
            object.__setattr__(self, "mm_per_px", (float(scale[0]), float(scale[1])))

    @property
    def min_area(self) -> int:
        """The smallest defect in pixels: ``min_area_px``, or ``min_area_mm2`` converted with the scale."""
        if self.min_area_mm2 is None:
            return self.min_area_px
        if self.mm_per_px is None:
            raise SettingError("min_area_mm2 needs a scale (mm_per_px): calibrate one with `calibration scale` and "
                               "name the profile in the recipe's [calibration], or use min_area_px")
        return max(1, math.ceil(self.min_area_mm2 / (self.mm_per_px[0] * self.mm_per_px[1]) - 1e-9))


def _check_mask(mask_scores: np.ndarray) -> None:
    if not isinstance(mask_scores, np.ndarray):
        raise ValueError(f"mask_scores must be a numpy array, got {type(mask_scores).__name__}")
    if mask_scores.ndim != 2 or 0 in mask_scores.shape:
        raise ValueError(
            f"mask_scores must be a non-empty 2-D (H, W) score map, got shape {mask_scores.shape}; "
            "squeeze a channel axis first (mask[..., 0] or mask[0])"
        )
    if mask_scores.dtype != np.float32:
        raise ValueError(f"mask_scores must be float32 scores in [0, 1], got {mask_scores.dtype}; "
                         "convert with mask.astype(np.float32)")


def find_defects(mask_scores: np.ndarray, rules: DecisionRules) -> tuple[Defect, ...]:
    """The defects of one stitched ``float32`` ``(H, W)`` score map, in raster order of their top-left pixel."""
    return judge_scores(mask_scores, rules, pixels=False)[0]


def judge_scores(mask_scores: np.ndarray, rules: DecisionRules,
                 pixels: bool = True) -> tuple[tuple[Defect, ...], np.ndarray | None]:
    """``(defects, decided)``: :func:`find_defects`, and the pixels of the defects the rules kept (``bool``,
    the map's size: above the threshold, inside the ROI, in a component of at least the minimum area), which is
    what an overlay paints, so it never shows what the verdict ignored. ``decided`` is None when no defect was
    kept (or ``pixels`` is False)."""
    _check_mask(mask_scores)
    binary = mask_scores >= np.float32(rules.score_threshold)  # NaN scores compare False: never a defect
    if rules.roi is not None:
        binary &= rules.roi.mask(mask_scores.shape)
    if not binary.any():
        return (), None
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(binary.view(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    min_area = rules.min_area
    keep = [i for i in range(1, n) if areas[i] >= min_area]
    if not keep:
        return (), None
    inside = labels > 0  # only component pixels: usually a tiny part of the frame
    flat_labels = labels[inside]
    flat_scores = mask_scores[inside].astype(np.float64)
    sums = np.bincount(flat_labels, weights=flat_scores, minlength=n)
    maxima = np.full(n, -math.inf)
    np.maximum.at(maxima, flat_labels, flat_scores)
    defects = []
    sx, sy = rules.mm_per_px or (None, None)
    for i in keep:
        x, y, w, h, area = (int(v) for v in stats[i, :5])
        defects.append(
            Defect(
                label=rules.label,
                bbox=(x, y, w, h),
                area_px=area,
                centroid=(float(centroids[i, 0]), float(centroids[i, 1])),
                mean_score=float(sums[i] / area),
                max_score=float(maxima[i]),
                area_mm2=None if sx is None else area * sx * sy,
                size_mm=None if sx is None else (w * sx, h * sy),
            )
        )
    decided = None
    if pixels:
        kept = np.zeros(n, bool)
        kept[keep] = True
        decided = kept[labels]
    return tuple(defects), decided


def decide(defects: tuple[Defect, ...] | list[Defect], labels: tuple[str, ...] | list[str] = (),
           fail_on_labels: bool = True) -> Verdict:
    """FAIL when there is any defect, or any classifier label when ``fail_on_labels``; PASS otherwise."""
    return Verdict.FAIL if len(defects) or (fail_on_labels and len(labels)) else Verdict.PASS


#: The label of the defects that mark a part's missing lines (or a part otherwise incomplete).
INCOMPLETE_LABEL = "incomplete"


def incomplete_defects(shape: tuple[int, ...], gaps: Sequence[Sequence[int]], issues: Sequence[str]) -> list[Defect]:
    """The :data:`INCOMPLETE_LABEL` defects of a part: one per missing line range ``[a, b)`` in ``gaps``, one over
    the whole part when there are other ``issues`` (their score is 1: a part not fully seen cannot pass)."""
    h, w = int(shape[0]), int(shape[1])
    spans = [(int(a), int(b)) for a, b in gaps] + ([(0, h)] if issues else [])
    return [Defect(label=INCOMPLETE_LABEL, bbox=(0, a, w, b - a), area_px=w * (b - a),
                   centroid=(round((w - 1) / 2, 2), round((a + b - 1) / 2, 2)), mean_score=1.0, max_score=1.0)
            for a, b in spans if b > a]
