"""The calibration goals measured on seeded synthetic captures (``calibration benchmark``).

* Flat-field: the column non-uniformity (std / mean of the column profile) of a flat capture *not used* to
  build the correction, before and after, must fall at least :data:`FLATFIELD_GOAL` times — on an area-scan and
  a line-scan sensor of :mod:`calibration.synthetic` (vignetting, column gain striping, warm columns, dead
  pixels, read noise). An extra case without a goal: a defect-free, mura-free line-scan screen of
  :mod:`engines.data.synthetic_screen` (milder striping, a dark screen) corrected with references made from its
  true column gain and offset (plus a black-level pedestal of :data:`PEDESTAL` grey levels on screen and
  references, as cameras have, so the dark references' noise is not clipped at 0), shown beside its floor: the
  screen corrected with its true artefacts in floating point, where only its own noise is left.
* ROI (no goal, for the record): the largest error of the found lens circle and screen rectangle against the
  generators' true geometry.
* Scale: the millimetres per pixel recovered from synthetic targets rendered at a known scale must be within
  :data:`SCALE_GOAL_PCT` % — a turned checkerboard, one with different x and y scales (line-scan), a dot grid.
"""
from __future__ import annotations

import numpy as np

from calibration.flatfield import build_flatfield, residual_report
from calibration.roi import find_lens_roi, find_screen_roi
from calibration.scale import measure_scale
from calibration.synthetic import (
    SyntheticCamera,
    capture,
    flat_field_captures,
    render_checkerboard,
    render_dot_grid,
    screen_in_bezel,
)
from engines.data.synthetic_lens import LensSpec, make_lens
from engines.data.synthetic_screen import ScreenSpec, make_screen

FLATFIELD_GOAL = 10.0
SCALE_GOAL_PCT = 0.5
PEDESTAL = 16  # grey levels of black-level offset added to the synthetic screen


def screen_flatfield_case(seed: int = 0, size: tuple[int, int] = (2048, 2048), frames: int = 8,
                          lines: int = 512) -> dict:
    """Flat-field a synthetic line-scan screen with dark / bright references (``frames`` of ``lines`` lines) made
    from its true artefacts."""
    sample = make_screen(seed, ScreenSpec(size=size, mura=(0.0, 0.0), defect_free_prob=1.0))
    w = size[1]
    # a black-level pedestal (as cameras have) keeps the dark references' noise from clipping at 0
    pedestal = np.float32(PEDESTAL)
    camera = SyntheticCamera(gain=np.broadcast_to(sample.column_gain, (lines, w)).astype(np.float32),
                             offset=np.broadcast_to(sample.column_offset + pedestal, (lines, w)).astype(np.float32),
                             noise_sigma=1.2, line_scan=True, dead=np.zeros((0, 2), int), seed=seed)
    rng = np.random.default_rng([seed, 3])
    darks = [capture(camera, 0.0, rng) for _ in range(frames)]
    brights = [capture(camera, 180.0, rng) for _ in range(frames)]
    flatfield, _ = build_flatfield(darks, brights, line_scan=True)
    report = residual_report(flatfield, (sample.image.astype(np.int16) + PEDESTAL).clip(0, 255).astype(np.uint8))
    # the floor: the screen corrected with its true artefacts, in floating point (its own noise is what is left)
    ideal = ((sample.image.astype(np.float64) - sample.column_offset) / sample.column_gain).mean(axis=0)
    report["ideal_after_column_pct"] = round(100 * float(ideal.std()) / float(ideal.mean() + PEDESTAL), 4)
    return report


def flatfield_case(seed: int, line_scan: bool) -> dict:
    shape = (256, 2048) if line_scan else (480, 640)
    _, darks, brights, check = flat_field_captures(seed, shape, line_scan=line_scan)
    flatfield, info = build_flatfield(darks, brights, line_scan=line_scan)
    return {**residual_report(flatfield, check), "dead_pixels": info["dead_pixels"]}


