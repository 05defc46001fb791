"""The classifier stage: a multi-label classifier (GR, paper 001) run on an engine over large patches of a frame.

>>> import numpy as np
>>> from inspection_core.preprocess import InputSpec
>>> class Constant:  # an engine that scores every patch 0.9 "scratch", 0.1 "dust"
...     engine_id = "constant@numpy"
...     def infer(self, x):
...         return np.tile(np.float32([0.9, 0.1]), (len(x), 1))
>>> stage = ClassifierStage(Constant(), classes=("scratch", "dust"), spec=InputSpec(), size=32, patch=64)
>>> labels, patches = stage.classify(np.zeros((100, 150), np.uint8))
>>> labels, len(patches), patches[-1]["row"], patches[-1]["col"], patches[-1]["labels"]
(('scratch',), 6, 1, 2, ['scratch'])

The frame is cut into ``patch``-sided squares by the tiler (:func:`inspection_core.tiling.plan_tiles` and
:func:`~inspection_core.tiling.tile_image`: the last row / column shifted back to the border, frames smaller than one
patch padded), every patch is resized to the network's input side (:func:`inspection_core.preprocess.resize_to_input`,
as in training), and a class is present in a patch when its score is above ``threshold``. The part's labels are the
union of its patches' labels; the patch grid (row, col, pixel origin and side) is the coarse location. ``patch = 0``
(:data:`WHOLE_FRAME`) classifies the whole frame as one image, resized to the network's input as whole-image training
resizes it (``engines train gr`` on magnetic-tile), once all of its lines are in; its one "patch" is the frame.

Batch definition: in mode ``"batch"`` the patches of one part are GR's batch (the paper's image-wise relations
relate the patches of the same part); a part with more than :data:`MAX_BATCH` patches is scored in chunks of
``MAX_BATCH``, and the relations then span each chunk only. In mode ``"bank"`` every patch is scored against the
reference bank stored with the weights, so a patch's labels do not depend on the other patches of the frame.

The patches are cut and scored one patch row at a time by :class:`PatchRows`, the classifier's part of the one
scoring path (:mod:`inspection.scoring`): :meth:`ClassifierStage.classify` feeds it a whole frame at once, the
inspector a streamed line-scan part row by row as it arrives, and both send GR the same chunks.

Loading the stage from weights by a recipe's ``[classifier]`` table is the station's job
(:class:`station.classify.PatchClassifier`); this module only needs an engine that follows
:class:`inspection_core.engine.Engine`.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from inspection.errors import InspectionError
from inspection.scoring import NetworkCall, RowStage, RowTiming
from inspection_core.engine import Engine
from inspection_core.preprocess import InputSpec, normalize_tiles, resize_to_input
from inspection_core.tiling import TilePlan, plan_tiles, tile_image
from inspection_core.defaults import DEFAULT_LABEL_THRESHOLD

MODES = ("batch", "bank")
MAX_BATCH = 32  # patches per forward pass; GR's relations span one chunk
WHOLE_FRAME = 0  # ``patch`` value: the whole frame is the classifier's one image


class ClassifierStage:
    """Patches of a frame scored on ``engine`` (probabilities ``(N, C)`` per patch) and turned into labels.

    ``classes`` are the engine's outputs in order, ``spec`` and ``size`` the network's input layout and side,
    ``patch`` / ``overlap`` the patch grid on the frame (``patch`` 0: the whole frame is one image), ``threshold``
    one score threshold for all classes (or one per class, :meth:`set_thresholds`), ``mode`` ``"batch"`` or
    ``"bank"`` (see the module docstring)."""

    def __init__(self, engine: Engine, classes: Sequence[str], spec: InputSpec, size: int, patch: int = 1024,
                 overlap: int = 0, threshold: float = DEFAULT_LABEL_THRESHOLD, mode: str = "batch") -> None:
        self.engine = engine
        self.classes: tuple[str, ...] = tuple(str(c) for c in classes)
        self.spec = spec
        self.size = size
        self.patch, self.overlap, self.threshold, self.mode = patch, overlap, float(threshold), mode

    @property
    def engine_id(self) -> str:
        return self.engine.engine_id

    def score_patches(self, patches: np.ndarray, batch: int = MAX_BATCH) -> np.ndarray:
        """Per-label probabilities ``(N, C)`` float32 of uint8 patches (any side: resized to the network's input
        as in training), scored ``batch`` at a time (in mode "batch" GR's relations span each chunk)."""
        out = np.zeros((len(patches), len(self.classes)), np.float32)
        for start in range(0, len(patches), batch):
            x = normalize_tiles(resize_to_input(patches[start:start + batch], self.size, self.spec), self.spec)
            out[start:start + len(x)] = self.engine.infer(x)
        return out

    def set_thresholds(self, per_class: dict[str, float]) -> None:
        """One threshold per class (e.g. chosen by ``calibration thresholds``) instead of one for all: a class is
        present in a patch when its score is above its own threshold."""
        self.threshold = np.array([float(per_class[c]) for c in self.classes], np.float32)

    def rows(self, eager: bool = False) -> PatchRows:
        """The patches of one frame or part, to be cut row by row (:class:`PatchRows`); ``eager``: a part still
        arriving, whose rows are scored as soon as they are cut in mode "bank"."""
        return PatchRows(self, eager)

    def scores(self, image: np.ndarray) -> tuple[TilePlan, np.ndarray]:
        """The tile plan of ``image`` and the per-patch class probabilities ``(N, C)`` float32."""
        rows = self.rows()
        rows.advance(image, last=True)
        return rows.scored(image)

    def classify(self, image: np.ndarray) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        """``(labels, patches)``: the union of the patches' labels in class order, and one dict per patch
        (row-major) with ``row``, ``col``, ``y``, ``x``, ``size``, ``labels`` and ``scores`` (class → score)."""
        rows = self.rows()
        rows.advance(image, last=True)
        return rows.finish(image)

    def summarize(self, plan: TilePlan, scores: np.ndarray) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        """:meth:`classify`'s answer from a tile plan and its patches' scores ``(N, C)`` in plan order."""
        ys = sorted({y for y, _ in plan.origins})
        xs = sorted({x for _, x in plan.origins})
        present = scores > self.threshold
        patches = []
        for i, (y, x) in enumerate(plan.origins):
            patches.append({
                "row": ys.index(y), "col": xs.index(x), "y": int(y), "x": int(x), "size": plan.tile,
                "labels": [c for c, on in zip(self.classes, present[i]) if on],
                "scores": {c: round(float(s), 4) for c, s in zip(self.classes, scores[i])},
            })
        union = present.any(axis=0) if len(present) else np.zeros(len(self.classes), bool)
        return tuple(c for c, on in zip(self.classes, union) if on), patches


class PatchRows(RowStage):
    """The classifier's patches of one frame or part, cut one patch row at a time (:mod:`inspection.scoring`) and
    scored in GR's chunks of :data:`MAX_BATCH` in plan order, so that in mode "batch" GR's relations span the same
    patches whether the frame came whole or row by row. ``eager`` (a part still arriving) in mode "bank", where a
    patch's scores do not depend on the others: each row is scored as soon as it is cut. ``seconds``: the stage's
    time (cutting, network calls, labels)."""

    name = "classify"

    def __init__(self, stage: ClassifierStage, eager: bool = False) -> None:
        super().__init__(stage.patch or 1, stage.overlap)  # WHOLE_FRAME: no rows, see advance
        self.stage, self.eager = stage, eager and stage.mode == "bank"
        self.pending: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.seconds = 0.0

    def advance(self, lines: np.ndarray, last: bool = False) -> None:
        if self.stage.patch != WHOLE_FRAME:
            return super().advance(lines, last)
        if last and not self.cut_rows:  # the whole frame, once, when its last line is in
            t0 = time.perf_counter()
            self.pending.append(np.asarray(lines))
            self._score(1)
            seconds = time.perf_counter() - t0
            self.seconds += seconds
            self.cut_rows.append(RowTiming(self.name, 0, 1, seconds, time.monotonic_ns()))

    def plan(self, shape: tuple[int, ...]) -> TilePlan:
        """The patch plan of a frame of ``shape``; with :data:`WHOLE_FRAME` one square at (0, 0) as wide as the
        frame's longer side."""
        if self.stage.patch == WHOLE_FRAME:
            h, w = int(shape[0]), int(shape[1])
            return TilePlan((h, w), max(h, w), 0, ((0, 0),))
        return plan_tiles(shape, self.stage.patch, self.stage.overlap)

    def cut(self, band: np.ndarray, y: int) -> int:
        t0 = time.perf_counter()
        plan = self.plan(band.shape)
        self.pending += list(tile_image(band, plan))
        if self.eager:
            self._score(len(self.pending))
        while len(self.pending) >= MAX_BATCH:
            self._score(MAX_BATCH)
        self.seconds += time.perf_counter() - t0
        return plan.n_tiles

    def _score(self, n: int) -> None:
        if n == 0:
            return
        t0 = time.perf_counter()
        patches, self.pending = np.stack(self.pending[:n]), self.pending[n:]
        self.scores.append(self.stage.score_patches(patches, batch=MAX_BATCH))
        self.calls.append(NetworkCall(self.name, n, time.perf_counter() - t0, time.monotonic_ns()))

    def scored(self, lines: np.ndarray) -> tuple[TilePlan, np.ndarray]:
        """The patch plan of the whole frame (``lines``: all of them, every row cut by now) and every patch's
        scores ``(N, C)`` in plan order, the pending patches scored now."""
        t0 = time.perf_counter()
        self._score(len(self.pending))
        plan = self.plan(lines.shape)
        scores = (np.concatenate(self.scores) if self.scores
                  else np.zeros((0, len(self.stage.classes)), np.float32))
        if len(scores) != plan.n_tiles:  # a bug, not a data problem: say so rather than mislabel patches
            raise InspectionError(f"scored {len(scores)} patches but the plan has {plan.n_tiles}")
        self.seconds += time.perf_counter() - t0
        return plan, scores

    def finish(self, lines: np.ndarray) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        """The frame's ``(labels, patches)`` (:meth:`ClassifierStage.classify`) once every row is cut."""
        plan, scores = self.scored(lines)
        t0 = time.perf_counter()
        out = self.stage.summarize(plan, scores)
        self.seconds += time.perf_counter() - t0
        return out
