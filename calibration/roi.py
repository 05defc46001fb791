"""Region of interest: found automatically on a reference image, editable, stored as the station's ROI types.

* ``lens`` (a camera-module cover glass): the clear glass disc inside the black ink ring. A rough disc is the
  largest bright region (Otsu) that does not touch the image border; then, along 360 rays from its centre, the
  glass→ink edge is the steepest fall in grey level near the rough radius, and a circle is fitted to those edge
  points by least squares (points more than 3 robust standard deviations off are dropped and the fit repeated).
  Defects in the ink ring are then ignored, as the BFFN paper does.
* ``screen``: the active area of a screen, an axis-aligned rectangle. Starting from the image centre, each side
  is the first significant step in the row (or column) mean profile of the middle half of the image.

The found region is shrunk by ``margin`` pixels (negative: grown), stored in the profile as a
:class:`inspection_core.verdict.RoiCircle` or :class:`~inspection_core.verdict.RoiRect`, and drawn over the
reference image as a PNG for the engineer to check. ``--set cx=..,cy=..,r=..`` (or ``x=..,y=..,w=..,h=..``) replaces it by hand.
"""
from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from calibration.errors import CalibrationError
from calibration.images import to_grey
from inspection_core.verdict import RoiCircle, RoiRect

KINDS = ("lens", "screen")
Roi = RoiCircle | RoiRect


def roi_to_dict(roi: Roi) -> dict:
    kind = "circle" if isinstance(roi, RoiCircle) else "rect"
    return {"shape": kind, **{k: (round(float(v), 3) if kind == "circle" else int(v)) for k, v in asdict(roi).items()}}


