"""What the running line takes from a calibration profile: flat-field, ROI, scale and decision thresholds.

The recipe's ``[calibration]`` table names the profile; :func:`load_line_calibration` reads it and says plainly
what is missing. Each part is used when the table asks for it (``true``: the profile must hold it), ignored when
it says ``false``, and used when present when it says nothing. The :class:`~station.inspector.Inspector` calls
:meth:`LineCalibration.prepare` on every frame (geometry check, then flat-field, before tiling); the ROI, the
scale and the thresholds go into the decision rules (:meth:`LineCalibration.rules_for`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from calibration.errors import CalibrationError, ProfileMismatch
from calibration.flatfield import FlatField
from calibration.profile import Profile, ProfileStore, pixel_format_of
from calibration.roi import roi_from_dict

UNITS = ("auto", "mm", "px")
_STEP = {"flatfield": "calibration flatfield --camera {camera} --dark DARK --bright BRIGHT",
         "roi": "calibration roi --camera {camera} --image REFERENCE --kind lens|screen",
         "scale": "calibration scale --camera {camera} --image TARGET --pattern COLSxROWS --pitch-mm P",
         "thresholds": "calibration thresholds --camera {camera} --weights W --data VALIDATION --escape-rate R"}


@dataclass(frozen=True, eq=False)
class LineCalibration:
    """The parts of one profile version the line applies (``None``: not used)."""

    profile: Profile
    flatfield: FlatField | None = None
    roi: Any = None  # inspection_core.verdict.RoiCircle | RoiRect
    mm_per_px: tuple[float, float] | None = None  # (x, y)
    thresholds: Mapping[str, Any] | None = None
    classifier_thresholds: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.profile.name

    def describe(self) -> str:
        parts = [name for name, value in (("flat-field", self.flatfield), ("ROI", self.roi),
                                          ("scale", self.mm_per_px), ("thresholds", self.thresholds),
                                          ("classifier thresholds", self.classifier_thresholds)) if value is not None]
        return f"{self.name} ({', '.join(parts) or 'nothing applied'}; camera {self.profile.geometry.describe()})"

    def fits(self, image: np.ndarray, pixel_format: str | None = None) -> bool:
        """True when ``image`` has the camera's frame geometry (line-scan: its width) and pixel format (the
        frame's ``meta["pixel_format"]`` when the source gives one, else its layout: grey Mono8, RGB8)."""
        fmt = pixel_format or pixel_format_of(image)
        return not self.profile.geometry.differences(image.shape[1], image.shape[0], fmt)

    def correct(self, image: np.ndarray) -> np.ndarray:
        """Flat-field ``image`` (unchanged without a flat-field)."""
        return image if self.flatfield is None else self.flatfield.apply(image)

    def prepare(self, frame) -> np.ndarray:
        """The frame's image checked against the profile and flat-fielded: what the tiler gets. Raises
        :class:`ProfileMismatch` naming what differs."""
        image = frame.image
        fmt = frame.meta.get("pixel_format") or pixel_format_of(image)
        if not self.fits(image, fmt):
            where = f"frame {frame.frame_id}" + (f" ({frame.file})" if frame.file else "")
            self.profile.check_fits(image.shape[1], image.shape[0], fmt, what=where)
        try:
            return self.correct(image)
        except ProfileMismatch as exc:  # e.g. grey references, colour frames
            raise ProfileMismatch(f"calibration profile {self.name}: {exc}; take the flat-field references with the "
                                  "camera set up as on the line") from None

    def rules_for(self, rules, roi: bool = True):
        """The recipe's decision rules with this profile's ROI, scale and segmentation thresholds."""
        changes: dict[str, Any] = {}
        if self.roi is not None and roi:
            changes["roi"] = self.roi
        if self.mm_per_px is not None:
            changes["mm_per_px"] = self.mm_per_px
        if self.thresholds is not None:
            changes["score_threshold"] = float(self.thresholds["score_threshold"])
            changes["min_area_px"] = int(self.thresholds["min_area_px"])
            if getattr(rules, "min_area_mm2", None) is not None:
                changes["min_area_mm2"] = None  # the calibrated operating point's minimum area wins
        return replace(rules, **changes) if changes else rules

    def check_weights(self, sha256: str, what: str = "segmentation") -> None:
        """Refuse thresholds chosen for other weights than those the line runs."""
        section = self.thresholds if what == "segmentation" else self.classifier_thresholds
        if section is not None and section.get("weights_sha256") not in (None, sha256):
            raise CalibrationError(
                f"the {what} thresholds of {self.name} were chosen for the weights {section.get('weights')!r} "
                f"(SHA-256 {str(section.get('weights_sha256'))[:12]}…), but the line runs other weights "
                f"({sha256[:12]}…); choose them again for these weights (`"
                f"{_STEP['thresholds'].format(camera=self.profile.camera)}`) or set thresholds = false in "
                "[calibration]")

    def classifier_threshold_map(self) -> dict[str, float] | None:
        if self.classifier_thresholds is None:
            return None
        return {name: float(c["threshold"]) for name, c in self.classifier_thresholds["classes"].items()}


