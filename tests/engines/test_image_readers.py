"""The five image readers of the repository are thin callers of the one reader (inspection_core.imageio): the same
pixels, non-ASCII paths everywhere, and each keeps its own error type and message."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.errors import CalibrationError
from calibration.images import read_image as calibration_read
from engines.inputs import read_images as build_read
from engines.data.multilabel import read_image as multilabel_read
from engines.data.segmentation import DatasetError, read_grey
from engines.errors import EngineError
from inspection_core.errors import ImageReadError
from station.sources.replay import read_image as replay_read


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    data.tofile(str(path))
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "Prüfung 検査"
    bgr = np.zeros((6, 8, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30
    bgra = np.dstack([bgr, np.full((6, 8), 99, np.uint8)])
    bad = folder / "kaputt.png"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\x89PNG not an image")
    return {"grey": _write(folder / "grau.png", np.full((6, 8), 77, np.uint8)),
            "colour": _write(folder / "bunt.png", bgr), "alpha": _write(folder / "alpha.png", bgra), "bad": bad}


def test_every_reader_reads_non_ascii_paths_as_rgb(files):
    assert int(read_grey(files["grey"])[0, 0]) == 77
    assert int(replay_read(files["grey"], grey=True)[0, 0]) == 77
    assert tuple(replay_read(files["colour"], grey=False)[0, 0]) == (30, 20, 10)
    assert tuple(calibration_read(files["colour"])[0, 0]) == (30, 20, 10)
    assert tuple(calibration_read(files["alpha"])[0, 0]) == (30, 20, 10, 99)  # calibration keeps alpha
    assert tuple(multilabel_read(files["colour"])[0, 0]) == (30, 20, 10)
    assert multilabel_read(files["alpha"]).shape == (6, 8, 3)  # data sets drop it
    grey, colour, alpha = build_read([files["grey"], files["colour"], files["alpha"]])
    assert grey.shape == (6, 8) and tuple(colour[0, 0]) == (30, 20, 10) and alpha.shape == (6, 8, 3)


def test_every_reader_keeps_its_error(files, tmp_path):
    bad = files["bad"]
    with pytest.raises(ImageReadError, match=r"cannot read image .*kaputt.png: not a decodable image") as info:
        replay_read(bad, grey=True)  # the typed error, not turned back into a built-in one (that would read as a bug)
    assert info.value.os_error is None
    with pytest.raises(CalibrationError, match=r"the capture .*kaputt.png is not a decodable image"):
        calibration_read(bad, "capture")
    with pytest.raises(DatasetError, match=r"cannot decode image .*kaputt.png"):
        read_grey(bad)
    with pytest.raises(DatasetError, match=r"cannot decode image .*kaputt.png"):
        multilabel_read(bad)
    with pytest.raises(EngineError, match=r"cannot read image .*kaputt.png: missing or corrupt"):
        build_read([bad])
    missing = tmp_path / "fehlt.png"
    with pytest.raises(ImageReadError, match=r"cannot read image .*fehlt.png") as info:
        replay_read(missing, grey=True)
    assert isinstance(info.value.os_error, FileNotFoundError)
    with pytest.raises(DatasetError, match=r"No such file or directory: .*fehlt.png") as info:
        read_grey(missing)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(CalibrationError, match=r"cannot read the capture .*fehlt.png"):
        calibration_read(missing, "capture")
    with pytest.raises(EngineError, match=r"cannot read image .*fehlt.png"):
        build_read([missing])