def scale_cases(seed: int) -> list[dict]:
    out = []
    cases = [("checkerboard 10x7, 2 mm, turned 2 deg", "checkerboard", (9, 6), 2.0, (0.05, 0.05),
              lambda: render_checkerboard(pitch_mm=2.0, mm_per_px=0.05, angle_deg=2.0, seed=seed)),
             ("checkerboard, x 0.04 / y 0.055 mm/px (line-scan), turned -1.5 deg", "checkerboard", (9, 6), 2.0,
              (0.04, 0.055), lambda: render_checkerboard(pitch_mm=2.0, mm_per_px=(0.04, 0.055), angle_deg=-1.5,
                                                          shape=(600, 900), seed=seed)),
             ("dot grid 9x6, 2 mm, turned 3 deg", "dots", (9, 6), 2.0, (0.05, 0.05),
              lambda: render_dot_grid(pitch_mm=2.0, mm_per_px=0.05, angle_deg=3.0, seed=seed))]
    for name, target, pattern, pitch, truth, render in cases:
        result = measure_scale(render(), pattern, pitch, target)
        err_x = 100 * abs(result.mm_per_px_x - truth[0]) / truth[0]
        err_y = 100 * abs(result.mm_per_px_y - truth[1]) / truth[1]
        err = 100 * abs(result.mm_per_px - float(np.sqrt(truth[0] * truth[1]))) / float(np.sqrt(truth[0] * truth[1]))
        out.append({"case": name, "true_mm_per_px": list(truth), "mm_per_px_x": result.mm_per_px_x,
                    "mm_per_px_y": result.mm_per_px_y, "mm_per_px": result.mm_per_px,
                    "error_pct": round(max(err, err_x, err_y), 4), "residual_px": round(result.residual_px, 4)})
    return out


def roi_cases(seed: int, count: int = 10) -> dict:
    """Largest error of the found ROI against the true geometry over ``count`` synthetic lenses (with defects on
    the glass) and screens in a bezel."""
    lens_err = 0.0
    for i in range(count):
        sample = make_lens(seed * 1000 + i, LensSpec(size=(400, 480), defect_free_prob=0.0))
        roi, _ = find_lens_roi(sample.image)
        lens_err = max(lens_err, abs(roi.cx - sample.glass_center[0]), abs(roi.cy - sample.glass_center[1]),
                       abs(roi.r - sample.glass_radius))
    screen_err = 0
    for i in range(count // 2):
        image, (x, y, w, h) = screen_in_bezel(seed * 1000 + i, active=(500, 360))
        roi, _ = find_screen_roi(image)
        screen_err = max(screen_err, abs(roi.x - x), abs(roi.y - y), abs(roi.w - w), abs(roi.h - h))
    return {"lens_max_error_px": round(lens_err, 3), "lenses": count, "screen_max_error_px": int(screen_err),
            "screens": count // 2}


def run_benchmark(seed: int = 0) -> dict:
    """Every goal case; ``all_met`` and printable ``lines``."""
    flat = {"area-scan 640x480 sensor": flatfield_case(seed, False),
            "line-scan 2048 px sensor": flatfield_case(seed, True)}
    screen = screen_flatfield_case(seed)
    scale = scale_cases(seed)
    lines = [f"flat-field: column non-uniformity of a flat capture not used for the correction (goal >= "
             f"{FLATFIELD_GOAL:g}x lower)"]
    met = True
    for name, r in flat.items():
        ok = r["column_improvement"] >= FLATFIELD_GOAL
        met &= ok
        lines.append(f"  {name:<50} before {r['before']['column_pct']:7.3f} %  after {r['after']['column_pct']:7.4f} %"
                     f"  {r['column_improvement']:7.1f}x  {'met' if ok else 'NOT MET'}")
    lines.append(f"  extra, no goal: line-scan screen (engines.data.synthetic_screen, mild striping, dark)  before "
                 f"{screen['before']['column_pct']:.3f} %  after {screen['after']['column_pct']:.4f} %  "
                 f"{screen['column_improvement']:.1f}x  (floor: true artefacts in floating point "
                 f"{screen['ideal_after_column_pct']:.4f} %)")
    lines.append(f"scale: recovered mm/px against the true scale (goal within {SCALE_GOAL_PCT:g} %)")
    for r in scale:
        ok = r["error_pct"] <= SCALE_GOAL_PCT
        met &= ok
        lines.append(f"  {r['case']:<64} true {r['true_mm_per_px']}  found x {r['mm_per_px_x']:.6f} y "
                     f"{r['mm_per_px_y']:.6f}  error {r['error_pct']:.4f} %  {'met' if ok else 'NOT MET'}")
    rois = roi_cases(seed)
    lines.append(f"roi (no goal): lens glass circle, largest centre/radius error over {rois['lenses']} lenses "
                 f"{rois['lens_max_error_px']:.3f} px; screen active area, largest side error over {rois['screens']} "
                 f"screens {rois['screen_max_error_px']} px")
    return {"seed": seed, "flatfield": flat, "screen_flatfield": screen, "scale": scale, "roi": rois,
            "all_met": bool(met), "lines": lines}
