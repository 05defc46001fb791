"""What an inspector takes from a calibration profile: flat-field, ROI, scale and decision thresholds.

The recipe's ``[calibration]`` table names the profile; :func:`load_line_calibration` reads it and says plainly
what is missing. Each part is used when the table asks for it (``true``: the profile must hold it), ignored when
it says ``false``, and used when present when it says nothing. The :class:`~inspection.inspector.Inspector` calls
:meth:`LineCalibration.prepare` on every frame (geometry check, then flat-field, before tiling; streaming:
:meth:`LineCalibration.check` and :meth:`LineCalibration.correct_rows` per block); the ROI, the scale and the
thresholds go into the decision rules (:meth:`LineCalibration.rules_for`).

Loading the profile for a recipe and checking it against the line's engines and camera is the station's part
(:mod:`station.line_calibration`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from calibration.errors import CalibrationError, ProfileMismatch
from calibration.flatfield import DITHER_ROWS, FlatField
from calibration.profile import Profile, ProfileStore, pixel_format_of
from calibration.roi import roi_from_dict

UNITS = ("auto", "mm", "px")
STEPS = {"flatfield": "calibration flatfield --camera {camera} --dark DARK --bright BRIGHT",
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

    def check(self, image: np.ndarray, pixel_format: str | None = None, what: str = "the image") -> None:
        """Raise :class:`ProfileMismatch` naming every difference when ``image`` (``what`` in the message) does
        not have the camera's frame geometry and pixel format (see :meth:`fits`)."""
        fmt = pixel_format or pixel_format_of(image)
        if not self.fits(image, fmt):
            self.profile.check_fits(image.shape[1], image.shape[0], fmt, what=what)

    def correct(self, image: np.ndarray) -> np.ndarray:
        """Flat-field ``image`` (unchanged without a flat-field)."""
        return image if self.flatfield is None else self.flatfield.apply(image)

    def correct_rows(self, lines: np.ndarray, start: int) -> np.ndarray:
        """Rows ``start ..`` of ``lines`` flat-fielded exactly as :meth:`correct` makes them in the whole image:
        the correction's rounding dither repeats every ``DITHER_ROWS`` rows, so the rows are corrected from the
        start of their period on (how a line-scan part is corrected block by block while it arrives)."""
        if self.flatfield is None:
            return lines[start:]
        first = start - start % DITHER_ROWS
        return self.correct(lines[first:])[start - first:]

    def prepare(self, frame) -> np.ndarray:
        """The frame's image checked against the profile and flat-fielded: what the tiler gets. Raises
        :class:`ProfileMismatch` naming what differs."""
        image = frame.image
        self.check(image, frame.meta.get("pixel_format"),
                   what=f"frame {frame.frame_id}" + (f" ({frame.file})" if frame.file else ""))
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
                f"{STEPS['thresholds'].format(camera=self.profile.camera)}`) or set thresholds = false in "
                "[calibration]")

    def classifier_threshold_map(self) -> dict[str, float] | None:
        if self.classifier_thresholds is None:
            return None
        return {name: float(c["threshold"]) for name, c in self.classifier_thresholds["classes"].items()}


def _use(flag: bool | None, present: bool, part: str, profile: Profile) -> bool:
    if flag is True and not present:
        raise CalibrationError(f"the recipe's [calibration] asks for {part}, but profile {profile.name} holds none; "
                               f"run `{STEPS[part].format(camera=profile.camera)}`, or set {part} = false")
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
                               f"holds none; run `{STEPS['scale'].format(camera=prof.camera)}`, or set units = "
                               "\"auto\" or \"px\"")
    if units != "px" and "scale" in sections:
        s = sections["scale"]
        scale = (float(s["mm_per_px_x"]), float(s["mm_per_px_y"]))
    seg = cls = None
    if _use(thresholds, "thresholds" in sections or "classifier_thresholds" in sections, "thresholds", prof):
        seg = sections.get("thresholds")
        cls = sections.get("classifier_thresholds")
    return LineCalibration(prof, ff, region, scale, seg, cls)
