"""Flat-field: the >= 10x goal on synthetic vignetted, gain-striped captures, dead pixels, dithered rounding, bad
input, and the `calibration flatfield` command."""
from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.errors import CalibrationError, ProfileMismatch
from calibration.flatfield import FlatField, build_flatfield, nonuniformity, residual_report
from calibration.synthetic import capture, flat_field_captures
from tests.calibration.conftest import write_png


@pytest.mark.parametrize("line_scan", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_goal_column_nonuniformity_falls_at_least_tenfold(seed, line_scan):
    shape = (256, 1024) if line_scan else (480, 640)
    camera, darks, brights, check = flat_field_captures(seed, shape, line_scan=line_scan)
    flatfield, info = build_flatfield(darks, brights, line_scan=line_scan)
    report = residual_report(flatfield, check)  # a capture at another level, not used for the correction
    assert report["before"]["column_pct"] > 3.0  # the synthetic capture really is non-uniform
    assert report["column_improvement"] >= 10.0, report
    assert info["dead_pixels"] == len(np.unique(camera.dead[:, 1] if line_scan else camera.dead, axis=0))
    assert flatfield.gain.shape == ((shape[1],) if line_scan else shape)


def test_line_scan_screen_striping_is_removed():
    from calibration.benchmark import screen_flatfield_case

    report = screen_flatfield_case(seed=0, size=(1024, 1024), frames=4, lines=256)
    assert report["column_improvement"] >= 5.0 and report["after"]["column_pct"] < 3 * report["ideal_after_column_pct"]


def test_correction_matches_the_formula_and_dead_pixels_take_their_neighbours():
    signal = np.array([100, 50, 200] + [100] * 17 + [1])  # the last column is dead
    dark = np.full((4, 21), 10, np.uint8)
    bright = np.tile(10 + signal, (4, 1)).astype(np.uint8)
    flatfield, info = build_flatfield([dark], [bright], min_signal=5)
    assert info["dead_pixels"] == 4
    mean_signal = signal[:-1].mean()
    raw = np.tile(10 + signal // 2, (4, 1)).astype(np.uint8)  # half of each working pixel's signal
    raw[:, -1] = 200
    out = flatfield.apply(raw)
    assert out.dtype == np.uint8
    assert np.abs(out[:, :-1] - mean_signal / 2).max() <= 1  # (raw - dark) * mean(signal) / signal
    assert np.abs(out[:, -1].astype(float) - out[:, -2]).max() <= 1  # the dead column copies its good neighbour


def test_rounding_is_dithered_so_it_draws_no_column_stripes():
    gain = np.linspace(0.9, 1.1, 512, dtype=np.float32)  # near-unit gains on integer input
    flatfield = FlatField(np.zeros(512, np.float32), gain, line_scan=True)
    raw = np.full((1024, 512), 30, np.uint8)
    true = 30 * gain
    profile = flatfield.apply(raw).mean(axis=0)
    assert np.abs(profile - true).max() < 0.05  # plain rounding would be off by up to 0.5 per column
    assert np.array_equal(flatfield.apply(raw), flatfield.apply(raw))  # deterministic


def test_bad_references_are_refused_with_what_to_do():
    dark = np.full((8, 8), 20, np.uint8)
    with pytest.raises(CalibrationError, match="only 1.0 grey levels above the dark"):
        build_flatfield([dark], [dark + 1])
    with pytest.raises(CalibrationError, match="saturated"):
        build_flatfield([dark], [np.full((8, 8), 255, np.uint8)])
    with pytest.raises(CalibrationError, match="same camera setting"):
        build_flatfield([dark], [np.full((8, 9), 200, np.uint8)])
    with pytest.raises(CalibrationError, match="no dark captures"):
        build_flatfield([], [dark])
    flatfield, _ = build_flatfield([dark], [np.full((8, 8), 200, np.uint8)])
    with pytest.raises(ProfileMismatch, match="for 8×8 frames, the image is 9×8"):
        flatfield.apply(np.zeros((8, 9), np.uint8))


def test_nonuniformity_of_a_flat_image_is_zero_and_of_a_ramp_is_not():
    assert nonuniformity(np.full((10, 10), 100, np.uint8))["column_pct"] == 0
    ramp = np.tile(np.arange(90, 110, dtype=np.uint8), (10, 1))
    assert nonuniformity(ramp)["column_pct"] == pytest.approx(100 * np.arange(90, 110).std() / 99.5, rel=1e-3)


def test_flatfield_command_writes_a_version_with_arrays_plot_and_residual(root, cli, captures):
    folder, camera = captures
    code, out, err = cli("flatfield", "--camera", "cam-A", "--dark", folder / "dark", "--bright", folder / "bright",
                         "--check", folder / "check.png", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["profile"] == "cam-A@v1" and data["line_scan"] is False
    assert data["residual"]["column_improvement"] >= 10 and data["dead_pixels"] == 4
    version = root / "cam-A" / "v001"
    assert {p.name for p in version.iterdir()} >= {"profile.json", "flatfield_offset.npy", "flatfield_gain.npy",
                                                  "flatfield_dead.npy", "flatfield.png"}
    assert (version / "flatfield.png").stat().st_size > 10_000
    gain = np.load(version / "flatfield_gain.npy")
    # the gain is the inverse of the sensor's (up to the mean level), dead pixels aside
    good = np.ones(gain.shape, bool)
    good[tuple(camera.dead.T)] = False
    ratio = gain[good] * camera.gain[good]
    assert ratio.std() / ratio.mean() < 0.01
    # without --check the last bright capture is left out and judged
    code, out, err = cli("flatfield", "--camera", "cam-A", "--dark", folder / "dark", "--bright", folder / "bright")
    assert code == 0 and "cam-A@v2" in out and "left out" in out and "x lower" in out


def test_flatfield_command_bad_input_is_one_line_and_exit_2(root, cli, captures, tmp_path):
    folder, _ = captures
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    code, out, err = cli("flatfield", "--camera", "cam-A", "--dark", bad, "--bright", folder / "bright")
    assert code == 2 and err.startswith("calibration: error: the dark capture") and "not a decodable image" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli("flatfield", "--camera", "cam-A", "--dark", tmp_path / "nowhere", "--bright", folder / "bright")
    assert code == 2 and "does not exist" in err
    write_png(tmp_path / "small" / "d.png", np.zeros((10, 10), np.uint8))
    code, _, err = cli("flatfield", "--camera", "cam-A", "--dark", tmp_path / "small", "--bright", folder / "bright")
    assert code == 2 and "dark captures are 10×10 but bright captures are 640×480" in err
    assert not root.exists() or not list(root.glob("*/v*"))


def test_line_scan_flatfield_applies_to_frames_of_any_length():
    camera, darks, brights, _ = flat_field_captures(4, (64, 512), line_scan=True, frames=4)
    flatfield, _ = build_flatfield(darks, brights, line_scan=True)
    block = capture(camera, 150.0, np.random.default_rng(1), lines=700)
    assert flatfield.apply(block).shape == (700, 512)
    assert nonuniformity(flatfield.apply(block))["column_pct"] < nonuniformity(block)["column_pct"] / 10
