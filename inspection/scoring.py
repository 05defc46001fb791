"""The one scoring path: prepare → tile → normalise → infer → stitch, one tile row at a time.

Every frame the :class:`~inspection.inspector.Inspector` judges is scored here by a :class:`PartScores`, the way a
line-scan part is scored while it arrives: the tile rows of the tiler (origins every ``tile - overlap`` lines, the last
one shifted back to end at the frame's border) are cut as soon as their lines are all in (:meth:`PartScores.advance`,
after every block of a streamed part), and the rows left when the last line is in (:meth:`PartScores.finish`). A frame
inspected whole is simply a part whose lines are all in at the finish. So both forms send the same tensors to the
networks in the same chunks (segmentation tiles in chunks of ``batch`` in plan order, the classifier's patches in GR's
chunks: :class:`inspection.classifier.PatchRows`), stitch them with the same sliding
:class:`~inspection_core.tiling.Stitcher` in the same order, and report the same stage timings (ms), in this order:

- ``prepare``: the engine's input layout and gain (:func:`~inspection_core.preprocess.prepare_image`);
- ``tile``: tiles cut and normalised for the engine;
- ``infer``: the segmentation engine;
- ``stitch``: the score map;
- ``classify``: the classifier stage (its patches, network calls and labels).

Weights that prepare whole frames (a frame-wide gain or mirrored borders, :func:`~inspection_core.preprocess.whole_frame`)
cannot cut a row before the last line is in: their rows are all cut at the finish, from the frame prepared and bordered
at once, and the score map loses the border again. Weights with a context pass (:attr:`InputSpec.context
<inspection_core.preprocess.InputSpec>`) score one more tile at the finish, the whole frame shrunk to it, and the
score map is the maximum of the tiles' and of that one grown back (counted in ``tile``, ``infer`` and ``stitch``).

>>> import numpy as np
>>> from inspection_core.preprocess import InputSpec
>>> class Bright:  # an engine: defect probability 1 where a pixel is brighter than 200
...     tile, spec, engine_id = 32, InputSpec(), "bright@numpy"
...     def infer(self, x):
...         p = (x[:, 0] * 0.25 + 0.5 > 200 / 255).astype(np.float32)
...         return np.stack([1 - p, p], axis=1)
>>> image = np.zeros((50, 70), np.uint8); image[40:45, 60:65] = 255
>>> part = PartScores(SegmentationRows(Bright(), overlap=8, batch=4, width=70))
>>> part.advance(image[:40])  # the first 40 lines are in: the row at line 0 is cut and scored
>>> [(r.y, r.tiles) for r in part.rows]
[(0, 3)]
>>> scores = part.finish(image)  # the rest: the last row, shifted back to end at line 50
>>> [(r.y, r.tiles) for r in part.rows], scores.mask.shape, float(scores.mask[42, 62])
([(0, 3), (18, 3)], (50, 70), 1.0)
>>> list(scores.timings)
['prepare', 'tile', 'infer', 'stitch']
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from inspection_core.engine import Engine
from inspection_core.preprocess import (
    add_border,
    context_map,
    context_tile,
    crop_border,
    defect_scores,
    normalize_tiles,
    prepare_image,
    whole_frame,
)
from inspection_core.tiling import Stitcher, plan_tiles, tile_image

#: ``checkpoint(tiles_done, tiles_total)``, called before each batch of segmentation tiles; it raises to stop the
#: inspection (a line's stop or time limit): a frame's inference can be cancelled between batches.
Checkpoint = Callable[[int, int], None]

#: The stage timings a scored frame reports, in this order (``calibrate`` comes before them, ``verdict`` after).
SCORE_STAGES = ("prepare", "tile", "infer", "stitch", "classify")


@dataclass(frozen=True)
class RowTiming:
    """One tile row cut by one stage: where, how many tiles, how long (the network calls it completed included),
    when it was done (monotonic ns)."""

    stage: str  # "segment" or "classify"
    y: int
    tiles: int
    seconds: float
    done_ns: int


@dataclass(frozen=True)
class NetworkCall:
    """One network call of a stage: how many tiles, how long, when it ended (monotonic ns)."""

    stage: str
    tiles: int
    seconds: float
    done_ns: int


class Scores(NamedTuple):
    """What the networks made of one frame: the stitched float32 defect-score map (zeros without a segmentation
    engine), the classifier's labels and patch grid, and the stage timings (ms, :data:`SCORE_STAGES`)."""

    mask: np.ndarray
    labels: tuple[str, ...]
    patches: list[dict[str, Any]]
    timings: dict[str, float]


def row_origins(height: int, tile: int, overlap: int) -> list[int]:
    """The tile-row origins of the whole-image plan for ``height`` lines."""
    return sorted({y for y, _ in plan_tiles((height, 1), tile, overlap).origins})


