"""Scale: millimetres per pixel from a target of known pitch (a checkerboard or a symmetric dot grid).

The target's points are found with OpenCV (``findChessboardCornersSB``, falling back to ``findChessboardCorners``
+ ``cornerSubPix``; ``findCirclesGrid`` for dots) and a grid is fitted to them by least squares::

    point(row i, column j) = origin + j * a + i * b          (a, b: 2-vectors in pixels per pitch)

after dropping points more than 3 robust standard deviations off the first fit. With ``A = [a b]`` the pixels per
pitch along the image's x axis are ``|A[0]|`` and along y ``|A[1]|``, so ``mm_per_px_x = pitch / |A[0]|`` and
``mm_per_px_y = pitch / |A[1]|`` hold for any rotation of the target, also when x and y scales differ (a
line-scan camera, whose y scale is set by the conveyor speed). ``mm_per_px`` = ``pitch / sqrt(|det A|)`` is the
scale for areas seen as a square.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calibration.errors import CalibrationError
from calibration.images import to_grey

TARGETS = ("checkerboard", "dots")


def parse_pattern(text: str) -> tuple[int, int]:
    """``"9x6"`` → ``(9, 6)``: inner corners (checkerboard) or dots (grid) per row and per column."""
    try:
        cols, rows = (int(v) for v in str(text).lower().replace("×", "x").split("x"))
    except ValueError:
        raise CalibrationError(f"pattern {text!r} must be COLUMNSxROWS, e.g. 9x6 (a checkerboard of 10×7 squares "
                               "has 9x6 inner corners)") from None
    if cols < 2 or rows < 2:
        raise CalibrationError(f"pattern {text!r}: need at least 2x2 points to measure a scale")
    return cols, rows


@dataclass(frozen=True)
class ScaleResult:
    """The measured scale and how well the grid fitted."""

    mm_per_px: float
    mm_per_px_x: float
    mm_per_px_y: float
    pitch_mm: float
    pattern: tuple[int, int]
    target: str
    rotation_deg: float
    residual_px: float  # rms distance of the used points from the fitted grid
    points: int
    rejected: int
    corners: np.ndarray  # (rows, cols, 2) as found

    def to_dict(self) -> dict:
        return {"mm_per_px": round(self.mm_per_px, 8), "mm_per_px_x": round(self.mm_per_px_x, 8),
                "mm_per_px_y": round(self.mm_per_px_y, 8), "px_per_mm": round(1 / self.mm_per_px, 5),
                "pitch_mm": self.pitch_mm, "pattern": f"{self.pattern[0]}x{self.pattern[1]}", "target": self.target,
                "rotation_deg": round(self.rotation_deg, 4), "residual_px": round(self.residual_px, 4),
                "points": self.points, "rejected": self.rejected}


def find_points(image: np.ndarray, pattern: tuple[int, int], target: str = "checkerboard") -> np.ndarray:
    """The target's points as ``(rows, cols, 2)`` float64 pixel coordinates, sub-pixel accurate."""
    import cv2

    if target not in TARGETS:
        raise CalibrationError(f"target {target!r} is not known; use one of {', '.join(TARGETS)}")
    grey = to_grey(image)
    cols, rows = pattern
    corners = None
    if target == "checkerboard":
        found, corners = cv2.findChessboardCornersSB(grey, (cols, rows), flags=cv2.CALIB_CB_ACCURACY)
        if not found:
            flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
            found, corners = cv2.findChessboardCorners(grey, (cols, rows), flags=flags)
            if found:
                criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)
                corners = cv2.cornerSubPix(grey, corners, (7, 7), (-1, -1), criteria)
        what = f"checkerboard with {cols}x{rows} inner corners"
    else:
        found, corners = cv2.findCirclesGrid(grey, (cols, rows), flags=cv2.CALIB_CB_SYMMETRIC_GRID)
        if not found:  # light dots on a dark ground
            found, corners = cv2.findCirclesGrid(255 - grey, (cols, rows), flags=cv2.CALIB_CB_SYMMETRIC_GRID)
        what = f"a grid of {cols}x{rows} dots"
    if not found or corners is None:
        raise CalibrationError(f"found no {what} in the image; check that --pattern counts the "
                               f"{'inner corners' if target == 'checkerboard' else 'dots'} (columns x rows), that "
                               "the whole target is in view with a margin around it, in focus and evenly lit")
    return corners.reshape(rows, cols, 2).astype(np.float64)