def _use(flag: bool | None, present: bool, part: str, profile: Profile) -> bool:
    if flag is True and not present:
        raise CalibrationError(f"the recipe's [calibration] asks for {part}, but profile {profile.name} holds none; "
                               f"run `{_STEP[part].format(camera=profile.camera)}`, or set {part} = false")
    return present and flag is not False


def load_line_calibration(profile: str, root: str | Path | None = None, *, flatfield: bool | None = None,
                          roi: bool | None = None, thresholds: bool | None = None,
                          units: str = "auto") -> LineCalibration:
    """Read profile ``profile`` (``cam-A`` or ``cam-A@v3``) from the store at ``root`` and keep the parts asked
    for. ``units``: ``"mm"`` needs a scale in the profile, ``"px"`` ignores it, ``"auto"`` uses it when present."""
    if units not in UNITS:
        raise CalibrationError(f"units {units!r} is not allowed; use one of {', '.join(UNITS)}")
    prof = ProfileStore(root).load(profile)
    sections = prof.sections
    ff = None
    if _use(flatfield, "flatfield" in sections, "flatfield", prof):
        s = sections["flatfield"]
        ff = FlatField(prof.array(s["offset"]), prof.array(s["gain"]), bool(s.get("line_scan")),
                       prof.array(s["dead"]) if s.get("dead") else None)
        if ff.width != prof.geometry.width:
            raise ProfileMismatch(f"{prof.name}: the flat-field is {ff.width} px wide but the profile's camera is "
                                  f"{prof.geometry.width} px wide; the profile is damaged, calibrate again")
    region = None
    if _use(roi, "roi" in sections, "roi", prof):
        region = roi_from_dict(sections["roi"]["roi"])
    scale = None
    if units == "mm" and "scale" not in sections:
        raise CalibrationError(f"the recipe's [calibration] units = \"mm\" needs a scale, but profile {prof.name} "
                               f"holds none; run `{_STEP['scale'].format(camera=prof.camera)}`, or set units = "
                               "\"auto\" or \"px\"")
    if units != "px" and "scale" in sections:
        s = sections["scale"]
        scale = (float(s["mm_per_px_x"]), float(s["mm_per_px_y"]))
    seg = cls = None
    if _use(thresholds, "thresholds" in sections or "classifier_thresholds" in sections, "thresholds", prof):
        seg = sections.get("thresholds")
        cls = sections.get("classifier_thresholds")
    return LineCalibration(prof, ff, region, scale, seg, cls)


