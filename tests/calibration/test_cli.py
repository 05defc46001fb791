"""The `calibration` command as a whole: manual pages, the goal benchmark, list / show, and one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.cli import main
from calibration.profile import CameraGeometry, ProfileStore


@pytest.mark.parametrize("command", ["flatfield", "scale", "roi", "thresholds", "list", "show", "synth", "benchmark"])
def test_every_command_has_a_manual_page(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0 and f"calibration {command}" in text
    if command not in ("synth", "benchmark"):
        assert "Examples:" in text


def test_top_level_help_lists_the_steps(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for word in ("flatfield", "scale", "roi", "thresholds", "int8", "STATION_PROFILES", "Exit codes"):
        assert word in text


def test_benchmark_meets_both_goals(cli):
    code, out, err = cli("benchmark", "--json")
    report = json.loads(out)
    assert code == 0 and report["all_met"], report["lines"]
    assert all(r["column_improvement"] >= 10 for r in report["flatfield"].values())
    assert all(r["error_pct"] <= 0.5 for r in report["scale"])


def test_list_and_show_and_tampering(root, cli):
    code, out, _ = cli("list")
    assert code == 0 and "no calibration profiles" in out
    store = ProfileStore(root)
    with store.new_version("cam-A", CameraGeometry(64, 48, "Mono8"), step="scale") as draft:
        draft.save_array("a.npy", np.zeros(3))
        draft.sections["scale"] = {"mm_per_px": 0.1, "mm_per_px_x": 0.1, "mm_per_px_y": 0.1, "files": ["a.npy"]}
    code, out, _ = cli("list", "--json")
    assert json.loads(out)["profiles"][0]["profile"] == "cam-A@v1"
    code, out, _ = cli("show", "cam-A")
    assert code == 0 and "[scale] mm_per_px=0.1" in out and "all match" in out
    np.save(root / "cam-A" / "v001" / "a.npy", np.ones(3))
    code, out, _ = cli("show", "cam-A")
    assert code == 1 and "PROBLEMS" in out and "SHA-256" in out
    code, out, err = cli("show", "cam-B@v2")
    assert code == 2 and err.startswith("calibration: error: no calibration profile for camera 'cam-B'")
    assert len(err.strip().splitlines()) == 1


def test_synth_writes_captures_the_steps_accept(root, cli, tmp_path):
    code, out, _ = cli("synth", "flatfield", "--out", tmp_path / "caps")
    assert code == 0 and len(list((tmp_path / "caps" / "dark").glob("*.png"))) == 8
    code, _, _ = cli("synth", "checkerboard", "--out", tmp_path / "t.png", "--mm-per-px", "0.05")
    assert code == 0
    code, out, err = cli("scale", "--camera", "c", "--image", tmp_path / "t.png", "--pattern", "9x6", "--pitch-mm", "2")
    assert code == 0 and "0.0500" in out
    code, out, err = cli("flatfield", "--camera", "c", "--dark", tmp_path / "caps" / "dark", "--bright",
                         tmp_path / "caps" / "bright", "--check", tmp_path / "caps" / "check.png")
    assert code == 0 and "c@v2" in out  # same 640x480 camera
