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
  sum divided by the sum of weights, so seams do not show and image borders still get weight; it is a
  :class:`Stitcher` fed every tile at once, the one the streaming inspector feeds row by row.
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


class Stitcher:
    """Stitches per-tile outputs into one ``float32`` image as they come, in plan order: :func:`untile` one tile at
    a time. It is the only stitcher: :func:`untile` adds every tile and divides once; the streaming inspector
    (:mod:`inspection.streaming`) adds each tile row while a part arrives and divides the lines no later tile can
    reach, so both give the same bits.

    Each pixel is the sum of ``tile output * window`` over the tiles covering it (added in plan order) divided by
    the sum of their windows (:func:`blend_window`). ``lines`` sizes the output (it grows when more lines come).
    ``sliding=True`` keeps only the lines not divided yet in the accumulators (a few tile heights), so a part of
    any length is stitched in bounded memory.

    >>> stitcher = Stitcher(tile=4, width=6, lines=4)
    >>> stitcher.add(np.ones((4, 4), np.float32), 0, 0); stitcher.add(np.ones((4, 4), np.float32), 0, 2)
    >>> stitcher.divide(4); stitcher.result(4).shape
    (4, 6)
    """

    def __init__(self, tile: int, width: int, *, lines: int = 0, channels: tuple[int, ...] = (),
                 sliding: bool = False) -> None:
        self.tile, self.width, self.sliding = tile, width, sliding
        self.padded_width = max(width, tile)
        window = blend_window(tile)
        self.window = window.reshape(window.shape + (1,) * len(channels))
        self.channels = tuple(channels)
        self.base = 0  # the accumulators hold lines base .. base + len - 1
        rows = 3 * tile if sliding else max(lines, tile)
        self.acc = np.zeros((rows, self.padded_width) + self.channels, np.float32)
        self.weight = np.zeros((rows, self.padded_width) + (1,) * len(self.channels), np.float32)
        self.top = 0  # one past the last line any added tile covers
        self.final = 0  # lines 0 .. final - 1 of the output are divided
        self.out = np.zeros((max(lines, 1), width) + self.channels, np.float32)

    def add(self, tile_out: np.ndarray, y: int, x: int) -> None:
        """Add one tile's output ``(t, t[, C])`` at origin ``(y, x)`` of the padded image (plan order)."""
        t = self.tile
        self._room(y + t)
        r = y - self.base
        self.acc[r:r + t, x:x + t] += tile_out.astype(np.float32, copy=False) * self.window
        self.weight[r:r + t, x:x + t] += self.window
        self.top = max(self.top, y + t)

    def _room(self, line: int) -> None:
        """Make the accumulators reach line ``line`` (exclusive)."""
        need = line - self.base
        if need <= self.acc.shape[0]:
            return
        rows = max(need, 2 * self.acc.shape[0])
        for name in ("acc", "weight"):
            old = getattr(self, name)
            new = np.zeros((rows,) + old.shape[1:], np.float32)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def divide(self, upto: int) -> None:
        """Divide lines ``final .. upto - 1`` into the output: call it only for lines no tile still to come
        reaches (every tile of the plan that covers them is added)."""
        if upto <= self.final:
            return
        if upto > self.out.shape[0]:
            grown = np.zeros((max(upto, 2 * self.out.shape[0]),) + self.out.shape[1:], np.float32)
            grown[: self.final] = self.out[: self.final]
            self.out = grown
        a, b = self.final - self.base, upto - self.base
        np.divide(self.acc[a:b, : self.width], self.weight[a:b, : self.width], out=self.out[self.final:upto])
        self.final = upto
        # sliding: drop the divided lines from the accumulators once they take up half of them
        if self.sliding and self.final - self.base > self.acc.shape[0] // 2:
            keep = max(0, self.top - self.final)
            shift = self.final - self.base
            for arr in (self.acc, self.weight):
                arr[:keep] = arr[shift:shift + keep]
                arr[keep:] = 0
            self.base = self.final

    def result(self, height: int) -> np.ndarray:
        """The stitched lines ``0 .. height - 1`` (all divided); a copy when the output buffer is much larger."""
        out = self.out[:height]
        return out.copy() if self.out.shape[0] > height * 5 // 4 else out


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
    h, w = plan.image_shape
    stitcher = Stitcher(t, w, lines=h, channels=tiles.shape[3:])
    for tile_out, (y, x) in zip(tiles, plan.origins):
        stitcher.add(tile_out, y, x)
    stitcher.divide(h)
    out = stitcher.result(h)
    if channels_first:
        out = np.moveaxis(out, -1, 0)
    return np.ascontiguousarray(out, dtype=np.float32)