# ------------------------------------------------------------------------------------------ station start-up
def for_recipe(recipe, engine=None, classifier=None) -> tuple[LineCalibration | None, Any]:
    """``(calibration, rules)`` for a recipe: its ``[calibration]`` profile loaded and checked against the
    engine's (and classifier's) weights, and the recipe's rules with the profile's ROI, scale and thresholds.
    Raises :class:`station.errors.RecipeError` saying what to do; a missing profile with ``required = false``
    gives ``(None, rules)`` and a warning. The classifier's thresholds are set per class when calibrated."""
    import logging

    from calibration.errors import ProfileNotFound
    from station.errors import RecipeError

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
        logging.getLogger(__name__).warning("%s %s; running UNCALIBRATED (required = false)", where, exc)
        return None, rules
    except CalibrationError as exc:
        raise RecipeError(f"{where} {exc}") from None
    try:
        if engine is not None and calibration.thresholds is not None:
            calibration.check_weights(engine.weights_sha256, "segmentation")
        if classifier is not None and calibration.classifier_thresholds is not None:
            from engines.weights import resolve_weights

            calibration.check_weights(resolve_weights(classifier.weights).sha256(), "classifier")
            per_class = calibration.classifier_threshold_map()
            missing = [c for c in classifier.classes if c not in per_class]
            if missing:
                raise CalibrationError(f"the classifier thresholds of {calibration.name} lack the classes {missing}")
            classifier.set_thresholds(per_class)
    except CalibrationError as exc:
        raise RecipeError(f"{where} {exc}") from None
    if rules.roi is not None and calibration.roi is not None:
        logging.getLogger(__name__).info("%s the profile's ROI %s replaces [rules] roi %s", where, calibration.roi,
                                         rules.roi)
    rules = calibration.rules_for(rules)
    if rules.min_area_mm2 is not None and rules.mm_per_px is None:
        raise RecipeError(f"{recipe.path}: [rules] min_area_mm2 needs a scale, but profile {calibration.name} holds "
                          f"none (or units = \"px\"); run `{_STEP['scale'].format(camera=calibration.profile.camera)}`"
                          ", or use min_area_px")
    logging.getLogger(__name__).info("calibration: %s", calibration.describe())
    return calibration, rules


def source_geometry(recipe, source) -> tuple[int | None, int | None, str | None]:
    """``(width, height, pixel format)`` of the frames ``source`` will deliver, as far as they can be known
    before the line starts (``None``: unknown; every frame is checked anyway). A GenICam camera is opened and
    closed again to read its node map."""
    from station.recipe import SourceKind

    s = recipe.source
    geometry = getattr(source, "geometry", None)
    if callable(geometry):  # a source that can tell (width, height, pixel format) itself
        return geometry()
    if s.kind is SourceKind.REPLAY:
        from station.sources.replay import read_image

        for path in getattr(source, "files", ())[:20]:
            try:
                image = read_image(path, grey=True)
            except (OSError, ValueError):
                continue
            return int(image.shape[1]), int(image.shape[0]), "Mono8"
        return None, None, None
    if s.kind is SourceKind.LINESCAN_REPLAY:
        if s.path is None:
            return int(s.screen_size[1]), None, "Mono8"
        from station.sources.replay import read_image

        try:
            image = read_image(s.path, grey=True)
            return int(image.shape[1]), None, "Mono8"
        except (OSError, ValueError):
            return None, None, None
    from station.sources import GenICamSource

    if not isinstance(source, GenICamSource):
        return None, None, s.pixel_format
    source.open()  # Line.start opens it again; a camera that cannot open fails here as it would there
    try:  # the opened acquirer's node map (GenICamSource has no public geometry yet)
        with source._io_lock:
            node_map = source._ia.remote_device.node_map
            width, height = int(node_map.Width.value), int(node_map.Height.value)
            fmt = str(node_map.PixelFormat.value) if hasattr(node_map, "PixelFormat") else s.pixel_format
        return width, height, fmt
    except Exception:  # noqa: BLE001 - unknown here: every frame is still checked
        return None, None, s.pixel_format
    finally:
        source.close()


def check_source(recipe, source, calibration: LineCalibration | None, streaming: bool = False) -> None:
    """Refuse to start when the camera does not fit the profile (width, height, pixel format), saying what
    differs and which ``calibration`` command to run. ``streaming``: the line-scan streaming inspector, which
    must apply the flat-field itself."""
    from station.errors import RecipeError

    if calibration is None:
        return
    if streaming and calibration.flatfield is not None:
        import inspect as pyinspect

        from station.streaming import StreamingInspector

        if "calibration" not in pyinspect.signature(StreamingInspector.__init__).parameters:
            raise RecipeError(f"{recipe.path}: [calibration] profile {calibration.name} holds a flat-field, but the "
                              "streaming line-scan inspector of this version does not apply one; set flatfield = "
                              "false in [calibration] (the ROI, scale and thresholds still apply)")
    width, height, fmt = source_geometry(recipe, source)
    try:
        calibration.profile.check_fits(width, height, fmt, what=f"the camera ({source.name})")
    except ProfileMismatch as exc:
        raise RecipeError(f"{recipe.path}: [calibration] {exc}") from None