class TileRows:
    """Which tile rows of a stage are cut; the part's height is known only at its end."""

    def __init__(self, tile: int, overlap: int) -> None:
        self.tile, self.overlap, self.stride = tile, overlap, tile - overlap
        self.next = 0  # index k of the next regular row (origin k * stride)

    def ready(self, lines_in: int) -> list[int]:
        """Regular rows whose lines are all in and that are not cut yet. Every one of them belongs to the final
        plan whatever the height turns out to be (its origin k * stride <= height - tile)."""
        out = []
        while self.next * self.stride + self.tile <= lines_in:
            out.append(self.next * self.stride)
            self.next += 1
        return out

    def rest(self, height: int) -> list[int]:
        """The rows of the final plan not cut yet (the ones cut so far are a prefix of it); they count as cut."""
        origins = row_origins(height, self.tile, self.overlap)
        out, self.next = origins[self.next:], len(origins)
        return out


class RowStage:
    """A network stage fed one tile row at a time (:class:`SegmentationRows`, the classifier's
    :class:`~inspection.classifier.PatchRows`): which rows are cut, the rows cut and the network calls made."""

    name = "stage"

    def __init__(self, tile: int, overlap: int) -> None:
        self.rows = TileRows(tile, overlap)
        self.cut_rows: list[RowTiming] = []
        self.calls: list[NetworkCall] = []

    def advance(self, lines: np.ndarray, last: bool = False) -> None:
        """Cut (and score, as chunks fill) every row of ``lines`` (the part's lines so far) whose lines are all in;
        ``last``: the part is complete, every row left is cut (the last one shifted back to end at the border; a
        part shorter than a row is cut whole and padded)."""
        lines = self.input(lines, last)
        if lines is None:
            return
        tile = self.rows.tile
        for y in self.rows.rest(lines.shape[0]) if last else self.rows.ready(lines.shape[0]):
            t0 = time.perf_counter()
            n = self.cut(lines[y:y + tile] if lines.shape[0] >= tile else lines, y)
            self.cut_rows.append(RowTiming(self.name, y, n, time.perf_counter() - t0, time.monotonic_ns()))

    def input(self, lines: np.ndarray, last: bool) -> np.ndarray | None:
        """The lines the rows are cut from (None: none can be cut yet)."""
        return lines

    def cut(self, band: np.ndarray, y: int) -> int:
        """Cut the tile row at ``y`` from ``band`` (its lines), score what fills a chunk; the tiles cut."""
        raise NotImplementedError


