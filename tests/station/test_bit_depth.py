"""Deep images: 16-bit files and Mono10/12/16 camera buffers are scaled by their real bit depth, never truncated."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.backends.base import load_engine
from inspection.inspector import Inspector
from inspection_core.records import Frame, Verdict
from station.frameguard import implausible, to_8bit
from station.recipe import load_recipe, shipped_recipe_path
from station.sources import ReplaySource
from station.sources.genicam import deep_mono_to_8bit


def test_to_8bit_shifts_by_the_bit_depth_and_saturates_beyond_it() -> None:
    values = np.array([[0, 16, 4080, 4095, 4096, 65535]], np.uint16)
    assert to_8bit(values, 12).tolist() == [[0, 1, 255, 255, 255, 255]]
    assert to_8bit(values, 16).tolist() == [[0, 0, 15, 15, 16, 255]]
    assert to_8bit(np.array([[1023]], np.uint16), 10).tolist() == [[255]]
    assert to_8bit(np.array([[7]], np.uint8), 12).tolist() == [[7]]  # 8-bit images pass as they are
    with pytest.raises(ValueError, match="8..16"):
        to_8bit(values, 20)


@pytest.mark.parametrize(("fmt", "scale"), [("Mono10", 4), ("Mono12", 16), ("Mono16", 256)])
def test_deep_mono_camera_buffers_become_the_8_bit_image(fmt: str, scale: int) -> None:
    eight = np.random.default_rng(0).integers(0, 256, (6, 10), dtype=np.uint8)
    deep = (eight.astype(np.uint16) * scale).ravel()
    image, short = deep_mono_to_8bit(deep, 10, 6, fmt)
    assert not short and image.dtype == np.uint8 and np.array_equal(image, eight)
    raw_bytes = deep.astype("<u2").view(np.uint8)  # as a driver hands them over: little-endian bytes
    assert np.array_equal(deep_mono_to_8bit(raw_bytes, 10, 6, fmt)[0], eight)
    cut, short = deep_mono_to_8bit(deep[:30], 10, 6, fmt)
    assert short and np.array_equal(cut[:3], eight[:3]) and not cut[3:].any()


def test_implausible_frames_are_named() -> None:
    assert "all black" in implausible(np.zeros((64, 64), np.uint8))
    assert "saturated" in implausible(np.full((64, 64), 255, np.uint8))
    assert implausible(np.random.default_rng(0).integers(20, 230, (64, 64), dtype=np.uint8)) is None


def test_the_recipe_sets_the_bit_depth_and_frame_limits(tmp_path: Path) -> None:
    text = shipped_recipe_path("magnetic_tile").read_text()
    recipe_file = tmp_path / "deep.toml"
    recipe_file.write_text(text.replace('path = "../samples/magnetic-tile"', f'path = "{tmp_path}"')
                           + "\n[frames]\nbit_depth = 12\nmin_width = 64\n")
    recipe = load_recipe(recipe_file)
    assert recipe.frames.bit_depth == 12 and recipe.frames.min_width == 64 and recipe.frames.max_height == 65536
    from station.errors import RecipeError

    recipe_file.write_text(text + "\n[frames]\nbit_depth = 20\n")
    with pytest.raises(RecipeError, match=r"\[frames\] bit_depth: 20 is not allowed; use an integer from 8 to 16"):
        load_recipe(recipe_file)


@pytest.mark.shared_data
@pytest.mark.slow
def test_a_12_bit_crack_image_fails_exactly_as_its_8_bit_copy(magnetic_tile: Path, tmp_path: Path) -> None:
    """A real magnetic-tile crack, scaled x16 into a 16-bit PNG (12-bit data): read with bit_depth = 12 it is the
    8-bit image again, and the shipped network judges both the same, to the pixel."""
    source = sorted((magnetic_tile / "MT_Crack").glob("*.jpg"))[0]
    eight = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    folder8, folder12 = tmp_path / "8", tmp_path / "12"
    folder8.mkdir()
    folder12.mkdir()
    assert cv2.imwrite(str(folder8 / "crack.png"), eight)
    assert cv2.imwrite(str(folder12 / "crack.png"), eight.astype(np.uint16) * 16)
    assert cv2.imread(str(folder12 / "crack.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    with ReplaySource(folder8) as replay:
        (frame8,) = list(replay)
    with ReplaySource(folder12, bit_depth=12) as replay:
        (frame12,) = list(replay)
    assert np.array_equal(frame12.image, frame8.image)
    with ReplaySource(folder12) as replay:  # the old read: 8 bits of a 16-bit range, near black
        (dark,) = list(replay)
    assert int(dark.image.max()) <= 16

    recipe = load_recipe(shipped_recipe_path("magnetic_tile"))
    engine = load_engine(recipe.engine.weights, "onnxruntime", threads=2)
    inspector = Inspector(engine, overlap=recipe.tiling.overlap, batch=recipe.tiling.batch, rules=recipe.rules)
    now = time.monotonic_ns()
    result8 = inspector.inspect(Frame(frame8.image, 1, now, "8-bit"))
    result12 = inspector.inspect(Frame(frame12.image, 2, now, "12-bit"))
    assert result8.verdict is Verdict.FAIL, "the shipped network must catch this crack"
    assert result12.verdict is result8.verdict
    assert np.array_equal(result12.mask, result8.mask)
    assert [d.to_dict() for d in result12.defects] == [d.to_dict() for d in result8.defects]