def roi_from_dict(data: dict) -> Roi:
    try:
        if data["shape"] == "circle":
            return RoiCircle(float(data["cx"]), float(data["cy"]), float(data["r"]))
        if data["shape"] == "rect":
            return RoiRect(int(data["x"]), int(data["y"]), int(data["w"]), int(data["h"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"ROI {data!r} is not a circle (cx, cy, r) or rectangle (x, y, w, h): {exc}") from None
    raise CalibrationError(f"ROI shape {data.get('shape')!r} is not 'circle' or 'rect'")


def parse_roi(text: str) -> Roi:
    """``"cx=320,cy=240,r=200"`` → :class:`RoiCircle`; ``"x=10,y=20,w=600,h=400"`` → :class:`RoiRect`."""
    values: dict[str, float] = {}
    for part in str(text).replace(" ", "").split(","):
        key, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            values[key] = float(value)
        except ValueError:
            raise CalibrationError(f"--set {text!r}: write key=value pairs joined by commas, e.g. cx=320,cy=240,r=200 "
                                   "or x=10,y=20,w=600,h=400") from None
    try:
        if set(values) == {"cx", "cy", "r"}:
            return RoiCircle(values["cx"], values["cy"], values["r"])
        if set(values) == {"x", "y", "w", "h"}:
            if any(v != int(v) for v in values.values()):
                raise CalibrationError(f"--set {text!r}: a rectangle takes whole pixels")
            return RoiRect(*(int(values[k]) for k in ("x", "y", "w", "h")))
    except ValueError as exc:
        raise CalibrationError(f"--set {text!r}: {exc}") from None
    raise CalibrationError(f"--set {text!r}: give either cx, cy, r (a circle) or x, y, w, h (a rectangle)")


def with_margin(roi: Roi, margin: float) -> Roi:
    """``roi`` shrunk by ``margin`` pixels on every side (grown when negative)."""
    try:
        if isinstance(roi, RoiCircle):
            return RoiCircle(roi.cx, roi.cy, roi.r - margin)
        m = int(round(margin))
        return RoiRect(roi.x + m, roi.y + m, roi.w - 2 * m, roi.h - 2 * m)
    except ValueError:
        raise CalibrationError(f"a margin of {margin:g} px leaves nothing of the region {roi}; use a smaller "
                               "--margin") from None


def check_inside(roi: Roi, width: int, height: int) -> None:
    """Refuse a region that lies wholly outside a ``width`` × ``height`` frame."""
    if not roi.mask((height, width)).any():
        raise CalibrationError(f"the region {roi} lies outside the {width}×{height} frame; check the numbers")


# ------------------------------------------------------------------------------------------------------ lens
def _fit_circle(points: np.ndarray) -> tuple[float, float, float]:
    """Algebraic least-squares circle (Kasa) through ``(N, 2)`` points."""
    x, y = points[:, 0], points[:, 1]
    design = np.stack([x, y, np.ones_like(x)], 1)
    rhs = x * x + y * y
    (a, b, c), *_ = np.linalg.lstsq(design, rhs, rcond=None)
    cx, cy = a / 2, b / 2
    return float(cx), float(cy), float(math.sqrt(max(c + cx * cx + cy * cy, 0.0)))


def find_lens_roi(image: np.ndarray, rays: int = 360) -> tuple[RoiCircle, dict]:
    """The glass disc of a camera-module cover glass (bright, inside a dark ink ring) and fit facts."""
    import cv2

    grey = to_grey(image)
    h, w = grey.shape
    blur = cv2.GaussianBlur(grey, (0, 0), 2.0)
    _, bright = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    best, best_area = None, 0.0
    for i in range(1, n):
        x, y, bw, bh, _area = stats[i]
        if x == 0 or y == 0 or x + bw >= w or y + bh >= h:
            continue  # touches the border: housing or background, not the glass
        contours, _ = cv2.findContours((labels[y:y + bh, x:x + bw] == i).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        area = max(cv2.contourArea(c) for c in contours)  # holes (dark defects on the glass) filled
        if area > best_area and area >= 0.005 * h * w and 0.5 < bw / max(bh, 1) < 2:
            best, best_area = (x + bw / 2, y + bh / 2), area
    if best is None:
        raise CalibrationError("no bright glass disc inside a dark ring found: the reference image should show the "
                               "whole lens, glass bright and ink ring dark, not touching the image border (or set "
                               "the circle by hand with --set cx=..,cy=..,r=..)")
    cx0, cy0 = best
    r0 = math.sqrt(best_area / math.pi)
    # steepest fall along rays near the rough radius
    smooth = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 1.0)
    radii = np.arange(max(2.0, 0.6 * r0), 1.4 * r0, 0.25, dtype=np.float32)
    angles = np.linspace(0, 2 * math.pi, rays, endpoint=False, dtype=np.float32)
    map_x = (cx0 + np.cos(angles)[:, None] * radii[None, :]).astype(np.float32)
    map_y = (cy0 + np.sin(angles)[:, None] * radii[None, :]).astype(np.float32)
    profiles = cv2.remap(smooth, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    slope = np.diff(profiles, axis=1)
    k = np.argmin(slope, axis=1)
    drop = -slope[np.arange(rays), k]
    k = np.clip(k, 1, slope.shape[1] - 2)
    y0, y1, y2 = (slope[np.arange(rays), k + d] for d in (-1, 0, 1))
    denom = y0 - 2 * y1 + y2
    sub = np.where(np.abs(denom) > 1e-9, 0.5 * (y0 - y2) / np.where(np.abs(denom) > 1e-9, denom, 1), 0.0)
    r_edge = radii[0] + (k + 0.5 + np.clip(sub, -1, 1)) * 0.25
    good = drop >= 0.3 * float(np.median(drop))  # rays where a defect or a reflection hides the edge drop out
    pts = np.stack([cx0 + np.cos(angles) * r_edge, cy0 + np.sin(angles) * r_edge], 1)[good]
    if len(pts) < 12:
        raise CalibrationError("the glass edge was found on too few rays; check the reference image (focus, light) "
                               "or set the circle by hand with --set cx=..,cy=..,r=..")
    for _ in range(3):
        cx, cy, r = _fit_circle(pts)
        dist = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
        sigma = 1.4826 * float(np.median(dist)) + 1e-6
        keep = dist <= max(3 * sigma, 0.5)
        if keep.all() or keep.sum() < 12:
            break
        pts = pts[keep]
    cx, cy, r = _fit_circle(pts)
    rms = float(np.sqrt(np.mean((np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r) ** 2)))
    return RoiCircle(cx, cy, r), {"edge_points": int(len(pts)), "rays": rays, "fit_rms_px": round(rms, 3)}


# ---------------------------------------------------------------------------------------------------- screen
def _first_step(profile: np.ndarray, start: int, direction: int, threshold: float, window: int) -> float | None:
    """Position of the first step of at least ``threshold`` walking from ``start`` in ``direction``: the edge
    between pixel ``p - 1`` and ``p`` lies at ``p`` (the first pixel outside when walking outwards)."""
    n = len(profile)
    cumsum = np.concatenate([[0.0], np.cumsum(profile)])

    def step_at(p: int) -> float:  # mean of the next `window` minus mean of the previous `window`
        lo, hi = max(0, p - window), min(n, p + window)
        return (cumsum[hi] - cumsum[p]) / (hi - p) - (cumsum[p] - cumsum[lo]) / (p - lo)

    positions = range(start, window - 1, -1) if direction < 0 else range(start + 1, n - window + 1)
    run = None
    for p in positions:
        if abs(step_at(p)) >= threshold:
            run = p
            break
    if run is None:
        return None
    # the strongest step within one window of the first crossing
    candidates = [q for q in range(run - window, run + window + 1) if window <= q <= n - window]
    best = max(candidates, key=lambda q: abs(step_at(q)))
    return float(best)


def find_screen_roi(image: np.ndarray, min_contrast: float = 4.0) -> tuple[RoiRect, dict]:
    """The active area of a screen: the rectangle around the image centre bounded by the first grey-level step
    of at least ``min_contrast`` on each side."""
    grey = to_grey(image).astype(np.float64)
    h, w = grey.shape
    band_rows = grey[h // 4: 3 * h // 4]
    band_cols = grey[:, w // 4: 3 * w // 4]
    cols, rows = np.median(band_rows, axis=0), np.median(band_cols, axis=1)
    window = 4
    noise = max(1.4826 * float(np.median(np.abs(np.diff(cols)))), 1.4826 * float(np.median(np.abs(np.diff(rows)))))
    threshold = max(float(min_contrast), 8 * noise)
    edges = {"left": _first_step(cols, w // 2, -1, threshold, window),
             "right": _first_step(cols, w // 2, +1, threshold, window),
             "top": _first_step(rows, h // 2, -1, threshold, window),
             "bottom": _first_step(rows, h // 2, +1, threshold, window)}
    missing = [side for side, v in edges.items() if v is None]
    if missing:
        raise CalibrationError(f"no edge of the active area found on the {', '.join(missing)} side(s) (no grey-level "
                               f"step of {threshold:.1f} or more from the centre outwards); the reference image "
                               "should show the whole screen, centred, with its border in view (or set the "
                               "rectangle by hand with --set x=..,y=..,w=..,h=..)")
    x0, x1 = int(edges["left"]), int(edges["right"])
    y0, y1 = int(edges["top"]), int(edges["bottom"])
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise CalibrationError(f"the active area found is only {x1 - x0}×{y1 - y0} px; check the reference image")
    return RoiRect(x0, y0, x1 - x0, y1 - y0), {"step_threshold": round(threshold, 2)}


def find_roi(image: np.ndarray, kind: str) -> tuple[Roi, dict]:
    if kind == "lens":
        return find_lens_roi(image)
    if kind == "screen":
        return find_screen_roi(image)
    raise CalibrationError(f"ROI kind {kind!r} is not known; use one of {', '.join(KINDS)}")


def draw_roi(image: np.ndarray, roi: Roi, found: Roi | None = None) -> np.ndarray:
    """BGR picture of ``image`` with the region in green (outside darkened) and, when different, the region as
    found before the margin in yellow."""
    import cv2

    grey = to_grey(image)
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    outside = ~roi.mask(grey.shape)
    bgr[outside] = (bgr[outside] * 0.45).astype(np.uint8)
    for shape, colour in ((found, (0, 220, 255)), (roi, (0, 255, 0))):
        if shape is None or (shape is found and found == roi):
            continue
        if isinstance(shape, RoiCircle):
            cv2.circle(bgr, (int(round(shape.cx * 8)), int(round(shape.cy * 8))), int(round(shape.r * 8)), colour, 1,
                       cv2.LINE_AA, 3)
        else:
            cv2.rectangle(bgr, (shape.x, shape.y), (shape.x + shape.w - 1, shape.y + shape.h - 1), colour, 1)
    return bgr
