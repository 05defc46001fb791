"""The line's calibration profile: loaded for a recipe, checked against the line's engines and its camera.

What a profile does to frames and rules is :mod:`calibration.line` (:class:`~calibration.line.LineCalibration`);
this module is the station's side of it: the recipe's ``[calibration]`` table, the weights the line runs and the
camera it opens, with every problem raised as a :class:`~station.errors.RecipeError` that says what to do.
"""
from __future__ import annotations

import logging
from typing import Any

from calibration.errors import CalibrationError, ProfileMismatch, ProfileNotFound
from calibration.line import STEPS, LineCalibration, load_line_calibration
from engines.weights import resolve_weights
from inspection.judging import Judging
from inspection_core.errors import ImageReadError
from station.errors import RecipeError
from station.recipe import Recipe, SourceKind, load_recipe, shipped_recipe_path
from station.sources.replay import read_image

log = logging.getLogger(__name__)


def for_recipe(recipe: Recipe, engine=None, classifier=None) -> tuple[LineCalibration | None, Any]:
    """``(calibration, rules)`` for a recipe: its ``[calibration]`` profile loaded and checked against the
    engine's (and classifier's) weights, and the recipe's rules with the profile's ROI, scale and thresholds.
    Raises :class:`station.errors.RecipeError` saying what to do; a missing profile with ``required = false``
    gives ``(None, rules)`` and a warning. The classifier's thresholds are set per class when calibrated."""
    config = recipe.calibration
    rules = recipe.rules
    if config is None:
        return None, rules
    where = f"{recipe.path}: [calibration]"
    try:
        calibration = load_line_calibration(config.profile, config.root, flatfield=config.flatfield, roi=config.roi,
                                            thresholds=config.thresholds, units=config.units.value)
    except ProfileNotFound as exc:
        if config.required:
            raise RecipeError(f"{where} the station does not start without its calibration profile: {exc}; or set "
                              "required = false to run uncalibrated") from None
        log.warning("%s %s; running UNCALIBRATED (required = false)", where, exc)
        return None, rules
    except CalibrationError as exc:
        raise RecipeError(f"{where} {exc}") from None
    try:
        if engine is not None and calibration.thresholds is not None:
            calibration.check_weights(engine.weights_sha256, "segmentation")
        if classifier is not None and calibration.classifier_thresholds is not None:
            calibration.check_weights(resolve_weights(classifier.weights).sha256(), "classifier")
            per_class = calibration.classifier_threshold_map()
            missing = [c for c in classifier.classes if c not in per_class]
            if missing:
                raise CalibrationError(f"the classifier thresholds of {calibration.name} lack the classes {missing}")
            classifier.set_thresholds(per_class)
    except CalibrationError as exc:
        raise RecipeError(f"{where} {exc}") from None
    if rules.roi is not None and calibration.roi is not None:
        log.info("%s the profile's ROI %s replaces [rules] roi %s", where, calibration.roi, rules.roi)
    rules = calibration.rules_for(rules)
    if rules.min_area_mm2 is not None and rules.mm_per_px is None:
        raise RecipeError(f"{recipe.path}: [rules] min_area_mm2 needs a scale, but profile {calibration.name} holds "
                          f"none (or units = \"px\"); run `{STEPS['scale'].format(camera=calibration.profile.camera)}`"
                          ", or use min_area_px")
    log.info("calibration: %s", calibration.describe())
    return calibration, rules


def judging_for(recipe: Recipe, engine=None, classifier=None) -> Judging:
    """How a line running ``recipe`` judges parts: its tiling, its rules after its calibration profile (ROI, scale,
    thresholds; :func:`for_recipe`), its classifier stage and the profile. Every tool that judges "as the line
    does" (``station run``, ``engines verify``, the int8 guard of ``engines build``) takes this one object."""
    calibration, rules = for_recipe(recipe, engine, classifier)
    c = recipe.classifier
    source = f"{recipe.path}" + ("" if recipe.rule_from == "the recipe" else f", rule from {recipe.rule_from}")
    return Judging(rules=rules, overlap=recipe.tiling.overlap, batch=recipe.tiling.batch, classifier=classifier,
                   fail_on_labels=c.fail_on_labels if c is not None else True, calibration=calibration,
                   source=source)


def recipe_judging(name: str | None = None) -> Judging:
    """:func:`judging_for` a recipe named by file (``*.toml``) or shipped name (default ``magnetic_tile``), for the
    tools that judge as the line does without running one (``engines verify``, ``engines build --precision int8``)."""
    name = name or "magnetic_tile"
    return judging_for(load_recipe(name if str(name).endswith(".toml") else shipped_recipe_path(name)))


def source_geometry(recipe: Recipe, source) -> tuple[int | None, int | None, str | None]:
    """``(width, height, pixel format)`` of the frames ``source`` will deliver, as far as they can be known
    before the line starts (``None``: unknown; every frame is checked anyway). A source that can tell itself
    (``source.geometry()``, e.g. a GenICam camera, opened and closed again to read its node map) is asked."""
    s = recipe.source
    geometry = getattr(source, "geometry", None)
    if callable(geometry):
        return geometry()
    if s.kind is SourceKind.REPLAY:
        for path in getattr(source, "files", ())[:20]:
            try:
                image = read_image(path, grey=True)
            except ImageReadError:
                continue
            return int(image.shape[1]), int(image.shape[0]), "Mono8"
        return None, None, None
    if s.kind is SourceKind.LINESCAN_REPLAY:
        if s.path is None:
            return int(s.screen_size[1]), None, "Mono8"
        try:
            image = read_image(s.path, grey=True)
            return int(image.shape[1]), None, "Mono8"
        except ImageReadError:
            return None, None, None
    return None, None, s.pixel_format


def check_source(recipe: Recipe, source, calibration: LineCalibration | None) -> None:
    """Refuse to start when the camera does not fit the profile (width, height, pixel format), saying what
    differs and which ``calibration`` command to run."""
    if calibration is None:
        return
    width, height, fmt = source_geometry(recipe, source)
    try:
        calibration.profile.check_fits(width, height, fmt, what=f"the camera ({source.name})")
    except ProfileMismatch as exc:
        raise RecipeError(f"{recipe.path}: [calibration] {exc}") from None
