"""Tiler and stitcher: round trips on awkward shapes, coverage, contiguity and plan validation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspection_core.tiling import TileBatch, TilePlan, blend_window, plan_tiles, tile_image, untile
from station.errors import TilingError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def plans(draw: st.DrawFn) -> tuple[tuple[int, int], int, int]:
    tile = draw(st.integers(1, 48))
    overlap = draw(st.integers(0, tile - 1))
    h = draw(st.one_of(st.integers(1, 4), st.integers(1, 160)))
    w = draw(st.one_of(st.integers(1, 4), st.integers(1, 160), st.integers(300, 700)))  # includes very wide
    return (h, w), tile, overlap


def _image(shape: tuple[int, ...], dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=shape).astype(dtype)


@SETTINGS
@given(plans(), st.sampled_from([None, 1, 3]), st.sampled_from([np.uint8, np.float32]), st.integers(0, 2**16))
def test_round_trip(spec: tuple[tuple[int, int], int, int], channels: int | None, dtype: type, seed: int) -> None:
    (h, w), tile, overlap = spec
    shape = (h, w) if channels is None else (h, w, channels)
    image = _image(shape, dtype, seed)
    plan = plan_tiles(shape, tile, overlap)
    tiles = tile_image(image, plan)
    assert tiles.dtype == image.dtype
    assert tiles.flags.c_contiguous
    assert tiles.shape == (plan.n_tiles, tile, tile) + shape[2:]
    back = untile(tiles, plan)
    assert back.dtype == np.float32 and back.shape == shape
    np.testing.assert_allclose(back, image.astype(np.float32), rtol=1e-5, atol=1e-3)


@SETTINGS
@given(plans(), st.integers(1, 3))
def test_round_trip_channels_first(spec: tuple[tuple[int, int], int, int], channels: int) -> None:
    (h, w), tile, overlap = spec
    image = _image((h, w, channels), np.uint8, h * w)
    plan = plan_tiles(image.shape, tile, overlap)
    tiles_cf = np.ascontiguousarray(np.moveaxis(tile_image(image, plan), -1, 1))  # (N, C, t, t), like an engine
    back = untile(tiles_cf, plan, channels_first=True)
    assert back.shape == (channels, h, w)
    np.testing.assert_allclose(back, np.moveaxis(image, -1, 0).astype(np.float32), rtol=1e-5, atol=1e-3)


@SETTINGS
@given(plans())
def test_every_pixel_covered_and_tiles_inside(spec: tuple[tuple[int, int], int, int]) -> None:
    (h, w), tile, overlap = spec
    plan = plan_tiles((h, w), tile, overlap)
    ph, pw = plan.padded_shape
    assert (ph, pw) == (max(h, tile), max(w, tile))
    cover = np.zeros((ph, pw), np.int32)
    for y, x in plan.origins:
        assert 0 <= y and y + tile <= ph and 0 <= x and x + tile <= pw
        cover[y : y + tile, x : x + tile] += 1
    assert cover.min() >= 1
    # The last tiles end exactly on the border; neighbours never step by more than the stride.
    ys, xs = sorted({y for y, _ in plan.origins}), sorted({x for _, x in plan.origins})
    assert ys[-1] + tile == ph and xs[-1] + tile == pw
    assert all(0 < b - a <= plan.stride for a, b in zip(ys, ys[1:]))
    assert all(0 < b - a <= plan.stride for a, b in zip(xs, xs[1:]))
    assert plan.grid_shape == (len(ys), len(xs)) and plan.n_tiles == len(ys) * len(xs)


@SETTINGS
@given(plans())
def test_plan_is_deterministic_and_hashable(spec: tuple[tuple[int, int], int, int]) -> None:
    shape, tile, overlap = spec
    a, b = plan_tiles(shape, tile, overlap), plan_tiles(shape, tile, overlap)
    assert a == b and hash(a) == hash(b)
    assert np.array_equal(a.origins_array, b.origins_array)


def test_plan_ignores_channel_count_and_example_numbers() -> None:
    plan = plan_tiles((300, 500, 3), tile=128, overlap=32)
    assert plan.image_shape == (300, 500)
    assert plan.stride == 96
    assert [y for y, _ in plan.origins[:: plan.grid_shape[1]]] == [0, 96, 172]
    assert sorted({x for _, x in plan.origins}) == [0, 96, 192, 288, 372]
    assert plan.origins_array.shape == (plan.n_tiles, 2)


def test_exact_fit_has_no_shifted_tile() -> None:
    plan = plan_tiles((256, 256), tile=128, overlap=0)
    assert plan.origins == ((0, 0), (0, 128), (128, 0), (128, 128))


def test_small_image_is_padded_and_cropped_back() -> None:
    image = np.arange(15, dtype=np.uint8).reshape(3, 5)
    plan = plan_tiles(image.shape, tile=8, overlap=2)
    tiles = tile_image(image, plan)
    assert tiles.shape == (1, 8, 8)
    assert np.array_equal(tiles[0, :3, :5], image)
    assert np.array_equal(tiles[0, 3, :5], image[1])  # reflect: row 3 mirrors row 1
    one = np.full((1, 1), 7, np.uint8)
    t1 = tile_image(one, plan_tiles((1, 1), 4, 1))
    assert np.all(t1 == 7)  # a single pixel can only be repeated (edge)
    assert untile(t1, plan_tiles((1, 1), 4, 1)).tolist() == [[7.0]]


def test_blend_window_is_smooth_with_floor() -> None:
    w = blend_window(64)
    assert w.shape == (64, 64) and w.dtype == np.float32
    assert w.min() > 0
    assert w[32, 32] > 0.99 and w[0, 0] < 0.01
    assert not w.flags.writeable
    # The stitched output of constant tiles is that constant, even where tiles disagree slightly.
    plan = plan_tiles((100, 150), 64, 16)
    out = untile(np.full((plan.n_tiles, 64, 64), 0.25, np.float32), plan)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "fragment"),
    [
        ((10, 10), 0, 0, "tile must be a positive integer"),
        ((10, 10), -4, 0, "tile must be a positive integer"),
        ((10, 10), 8, 8, "use 0..7"),
        ((10, 10), 8, -1, "0 <= overlap < tile"),
        ((10, 10), 8.0, 2, "tile must be a positive integer"),
        ((0, 10), 8, 2, "at least 1x1"),
        ((10,), 8, 2, "(H, W)"),
    ],
)
def test_plan_validation_names_working_values(shape: tuple, tile: object, overlap: object, fragment: str) -> None:
    with pytest.raises(TilingError) as info:
        plan_tiles(shape, tile, overlap)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_mismatches_raise_tiling_error() -> None:
    plan = plan_tiles((40, 40), 16, 4)
    with pytest.raises(TilingError, match="plan_tiles"):
        tile_image(np.zeros((41, 40), np.uint8), plan)
    tiles = tile_image(np.zeros((40, 40), np.uint8), plan)
    with pytest.raises(TilingError, match="every tile"):
        untile(tiles[:-1], plan)
    with pytest.raises(TilingError, match="channels_first=True"):
        untile(np.zeros((plan.n_tiles, 2, 16, 16), np.float32), plan)
    with pytest.raises(TilingError, match="channels_first=True"):
        untile(tiles, plan, channels_first=True)


def test_tile_batch_checks_its_tiles() -> None:
    plan = plan_tiles((40, 40), 16, 4)
    tiles = tile_image(np.zeros((40, 40), np.uint8), plan)
    batch = TileBatch(frame_id=3, tiles=tiles, plan=plan)
    assert batch.plan is plan and batch.tiles.shape[0] == plan.n_tiles
    with pytest.raises(TilingError, match="tile_image"):
        TileBatch(frame_id=3, tiles=tiles[:, :8], plan=plan)
    assert isinstance(plan, TilePlan)


@pytest.mark.parametrize("shape, tile, overlap", [((300, 211), 64, 16), ((50, 90), 64, 8), ((257, 64), 32, 0)])
def test_stitcher_fed_row_by_row_in_bounded_memory_equals_untile_to_the_bit(shape, tile, overlap):
    """The streaming inspector's way (a sliding Stitcher, rows added and divided as they come) and untile (every
    tile, one divide) are one stitcher: the same bits."""
    from inspection_core.tiling import Stitcher

    plan = plan_tiles(shape, tile, overlap)
    scores = np.random.default_rng(3).random((plan.n_tiles, tile, tile), dtype=np.float32)
    whole = untile(scores, plan)
    stitcher = Stitcher(tile, shape[1], lines=16, sliding=True)
    rows = sorted({y for y, _ in plan.origins})
    for k, row in enumerate(rows):
        for i, (y, x) in enumerate(plan.origins):
            if y == row:
                stitcher.add(scores[i], y, x)
        if k + 1 < len(rows):
            stitcher.divide(min(rows[k + 1], shape[0]))  # no later tile reaches the lines above the next row
    stitcher.divide(shape[0])
    assert np.array_equal(stitcher.result(shape[0]), whole)
    assert stitcher.acc.shape[0] < max(shape[0], 4 * tile), "only the lines not divided yet are kept"


def test_blend_window_is_symmetric_and_a_hann_bump_of_its_own_formula() -> None:
    """Issue 26: a window shifted by half a pixel stitched every overlap off-centre and no test saw it."""
    t = 16
    w = blend_window(t)
    np.testing.assert_array_equal(w, w[::-1, :])
    np.testing.assert_array_equal(w, w[:, ::-1])
    np.testing.assert_array_equal(w, w.T)
    i = np.arange(t)
    one = 1e-3 + (1 - 1e-3) * np.sin(np.pi * (i + 0.5) / t) ** 2
    np.testing.assert_allclose(w, np.outer(one, one), rtol=1e-6)


def test_stitch_of_different_overlapping_tiles_is_their_window_weighted_blend() -> None:
    """Two tiles that disagree in their overlap: every pixel is sum(tile * window) / sum(window), by hand."""
    t, overlap = 8, 4
    plan = plan_tiles((8, 12), t, overlap)
    assert plan.origins == ((0, 0), (0, 4))
    rng = np.random.default_rng(5)
    left, right = rng.random((t, t)).astype(np.float32), rng.random((t, t)).astype(np.float32)
    out = untile(np.stack([left, right]), plan)
    w = blend_window(t).astype(np.float64)
    expected = np.zeros((8, 12))
    weight = np.zeros((8, 12))
    expected[:, 0:8] += left * w
    weight[:, 0:8] += w
    expected[:, 4:12] += right * w
    weight[:, 4:12] += w
    np.testing.assert_allclose(out, expected / weight, rtol=1e-5)
    assert not np.allclose(out[:, 4:8], (left[:, 4:8] + right[:, 0:4]) / 2, atol=1e-3), "weighted, not averaged"
