"""Cut frames into square tiles for the engine and stitch per-tile outputs back into one image.

The tiler is stateless: :func:`plan_tiles` returns a frozen :class:`TilePlan` and both :func:`tile_image` and
:func:`untile` take that plan, so the same plan can be shared by threads and cached per frame size.

>>> import numpy as np
>>> plan = plan_tiles((300, 500), tile=128, overlap=32)
>>> tiles = tile_image(np.zeros((300, 500), np.uint8), plan)
>>> tiles.shape, untile(tiles, plan).shape
((15, 128, 128), (300, 500))

Rules:

- tiles start every ``stride = tile - overlap`` pixels; the last row / column is shifted back so it ends exactly
  at the image border (no padding) whenever the image is at least one tile big in that dimension;
- a dimension smaller than one tile is padded up to the tile (reflect, or edge where the dimension is a single
  pixel) and :func:`untile` crops the padding off again;
- :func:`untile` blends overlaps with a separable raised-cosine (Hann) window with a small floor, as a weighted
  sum divided by the sum of weights, so seams do not show and image borders still get weight.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from inspection_core.errors import TilingError

#: Floor of the blending window, relative to its peak: keeps weight at tile borders (and so at image borders).
WINDOW_FLOOR = 1e-3


def _axis_origins(size: int, tile: int, stride: int) -> tuple[int, ...]:
    """Tile starts along one axis: every ``stride``, the last one shifted back to end at ``size``."""
    if size <= tile:
        return (0,)
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return tuple(starts)


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image size lie; hashable, so it can key a cache.

    ``origins`` are the ``(y, x)`` top-left corners of the tiles in row-major order, in the coordinates of the
    padded image (which equals the image unless a dimension is smaller than ``tile``).
    """

    image_shape: tuple[int, int]
    tile: int
    overlap: int
    origins: tuple[tuple[int, int], ...] = field(repr=False)

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def padded_shape(self) -> tuple[int, int]:
        """The image shape after padding each dimension up to at least one tile."""
        h, w = self.image_shape
        return max(h, self.tile), max(w, self.tile)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        ys = {y for y, _ in self.origins}
        xs = {x for _, x in self.origins}
        return len(ys), len(xs)

    @property
    def n_tiles(self) -> int:
        return len(self.origins)

    @property
    def origins_array(self) -> np.ndarray:
        """The origins as an ``int64`` array of shape ``(N, 2)``, columns ``(y, x)``."""
        return np.asarray(self.origins, dtype=np.int64).reshape(-1, 2)


