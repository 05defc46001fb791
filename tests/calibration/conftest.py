"""Fixtures of the calibration tests: a profile store in a temporary folder and the `calibration` command."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.cli import main


@pytest.fixture
def root(tmp_path: Path, monkeypatch) -> Path:
    """An empty profile store; $STATION_PROFILES points at it so every default lookup lands there too."""
    folder = tmp_path / "profiles"
    monkeypatch.setenv("STATION_PROFILES", str(folder))
    return folder


@pytest.fixture
def cli(capsys):
    """Run `calibration ARGS...`; returns (exit code, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


@pytest.fixture
def cli_json(cli):
    def run(*args: str) -> dict:
        code, out, err = cli(*args, "--json")
        assert code == 0, err
        return json.loads(out)
    return run


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def captures(tmp_path: Path):
    """Synthetic dark/ and bright/ folders and a check.png of a vignetted, gain-striped 640x480 sensor."""
    from calibration.synthetic import flat_field_captures

    camera, darks, brights, check = flat_field_captures(seed=3, shape=(480, 640), frames=4)
    folder = tmp_path / "caps"
    for name, frames in (("dark", darks), ("bright", brights)):
        for i, frame in enumerate(frames):
            write_png(folder / name / f"{name}_{i}.png", frame)
    write_png(folder / "check.png", check)
    return folder, camera