def fit_grid(points: np.ndarray, outlier_sigma: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares grid ``point(i, j) = origin + j*a + i*b`` on ``(rows, cols, 2)`` points, refitted once
    without outliers. Returns ``(A = [a b] as 2x2 columns, origin, used mask (rows, cols))``."""
    rows, cols = points.shape[:2]
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    design = np.stack([np.ones(rows * cols), jj.ravel(), ii.ravel()], 1)
    target = points.reshape(-1, 2)
    used = np.ones(rows * cols, bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[used], target[used], rcond=None)
        residual = np.linalg.norm(design @ coef - target, axis=1)
        sigma = 1.4826 * float(np.median(np.abs(residual[used] - np.median(residual[used])))) + 1e-9
        keep = residual <= max(outlier_sigma * sigma + float(np.median(residual[used])), 0.5)
        if keep.sum() < max(4, design.shape[1] + 1) or (keep == used).all():
            break
        used = keep
    coef, *_ = np.linalg.lstsq(design[used], target[used], rcond=None)
    origin, a, b = coef[0], coef[1], coef[2]
    return np.stack([a, b], 1), origin, used.reshape(rows, cols)


def measure_scale(image: np.ndarray, pattern: tuple[int, int], pitch_mm: float,
                  target: str = "checkerboard") -> ScaleResult:
    """Millimetres per pixel from one image of a target whose neighbouring points are ``pitch_mm`` apart."""
    if not (isinstance(pitch_mm, (int, float)) and math.isfinite(pitch_mm) and pitch_mm > 0):
        raise CalibrationError(f"--pitch-mm must be the target's square (or dot) pitch in mm, > 0; got {pitch_mm!r}")
    points = find_points(image, pattern, target)
    matrix, origin, used = fit_grid(points)
    rows, cols = points.shape[:2]
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    model = origin + jj[..., None] * matrix[:, 0] + ii[..., None] * matrix[:, 1]
    residual = np.linalg.norm(model - points, axis=2)[used]
    det = abs(float(np.linalg.det(matrix)))
    if det < 1e-6:
        raise CalibrationError("the target's points are collinear; show the whole target, facing the camera")
    px_x, px_y = float(np.linalg.norm(matrix[0])), float(np.linalg.norm(matrix[1]))
    # the corner order may start at any corner: report the turn of the grid's nearest axis
    angle = (math.degrees(math.atan2(matrix[1, 0], matrix[0, 0])) + 45.0) % 90.0 - 45.0
    return ScaleResult(mm_per_px=pitch_mm / math.sqrt(det), mm_per_px_x=pitch_mm / px_x, mm_per_px_y=pitch_mm / px_y,
                       pitch_mm=float(pitch_mm), pattern=(cols, rows), target=target, rotation_deg=angle,
                       residual_px=float(np.sqrt(np.mean(residual ** 2))), points=int(used.sum()),
                       rejected=int((~used).sum()), corners=points)


def draw_points(image: np.ndarray, result: ScaleResult) -> np.ndarray:
    """A BGR picture of the target with the found points and the fitted scale written on it."""
    import cv2

    bgr = cv2.cvtColor(to_grey(image), cv2.COLOR_GRAY2BGR)
    cols, rows = result.pattern
    cv2.drawChessboardCorners(bgr, (cols, rows), result.corners.reshape(-1, 1, 2).astype(np.float32), True)
    text = f"{result.mm_per_px * 1000:.3f} um/px  ({result.pattern[0]}x{result.pattern[1]}, {result.pitch_mm:g} mm)"
    cv2.putText(bgr, text, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 255), 2, cv2.LINE_AA)
    return bgr
