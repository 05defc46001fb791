"""Seeded synthetic captures with known truth, for the calibration goals, the tests and trying the commands.

* :func:`synthetic_camera` / :func:`capture`: a sensor with a known per-pixel gain and offset — lens vignetting
  (radial, ``1 - v·r²`` with ``r = 1`` in the corners; across the line only for a line-scan camera), per-column
  gain striping (PRNU of the column amplifiers, odd/even taps), per-pixel PRNU, a dark offset with per-column
  DSNU and a few warm columns, a few dead pixels, and Gaussian read noise. ``capture(camera, level)`` images a
  uniform scene of that grey level: ``raw = gain · level + offset + noise``, rounded and clipped to uint8.
  The engines' line-scan screen generator (:mod:`engines.data.synthetic_screen`) draws the same kind of column
  artefacts into screen images; the tests also check flat-field against its true ``column_gain`` /
  ``column_offset``.
* :func:`render_checkerboard` / :func:`render_dot_grid`: a target of known pitch (mm) rendered at a known
  scale (mm per pixel, x and y separately) with a small rotation, anti-aliased by supersampling, slightly
  blurred and noisy.
* :func:`screen_in_bezel`: a synthetic line-scan screen (:func:`engines.data.synthetic_screen.make_screen`)
  placed in a dark bezel on a lighter conveyor, with the true active-area rectangle, for the ROI finder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engines.data.synthetic_screen import ScreenSpec, make_screen


@dataclass(frozen=True, eq=False)
class SyntheticCamera:
    """A sensor model: ``gain`` and ``offset`` float32 of the frame's shape, read noise ``noise_sigma``."""

    gain: np.ndarray
    offset: np.ndarray
    noise_sigma: float
    line_scan: bool
    dead: np.ndarray  # (N, 2) row, col of dead pixels (all rows of a column for line-scan)
    seed: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.gain.shape


