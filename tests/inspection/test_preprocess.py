"""The network input every backend and training share: ``(x / 255 - mean) / std`` per channel (issue 26: swapped
mean and std were caught only by an export test)."""
from __future__ import annotations

import numpy as np

from inspection_core.preprocess import InputSpec, normalize_tiles


def test_tiles_are_scaled_by_mean_then_std_into_channels_first_float32():
    spec = InputSpec(channels=1, mean=0.2, std=0.4)
    tiles = np.array([[[0, 51], [255, 153]]], np.uint8)  # 0, 0.2, 1.0, 0.6 of full scale
    x = normalize_tiles(tiles, spec)
    assert x.shape == (1, 1, 2, 2) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0, 0], [[-0.5, 0.0], [2.0, 1.0]], atol=1e-6)


def test_colour_tiles_move_their_channels_first():
    spec = InputSpec(channels=3, mean=0.5, std=0.25)
    tiles = np.zeros((2, 4, 4, 3), np.uint8)
    tiles[..., 1] = 255
    x = normalize_tiles(tiles, spec)
    assert x.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(x[:, 0], -2.0)
    np.testing.assert_allclose(x[:, 1], 2.0)
