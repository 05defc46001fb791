# Over 500 lines on purpose: one seeded generator (screens and their patch sets) whose bytes tests pin.
"""Seeded synthetic line-scan images of mobile-phone screens with exact per-defect instance masks.

Modelled on the screen set of the multi-label screen-defect paper (80 line-scan images of 5120×10240 px cut into
patches with a sliding window, defect types bubble, pinhole, scratch and tin ash, several per image, some at low
contrast or tiny): a *dark*, nearly uniform screen seen by a line-scan camera under an annular light, with the
artefacts such a camera adds — per-column gain and offset striping (pixel response non-uniformity, illumination
fall-off across the line, odd/even taps, a few warm columns) and a slight per-line brightness drift — which
flat-field calibration later removes. The true artefacts are kept on the sample (``column_gain``,
``column_offset``, ``line_gain``); the recorded image is::

    raw[y, x] = line_gain[y] * column_gain[x] * scene[y, x] + column_offset[x] + noise

with ``scene`` = dark level + faint mura + defects. Defect types, see :data:`SCREEN_CLASSES`:

- bubble: a round / elliptic ring with a bright rim (often brighter on one side, sometimes incomplete or doubled)
  and a slightly darker or brighter interior;
- pinhole: a tiny bright point, 3–8 px across;
- scratch: a long thin (1–3 px) gently curved line, up to hundreds of px, uneven and sometimes broken;
- tin ash: a cluster of small, dim, irregular specks (locally much like a pinhole).

Masks are exact: ``mask`` holds instance ids (0 = none, ``k`` = ``defects[k - 1]``) and a pixel carries id ``k``
iff defect ``k`` changed its grey level (a later, overlapping defect takes the pixels it changes). The background,
its artefacts and the sensor noise are all drawn before the defects, so ``make_screen(seed, spec,
with_defects=False)`` renders the identical screen without them; the two uint8 images differ exactly where
``mask > 0``. The background is rendered in blocks of lines, so a 5120×10240 screen needs little more memory than
its uint8 image and int32 mask.

:func:`patch_labels` applies the paper's rule to the tiles of a :class:`inspection_core.tiling.TilePlan`: a patch
carries a defect's class iff it holds *more* than 20 % of that defect's area. :func:`write_screen_patches` writes the
generic multi-label patch layout::

    OUT/images/screen_00000_r003_c007.png   (patch of screen 0, tile row 3, tile column 7)
    OUT/labels.csv    file,labels  (classes joined by "+", empty for a defect-free patch)
    OUT/classes.txt   OUT/screens.json (per screen: seed, size, defects, patch grid)
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np

from engines.errors import InputError
from engines.data.synthetic_common import (NORMAL_LUT, SHIFT, bbox_of, check_int, check_range, claim_pixels,
                                           clipped_box, defect_plan, fixed_point, is_number, item_seed, normal_noise,
                                           offsets, prepare_folder, write_csv, write_png)
from inspection_core.tiling import plan_tiles

SCREEN_CLASSES = ("bubble", "pinhole", "scratch", "tin_ash")
GENERATOR = "engines.data.synthetic_screen"
#: BGR drawing colour per class (same order as :data:`SCREEN_CLASSES`).
CLASS_COLOURS = ((255, 160, 0), (0, 0, 255), (0, 220, 255), (255, 0, 255))
_BLOCK = 256  # lines rendered at a time
_CUTOFF = 0.05  # shape values below this fraction of the peak are not drawn at all
_CORE = 0.2  # the contrast is set over the pixels at or above this fraction of the peak


_check_range = partial(check_range, "ScreenSpec")


def _check_number(name: str, value, lo: float, hi: float) -> None:
    if not is_number(value) or not lo <= value <= hi:
        raise InputError(f"ScreenSpec.{name} must be a number in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class ScreenSpec:
    """What :func:`make_screen` draws from. Grey levels are of the scene before the line-scan artefacts.

    A screen is defect-free with probability ``defect_free_prob``; otherwise it gets ``defect_count`` (lo..hi)
    defects of classes drawn with ``class_weights``, each low-contrast (mean change over its core pixels drawn
    from ``low_contrast_range`` grey levels) with probability ``low_contrast_fraction``. A defect that would
    label fewer than ``min_defect_area`` pixels, or leave an earlier one fewer than that, is redrawn (up to
    ``max_attempts`` times, then dropped). ``column_striping`` and ``line_drift`` scale the line-scan artefacts
    (1 = typical, 0 = none: an ideally flat-fielded camera).
    """

    size: tuple[int, int] = (2048, 2048)  # (height = lines, width = pixels per line)
    dark_level: tuple[float, float] = (18.0, 38.0)  # grey level of the dark screen
    mura: tuple[float, float] = (0.5, 3.0)  # amplitude of faint low-frequency non-uniformity, grey levels
    noise_sigma: tuple[float, float] = (0.7, 1.8)  # sensor noise, grey levels
    column_striping: float = 1.0  # strength of per-column gain / offset striping (0 = none)
    line_drift: float = 1.0  # strength of the per-line brightness drift (0 = none)
    defect_count: tuple[int, int] = (1, 6)  # per defective screen
    defect_free_prob: float = 0.2
    low_contrast_fraction: float = 0.3
    low_contrast_range: tuple[float, float] = (2.0, 6.0)  # grey levels
    class_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    bubble_radius: tuple[float, float] = (8.0, 60.0)  # px, semi-major axis
    pinhole_diameter: tuple[float, float] = (3.0, 8.0)  # px
    scratch_length: tuple[float, float] = (40.0, 700.0)  # px (capped at 0.9 of the image's long side)
    scratch_width: tuple[int, int] = (1, 3)  # px
    tin_ash_spread: tuple[float, float] = (6.0, 30.0)  # px, radius of the speck cluster
    tin_ash_specks: tuple[int, int] = (4, 25)  # specks per cluster
    min_defect_area: int = 5
    max_attempts: int = 20

    def __post_init__(self) -> None:
        size = self.size
        if not (isinstance(size, tuple) and len(size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and 128 <= v <= 65536 for v in size)):
            raise InputError(f"ScreenSpec.size must be (height, width) ints in [128, 65536], got {size!r}")
        _check_range("dark_level", self.dark_level, 0, 200)
        _check_range("mura", self.mura, 0, 30)
        _check_range("noise_sigma", self.noise_sigma, 0, 20)
        _check_number("column_striping", self.column_striping, 0, 10)
        _check_number("line_drift", self.line_drift, 0, 10)
        _check_range("defect_count", self.defect_count, 1, 10000, integer=True)
        _check_number("defect_free_prob", self.defect_free_prob, 0, 1)
        _check_number("low_contrast_fraction", self.low_contrast_fraction, 0, 1)
        _check_range("low_contrast_range", self.low_contrast_range, 0.5, 30)
        w = self.class_weights
        if not (isinstance(w, tuple) and len(w) == len(SCREEN_CLASSES) and all(is_number(v) and v >= 0 for v in w)
                and sum(w) > 0):
            raise InputError(f"ScreenSpec.class_weights must be {len(SCREEN_CLASSES)} non-negative numbers "
                             f"(for {', '.join(SCREEN_CLASSES)}) with a positive sum, got {w!r}")
        short = min(size)
        _check_range("bubble_radius", self.bubble_radius, 2, short / 2)
        _check_range("pinhole_diameter", self.pinhole_diameter, 1, 30)
        _check_range("scratch_length", self.scratch_length, 5, 100000)
        _check_range("scratch_width", self.scratch_width, 1, 10, integer=True)
        _check_range("tin_ash_spread", self.tin_ash_spread, 2, short / 2)
        _check_range("tin_ash_specks", self.tin_ash_specks, 1, 500, integer=True)
        for name, lo, hi in (("min_defect_area", 1, 500), ("max_attempts", 1, 1000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise InputError(f"ScreenSpec.{name} must be an int in [{lo}, {hi}], got {v!r}")


@dataclass(frozen=True, eq=False)
class ScreenSample:
    """One rendered screen. ``image`` is uint8 (H, W); ``mask`` int32 instance ids (0 = none, ``k`` =
    ``defects[k - 1]``). Each defect is a dict ``class``, ``class_id`` (index + 1 in :data:`SCREEN_CLASSES`),
    ``bbox`` ``[x, y, w, h]`` and ``area`` (of its pixels in ``mask``), ``contrast`` (mean absolute grey-level
    change over its pixels), ``peak_contrast``, ``polarity`` (``bright``/``dark``), ``low_contrast`` and
    ``center`` ``[x, y]``. ``column_gain``, ``column_offset`` (W) and ``line_gain`` (H) are the true line-scan
    artefacts (float32), for checking a flat-field calibration."""

    seed: int
    image: np.ndarray
    mask: np.ndarray
    defects: list[dict] = field(default_factory=list)
    column_gain: np.ndarray | None = None
    column_offset: np.ndarray | None = None
    line_gain: np.ndarray | None = None

    @property
    def defective(self) -> bool:
        return bool(self.defects)

    @property
    def classes_present(self) -> list[str]:
        """Class names of the defects, in :data:`SCREEN_CLASSES` order."""
        present = {d["class"] for d in self.defects}
        return [c for c in SCREEN_CLASSES if c in present]


def _smooth_1d(rng: np.random.Generator, n: int, knots: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1] along ``n`` samples from ``knots`` random values (cubic)."""
    import cv2

    small = rng.uniform(-1, 1, (knots, 1)).astype(np.float32)
    return cv2.resize(small, (1, n), interpolation=cv2.INTER_CUBIC)[:, 0]


