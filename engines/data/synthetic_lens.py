# Over 500 lines on purpose: one seeded generator whose bytes tests pin; its parts share geometry.
"""Seeded synthetic camera-lens cover glass: grey images with exact class-id defect masks.

Modelled on the mobile-camera set of the BFFN paper: a bright, transparent glass disc in the centre, a black ink
ring around it whose *normal* texture (bright speckles, short streaks, ring-shaped reflections) looks like defects
and is the usual source of false positives, and the housing outside. Six defect types sit on the glass only
(collapsing edge on the glass/ink boundary): see :data:`DEFECT_CLASSES`; class id = index + 1. A fraction of the
defects is low-contrast (a few grey levels), the hard case for recall.

Masks are exact: a pixel is labelled iff a defect changed it by at least one grey level (before sensor noise), and
the defect does not touch any other pixel. Because the background, its texture and the sensor noise are all drawn
before the defects, ``make_lens(seed, spec, with_defects=False)`` renders the identical lens without them; the two
uint8 images differ exactly on the labelled pixels.

:func:`write_lens_dataset` writes the generic layout read by :func:`engines.data.segmentation.load_dataset`::

    OUT/images/lens_00000.png   OUT/masks/lens_00000.png (class ids 0..6)
    OUT/classes.txt             OUT/truth.csv (file, defective, classes)    OUT/lenses.json (geometry, defects)
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from engines.errors import InputError
from engines.data.synthetic_common import (SCALE, SHIFT, bbox_of, check_int, check_range, claim_pixels, clipped_box,
                                           defect_plan, fixed_point, item_seed, normal_noise, offsets, prepare_folder,
                                           write_csv, write_png)

DEFECT_CLASSES = ("scratch", "foreign_object", "white_spot", "dust", "dirt", "collapsing_edge")
GENERATOR = "engines.data.synthetic_lens"
#: BGR overlay colour per class id (index 0 unused).
CLASS_COLOURS = ((0, 0, 0), (0, 0, 255), (0, 200, 255), (255, 0, 255), (255, 255, 0), (0, 255, 0), (255, 96, 0))
_EDGE = DEFECT_CLASSES.index("collapsing_edge")
_check_range = partial(check_range, "LensSpec")


def _check_fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InputError(f"LensSpec.{name} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True)
class LensSpec:
    """What :func:`make_lens` draws from. Lengths marked *fraction* are of the image's short side.

    A lens is defect-free with probability ``defect_free_prob``; otherwise it gets ``defect_count`` (lo..hi)
    defects of classes drawn with ``class_weights``, each low-contrast (mean change over its
    pixels drawn from ``low_contrast_range`` grey levels) with probability ``low_contrast_fraction`` — collapsing edges excepted,
    a chip always shows. A defect that would label fewer than ``min_defect_area`` pixels, or would leave an
    earlier one fewer than that, is redrawn.
    """

    size: tuple[int, int] = (512, 512)  # (height, width) in pixels
    glass_radius: tuple[float, float] = (0.24, 0.31)  # fraction
    ink_width: tuple[float, float] = (0.07, 0.12)  # fraction, width of the ink ring
    center_jitter: float = 0.03  # fraction, max offset of the lens centre from the image centre
    defect_count: tuple[int, int] = (1, 4)  # per defective lens
    defect_free_prob: float = 0.5
    low_contrast_fraction: float = 0.3
    low_contrast_range: tuple[float, float] = (3.0, 8.0)  # grey levels
    class_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    min_defect_area: int = 6
    glass_level: tuple[float, float] = (150.0, 200.0)
    ink_level: tuple[float, float] = (14.0, 34.0)
    housing_level: tuple[float, float] = (60.0, 110.0)
    noise_sigma: tuple[float, float] = (0.8, 2.2)  # sensor noise, grey levels
    max_attempts: int = 25  # placements tried per defect

    def __post_init__(self) -> None:
        size = self.size
        if not (isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                    for v in size) and min(size) >= 96):
            raise InputError(f"LensSpec.size must be (height, width) ints, each >= 96, got {size!r}")
        _check_range("glass_radius", self.glass_radius, 0.05, 0.45)
        _check_range("ink_width", self.ink_width, 0.01, 0.3)
        _check_fraction("center_jitter", self.center_jitter)
        outer = self.glass_radius[1] + self.ink_width[1] + self.center_jitter
        if outer > 0.47:
            raise InputError(f"LensSpec: glass_radius[1] + ink_width[1] + center_jitter = {outer:.3f} must be <= 0.47 "
                             "so the whole lens (with its bevel) stays inside the image")
        if self.glass_radius[0] * min(size) < 30:
            raise InputError(f"LensSpec: the smallest glass radius is {self.glass_radius[0] * min(size):.1f} px, "
                             "it must be >= 30 px (raise size or glass_radius)")
        _check_range("defect_count", self.defect_count, 1, 1000, integer=True)
        _check_fraction("defect_free_prob", self.defect_free_prob)
        _check_fraction("low_contrast_fraction", self.low_contrast_fraction)
        _check_range("low_contrast_range", self.low_contrast_range, 1.0, 20.0)
        w = self.class_weights
        if not (isinstance(w, tuple) and len(w) == len(DEFECT_CLASSES)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in w) and sum(w) > 0):
            raise InputError(f"LensSpec.class_weights must be {len(DEFECT_CLASSES)} non-negative numbers "
                             f"(for {', '.join(DEFECT_CLASSES)}) with a positive sum, got {w!r}")
        if isinstance(self.min_defect_area, bool) or not isinstance(self.min_defect_area, int) \
                or not 1 <= self.min_defect_area <= 200:
            raise InputError(f"LensSpec.min_defect_area must be an int in [1, 200], got {self.min_defect_area!r}")
        for name in ("glass_level", "ink_level", "housing_level"):
            _check_range(name, getattr(self, name), 0, 255)
        if self.glass_level[0] < self.ink_level[1] + 40:
            raise InputError("LensSpec: glass_level must lie at least 40 grey levels above ink_level")
        _check_range("noise_sigma", self.noise_sigma, 0, 20)
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InputError(f"LensSpec.max_attempts must be an int >= 1, got {self.max_attempts!r}")


@dataclass(frozen=True, eq=False)
class LensSample:
    """One rendered lens. ``mask`` holds class ids (0 = background, ``i + 1`` = ``DEFECT_CLASSES[i]``); each
    entry of ``defects`` is a dict ``class``, ``class_id``, ``bbox`` ``[x, y, w, h]`` and ``area`` (of the pixels
    labelled with it in ``mask``; a later overlapping defect takes the pixels it covers), ``contrast`` (mean
    absolute grey-level change over its own pixels), ``peak_contrast``, ``polarity`` (``bright``/``dark``),
    ``low_contrast`` and ``center`` ``[x, y]``."""

    seed: int
    image: np.ndarray
    mask: np.ndarray
    defects: list[dict] = field(default_factory=list)
    glass_center: tuple[float, float] = (0.0, 0.0)
    glass_radius: float = 0.0
    ink_outer_radius: float = 0.0

    @property
    def defective(self) -> bool:
        return bool(self.defects)

    @property
    def classes_present(self) -> list[str]:
        """Class names present in the mask, in id order."""
        return [DEFECT_CLASSES[v - 1] for v in np.unique(self.mask).tolist() if v]


class _Geometry:
    def __init__(self, h: int, w: int, cx: float, cy: float, radius: float, outer: float) -> None:
        self.h, self.w, self.cx, self.cy, self.radius, self.outer = h, w, cx, cy, radius, outer
        self.x = (np.arange(w, dtype=np.float32) - np.float32(cx))[None, :]
        self.y = (np.arange(h, dtype=np.float32) - np.float32(cy))[:, None]
        self.r = np.sqrt(self.x * self.x + self.y * self.y)

    def box(self, px: float, py: float, half: float) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of a square around (px, py), clipped to the image."""
        return clipped_box(self.h, self.w, px, py, half, half)

    def theta(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.arctan2(np.broadcast_to(self.y[y0:y1], (y1 - y0, x1 - x0)),
                          np.broadcast_to(self.x[:, x0:x1], (y1 - y0, x1 - x0)))

    def point_in_glass(self, rng: np.random.Generator, frac: float) -> tuple[float, float]:
        rho = self.radius * frac * math.sqrt(rng.random())
        ang = rng.uniform(0, 2 * math.pi)
        return self.cx + rho * math.cos(ang), self.cy + rho * math.sin(ang)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], knots: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] of ``shape`` from a ``knots``×``knots`` random grid."""
    import cv2

    small = rng.random((knots, knots)).astype(np.float32)
    if max(shape) > 64:  # cubic to a coarse grid, then cheap linear up
        small = cv2.resize(small, (min(shape[1], 64), min(shape[0], 64)), interpolation=cv2.INTER_CUBIC)
        return np.clip(cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR), 0, 1)
    return np.clip(cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), 0, 1)


# --------------------------------------------------------------------------------------------- background
def _render_background(rng: np.random.Generator, spec: LensSpec, g: _Geometry) -> np.ndarray:
    import cv2

    h, w, radius, outer = g.h, g.w, g.radius, g.outer
    # housing outside: grey with a gradient and texture (whole frame)
    house = np.float32(rng.uniform(*spec.housing_level)) + (
        np.float32(rng.uniform(-1, 1)) * g.x + np.float32(rng.uniform(-1, 1)) * g.y) * np.float32(10 / radius)
    house = house + (_smooth_field(rng, (h, w), 12) - np.float32(0.5)) * np.float32(rng.uniform(3, 10))
    # the lens itself is rendered in its bounding box only
    y0, y1, x0, x1 = g.box(g.cx, g.cy, outer + 10)
    shape = (y1 - y0, x1 - x0)
    r, u, v = g.r[y0:y1, x0:x1], g.x[:, x0:x1] / np.float32(radius), g.y[y0:y1] / np.float32(radius)
    inv_r = np.float32(1) / np.maximum(r, np.float32(1e-3))
    cos1, sin1 = g.x[:, x0:x1] * inv_r, g.y[y0:y1] * inv_r
    harmonics = {1: (cos1, sin1)}

    def angular(k: int, phase: float) -> np.ndarray:  # cos(k * theta + phase) without arctan2
        if k not in harmonics:
            c, s = harmonics[1]
            harmonics[k] = (c * c - s * s, 2 * c * s) if k == 2 else (c * (4 * c * c - 3), s * (3 - 4 * s * s))
        ck, sk = harmonics[k]
        return ck * np.float32(math.cos(phase)) - sk * np.float32(math.sin(phase))

    def ring(rho: float, sigma: float) -> np.ndarray:
        return np.exp((r - np.float32(rho)) ** 2 * np.float32(-0.5 / (sigma * sigma)))

    # glass: bright, mild vignetting, a soft linear gradient and faint mottling
    level = rng.uniform(*spec.glass_level)
    vignette = rng.uniform(0.03, 0.08)
    gx, gy = rng.uniform(-1, 1, 2) * rng.uniform(1, 6)
    glass = np.float32(level) * (1 - np.float32(vignette) * (u * u + v * v)) + np.float32(gx) * u + np.float32(gy) * v
    glass += (_smooth_field(rng, shape, 6) - np.float32(0.5)) * np.float32(rng.uniform(1.0, 4.0))

    # ink: dark print grain + mottling + the defect-like normal texture (never labelled)
    ink = np.float32(rng.uniform(*spec.ink_level)) + (_smooth_field(rng, shape, 9) - np.float32(0.5)) * np.float32(
        rng.uniform(2, 8))
    grain = cv2.resize(normal_noise(rng, ((shape[0] + 1) // 2, (shape[1] + 1) // 2)), (shape[1], shape[0]),
                       interpolation=cv2.INTER_LINEAR)
    ink += grain * np.float32(rng.uniform(2.0, 4.0))
    # ring-shaped reflections: a bright chamfer just outside the glass and 1-3 broad bands, angularly modulated
    rings = [(radius + rng.uniform(1.2, 2.5), rng.uniform(0.7, 1.4), rng.uniform(15, 55))]
    for _ in range(int(rng.integers(1, 4))):
        rings.append((rng.uniform(radius + 3, outer - 3), rng.uniform(0.8, 4.5), rng.uniform(12, 40)))
    for rho, sigma, amp in rings:
        k, phase, depth = int(rng.integers(1, 4)), rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 0.95)
        mod = np.float32(1 - depth / 2) + np.float32(depth / 2) * angular(k, phase)
        ink += np.float32(amp) * ring(rho, sigma) * mod
    # streaks (short concentric arcs, radial strokes) and fine bright speckles, like scratches / dust / spots
    marks = np.zeros(shape, np.uint8)
    ox, oy = g.cx - x0, g.cy - y0
    centre = (int(round(ox * SCALE)), int(round(oy * SCALE)))
    for _ in range(int(rng.integers(4, 16))):
        rho = rng.uniform(radius + 3, outer - 2)
        colour = int(rng.integers(12, 55))
        if rng.random() < 0.65:
            start = rng.uniform(0, 360)
            cv2.ellipse(marks, centre, (int(rho * SCALE), int(rho * SCALE)), 0, start,
                        start + rng.uniform(4, 40), colour, 1, cv2.LINE_AA, SHIFT)
        else:
            ang, length = rng.uniform(0, 2 * math.pi), rng.uniform(4, 18)
            a = np.array([[ox + rho * math.cos(ang), oy + rho * math.sin(ang)]])
            b = a + length * np.array([[math.cos(ang + rng.normal(0, 0.4)), math.sin(ang + rng.normal(0, 0.4))]])
            cv2.polylines(marks, [fixed_point(np.vstack([a, b]), 0, 0)], False, colour, 1, cv2.LINE_AA, SHIFT)
    n = int(math.pi * (outer ** 2 - radius ** 2) * rng.uniform(0.0008, 0.003))
    rho = np.sqrt(rng.uniform((radius + 2.5) ** 2, (outer - 1.5) ** 2, n))
    ang = rng.uniform(0, 2 * math.pi, n)
    xs = np.rint((ox + rho * np.cos(ang)) * SCALE).astype(int).tolist()
    ys = np.rint((oy + rho * np.sin(ang)) * SCALE).astype(int).tolist()
    rad = np.rint(rng.uniform(0.5, 1.8, n) * SCALE).astype(int).tolist()
    colour = rng.integers(15, 110, n).tolist()
    for i in range(n):
        cv2.circle(marks, (xs[i], ys[i]), rad[i], colour[i], -1, cv2.LINE_AA, SHIFT)
    ink += cv2.GaussianBlur(marks, (0, 0), 0.5).astype(np.float32)

    # bright bevel of the housing next to the ink, then composite housing <- ink <- glass with soft edges
    lens_house = house[y0:y1, x0:x1]
    lens_house += np.float32(rng.uniform(25, 70)) * ring(outer + rng.uniform(1.5, 4), rng.uniform(0.8, 2.0)) * (
        np.float32(0.6) + np.float32(0.4) * angular(1, rng.uniform(0, 2 * math.pi)))
    w_ink = np.clip(np.float32(outer + 0.5) - r, 0, 1)
    w_glass = np.clip((np.float32(radius) - r) * np.float32(1 / 1.2) + np.float32(0.5), 0, 1)
    lens = lens_house + w_ink * (ink - lens_house)
    lens += w_glass * (glass - lens)
    house[y0:y1, x0:x1] = lens
    return house


# ---------------------------------------------------------------------------------------------- defects
# Each renderer returns (y0, x0, patch, contrast range): ``patch`` is a signed unit-peak shape whose labelled part
# is scaled to a mean absolute change drawn from the range (or the low-contrast one), or, with range None, the
# grey-level change itself (collapsing edge).


def _scratch(rng, g, img):
    import cv2

    length = rng.uniform(20, min(170.0, 0.9 * g.radius))
    p0 = np.array(g.point_in_glass(rng, 0.9))
    ang = rng.uniform(0, 2 * math.pi)
    d = np.array([math.cos(ang), math.sin(ang)])
    p2 = p0 + length * d
    bend = 0.0 if rng.random() < 0.35 else rng.uniform(-0.3, 0.3) * length
    ctrl = (p0 + p2) / 2 + bend * np.array([-d[1], d[0]])
    t = np.linspace(0, 1, 40)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * ctrl + t ** 2 * p2
    y0, y1, x0, x1 = g.box(*pts.mean(0), np.abs(pts - pts.mean(0)).max() + 5)
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    thickness = int(rng.choice([1, 1, 1, 2, 2, 3]))
    cv2.polylines(canvas, [fixed_point(pts, x0, y0)], False, 255, thickness, cv2.LINE_AA, SHIFT)
    alpha = canvas.astype(np.float32) / 255
    alpha *= 0.45 + 0.55 * _smooth_field(rng, alpha.shape, int(rng.integers(3, 7)))  # uneven depth
    sign = 1.0 if rng.random() < 0.6 else -1.0
    return y0, x0, alpha * np.float32(sign), (15.0, 50.0)


def _foreign_object(rng, g, img):
    import cv2

    px, py = g.point_in_glass(rng, 0.92)
    if rng.random() < 0.6:  # irregular blob
        r0 = rng.uniform(2.5, 9.0)
        n = int(rng.integers(7, 14))
        ang = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = r0 * np.clip(1 + 0.35 * rng.standard_normal(n), 0.4, 1.7)
        pts = np.stack([px + radii * np.cos(ang), py + radii * np.sin(ang)], 1)
        y0, y1, x0, x1 = g.box(px, py, 1.7 * r0 + 4)
        canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(canvas, [fixed_point(pts, x0, y0)], 255, cv2.LINE_AA, SHIFT)
        canvas = cv2.GaussianBlur(canvas, (0, 0), 0.6)
        alpha = canvas.astype(np.float32) / 255 * (0.75 + 0.25 * _smooth_field(rng, canvas.shape, 4))
    else:  # fibre: a wiggly random walk
        n = int(rng.integers(12, 45))
        heading = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 0.28, n))
        steps = 1.6 * np.stack([np.cos(heading), np.sin(heading)], 1)
        pts = np.array([px, py]) + np.cumsum(steps, 0)
        y0, y1, x0, x1 = g.box(*pts.mean(0), np.abs(pts - pts.mean(0)).max() + 5)
        canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.polylines(canvas, [fixed_point(pts, x0, y0)], False, 255, int(rng.integers(1, 3)), cv2.LINE_AA, SHIFT)
        alpha = canvas.astype(np.float32) / 255
    return y0, x0, -alpha, (40.0, 110.0)


def _spots(g, px, py, half, centres, radii, weights, softness):
    y0, y1, x0, x1 = g.box(px, py, half)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    for (cx, cy), rad, wgt in zip(centres, radii, weights):
        d = np.sqrt((xs - np.float32(cx)) ** 2 + (ys - np.float32(cy)) ** 2)
        alpha = np.maximum(alpha, np.float32(wgt) / (1 + np.exp(np.minimum((d - np.float32(rad)) / np.float32(softness), 30))))
    return y0, x0, alpha


def _white_spot(rng, g, img):
    px, py = g.point_in_glass(rng, 0.92)
    rad = rng.uniform(1.6, 4.5)
    y0, x0, alpha = _spots(g, px, py, rad + 4, [(px, py)], [rad], [1.0], 0.5)
    return y0, x0, alpha, (25.0, 60.0)


def _dust(rng, g, img):
    px, py = g.point_in_glass(rng, 0.9)
    spread = rng.uniform(4, 16)
    n = int(rng.integers(4, 14))
    offs = np.clip(rng.normal(0, spread / 2, (n, 2)), -spread, spread)
    centres = [(px + ox, py + oy) for ox, oy in offs]
    y0, x0, alpha = _spots(g, px, py, spread + 4, centres, rng.uniform(0.6, 1.5, n), rng.uniform(0.5, 1.0, n), 0.4)
    sign = -1.0 if rng.random() < 0.7 else 1.0
    return y0, x0, alpha * np.float32(sign), (10.0, 30.0)


def _dirt(rng, g, img):
    px, py = g.point_in_glass(rng, 0.8)
    a = rng.uniform(10, 40)
    b = a * rng.uniform(0.45, 1.0)
    rot = rng.uniform(0, math.pi)
    y0, y1, x0, x1 = g.box(px, py, a + 2)
    xs, ys = offsets(y0, y1, x0, x1, px, py)
    c, s = np.float32(math.cos(rot)), np.float32(math.sin(rot))
    e2 = ((xs * c + ys * s) / np.float32(a)) ** 2 + ((-xs * s + ys * c) / np.float32(b)) ** 2
    e2 = e2 * (0.6 + 0.8 * _smooth_field(rng, e2.shape, 5))  # ragged outline
    alpha = np.clip((1 - e2) * 2.5, 0, 1) * (0.5 + 0.5 * _smooth_field(rng, e2.shape, int(rng.integers(3, 6))))
    sign = -1.0 if rng.random() < 0.75 else 1.0
    return y0, x0, alpha * np.float32(sign), (6.0, 18.0)


def _collapsing_edge(rng, g, img):
    theta0 = rng.uniform(-math.pi, math.pi)
    half_span = rng.uniform(5, 18)  # px along the rim
    depth = rng.uniform(3, 10)  # px into the glass
    px, py = g.cx + g.radius * math.cos(theta0), g.cy + g.radius * math.sin(theta0)
    y0, y1, x0, x1 = g.box(px, py, half_span + depth + 4)
    r = g.r[y0:y1, x0:x1]
    dtheta = (g.theta(y0, y1, x0, x1) - np.float32(theta0) + np.float32(math.pi)) % np.float32(2 * math.pi) \
        - np.float32(math.pi)
    arc = dtheta * np.float32(g.radius) / np.float32(half_span)  # -1..1 across the notch
    jag = np.ones_like(arc)  # a shell-shaped bite with a wavy, irregular floor
    for k in range(1, 5):
        jag += np.float32(rng.uniform(0.05, 0.3) / k) * np.sin(np.float32(k * math.pi) * arc
                                                               + np.float32(rng.uniform(0, 2 * math.pi)))
    prof = np.float32(depth) * np.clip(1 - arc ** 2, 0, 1) ** 0.6 * np.clip(jag, 0.4, 1.6)
    inward = np.float32(g.radius) - r
    inside = np.clip(prof - inward + 0.5, 0, 1) * np.clip(inward + 2.5, 0, 1) * (prof > 0.6)
    target = np.float32(rng.uniform(55, 105)) + (_smooth_field(rng, r.shape, 5) - 0.5) * np.float32(25)
    glint = np.float32(rng.uniform(20, 50)) * np.exp(-((prof - inward - 1.2) ** 2) / np.float32(0.7)) * (prof > 0.6)
    patch = img[y0:y1, x0:x1]
    return y0, x0, (inside * (target - patch) + glint * inside).astype(np.float32), None


_RENDERERS = (_scratch, _foreign_object, _white_spot, _dust, _dirt, _collapsing_edge)


def make_lens(seed: int, spec: LensSpec = LensSpec(), *, with_defects: bool = True) -> LensSample:
    """Render lens ``seed`` (an int >= 0). Same seed and spec give byte-identical arrays; ``with_defects=False``
    gives the same lens (geometry, texture, noise) without its defects and with an all-zero mask."""
    check_int("seed", seed, 0)
    if not isinstance(spec, LensSpec):
        raise TypeError(f"spec must be a LensSpec, got {type(spec).__name__}")
    rng = np.random.default_rng(int(seed))
    h, w = spec.size
    short = min(h, w)
    cx = w / 2 + rng.uniform(-1, 1) * spec.center_jitter * short
    cy = h / 2 + rng.uniform(-1, 1) * spec.center_jitter * short
    radius = rng.uniform(*spec.glass_radius) * short
    outer = radius + rng.uniform(*spec.ink_width) * short
    g = _Geometry(h, w, cx, cy, radius, outer)
    img = _render_background(rng, spec, g)
    noise = normal_noise(rng, (h, w)) * np.float32(rng.uniform(*spec.noise_sigma))
    # everything above is the defect-free lens; defect draws come after so they cannot disturb it
    n_defects, weights = defect_plan(rng, spec)

    instance = np.zeros((h, w), np.int16)  # 1-based index into drawn
    bare = img.copy() if n_defects and with_defects else img
    drawn: list[dict] = []
    areas: list[int] = []
    for _ in range(n_defects if with_defects else 0):
        cls = int(rng.choice(len(DEFECT_CLASSES), p=weights))
        low = cls != _EDGE and rng.random() < spec.low_contrast_fraction
        for _attempt in range(spec.max_attempts):
            y0, x0, change, contrast = _RENDERERS[cls](rng, g, img)
            y1, x1 = y0 + change.shape[0], x0 + change.shape[1]
            patch = img[y0:y1, x0:x1]
            limit = radius + 2.5 if cls == _EDGE else radius - 1.0
            mag = np.abs(change)
            labelled = (mag >= 0.2 * float(mag.max(initial=0.0))) & (mag > 0) & (g.r[y0:y1, x0:x1] <= limit)
            if contrast is not None:  # scale the shape to the drawn mean contrast over its own pixels
                if not labelled.any():
                    continue
                target = rng.uniform(*(spec.low_contrast_range if low else contrast))
                change = change * np.float32(target / float(mag[labelled].mean()))
            change = np.clip(patch + change, 0, 255) - patch
            # labelled iff changed by at least one grey level, by itself and net of earlier defects under it
            labelled &= (np.abs(change) >= 1.0) & (np.abs(patch + change - bare[y0:y1, x0:x1]) >= 1.0)
            n_px = int(labelled.sum())
            if n_px < spec.min_defect_area:
                continue
            claimed = claim_pixels(areas, instance[y0:y1, x0:x1], labelled, n_px, spec.min_defect_area)
            if claimed is None:
                continue
            change[~labelled] = 0
            patch += change
            instance[y0:y1, x0:x1][labelled] = len(drawn) + 1
            areas = claimed
            vals = change[labelled]
            ys, xs = np.nonzero(labelled)
            drawn.append({
                "class": DEFECT_CLASSES[cls], "class_id": cls + 1,
                "center": [round(float(xs.mean()) + x0, 1), round(float(ys.mean()) + y0, 1)],
                "contrast": round(float(np.abs(vals).mean()), 2), "peak_contrast": round(float(np.abs(vals).max()), 2),
                "polarity": "bright" if vals.mean() > 0 else "dark", "low_contrast": bool(low),
            })
            break

    image = np.clip(np.floor(img + noise + np.float32(0.5)), 0, 255).astype(np.uint8)
    class_of = np.array([0] + [d["class_id"] for d in drawn], np.uint8)
    mask = class_of[instance]
    defects = []
    if drawn:
        order = np.argsort(instance, axis=None, kind="stable")
        flat = instance.ravel()[order]
        bounds = np.searchsorted(flat, np.arange(1, len(drawn) + 2))
        for k, d in enumerate(drawn):
            ys, xs = np.divmod(order[bounds[k]:bounds[k + 1]], w)
            defects.append({"class": d["class"], "class_id": d["class_id"], "bbox": bbox_of(ys, xs),
                            "area": int(ys.size), **{key: d[key] for key in d if key not in ("class", "class_id")}})
    return LensSample(int(seed), image, mask, defects, (round(cx, 3), round(cy, 3)), round(radius, 3),
                      round(outer, 3))


def overlay(sample: LensSample, alpha: float = 0.55) -> np.ndarray:
    """BGR picture of the lens with its mask tinted by class (for demos and reports)."""
    import cv2

    bgr = cv2.cvtColor(sample.image, cv2.COLOR_GRAY2BGR)
    colours = np.array(CLASS_COLOURS, np.float32)[sample.mask]
    on = sample.mask > 0
    bgr[on] = (bgr[on] * (1 - alpha) + colours[on] * alpha).astype(np.uint8)
    return bgr


# ------------------------------------------------------------------------------------------------ data set
lens_seed = item_seed  # seed of image ``index`` in the data set written with ``seed``


def _lens_files_only(folder: Path) -> bool:
    return not folder.exists() or (folder.is_dir() and all(
        p.is_file() and p.name.startswith("lens_") and p.suffix == ".png" for p in folder.iterdir()))


def _is_lens_set(root: Path) -> bool:
    meta = root / "lenses.json"
    try:
        generator = json.loads(meta.read_text(encoding="utf-8")).get("generator")
    except (OSError, ValueError, AttributeError):
        return False
    known = {"images", "masks", "classes.txt", "truth.csv", "lenses.json"}
    return (generator == GENERATOR and all(p.name in known for p in root.iterdir())
            and _lens_files_only(root / "images") and _lens_files_only(root / "masks"))


def write_lens_dataset(out_dir: str | Path, count: int, seed: int = 0, spec: LensSpec = LensSpec()) -> Path:
    """Write ``count`` lenses (image ``i`` uses :func:`lens_seed` ``(seed, i)``) in the generic layout and return
    the folder. ``out_dir`` must be new, empty, or a lens set written here before (which is replaced)."""
    check_int("count", count, 1)
    check_int("seed", seed, 0)
    out = prepare_folder(out_dir, _is_lens_set, "synthetic lens set", GENERATOR,
                         [("images", "lens_*.png"), ("masks", "lens_*.png")], ("classes.txt", "truth.csv", "lenses.json"))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)

    records, truth = [], []
    for i in range(int(count)):
        s_i = lens_seed(seed, i)
        sample = make_lens(s_i, spec)
        name = f"lens_{i:05d}.png"
        write_png(out / "images" / name, sample.image)
        write_png(out / "masks" / name, sample.mask)
        truth.append((name, int(sample.defective), "+".join(sample.classes_present)))
        records.append({"file": name, "seed": s_i, "glass_center": list(sample.glass_center),
                        "glass_radius": sample.glass_radius, "ink_outer_radius": sample.ink_outer_radius,
                        "defects": sample.defects})
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in DEFECT_CLASSES), encoding="utf-8")
    write_csv(out / "truth.csv", ("file", "defective", "classes"), truth)
    meta = {"generator": GENERATOR, "seed": int(seed), "count": int(count), "spec": asdict(spec),
            "classes": list(DEFECT_CLASSES), "images": records}
    (out / "lenses.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return out
