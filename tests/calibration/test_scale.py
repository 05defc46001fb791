"""Scale: millimetres per pixel from synthetic checkerboards and dot grids within 0.5 % (the goal), clear
failures, and the `calibration scale` command."""
from __future__ import annotations

import numpy as np
import pytest

from calibration.errors import CalibrationError
from calibration.scale import fit_grid, measure_scale, parse_pattern
from calibration.synthetic import render_checkerboard, render_dot_grid
from tests.calibration.conftest import write_png


@pytest.mark.parametrize("seed, mm_per_px, angle", [(0, 0.05, 2.0), (1, 0.0731, -4.0), (2, 0.031, 0.0)])
def test_goal_checkerboard_scale_within_half_a_percent(seed, mm_per_px, angle):
    image = render_checkerboard(pitch_mm=2.0, mm_per_px=mm_per_px, angle_deg=angle, seed=seed,
                                shape=(600, 800) if mm_per_px > 0.04 else (800, 1100))
    result = measure_scale(image, (9, 6), 2.0)
    assert abs(result.mm_per_px - mm_per_px) / mm_per_px < 0.005
    assert abs(result.mm_per_px - mm_per_px) / mm_per_px < 0.001  # in fact far better
    assert abs(abs(result.rotation_deg) - abs(angle)) < 0.1
    assert result.points == 54 and result.residual_px < 0.2


def test_different_x_and_y_scales_of_a_line_scan_camera():
    image = render_checkerboard(pitch_mm=2.0, mm_per_px=(0.04, 0.055), angle_deg=-1.5, shape=(600, 900), seed=4)
    result = measure_scale(image, (9, 6), 2.0)
    assert result.mm_per_px_x == pytest.approx(0.04, rel=0.005)
    assert result.mm_per_px_y == pytest.approx(0.055, rel=0.005)
    assert result.mm_per_px == pytest.approx(np.sqrt(0.04 * 0.055), rel=0.005)


def test_dot_grid():
    image = render_dot_grid(grid=(9, 6), pitch_mm=1.5, diameter_mm=0.7, mm_per_px=0.04, angle_deg=3.0, seed=5)
    result = measure_scale(image, (9, 6), 1.5, target="dots")
    assert result.mm_per_px == pytest.approx(0.04, rel=0.005)


def test_grid_fit_drops_an_outlier():
    rows, cols = np.meshgrid(np.arange(6), np.arange(9), indexing="ij")
    points = np.stack([100 + 20 * cols + 1 * rows, 50 + 20 * rows - 1 * cols], axis=2).astype(float)
    points[2, 3] += (7, -5)  # one corner found wrong
    matrix, origin, used = fit_grid(points)
    assert not used[2, 3] and used.sum() == 53
    assert np.allclose(matrix, [[20, 1], [-1, 20]], atol=1e-9) and np.allclose(origin, [100, 50])


def test_missing_target_and_bad_pattern_say_what_to_check():
    blank = np.full((300, 400), 128, np.uint8)
    with pytest.raises(CalibrationError, match="found no checkerboard with 9x6 inner corners"):
        measure_scale(blank, (9, 6), 2.0)
    image = render_checkerboard(pitch_mm=2.0, mm_per_px=0.05, seed=0)
    with pytest.raises(CalibrationError, match="counts the inner corners"):
        measure_scale(image, (10, 7), 2.0)  # squares, not inner corners
    with pytest.raises(CalibrationError, match="COLUMNSxROWS"):
        parse_pattern("nine by six")
    with pytest.raises(CalibrationError, match="pitch"):
        measure_scale(image, (9, 6), 0.0)


def test_scale_command_stores_mm_per_px_and_an_overlay(root, cli_json, cli, tmp_path):
    target = write_png(tmp_path / "target.png", render_checkerboard(pitch_mm=2.0, mm_per_px=0.05, seed=1,
                                                                   shape=(480, 640)))
    data = cli_json("scale", "--camera", "cam-A", "--image", target, "--pattern", "9x6", "--pitch-mm", "2")
    assert data["profile"] == "cam-A@v1" and data["mm_per_px"] == pytest.approx(0.05, rel=0.005)
    assert (root / "cam-A" / "v001" / "scale.png").is_file()
    code, _, err = cli("scale", "--camera", "cam-A", "--image", target, "--pattern", "12x6", "--pitch-mm", "2")
    assert code == 2 and "found no checkerboard with 12x6 inner corners" in err and err.count("\n") == 1