# --------------------------------------------------------------------------------------------- background
@dataclass
class _Background:
    column_gain: np.ndarray
    column_offset: np.ndarray
    line_gain: np.ndarray


def _column_artefacts(rng: np.random.Generator, w: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-column gain (illumination fall-off across the line, PRNU, odd/even taps) and offset (DSNU, warm
    columns), both scaled by the striping strength ``s``."""
    x = np.linspace(-1, 1, w, dtype=np.float32)
    falloff = np.float32(rng.uniform(0.03, 0.09)) * x * x - np.float32(rng.uniform(-0.02, 0.02)) * x
    gain = (1 - falloff + np.float32(rng.uniform(0.01, 0.025)) * _smooth_1d(rng, w, int(rng.integers(8, 24)))
            + np.float32(rng.uniform(0.006, 0.015)) * rng.standard_normal(w, np.float32))
    taps = np.float32(rng.uniform(-0.01, 0.01))
    gain[1::2] += taps
    offset = np.float32(rng.uniform(0.2, 0.6)) * rng.standard_normal(w, np.float32)
    offset[1::2] += np.float32(rng.uniform(-0.5, 0.5))
    n_warm = int(rng.integers(0, 4))
    offset[rng.integers(0, w, n_warm)] += rng.uniform(2.0, 6.0, n_warm).astype(np.float32)
    gain = np.float32(1) + np.float32(s) * (gain - np.float32(1))
    return gain.astype(np.float32), (np.float32(s) * offset).astype(np.float32)


def _line_drift(rng: np.random.Generator, h: int, s: float) -> np.ndarray:
    """Per-line gain: a slow drift (lamp, scan speed) plus a little line-to-line jitter, scaled by ``s``."""
    slow = np.float32(rng.uniform(0.005, 0.02)) * _smooth_1d(rng, h, int(rng.integers(4, 12)))
    jitter = np.float32(rng.uniform(0.001, 0.004)) * rng.standard_normal(h, np.float32)
    return (np.float32(1) + np.float32(s) * (slow + jitter)).astype(np.float32)


def _render_background(rng: np.random.Generator, spec: ScreenSpec) -> tuple[np.ndarray, _Background]:
    h, w = spec.size
    level = rng.uniform(*spec.dark_level)
    # faint mura: a rank-3 sum of smooth row x column profiles (cheap at any size, no full-frame field)
    mura = rng.uniform(*spec.mura)
    rank = 3
    rows = np.stack([_smooth_1d(rng, h, int(rng.integers(3, 9))) for _ in range(rank)], 1)
    cols = np.stack([_smooth_1d(rng, w, int(rng.integers(3, 9))) for _ in range(rank)], 0)
    rows *= np.float32(mura / math.sqrt(rank))
    col_gain, col_offset = _column_artefacts(rng, w, spec.column_striping)
    line_gain = _line_drift(rng, h, spec.line_drift)
    lut = NORMAL_LUT * np.float32(rng.uniform(*spec.noise_sigma))
    # raw = line_gain * col_gain * (level + rows @ cols) + offset + noise as one rank-4 product per block:
    # (lg * [level, rows]) @ ([1; cols] * cg)
    left = np.concatenate([np.full((h, 1), level, np.float32), rows], 1) * line_gain[:, None]
    right = np.concatenate([np.ones((1, w), np.float32), cols], 0) * col_gain[None, :]
    offset = col_offset + np.float32(0.5)  # + 0.5: truncation below rounds
    image = np.empty((h, w), np.uint8)
    for y0 in range(0, h, _BLOCK):
        y1 = min(h, y0 + _BLOCK)
        raw = left[y0:y1] @ right
        raw += offset
        raw += normal_noise(rng, (y1 - y0, w), lut)
        np.clip(raw, 0, 255, out=raw)
        image[y0:y1] = raw  # truncation of values >= 0: floor(x + 0.5)
    return image, _Background(col_gain, col_offset, line_gain)


# ---------------------------------------------------------------------------------------------- defects
# Each renderer returns (y0, x0, shape, contrast range, polarity): ``shape`` is a float32 patch of peak |value|
# about 1; it is scaled so that its core (>= _CORE of the peak) changes the scene by a mean drawn from the range
# (or the low-contrast one).
def _bubble(rng, spec, h, w):
    a = rng.uniform(*spec.bubble_radius)
    b = a * rng.uniform(0.6, 1.0)
    rot = rng.uniform(0, math.pi)
    px, py = rng.uniform(0, w), rng.uniform(0, h)
    rim_w = rng.uniform(0.9, 1.8) + 0.02 * a
    y0, y1, x0, x1 = clipped_box(h, w, px, py, a + 4 * rim_w + 2, a + 4 * rim_w + 2)
    if y1 - y0 < 2 or x1 - x0 < 2:
        return None
    xs, ys = offsets(y0, y1, x0, x1, px, py)
    c, s = np.float32(math.cos(rot)), np.float32(math.sin(rot))
    u, v = xs * c + ys * s, -xs * s + ys * c
    rho = np.sqrt(u * u + v * v)
    d = np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2)
    dist = rho * (1 - 1 / np.maximum(d, np.float32(1e-3)))  # signed px from the ellipse along the ray
    theta = np.arctan2(v, u)
    light = np.float32(rng.uniform(0, 2 * math.pi))  # the side the annular light catches most
    depth = rng.uniform(0.2, 0.6) if rng.random() < 0.7 else rng.uniform(0.7, 1.0)  # ~1: incomplete ring
    mod = np.float32(1 - depth / 2) + np.float32(depth / 2) * np.cos(theta - light)
    shape = np.exp(dist * dist * np.float32(-0.5 / rim_w ** 2)) * mod
    if rng.random() < 0.4:  # a second, fainter inner rim
        gap = np.float32(rng.uniform(2.5, max(3.0, 0.3 * b)))
        shape += np.float32(rng.uniform(0.25, 0.5)) * np.exp((dist + gap) ** 2 * np.float32(-0.5 / rim_w ** 2)) \
            * (np.float32(1) - mod + np.float32(0.3))
    inside = np.float32(1) / (1 + np.exp(np.minimum(dist / np.float32(0.8), 30)))
    fill = rng.uniform(0.12, 0.35) * (1 if rng.random() < 0.4 else -1)
    shade = np.float32(0.8) + np.float32(0.2) * (u / np.float32(a) * np.cos(light) + v / np.float32(b) * np.sin(light))
    shape += np.float32(fill) * inside * shade
    return y0, x0, shape, (12.0, 45.0), {"radius": round(float(a), 1)}


def _pinhole(rng, spec, h, w):
    rad = rng.uniform(*spec.pinhole_diameter) / 2
    px, py = rng.uniform(0, w), rng.uniform(0, h)
    y0, y1, x0, x1 = clipped_box(h, w, px, py, rad + 3, rad + 3)
    xs, ys = offsets(y0, y1, x0, x1, px, py)
    r = np.sqrt(xs * xs + ys * ys)
    disc = np.float32(1) / (1 + np.exp(np.minimum((r - np.float32(rad)) / np.float32(0.35), 30)))
    shape = disc * (np.float32(0.75) + np.float32(0.25) * np.clip(1 - r / np.float32(rad), 0, 1))
    return y0, x0, shape, (35.0, 150.0), {"diameter": round(float(2 * rad), 1)}


def _scratch(rng, spec, h, w):
    import cv2

    length = rng.uniform(spec.scratch_length[0], min(spec.scratch_length[1], 0.9 * max(h, w)))
    p0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    ang = rng.uniform(0, 2 * math.pi)
    d = np.array([math.cos(ang), math.sin(ang)])
    p2 = p0 + length * d
    ctrl = (p0 + p2) / 2 + rng.uniform(-0.12, 0.12) * length * np.array([-d[1], d[0]])
    t = np.linspace(0, 1, max(8, int(length / 6)))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * ctrl + t ** 2 * p2
    widths = np.arange(spec.scratch_width[0], spec.scratch_width[1] + 1)
    thickness = int(rng.choice(widths, p=(1 / widths ** 2) / (1 / widths ** 2).sum()))  # mostly hairlines
    lo, hi = pts.min(0) - thickness - 3, pts.max(0) + thickness + 3
    x0, x1 = max(0, int(math.floor(lo[0]))), min(w, int(math.ceil(hi[0])) + 1)
    y0, y1 = max(0, int(math.floor(lo[1]))), min(h, int(math.ceil(hi[1])) + 1)
    if y1 - y0 < 2 or x1 - x0 < 2:
        return None
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    # brightness along the scratch: uneven depth, tapered ends, and on some scratches gaps
    along = np.float32(0.35) + np.float32(0.65) * (_smooth_1d(rng, len(pts), int(np.clip(length / 40, 3, 20))) + 1) / 2
    tt = t[:, 0].astype(np.float32)
    along *= np.clip(np.minimum(tt, 1 - tt) / np.float32(rng.uniform(0.03, 0.15)), 0.15, 1)
    if rng.random() < 0.3:
        along *= np.clip(_smooth_1d(rng, len(pts), int(np.clip(length / 25, 4, 30))) * 4 + 1, 0, 1)
    seg = fixed_point(pts, x0, y0)
    for i in range(len(pts) - 1):
        level = int(round(255 * min(1.0, max(0.0, float(along[i] + along[i + 1]) / 2))))
        if level:
            cv2.line(canvas, tuple(seg[i, 0]), tuple(seg[i + 1, 0]), level, thickness, cv2.LINE_AA, SHIFT)
    shape = canvas.astype(np.float32) * np.float32(1 / 255)
    sign = 1.0 if rng.random() < 0.85 else -1.0
    return y0, x0, shape * np.float32(sign), (10.0, 55.0), {"length": round(float(length), 1)}


def _tin_ash(rng, spec, h, w):
    import cv2

    spread = rng.uniform(*spec.tin_ash_spread)
    n = int(rng.integers(spec.tin_ash_specks[0], spec.tin_ash_specks[1] + 1))
    px, py = rng.uniform(0, w), rng.uniform(0, h)
    y0, y1, x0, x1 = clipped_box(h, w, px, py, spread + 5, spread + 5)
    if y1 - y0 < 2 or x1 - x0 < 2:
        return None
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    offs = np.clip(rng.normal(0, spread / 2, (n, 2)), -spread, spread)
    sizes = rng.uniform(0.6, 2.2, n)
    levels = rng.uniform(0.35, 1.0, n)
    for (ox, oy), rad, lev in zip(offs, sizes, levels):
        k = int(rng.integers(4, 8))
        a = np.sort(rng.uniform(0, 2 * math.pi, k))
        rr = rad * rng.uniform(0.5, 1.4, k)
        poly = np.stack([px + ox + rr * np.cos(a), py + oy + rr * np.sin(a)], 1)
        cv2.fillPoly(canvas, [fixed_point(poly, x0, y0)], int(255 * lev), cv2.LINE_AA, SHIFT)
    shape = cv2.GaussianBlur(canvas, (0, 0), 0.5).astype(np.float32) * np.float32(1 / 255)
    sign = 1.0 if rng.random() < 0.8 else -1.0
    return y0, x0, shape * np.float32(sign), (6.0, 22.0), {"specks": n, "spread": round(float(spread), 1)}


_RENDERERS = (_bubble, _pinhole, _scratch, _tin_ash)


screen_seed = item_seed  # seed of screen ``index`` in the patch set written with ``seed``


def make_screen(seed: int, spec: ScreenSpec = ScreenSpec(), with_defects: bool = True) -> ScreenSample:
    """Render screen ``seed`` (an int >= 0). Same seed and spec give byte-identical arrays; ``with_defects=False``
    gives the same screen (level, artefacts, noise) without its defects and with an all-zero mask."""
    check_int("seed", seed, 0)
    if not isinstance(spec, ScreenSpec):
        raise TypeError(f"spec must be a ScreenSpec, got {type(spec).__name__}")
    rng = np.random.default_rng(int(seed))
    h, w = spec.size
    image, bg = _render_background(rng, spec)
    # everything above is the defect-free screen; defect draws come after so they cannot disturb it
    n_defects, weights = defect_plan(rng, spec)
    mask = np.zeros((h, w), np.int32)
    bare = image.copy() if n_defects and with_defects else image
    drawn: list[dict] = []
    areas: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(n_defects if with_defects else 0):
        cls = int(rng.choice(len(SCREEN_CLASSES), p=weights))
        low = bool(rng.random() < spec.low_contrast_fraction)
        for _attempt in range(spec.max_attempts):
            out = _RENDERERS[cls](rng, spec, h, w)
            if out is None:
                continue
            y0, x0, shape, contrast, extra = out
            y1, x1 = y0 + shape.shape[0], x0 + shape.shape[1]
            mag = np.abs(shape)
            peak = float(mag.max(initial=0.0))
            core = mag >= _CORE * peak
            if peak <= 0 or not core.any():
                continue
            target = rng.uniform(*(spec.low_contrast_range if low else contrast))
            change = shape * np.float32(target / float(mag[core].mean()))
            change[mag < _CUTOFF * peak] = 0
            change *= bg.line_gain[y0:y1, None] * bg.column_gain[None, x0:x1]  # the camera sees defects too
            cur, ref = image[y0:y1, x0:x1], bare[y0:y1, x0:x1]
            new = np.clip(np.floor(cur + change + np.float32(0.5)), 0, 255).astype(np.uint8)
            # labelled iff this defect changes the pixel, and leaves it different from the defect-free screen
            labelled = (new != cur) & (new != ref)
            n_px = int(labelled.sum())
            if n_px < spec.min_defect_area:
                continue
            claimed = claim_pixels(areas, mask[y0:y1, x0:x1], labelled, n_px, spec.min_defect_area)
            if claimed is None:
                continue
            cur[labelled] = new[labelled]
            mask[y0:y1, x0:x1][labelled] = len(drawn) + 1
            areas = claimed
            boxes.append((y0, y1, x0, x1))
            drawn.append({"class": SCREEN_CLASSES[cls], "class_id": cls + 1, "low_contrast": low, **extra})
            break

    defects = []
    for k, (d, (y0, y1, x0, x1)) in enumerate(zip(drawn, boxes), 1):
        own = mask[y0:y1, x0:x1] == k
        ys, xs = np.nonzero(own)
        vals = image[y0:y1, x0:x1][own].astype(np.int16) - bare[y0:y1, x0:x1][own]
        defects.append({
            "class": d["class"], "class_id": d["class_id"],
            "bbox": bbox_of(ys, xs, x0, y0),
            "area": int(ys.size),
            "center": [round(float(xs.mean()) + x0, 1), round(float(ys.mean()) + y0, 1)],
            "contrast": round(float(np.abs(vals).mean()), 2), "peak_contrast": int(np.abs(vals).max()),
            "polarity": "bright" if vals.mean() > 0 else "dark", "low_contrast": d["low_contrast"],
            **{key: v for key, v in d.items() if key not in ("class", "class_id", "low_contrast")},
        })
    return ScreenSample(int(seed), image, mask, defects, bg.column_gain, bg.column_offset, bg.line_gain)


# ------------------------------------------------------------------------------------------------ patches
def _fraction(min_fraction) -> Fraction:
    if not is_number(min_fraction) or not 0 <= min_fraction < 1:
        raise InputError(f"min_fraction must be a number in [0, 1), got {min_fraction!r}")
    return Fraction(repr(float(min_fraction)))  # 0.2 -> exactly 1/5, so "<= 20 %" is decided in integers


def patch_labels(sample: ScreenSample, plan, min_fraction: float = 0.2) -> list[tuple[str, ...]]:
    """For each tile of ``plan`` (a :class:`inspection_core.tiling.TilePlan` made for ``sample.image.shape``), in plan
    order, the classes (in :data:`SCREEN_CLASSES` order) of the defects of which the tile holds *more* than
    ``min_fraction`` of the defect's area (its pixels in ``sample.mask``). A tile with exactly 20 % of a defect,
    or less, does not carry its label."""
    if tuple(plan.image_shape) != tuple(sample.mask.shape[:2]):
        raise ValueError(f"the plan was made for {plan.image_shape}, the screen is {sample.mask.shape[:2]}: make it "
                         f"with plan_tiles(sample.image.shape, {plan.tile}, {plan.overlap})")
    frac = _fraction(min_fraction)
    t = plan.tile
    origins = plan.origins_array
    found: list[set[int]] = [set() for _ in range(len(origins))]
    for k, d in enumerate(sample.defects, 1):
        x, y, bw, bh = d["bbox"]
        ys, xs = np.nonzero(sample.mask[y:y + bh, x:x + bw] == k)
        area = ys.size
        if not area:
            continue
        ys, xs = ys + y, xs + x
        near = np.nonzero((origins[:, 0] < y + bh) & (origins[:, 0] + t > y)
                          & (origins[:, 1] < x + bw) & (origins[:, 1] + t > x))[0]
        cls = SCREEN_CLASSES.index(d["class"])
        for i in near.tolist():
            oy, ox = origins[i]
            inside = int(np.count_nonzero((ys >= oy) & (ys < oy + t) & (xs >= ox) & (xs < ox + t)))
            if inside * frac.denominator > frac.numerator * area:
                found[i].add(cls)
    return [tuple(SCREEN_CLASSES[c] for c in sorted(s)) for s in found]


# ------------------------------------------------------------------------------------------------ data set
def _is_screen_set(root: Path) -> bool:
    try:
        generator = json.loads((root / "screens.json").read_text(encoding="utf-8")).get("generator")
    except (OSError, ValueError, AttributeError):
        return False
    known = {"images", "labels.csv", "classes.txt", "screens.json"}
    images = root / "images"
    return (generator == GENERATOR and all(p.name in known for p in root.iterdir())
            and (not images.exists() or (images.is_dir() and all(
                p.is_file() and p.name.startswith("screen_") and p.suffix == ".png" for p in images.iterdir()))))


def write_screen_patches(out_dir: str | Path, count_images: int, seed: int = 0, spec: ScreenSpec = ScreenSpec(),
                         tile: int = 256, overlap: int = 0) -> Path:
    """Render ``count_images`` screens (screen ``i`` uses :func:`screen_seed` ``(seed, i)``), cut each with
    :func:`inspection_core.tiling.plan_tiles` and write the patches with their :func:`patch_labels` in the generic
    multi-label layout; return the folder. ``out_dir`` must be new, empty, or a screen set written here before
    (which is replaced)."""
    check_int("count_images", count_images, 1)
    check_int("seed", seed, 0)
    if not isinstance(spec, ScreenSpec):
        raise TypeError(f"spec must be a ScreenSpec, got {type(spec).__name__}")
    check_int("tile", tile, 1)
    if tile > min(spec.size):
        raise InputError(f"tile {tile} is larger than the screen {spec.size[0]}x{spec.size[1]}: use a tile of at "
                         f"most {min(spec.size)} px or a larger ScreenSpec.size")
    plan = plan_tiles(spec.size, int(tile), int(overlap))  # raises TilingError on a bad overlap
    out = prepare_folder(out_dir, _is_screen_set, "synthetic screen patch set", GENERATOR,
                         [("images", "screen_*.png")], ("labels.csv", "classes.txt", "screens.json"))
    (out / "images").mkdir(parents=True, exist_ok=True)

    ys = sorted({y for y, _ in plan.origins})
    xs = sorted({x for _, x in plan.origins})
    row_of, col_of = {y: i for i, y in enumerate(ys)}, {x: i for i, x in enumerate(xs)}
    rows, screens = [], []
    t = plan.tile
    for i in range(int(count_images)):
        s_i = screen_seed(seed, i)
        sample = make_screen(s_i, spec)
        labels = patch_labels(sample, plan)
        for (y, x), lab in zip(plan.origins, labels):
            name = f"screen_{i:05d}_r{row_of[y]:03d}_c{col_of[x]:03d}.png"
            write_png(out / "images" / name, np.ascontiguousarray(sample.image[y:y + t, x:x + t]))
            rows.append((name, "+".join(lab)))
        screens.append({"index": i, "seed": s_i, "size": list(spec.size), "defects": sample.defects,
                        "grid": {"rows": len(ys), "cols": len(xs), "row_origins": ys, "col_origins": xs},
                        "defective_patches": sum(1 for lab in labels if lab)})
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in SCREEN_CLASSES), encoding="utf-8")
    write_csv(out / "labels.csv", ("file", "labels"), rows)
    meta = {"generator": GENERATOR, "seed": int(seed), "count": int(count_images), "tile": t,
            "overlap": plan.overlap, "min_fraction": 0.2, "spec": asdict(spec), "classes": list(SCREEN_CLASSES),
            "screens": screens}
    (out / "screens.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return out


def preview(sample: ScreenSample, max_side: int = 1024, gain: float | None = None) -> np.ndarray:
    """BGR picture of the screen, brightened (the raw screen is dark) and shrunk to ``max_side``, with each
    defect's box drawn in its class colour (:data:`CLASS_COLOURS`)."""
    import cv2

    h, w = sample.image.shape
    scale = min(1.0, max_side / max(h, w))
    small = cv2.resize(sample.image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if gain is None:
        gain = 160.0 / max(1.0, float(np.percentile(small, 99.5)))
    bgr = cv2.cvtColor(cv2.convertScaleAbs(small, alpha=gain), cv2.COLOR_GRAY2BGR)
    for d in sample.defects:
        x, y, bw, bh = d["bbox"]
        p0 = (int(x * scale) - 3, int(y * scale) - 3)
        p1 = (int((x + bw) * scale) + 3, int((y + bh) * scale) + 3)
        cv2.rectangle(bgr, p0, p1, CLASS_COLOURS[d["class_id"] - 1], 1)
    return bgr
