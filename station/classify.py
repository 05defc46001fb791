"""The recipe's classifier stage (``[classifier]``): a multi-label classifier (GR, paper 001) loaded from weights.

For example, with trained GR weights in ``runs/gr-tiles``::

    classifier = PatchClassifier("runs/gr-tiles", patch=1024, mode="batch")
    labels, patches = classifier.classify(frame.image)

What the stage does with a frame (patches, batches of GR, labels, the patch grid) is
:class:`inspection.classifier.ClassifierStage`; this module loads it by weights like the segmentation engine
(:func:`engines.backends.base.load_engine`) and says in the recipe's words what is wrong with them.
"""
from __future__ import annotations

from engines.backends.base import load_engine
from engines.errors import EngineError
from engines.weights import WeightsError, resolve_weights
from inspection.classifier import MAX_BATCH, MODES, ClassifierStage
from inspection.judging import learned_where
from station.errors import RecipeError
from inspection_core.defaults import DEFAULT_LABEL_THRESHOLD

__all__ = ["MAX_BATCH", "MODES", "PatchClassifier"]


class PatchClassifier(ClassifierStage):
    """A trained multi-label classifier run on an engine (ONNX Runtime on the CPU by default, loaded by manifest
    like the segmentation engine: :func:`engines.backends.base.load_engine`) over the patches of a frame.

    ``weights`` is a weights folder, a shipped name or an engine folder built for a classifier
    (``engines build --weights runs/gr --mode bank``); in mode ``"bank"`` the engine is GR exported against its
    reference bank, in mode ``"batch"`` GR's relations span each chunk of :data:`MAX_BATCH` patches.

    ``threshold`` None (the recipe sets none): the label threshold of each class that ``engines accept --classifier``
    learned and wrote into the weights' ``config.json`` (``judging.label_thresholds``) if it did, else
    :data:`~inspection_core.defaults.DEFAULT_LABEL_THRESHOLD`; ``threshold_from`` says which."""

    def __init__(self, weights: str, patch: int = 1024, overlap: int = 0, threshold: float | None = None,
                 mode: str = "batch", threads: int = 0, backend: str = "onnxruntime", device: str = "cpu",
                 precision: str = "fp32") -> None:
        if mode not in MODES:
            raise RecipeError(f"[classifier] mode {mode!r} is not allowed; use one of {', '.join(MODES)}")
        if not (isinstance(patch, int) and patch >= 0 and isinstance(overlap, int)
                and 0 <= overlap < max(patch, 1)):
            raise RecipeError(f"[classifier] patch = {patch!r}, overlap = {overlap!r}: need patch >= 1 and "
                              "0 <= overlap < patch, or patch = 0 (the whole frame) and overlap = 0")
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
            engine = load_engine(weights, backend=backend, threads=threads, device=device, precision=precision,
                                 mode=mode)
        except (WeightsError, ValueError) as exc:
            if "reference bank" in str(exc):
                raise RecipeError(f"[classifier] mode = \"bank\", but the {bundle.model!r} weights {weights!r} store "
                                  "no reference bank; use mode = \"batch\" or weights trained with a bank") from None
            raise RecipeError(f"[classifier] weights: {exc}") from None
        except EngineError as exc:
            raise RecipeError(f"[classifier] {exc}") from None
        built_mode = (engine.manifest or {}).get("mode")
        if built_mode and built_mode != mode:
            raise RecipeError(f"[classifier] mode = \"{mode}\", but the engine folder {weights!r} was built for mode "
                              f"\"{built_mode}\"; set mode = \"{built_mode}\" or build one with --mode {mode}")
        rule = bundle.judging_rule() or {}
        learned = rule.get("label_thresholds") if threshold is None else None
        super().__init__(engine, classes, bundle.input_spec(), bundle.tile, patch=patch, overlap=overlap,
                         threshold=DEFAULT_LABEL_THRESHOLD if threshold is None else threshold, mode=mode)
        self.threshold_from = "the recipe" if threshold is not None else "the default"
        if learned:
            missing = [c for c in classes if c not in learned]
            if missing:
                raise RecipeError(f"[classifier] the label thresholds in {bundle.path}/config.json lack the classes "
                                  f"{missing}; run `engines accept --classifier {weights}` again, or set threshold")
            self.set_thresholds(learned)
            self.threshold_from = learned_where("the weights' config.json", rule)
        self.weights = str(weights)
        self.model_name = bundle.model