def plan_tiles(image_shape: tuple[int, ...], tile: int, overlap: int) -> TilePlan:
    """Plan the tiles of an image of ``image_shape`` (``(H, W)``; a trailing channel count is ignored).

    Raises :class:`TilingError` naming the values that would work when the inputs cannot make a plan.
    """
    shape = tuple(image_shape)
    if len(shape) not in (2, 3):
        raise TilingError(f"image_shape must be (H, W) or (H, W, C), got {shape!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shape[:2]):
        raise TilingError(f"image_shape must hold integers, got {shape!r}")
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise TilingError(f"image_shape must be at least 1x1 pixels, got {h}x{w}")
    if not isinstance(tile, (int, np.integer)) or isinstance(tile, bool) or tile <= 0:
        raise TilingError(f"tile must be a positive integer (e.g. 128 or 256), got {tile!r}")
    if not isinstance(overlap, (int, np.integer)) or isinstance(overlap, bool) or not 0 <= overlap < tile:
        raise TilingError(
            f"overlap must be an integer with 0 <= overlap < tile, got overlap={overlap!r} for tile={tile}; "
            f"use 0..{int(tile) - 1} (a quarter of the tile, {int(tile) // 4}, is a good start)"
        )
    tile, overlap = int(tile), int(overlap)
    stride = tile - overlap
    ys = _axis_origins(h, tile, stride)
    xs = _axis_origins(w, tile, stride)
    origins = tuple((y, x) for y in ys for x in xs)
    return TilePlan(image_shape=(h, w), tile=tile, overlap=overlap, origins=origins)


@dataclass(frozen=True)
class TileBatch:
    """All tiles of one frame, ready for an engine: ``tiles`` is ``(N, tile, tile)`` or ``(N, tile, tile, C)``."""

    frame_id: int
    tiles: np.ndarray
    plan: TilePlan

    def __post_init__(self) -> None:
        t = self.plan.tile
        if self.tiles.ndim not in (3, 4) or self.tiles.shape[0] != self.plan.n_tiles or self.tiles.shape[1:3] != (t, t):
            raise TilingError(
                f"tiles of shape {self.tiles.shape} do not fit the plan; expected "
                f"({self.plan.n_tiles}, {t}, {t}[, C]) — build them with tile_image(image, plan)"
            )


def _pad_axis(image: np.ndarray, axis: int, target: int) -> np.ndarray:
    size = image.shape[axis]
    if size >= target:
        return image
    widths = [(0, 0)] * image.ndim
    widths[axis] = (0, target - size)
    # Reflect needs at least two pixels to mirror; a single row / column can only be repeated.
    return np.pad(image, widths, mode="reflect" if size > 1 else "edge")


def tile_image(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Cut ``image`` (``(H, W)`` or ``(H, W, C)``) into one C-contiguous batch of tiles of the same dtype."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        shape = getattr(image, "shape", type(image).__name__)
        raise TilingError(f"image must be a numpy array (H, W) or (H, W, C), got {shape}")
    if image.shape[:2] != plan.image_shape:
        raise TilingError(
            f"image of shape {image.shape[:2]} does not match the plan made for {plan.image_shape}; "
            f"make a plan with plan_tiles(image.shape, {plan.tile}, {plan.overlap})"
        )
    ph, pw = plan.padded_shape
    padded = _pad_axis(_pad_axis(image, 0, ph), 1, pw)
    t = plan.tile
    out = np.empty((plan.n_tiles, t, t) + image.shape[2:], dtype=image.dtype)
    for i, (y, x) in enumerate(plan.origins):
        out[i] = padded[y : y + t, x : x + t]
    return out


@functools.lru_cache(maxsize=16)
def blend_window(tile: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """The separable 2-D blending window ``(tile, tile)`` (float32, read-only): a Hann bump with a floor."""
    i = np.arange(tile, dtype=np.float64)
    hann = np.sin(np.pi * (i + 0.5) / tile) ** 2
    w1 = floor + (1.0 - floor) * hann
    window = np.outer(w1, w1).astype(np.float32)
    window.setflags(write=False)
    return window


def untile(tiles: np.ndarray, plan: TilePlan, *, channels_first: bool = False) -> np.ndarray:
    """Stitch per-tile outputs back into one ``float32`` image, blending overlaps with :func:`blend_window`.

    ``tiles`` is ``(N, t, t)``, ``(N, t, t, C)`` or, with ``channels_first=True``, ``(N, C, t, t)``. The result
    is ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` respectively (the layout follows the input).
    """
    t = plan.tile
    if not isinstance(tiles, np.ndarray):
        raise TilingError(f"tiles must be a numpy array, got {type(tiles).__name__}")
    if channels_first:
        if tiles.ndim != 4 or tiles.shape[2:] != (t, t):
            raise TilingError(
                f"with channels_first=True tiles must be (N, C, {t}, {t}), got {tiles.shape}; "
                "pass channels_first=False for (N, t, t[, C]) tiles"
            )
        tiles = np.moveaxis(tiles, 1, -1)
    elif tiles.ndim not in (3, 4) or tiles.shape[1:3] != (t, t):
        hint = " (for (N, C, t, t) pass channels_first=True)" if tiles.ndim == 4 and tiles.shape[2:] == (t, t) else ""
        raise TilingError(f"tiles must be (N, {t}, {t}) or (N, {t}, {t}, C), got {tiles.shape}{hint}")
    if tiles.shape[0] != plan.n_tiles:
        raise TilingError(
            f"got {tiles.shape[0]} tiles but the plan for {plan.image_shape} has {plan.n_tiles}; "
            "untile needs every tile of the frame, in plan order"
        )
    extra = tiles.shape[3:]
    window = blend_window(t)
    if extra:
        window = window[:, :, None]
    ph, pw = plan.padded_shape
    acc = np.zeros((ph, pw) + extra, dtype=np.float32)
    weight = np.zeros((ph, pw) + (1,) * len(extra), dtype=np.float32)
    for tile_out, (y, x) in zip(tiles, plan.origins):
        acc[y : y + t, x : x + t] += tile_out.astype(np.float32, copy=False) * window
        weight[y : y + t, x : x + t] += window
    h, w = plan.image_shape
    out = acc[:h, :w] / weight[:h, :w]
    if channels_first:
        out = np.moveaxis(out, -1, 0)
    return np.ascontiguousarray(out, dtype=np.float32)
