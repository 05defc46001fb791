"""The classifier stage: a multi-label classifier (GR, paper 001) on large patches of each frame.

>>> classifier = PatchClassifier("runs/gr-tiles", patch=1024, mode="batch")     # doctest: +SKIP
>>> labels, patches = classifier.classify(frame.image)                          # doctest: +SKIP

The frame is cut into ``patch``-sided squares by the station's tiler (:func:`station.tiling.plan_tiles` and
:func:`~station.tiling.tile_image`: the last row / column shifted back to the border, frames smaller than one
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

from station.errors import RecipeError
from station.tiling import plan_tiles, tile_image

MODES = ("batch", "bank")
MAX_BATCH = 32  # patches per forward pass; GR's relations span one chunk


class PatchClassifier:
    """A trained multi-label classifier run with torch on the CPU over the patches of a frame."""

    def __init__(self, weights: str, patch: int = 1024, overlap: int = 0, threshold: float = 0.5,
                 mode: str = "batch", threads: int = 0) -> None:
        from engines.evaluate_cls import has_bank, has_relations
        from engines.weights import WeightsError, load_model, resolve_weights

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
        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            self.model = load_model(bundle)
        except WeightsError as exc:
            raise RecipeError(f"[classifier] weights: {exc}") from None
        if mode == "bank" and has_relations(self.model) and not has_bank(self.model):
            raise RecipeError(f"[classifier] mode = \"bank\", but the {bundle.model!r} weights {weights!r} store no "
                              "reference bank; use mode = \"batch\" or weights trained with a bank")
        self.weights = str(weights)
        self.model_name = bundle.model
        self.classes: tuple[str, ...] = tuple(str(c) for c in classes)
        self.spec = bundle.input_spec()
        self.size = bundle.tile
        self.patch, self.overlap, self.threshold, self.mode = patch, overlap, float(threshold), mode

    def set_thresholds(self, per_class: dict[str, float]) -> None:
        """One threshold per class (e.g. chosen by ``calibration thresholds``) instead of one for all: a class is
        present in a patch when its score is above its own threshold."""
        self.threshold = np.array([float(per_class[c]) for c in self.classes], np.float32)

    def scores(self, image: np.ndarray):
        """The tile plan of ``image`` and the per-patch class probabilities ``(N, C)`` float32."""
        from engines.evaluate_cls import predict

        plan = plan_tiles(image.shape, self.patch, self.overlap)
        patches = tile_image(image, plan)
        return plan, predict(self.model, patches, self.size, self.spec, mode=self.mode, batch=MAX_BATCH)

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
