"""The one image reader: layouts, bit depth, non-ASCII paths, and errors that name the file."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection_core.errors import ImageReadError, InspectionCoreError
from inspection_core.imageio import EMPTY, UNDECODABLE, ImageMode, read_image


def _write(path: Path, image: np.ndarray) -> Path:
    """cv2.imencode + tofile: works for non-ASCII paths too."""
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    data.tofile(str(path))
    return path


@pytest.fixture
def colour_bgr() -> np.ndarray:
    image = np.zeros((6, 8, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # B, G, R
    return image


def test_grey_colour_and_unchanged_layouts(tmp_path, colour_bgr):
    path = _write(tmp_path / "c.png", colour_bgr)
    rgb = read_image(path, ImageMode.COLOUR)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8 and tuple(rgb[0, 0]) == (30, 20, 10)
    assert rgb.flags.c_contiguous
    grey = read_image(path, "grey")
    assert grey.shape == (6, 8) and grey.dtype == np.uint8
    assert read_image(path, ImageMode.UNCHANGED).shape == (6, 8, 3)
    grey_file = _write(tmp_path / "g.png", np.full((5, 7), 42, np.uint8))
    assert read_image(grey_file, ImageMode.UNCHANGED).shape == (5, 7)
    assert read_image(grey_file, ImageMode.COLOUR).shape == (5, 7, 3)
    bgra = np.dstack([colour_bgr, np.full((6, 8), 200, np.uint8)])
    rgba = read_image(_write(tmp_path / "a.png", bgra), ImageMode.UNCHANGED)
    assert rgba.shape == (6, 8, 4) and tuple(rgba[0, 0]) == (30, 20, 10, 200)


def test_non_ascii_path(tmp_path):
    folder = tmp_path / "Prüfstand 検査"
    folder.mkdir()
    path = _write(folder / "teil_ß.png", np.full((4, 4), 7, np.uint8))
    assert int(read_image(path)[0, 0]) == 7


def test_sixteen_bit_kept_only_when_asked(tmp_path):
    image = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 4000).astype(np.uint16)
    path = _write(tmp_path / "deep.png", image)
    kept = read_image(path, ImageMode.GREY, keep_depth=True)
    assert kept.dtype == np.uint16 and np.array_equal(kept, image)
    assert read_image(path, ImageMode.UNCHANGED).dtype == np.uint16
    assert read_image(path, ImageMode.GREY).dtype == np.uint8
    assert read_image(path, ImageMode.COLOUR, keep_depth=True).dtype == np.uint16


@pytest.mark.parametrize("content, reason", [(b"", EMPTY), (b"\x89PNG not really", UNDECODABLE)])
def test_empty_and_corrupt_files_name_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert info.value.reason == reason and info.value.os_error is None and info.value.path == path
    assert str(path) in str(info.value) and isinstance(info.value, InspectionCoreError)


def test_missing_file_names_the_file_and_keeps_the_os_error(tmp_path):
    path = tmp_path / "nowhere.png"
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert isinstance(info.value.os_error, FileNotFoundError) and str(path) in str(info.value)


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError):
        read_image(tmp_path / "x.png", "sepia")
