"""The classifier stage: a multi-label classifier (GR, paper 001) on large patches of each frame.

>>> classifier = PatchClassifier("runs/gr-tiles", patch=1024, mode="batch")     # doctest: +SKIP
>>> labels, patches = classifier.classify(frame.image)                          # doctest: +SKIP

The frame is cut into ``patch``-sided squares by the station's tiler (:func:`inspection_core.tiling.plan_tiles` and
:func:`~inspection_core.tiling.tile_image`: the last row / column shifted back to the border, frames smaller than one
patch padded), every patch is resized to the network's input size, and a class is present in a patch when its
score is above ``threshold``. The part's labels are the union of its patches' labels; the patch grid (row, col,
pixel origin and side) is the coarse location.

Batch definition: in mode ``"batch"`` the patches of one part are GR's batch (the paper's image-wise relations
relate the patches of the same part); a part with more than :data:`MAX_BATCH` patches is scored in chunks of
``MAX_BATCH``, and the relations then span each chunk only. In mode ``"bank"`` every patch is scored against the
reference bank stored with the weights, so a patch's labels do not depend on the other patches of the frame.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from inspection_core.preprocess import normalize_tiles
from inspection_core.tiling import plan_tiles, tile_image
from station.errors import RecipeError

MODES = ("batch", "bank")
MAX_BATCH = 32  # patches per forward pass; GR's relations span one chunk


class PatchClassifier:
    """A trained multi-label classifier run on an engine (ONNX Runtime on the CPU by default, loaded by manifest
    like the segmentation engine: :func:`engines.backends.base.load_engine`) over the patches of a frame.

    ``weights`` is a weights folder, a shipped name or an engine folder built for a classifier
    (``engines build --weights runs/gr --mode bank``); in mode ``"bank"`` the engine is GR exported against its
    reference bank, in mode ``"batch"`` GR's relations span each chunk of :data:`MAX_BATCH` patches."""

    def __init__(self, weights: str, patch: int = 1024, overlap: int = 0, threshold: float = 0.5,
                 mode: str = "batch", threads: int = 0, backend: str = "onnxruntime", device: str = "cpu",
                 precision: str = "fp32") -> None:
        from engines.backends.base import load_engine
        from engines.errors import EngineError
        from engines.weights import WeightsError, resolve_weights

        if mode not in MODES:
            raise RecipeError(f"[classifier] mode {mode!r} is not allowed; use one of {', '.join(MODES)}")
        if not (isinstance(patch, int) and patch >= 1 and isinstance(overlap, int) and 0 <= overlap < patch):
            raise RecipeError(f"[classifier] patch = {patch!r}, overlap = {overlap!r}: need patch >= 1 and "
                              "0 <= overlap < patch")
        try:
            bundle = resolve_weights(weights)
        except WeightsError as exc:
            raise RecipeError(f"[classifier] weights: {exc}") from None
        classes = bundle.info.get("classes")
        if not classes:
            raise RecipeError(f"[classifier] weights {weights!r} hold a {bundle.model!r} model without a class list "
                              "in their training record: not a classifier; train one with `engines train gr` "
                              "(the segmentation weights belong in [engine])")
        try:
            self.engine = load_engine(weights, backend=backend, threads=threads, device=device, precision=precision,
                                      mode=mode)
        except (WeightsError, ValueError) as exc:
            if "reference bank" in str(exc):
                raise RecipeError(f"[classifier] mode = \"bank\", but the {bundle.model!r} weights {weights!r} store "
                                  "no reference bank; use mode = \"batch\" or weights trained with a bank") from None
            raise RecipeError(f"[classifier] weights: {exc}") from None
        except EngineError as exc:
            raise RecipeError(f"[classifier] {exc}") from None
        built_mode = (self.engine.manifest or {}).get("mode")
        if built_mode and built_mode != mode:
            raise RecipeError(f"[classifier] mode = \"{mode}\", but the engine folder {weights!r} was built for mode "
                              f"\"{built_mode}\"; set mode = \"{built_mode}\" or build one with --mode {mode}")
        self.weights = str(weights)
        self.model_name = bundle.model
        self.classes: tuple[str, ...] = tuple(str(c) for c in classes)
        self.spec = bundle.input_spec()
        self.size = bundle.tile
        self.patch, self.overlap, self.threshold, self.mode = patch, overlap, float(threshold), mode

    @property
    def engine_id(self) -> str:
        return self.engine.engine_id

    def score_patches(self, patches: np.ndarray, batch: int = MAX_BATCH) -> np.ndarray:
        """Per-label probabilities ``(N, C)`` float32 of uint8 patches (any side: resized to the network's input
        as in training), scored ``batch`` at a time (in mode "batch" GR's relations span each chunk)."""
        from engines.evaluate_cls import resize_images

        out = np.zeros((len(patches), len(self.classes)), np.float32)
        for start in range(0, len(patches), batch):
            x = normalize_tiles(resize_images(patches[start:start + batch], self.size, self.spec), self.spec)
            out[start:start + len(x)] = self.engine.infer(x)
        return out

    def set_thresholds(self, per_class: dict[str, float]) -> None:
        """One threshold per class (e.g. chosen by ``calibration thresholds``) instead of one for all: a class is
        present in a patch when its score is above its own threshold."""
        self.threshold = np.array([float(per_class[c]) for c in self.classes], np.float32)

    def scores(self, image: np.ndarray):
        """The tile plan of ``image`` and the per-patch class probabilities ``(N, C)`` float32."""
        plan = plan_tiles(image.shape, self.patch, self.overlap)
        return plan, self.score_patches(tile_image(image, plan))

    def classify(self, image: np.ndarray) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        """``(labels, patches)``: the union of the patches' labels in class order, and one dict per patch
        (row-major) with ``row``, ``col``, ``y``, ``x``, ``size``, ``labels`` and ``scores`` (class → score)."""
        return self.summarize(*self.scores(image))

    def summarize(self, plan, scores: np.ndarray) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        """:meth:`classify`'s answer from a tile plan and its patches' scores ``(N, C)`` in plan order (the
        streaming inspector scores the patches row by row as a part arrives, then summarizes here)."""
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
