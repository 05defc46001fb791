"""Region of interest: the lens glass circle and the screen's active area found on synthetic references with known
geometry, margins, manual edits, and the `calibration roi` command with its overlay."""
from __future__ import annotations

import numpy as np
import pytest

from calibration.errors import CalibrationError
from calibration.roi import find_lens_roi, find_screen_roi, parse_roi, roi_from_dict, roi_to_dict, with_margin
from calibration.synthetic import screen_in_bezel
from engines.data.synthetic_lens import LensSpec, make_lens
from inspection_core.verdict import RoiCircle, RoiRect
from tests.calibration.conftest import write_png


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_lens_glass_circle_is_found_within_half_a_pixel(seed):
    sample = make_lens(seed, LensSpec(size=(400, 480), defect_free_prob=0.0))  # with defects on the glass
    roi, facts = find_lens_roi(sample.image)
    cx, cy = sample.glass_center
    assert abs(roi.cx - cx) < 0.5 and abs(roi.cy - cy) < 0.5, (roi, sample.glass_center)
    assert abs(roi.r - sample.glass_radius) < 0.5, (roi.r, sample.glass_radius)
    assert roi.r < sample.ink_outer_radius - 5  # inside the ink ring, not at its outer edge
    assert facts["edge_points"] > 200


def test_lens_not_found_says_what_to_do():
    with pytest.raises(CalibrationError, match="no bright glass disc"):
        find_lens_roi(np.full((200, 200), 90, np.uint8))


@pytest.mark.parametrize("seed", [0, 3])
def test_screen_active_area_is_found_within_a_pixel(seed):
    image, (x, y, w, h) = screen_in_bezel(seed, active=(500, 360))
    roi, _ = find_screen_roi(image)
    assert isinstance(roi, RoiRect)
    assert max(abs(roi.x - x), abs(roi.y - y), abs(roi.w - w), abs(roi.h - h)) <= 1, (roi, (x, y, w, h))


def test_manual_roi_margin_and_round_trip():
    assert parse_roi("cx=320, cy=240.5, r=200") == RoiCircle(320, 240.5, 200)
    assert parse_roi("x=10,y=20,w=600,h=400") == RoiRect(10, 20, 600, 400)
    for bad in ("cx=1,cy=2", "x=1.5,y=0,w=10,h=10", "r=oops", "cx=1,cy=2,r=-3"):
        with pytest.raises(CalibrationError, match="--set"):
            parse_roi(bad)
    assert with_margin(RoiCircle(10, 10, 8), 3) == RoiCircle(10, 10, 5)
    assert with_margin(RoiRect(10, 10, 100, 50), -2) == RoiRect(8, 8, 104, 54)
    with pytest.raises(CalibrationError, match="margin"):
        with_margin(RoiRect(0, 0, 10, 10), 5)
    for roi in (RoiCircle(1.5, 2.25, 3), RoiRect(1, 2, 3, 4)):
        assert roi_from_dict(roi_to_dict(roi)) == roi


def test_roi_command_finds_edits_and_draws(root, cli_json, cli, tmp_path):
    sample = make_lens(7, LensSpec(size=(480, 640)))
    reference = write_png(tmp_path / "lens.png", sample.image)
    data = cli_json("roi", "--camera", "cam-A", "--image", reference, "--kind", "lens", "--margin", "3")
    assert data["profile"] == "cam-A@v1" and data["source"] == "auto"
    assert data["roi"]["r"] == pytest.approx(data["found"]["r"] - 3) and data["found"]["r"] == pytest.approx(
        sample.glass_radius, abs=1)
    assert (root / "cam-A" / "v001" / "roi.png").stat().st_size > 5_000
    data = cli_json("roi", "--camera", "cam-A", "--set", "cx=300,cy=200,r=120")
    assert data["profile"] == "cam-A@v2" and data["roi"] == {"shape": "circle", "cx": 300.0, "cy": 200.0, "r": 120.0}
    code, _, err = cli("roi", "--camera", "cam-A", "--set", "x=700,y=0,w=10,h=10")
    assert code == 2 and "outside the 640×480 frame" in err
    code, _, err = cli("roi", "--camera", "cam-A", "--image", reference)
    assert code == 2 and "--kind is needed" in err