class SegmentationRows(RowStage):
    """The segmentation engine's tiles of one frame ``width`` pixels wide: cut a row at a time, scored in chunks of
    ``batch`` in plan order, stitched as :func:`~inspection_core.tiling.untile` stitches them (the lines no later
    tile reaches are divided as soon as their row is cut; only those not divided yet are kept, a few tile heights).

    ``expected_lines`` sizes the score map (it grows when more lines come); ``checkpoint`` is called before each
    batch with the tiles scored so far and ``total`` (the frame's tiles, when known)."""

    name = "segment"

    def __init__(self, engine: Engine, overlap: int, batch: int, width: int, expected_lines: int | None = None,
                 checkpoint: Checkpoint | None = None, total: int = 0) -> None:
        super().__init__(engine.tile, overlap)
        self.engine, self.batch, self.tile, self.spec = engine, batch, engine.tile, engine.spec
        self.whole = whole_frame(self.spec)  # rows are cut from the whole frame prepared at once
        b = self.spec.border
        self.pending = np.empty((0, self.spec.channels, self.tile, self.tile), np.float32)
        self.pending_origins: list[tuple[int, int]] = []
        self.stitcher = Stitcher(self.tile, width + 2 * b, lines=(expected_lines or 4096) + 2 * b, sliding=True)
        self.last_row = -1  # origin of the last row cut
        self.height = 0  # lines of the image the rows are cut from (bordered), known at the finish
        self.checkpoint, self.total, self.scored = checkpoint, total, 0
        self.seconds = dict.fromkeys(SCORE_STAGES[:4], 0.0)
        self.plain: np.ndarray | None = None  # the prepared frame before its border (the context pass's input)

    def input(self, lines: np.ndarray, last: bool) -> np.ndarray | None:
        if not self.whole:
            return lines  # each row is prepared when it is cut
        if not last:
            return None  # a frame-wide gain, mirrored borders and the context pass need the whole frame
        t0 = time.perf_counter()
        self.plain = prepare_image(lines, self.spec)
        prepared = add_border(self.plain, self.spec)
        self.seconds["prepare"] += time.perf_counter() - t0
        return prepared

    def cut(self, band: np.ndarray, y: int) -> int:
        t0 = time.perf_counter()
        prepared = band if self.whole else prepare_image(band, self.spec)
        t1 = time.perf_counter()
        plan = plan_tiles(prepared.shape[:2], self.tile, self.rows.overlap)
        tiles = normalize_tiles(tile_image(prepared, plan), self.spec)
        self.pending = np.concatenate([self.pending, tiles]) if len(self.pending) else tiles
        self.pending_origins += [(y + oy, ox) for oy, ox in plan.origins]
        self.last_row = y
        self.seconds["prepare"] += t1 - t0
        self.seconds["tile"] += time.perf_counter() - t1
        while len(self.pending) >= self.batch:
            self._score(self.batch)
        self._divide(min(self.pending_origins[0][0] if self.pending_origins else self.last_row + 1,
                         self.last_row + 1))
        return plan.n_tiles

    def _score(self, n: int) -> None:
        if self.checkpoint is not None:
            self.checkpoint(self.scored, self.total)
        chunk, self.pending = self.pending[:n], self.pending[n:]
        origins, self.pending_origins = self.pending_origins[:n], self.pending_origins[n:]
        t0 = time.perf_counter()
        scores = defect_scores(self.engine.infer(np.ascontiguousarray(chunk)))
        t1 = time.perf_counter()
        self.calls.append(NetworkCall(self.name, n, t1 - t0, time.monotonic_ns()))
        self.scored += n
        for tile_out, (y, x) in zip(scores, origins):
            self.stitcher.add(tile_out, y, x)
        self.seconds["infer"] += t1 - t0
        self.seconds["stitch"] += time.perf_counter() - t1

    def _divide(self, upto: int) -> None:
        """Divide the lines up to ``upto`` (no tile still to come reaches them) into the score map."""
        t0 = time.perf_counter()
        self.stitcher.divide(upto)
        self.seconds["stitch"] += time.perf_counter() - t0

    def finish(self, lines: np.ndarray) -> np.ndarray:
        """The frame's score map (``lines``: all of them, every row cut by now): what is pending is scored and the
        rest of the map divided."""
        height = lines.shape[0] + 2 * self.spec.border
        if len(self.pending):
            self._score(len(self.pending))
        self._divide(height)
        t0 = time.perf_counter()
        mask = crop_border(self.stitcher.result(height), self.spec)
        self.seconds["stitch"] += time.perf_counter() - t0
        if self.spec.context:
            mask = np.maximum(mask, self._context(lines.shape))
        return mask

    def _context(self, shape: tuple[int, ...]) -> np.ndarray:
        """The context pass: the whole prepared frame shrunk to one tile, scored, its map grown back to ``shape``."""
        if self.checkpoint is not None:
            self.checkpoint(self.scored, self.total)
        t0 = time.perf_counter()
        x = normalize_tiles(context_tile(self.plain, self.tile)[None], self.spec)
        t1 = time.perf_counter()
        scores = defect_scores(self.engine.infer(x))[0]
        t2 = time.perf_counter()
        self.calls.append(NetworkCall(self.name, 1, t2 - t1, time.monotonic_ns()))
        self.scored += 1
        grown = context_map(scores, shape)
        self.seconds["tile"] += t1 - t0
        self.seconds["infer"] += t2 - t1
        self.seconds["stitch"] += time.perf_counter() - t2
        return grown


class PartScores:
    """The scores of one frame or line-scan part by an inspector's stages (the segmentation engine's
    :class:`SegmentationRows`, the classifier's :class:`~inspection.classifier.PatchRows`; either may be None):
    :meth:`advance` while its lines arrive, :meth:`finish` when they are all in. See the module docstring."""

    def __init__(self, segmentation: SegmentationRows | None = None, classification: Any = None) -> None:
        self.segmentation, self.classification = segmentation, classification
        self.stages: list[RowStage] = [s for s in (segmentation, classification) if s is not None]

    def advance(self, lines: np.ndarray) -> None:
        """Cut and score every tile row whose lines are all in (``lines``: the part's lines so far)."""
        for stage in self.stages:
            stage.advance(lines)

    def finish(self, lines: np.ndarray) -> Scores:
        """The scores once ``lines`` are all in: the rows left are cut, what is pending is scored, the score map
        stitched and the classifier's labels summarised."""
        for stage in self.stages:
            stage.advance(lines, last=True)
        seconds: dict[str, float] = {}
        if self.segmentation is not None:
            mask = self.segmentation.finish(lines)
            seconds.update(self.segmentation.seconds)
        else:
            mask = np.zeros(lines.shape[:2], np.float32)
        labels: tuple[str, ...] = ()
        patches: list[dict[str, Any]] = []
        if self.classification is not None:
            labels, patches = self.classification.finish(lines)
            seconds["classify"] = self.classification.seconds
        return Scores(mask, labels, patches, {k: v * 1e3 for k, v in seconds.items()})

    @property
    def rows(self) -> list[RowTiming]:
        """The rows cut so far by every stage, in the order they were cut."""
        return sorted((r for stage in self.stages for r in stage.cut_rows), key=lambda r: r.done_ns)

    @property
    def calls(self) -> list[NetworkCall]:
        """The network calls so far of every stage, in the order they ended."""
        return sorted((c for stage in self.stages for c in stage.calls), key=lambda c: c.done_ns)
