"""A second opinion (issue 25): a multi-label classifier's labels fused with the segmenter's verdict, by a rule
learned on a split's validation part only.

The fused verdict is the station's own rule (:func:`inspection_core.verdict.decide` with ``fail_on_labels``): a part
FAILs when the segmenter finds a defect *or* the classifier's stage gives it a label. What is learned is the label
threshold of each class, chosen so that the fused verdicts on the validation images make the fewest mistakes (the
highest F1, then the fewest errors); a class whose labels only add false alarms stays off (threshold 1.0: a score is
never above it). ``engines accept --classifier`` learns it, judges held-out once with it, and writes it into the
classifier weights' ``config.json`` (``judging.label_thresholds``), where the station's ``[classifier]`` stage reads
it when its recipe sets no ``threshold``.

The classifier is scored exactly as the line's stage scores it (:class:`inspection.classifier.ClassifierStage` on an
engine from :func:`engines.backends.base.load_engine`): ``patch = 0`` classifies the whole frame resized to the
network's input, as ``engines train gr`` trains on whole magnetic-tile images; a part's score of a class is the
highest of its patches'.

>>> import numpy as np
>>> seg = np.array([True, False, False, False])        # the segmenter fails image 0
>>> truth = np.array([True, True, False, False])       # image 1 is a miss the classifier can catch
>>> scores = np.array([[0.9, 0.1], [0.7, 0.2], [0.3, 0.8], [0.2, 0.1]], np.float32)
>>> rule = learn_label_thresholds(seg, truth, scores, ("uneven", "crack"), grid=(0.5, 0.6))
>>> rule["thresholds"]
{'uneven': 0.6, 'crack': 1.0}
>>> fused_verdicts(seg, scores, [rule["thresholds"][c] for c in ("uneven", "crack")]).tolist()
[True, True, False, False]
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from engines.evaluate import image_level_metrics

#: The label thresholds tried for each class, and OFF: a class at OFF never labels a part (scores are <= 1).
DEFAULT_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9,
                0.95, 0.98)
OFF = 1.0
PASSES = 3  # rounds of choosing each class's threshold given the others'


def fused_verdicts(segmenter_fails, scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """FAIL (True) where the segmenter fails the image or any class's score is above its threshold."""
    scores = np.asarray(scores, np.float32).reshape(len(segmenter_fails), -1)
    return np.asarray(segmenter_fails, bool) | (scores > np.asarray(thresholds, np.float32)[None, :]).any(axis=1)


def _key(truth, predicted) -> tuple:
    m = image_level_metrics(list(truth), list(predicted))
    return m["f1"], -m["fp_fn"]


def learn_label_thresholds(segmenter_fails, truth, scores: np.ndarray, classes: Sequence[str],
                           grid: Sequence[float] = DEFAULT_GRID) -> dict:
    """The label threshold of each class that makes the fused verdicts (:func:`fused_verdicts`) best on these
    images: the highest image-level F1, then the fewest errors; a tie keeps the higher threshold (fewer labels).
    Classes start OFF and each is chosen given the others', :data:`PASSES` times over. Returns ``{"thresholds":
    {class: t}, "segmenter": metrics of the segmenter alone, "fused": metrics fused}``."""
    seg = np.asarray(segmenter_fails, bool)
    truth = np.asarray(truth, bool)
    scores = np.asarray(scores, np.float32).reshape(len(seg), len(classes))
    if len(seg) != len(truth):
        raise ValueError(f"{len(seg)} segmenter verdicts for {len(truth)} images")
    thresholds = [OFF] * len(classes)
    candidates = sorted({float(t) for t in grid} | {OFF}, reverse=True)  # high first: ties keep the higher one
    for _ in range(PASSES):
        changed = False
        for j in range(len(classes)):
            best_t, best = thresholds[j], _key(truth, fused_verdicts(seg, scores, thresholds))
            for t in candidates:
                trial = thresholds[:j] + [t] + thresholds[j + 1:]
                key = _key(truth, fused_verdicts(seg, scores, trial))
                if key > best:
                    best_t, best = t, key
            changed |= best_t != thresholds[j]
            thresholds[j] = best_t
        if not changed:
            break
    return {"thresholds": {c: float(t) for c, t in zip(classes, thresholds)},
            "segmenter": image_level_metrics(list(truth), list(seg)),
            "fused": image_level_metrics(list(truth), list(fused_verdicts(seg, scores, thresholds)))}


def fusion_notes(thresholds: Mapping[str, float], data_classes: Sequence[str]) -> list[str]:
    """What a user of ``engines accept --classifier`` should know about the rule learned: no label switched on (the
    fused verdict is the segmenter's), or a classifier whose classes are not the data's defect classes (its labels
    then speak of other defects; fusion may still use them as a second opinion)."""
    notes = []
    if all(t >= OFF for t in thresholds.values()):
        notes.append("no label helped on validation: every label stays off (threshold 1.0), so the fused verdict is "
                     "the segmenter's")
    foreign = sorted(set(thresholds) - set(data_classes))
    if data_classes and foreign:
        notes.append(f"the classifier's classes {sorted(thresholds)} are not all the data's defect classes "
                     f"{sorted(data_classes)} ({', '.join(foreign)} are not); train it on this data "
                     "(`engines train gr --data ...`) for labels that name these defects")
    return notes


def classifier_scores(weights: str | Path, images, patch: int = 0, overlap: int = 0, mode: str = "bank",
                      backend: str = "onnxruntime", threads: int = 0) -> tuple[tuple[str, ...], np.ndarray]:
    """``(classes, scores (N, C))``: each image scored by the classifier ``weights`` as the line's ``[classifier]``
    stage scores it with this ``patch``/``overlap``/``mode`` (a class's score is the highest of the image's
    patches')."""
    from engines.backends.base import load_engine
    from engines.evaluate_cls import classifier_bundle
    from inspection.classifier import ClassifierStage

    bundle, classes = classifier_bundle(weights)
    engine = load_engine(weights, backend=backend, threads=threads, mode=mode)
    try:
        stage = ClassifierStage(engine, classes, bundle.input_spec(), bundle.tile, patch=patch, overlap=overlap,
                                mode=mode)
        out = np.zeros((len(images), len(classes)), np.float32)
        for i, image in enumerate(images):
            _, patch_scores = stage.scores(image)
            out[i] = patch_scores.max(axis=0)
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    return tuple(classes), out