def synthetic_camera(seed: int = 0, shape: tuple[int, int] = (480, 640), line_scan: bool = False,
                     vignetting: float = 0.35, striping: float = 0.03, noise_sigma: float = 1.5,
                     dead_pixels: int = 4) -> SyntheticCamera:
    """A seeded sensor with vignetting and column gain striping (see the module docstring)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    x = np.linspace(-1, 1, w, dtype=np.float32)
    col_gain = 1 + np.float32(striping) * rng.standard_normal(w).astype(np.float32)
    col_gain[1::2] += np.float32(0.6 * striping)  # odd/even taps
    col_offset = 8 + 1.5 * rng.standard_normal(w).astype(np.float32)
    warm = rng.integers(0, w, 3)
    col_offset[warm] += rng.uniform(6, 12, 3).astype(np.float32)
    if line_scan:
        vig = 1 - np.float32(vignetting) * x * x
        gain = np.broadcast_to(vig * col_gain, (h, w)).astype(np.float32)
        offset = np.broadcast_to(col_offset, (h, w)).astype(np.float32)
        cols = rng.integers(0, w, dead_pixels)
        gain = gain.copy()
        gain[:, cols] *= np.float32(0.02)
        dead = np.stack([np.zeros_like(cols), cols], 1)
    else:
        y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        vig = 1 - np.float32(vignetting) * (x[None, :] ** 2 + y ** 2) / 2
        prnu = 1 + np.float32(0.01) * rng.standard_normal((h, w)).astype(np.float32)
        gain = (vig * col_gain[None, :] * prnu).astype(np.float32)
        offset = (col_offset[None, :] + rng.standard_normal((h, w)).astype(np.float32)).astype(np.float32)
        rows, cols = rng.integers(0, h, dead_pixels), rng.integers(0, w, dead_pixels)
        gain[rows, cols] *= np.float32(0.02)
        dead = np.stack([rows, cols], 1)
    return SyntheticCamera(gain, offset, float(noise_sigma), bool(line_scan), dead, int(seed))


def capture(camera: SyntheticCamera, level: float, rng: np.random.Generator, scene: np.ndarray | None = None,
            lines: int | None = None) -> np.ndarray:
    """One uint8 frame of a uniform scene at grey ``level`` (or of ``scene``, float grey levels, times the
    gain). A line-scan frame may have another number of ``lines``; its artefacts are the same on every line."""
    gain, offset = camera.gain, camera.offset
    if lines is not None and lines != gain.shape[0]:
        if not camera.line_scan:
            raise ValueError("only a line-scan camera takes frames of another number of lines")
        gain = np.broadcast_to(gain[:1], (lines, gain.shape[1]))
        offset = np.broadcast_to(offset[:1], (lines, gain.shape[1]))
    signal = gain * (np.float32(level) if scene is None else scene.astype(np.float32))
    raw = signal + offset + np.float32(camera.noise_sigma) * rng.standard_normal(gain.shape, dtype=np.float32)
    return np.clip(np.rint(raw), 0, 255).astype(np.uint8)


def flat_field_captures(seed: int = 0, shape: tuple[int, int] = (480, 640), line_scan: bool = False,
                        frames: int = 8, dark_level: float = 0.0, bright_level: float = 200.0,
                        check_level: float = 120.0) -> tuple[SyntheticCamera, list[np.ndarray], list[np.ndarray],
                                                             np.ndarray]:
    """``(camera, darks, brights, check)``: ``frames`` dark and bright references and one flat capture at
    another level (``check_level``) on which the residual non-uniformity is measured."""
    camera = synthetic_camera(seed, shape, line_scan)
    rng = np.random.default_rng([seed, 1])
    darks = [capture(camera, dark_level, rng) for _ in range(frames)]
    brights = [capture(camera, bright_level, rng) for _ in range(frames)]
    return camera, darks, brights, capture(camera, check_level, rng)


# ---------------------------------------------------------------------------------------------------- targets
def _supersampled(shape: tuple[int, int], supersample: int, mm_per_px: tuple[float, float], angle_deg: float,
                  inside) -> np.ndarray:
    """Mean of ``inside(u_mm, v_mm)`` (0/1) over ``supersample²`` points per pixel; target coordinates are
    millimetres from the image centre, rotated by ``angle_deg``."""
    h, w = shape
    s = supersample
    sub = (np.arange(s, dtype=np.float64) + 0.5) / s
    xs = (np.arange(w)[:, None] + sub[None, :]).ravel() - w / 2
    ys = (np.arange(h)[:, None] + sub[None, :]).ravel() - h / 2
    x_mm, y_mm = xs * mm_per_px[0], ys * mm_per_px[1]
    c, si = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    out = np.zeros((h, w), np.float64)
    for row0 in range(0, h * s, 256 * s):  # blocks of rows keep memory small
        yy = y_mm[row0:row0 + 256 * s][:, None]
        u = c * x_mm[None, :] + si * yy
        v = -si * x_mm[None, :] + c * yy
        value = inside(u, v).astype(np.float32)
        rows = value.shape[0] // s
        out[row0 // s: row0 // s + rows] = value.reshape(rows, s, w, s).mean(axis=(1, 3))
    return out


def _finish(coverage: np.ndarray, dark: float, light: float, blur: float, noise: float, seed: int) -> np.ndarray:
    import cv2

    image = light + (dark - light) * coverage.astype(np.float32)
    if blur > 0:
        image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), blur)
    rng = np.random.default_rng(seed)
    image = image + noise * rng.standard_normal(image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_checkerboard(squares: tuple[int, int] = (10, 7), pitch_mm: float = 2.0,
                        mm_per_px: float | tuple[float, float] = 0.05, shape: tuple[int, int] = (600, 800),
                        angle_deg: float = 2.0, seed: int = 0, supersample: int = 6, blur: float = 0.6,
                        noise: float = 2.0) -> np.ndarray:
    """A checkerboard of ``squares`` (columns, rows) squares of ``pitch_mm`` centred in a uint8 image, seen at
    ``mm_per_px`` (one number, or x and y) and rotated by ``angle_deg``; its inner corners are
    ``(columns - 1) x (rows - 1)``, the ``--pattern`` to pass to ``calibration scale``."""
    scale = (float(mm_per_px), float(mm_per_px)) if np.isscalar(mm_per_px) else tuple(map(float, mm_per_px))
    cols, rows = squares
    half_w, half_h = cols * pitch_mm / 2, rows * pitch_mm / 2

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        on_board = (np.abs(u) < half_w) & (np.abs(v) < half_h)
        parity = (np.floor((u + half_w) / pitch_mm) + np.floor((v + half_h) / pitch_mm)) % 2 == 0
        return on_board & parity

    return _finish(_supersampled(shape, supersample, scale, angle_deg, inside), 25.0, 225.0, blur, noise, seed)


def render_dot_grid(grid: tuple[int, int] = (9, 6), pitch_mm: float = 2.0, diameter_mm: float = 1.0,
                    mm_per_px: float | tuple[float, float] = 0.05, shape: tuple[int, int] = (600, 800),
                    angle_deg: float = 2.0, seed: int = 0, supersample: int = 6, blur: float = 0.6,
                    noise: float = 2.0) -> np.ndarray:
    """A symmetric grid of ``grid`` (columns, rows) dark dots, ``pitch_mm`` apart, on a light ground."""
    scale = (float(mm_per_px), float(mm_per_px)) if np.isscalar(mm_per_px) else tuple(map(float, mm_per_px))
    cols, rows = grid
    radius = diameter_mm / 2

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        gu = u / pitch_mm + (cols - 1) / 2
        gv = v / pitch_mm + (rows - 1) / 2
        iu, iv = np.clip(np.rint(gu), 0, cols - 1), np.clip(np.rint(gv), 0, rows - 1)
        du, dv = (gu - iu) * pitch_mm, (gv - iv) * pitch_mm
        return du * du + dv * dv <= radius * radius

    return _finish(_supersampled(shape, supersample, scale, angle_deg, inside), 30.0, 220.0, blur, noise, seed)


# ---------------------------------------------------------------------------------------------------- screens
def screen_in_bezel(seed: int = 0, active: tuple[int, int] = (600, 400), bezel: int = 40, margin: int = 60,
                    bezel_level: float = 6.0,
                    conveyor_level: float = 95.0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``(image, (x, y, w, h))``: a synthetic dark screen (``active`` = (lines, pixels) of
    :func:`engines.data.synthetic_screen.make_screen`, with its defects) inside a black bezel ``bezel`` px wide,
    on a lighter conveyor ``margin`` px wide around it; the tuple is the true active-area rectangle."""
    rng = np.random.default_rng([seed, 7])
    screen = make_screen(seed, ScreenSpec(size=active)).image
    ah, aw = active
    h, w = ah + 2 * (bezel + margin), aw + 2 * (bezel + margin)
    image = conveyor_level + 3 * rng.standard_normal((h, w))
    x0 = y0 = margin
    image[y0:y0 + ah + 2 * bezel, x0:x0 + aw + 2 * bezel] = bezel_level + 1.2 * rng.standard_normal(
        (ah + 2 * bezel, aw + 2 * bezel))
    ax, ay = margin + bezel, margin + bezel
    image[ay:ay + ah, ax:ax + aw] = screen
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), (ax, ay, aw, ah)
