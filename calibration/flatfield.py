"""Flat-field correction: dark and bright references → per-pixel (per-column for line-scan) offset and gain.

    corrected = (raw - dark) * mean(bright - dark) / (bright - dark)        clipped to 0..255, rounded (dithered)

``dark`` and ``bright`` are the means of several captures (lens capped / a uniform bright target at the working
exposure); a line-scan camera's references are also averaged over their lines, giving one value per column.
Pixels whose signal ``bright - dark`` is tiny (dead pixels, dust on the sensor) would get a huge gain; instead
they (line-scan: dead columns) take the mean of their nearest good neighbours in the row, and are counted. The
residual non-uniformity is the column profile's (mean over the lines) standard deviation over its mean, in %, of a
flat capture before and after correction.

>>> darks = [np.full((4, 6), 10, np.uint8)] * 2
>>> bright = np.full((4, 6), 210, np.uint8); bright[:, :3] = 110  # the left half is lit half as much
>>> ff, info = build_flatfield(darks, [bright])
>>> info["signal_mean"], info["dead_pixels"], info["gain_range"]
(150.0, 0, [0.75, 1.5])
>>> ff.apply(bright)[0].tolist()  # a uniform target comes out uniform
[150, 150, 150, 150, 150, 150]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from calibration.errors import CalibrationError, ProfileMismatch
from engines.evaluate import write_figure

SATURATED = 250  # a bright reference whose mean is above this clips: lower the light or exposure


@dataclass(frozen=True, eq=False)
class FlatField:
    """``corrected = (raw - offset) * gain`` (float32 arrays shaped like a frame, or one line for line-scan)."""

    offset: np.ndarray
    gain: np.ndarray
    line_scan: bool = False
    dead: np.ndarray | None = None  # bool, (W,) for line-scan or (H, W): pixels replaced by their row neighbours

    def __post_init__(self) -> None:
        if self.offset.shape != self.gain.shape:
            raise CalibrationError(f"flat-field offset {self.offset.shape} and gain {self.gain.shape} differ")
        spatial = self.gain.shape[:1] if self.line_scan else self.gain.shape[:2]
        dead = np.zeros(spatial, bool) if self.dead is None else np.asarray(self.dead, bool)
        if dead.shape != spatial:
            raise CalibrationError(f"flat-field dead-pixel map {dead.shape} does not fit the gain {self.gain.shape}")
        object.__setattr__(self, "dead", dead)
        object.__setattr__(self, "_fill", _neighbours(dead) if dead.any() else None)
        object.__setattr__(self, "_dither_rows", {})

    @property
    def width(self) -> int:
        return int(self.gain.shape[1] if not self.line_scan else self.gain.shape[0])

    def check(self, image: np.ndarray) -> None:
        """Raise :class:`ProfileMismatch` when ``image`` does not have the frame shape this correction is for."""
        want = self.gain.shape
        got = image.shape[1:] if self.line_scan else image.shape
        if tuple(got) != tuple(want):
            if self.line_scan:
                raise ProfileMismatch(f"the flat-field is for {want[0]} px per line"
                                      f"{f' × {want[1]} channels' if len(want) > 1 else ''}, the image is "
                                      f"{image.shape[1]} px wide{_channels(image)}")
            raise ProfileMismatch(f"the flat-field is for {want[1]}×{want[0]}{_channels_of(want)} frames, the image "
                                  f"is {image.shape[1]}×{image.shape[0]}{_channels(image)}")

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The corrected uint8 image (same shape)."""
        if image.dtype != np.uint8:
            raise CalibrationError(f"flat-field needs uint8 frames, got {image.dtype}")
        self.check(image)
        out = image.astype(np.float32)
        out -= self.offset
        out *= self.gain
        if self._fill is not None:  # dead pixels (line-scan: columns) take the mean of their good row neighbours
            rows, cols, left, right = self._fill
            if self.line_scan:
                out[:, cols] = (out[:, left] + out[:, right]) * np.float32(0.5)
            else:
                out[rows, cols] = (out[rows, left] + out[rows, right]) * np.float32(0.5)
        out += self._dither(image)
        np.clip(out, 0, 255, out=out)
        return out.astype(np.uint8)  # truncation of values >= 0 after the dither: unbiased rounding

    def _dither(self, image: np.ndarray) -> np.ndarray:
        """The rounding offsets for a frame of ``image``'s shape (cached per shape; see :func:`dither_table`)."""
        key = image.shape
        table = self._dither_rows.get(key)
        if table is None:
            base = dither_table(image.shape[1])
            table = np.tile(base, (-(-image.shape[0] // len(base)), 1))[: image.shape[0]]
            if image.ndim == 3:
                table = np.repeat(table[:, :, None], image.shape[2], axis=2)
            self._dither_rows.clear()
            self._dither_rows[key] = table = np.ascontiguousarray(table)
        return table


DITHER_ROWS = 64


def dither_table(width: int, rows: int = DITHER_ROWS) -> np.ndarray:
    """Fixed rounding offsets ``(rows, width)`` float32: each column holds ``(i + 0.5) / rows`` for i < rows in a
    seeded random order. Rounding the corrected (float) image to uint8 by ``floor(x + offset)`` instead of
    ``floor(x + 0.5)`` is unbiased on average down every column: a plain rounding of integer input scaled by a
    gain close to 1 errs by nearly the same fraction on every line of a column, which would draw new column
    stripes of up to ±0.5 grey level (about 1 % on a dark screen) into the corrected image."""
    rng = np.random.default_rng(20261122)
    levels = (np.arange(rows, dtype=np.float32) + np.float32(0.5)) / np.float32(rows)
    return np.stack([rng.permutation(levels) for _ in range(width)], 1).astype(np.float32)


def _neighbours(dead: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, left, right)`` of every dead pixel: its nearest good pixel to the left and to the right in
    its row (the other one where a side has none). ``dead`` is (W,) or (H, W); rows are 0 for (W,)."""
    grid = dead[None, :] if dead.ndim == 1 else dead
    w = grid.shape[1]
    idx = np.broadcast_to(np.arange(w), grid.shape)
    left = np.maximum.accumulate(np.where(grid, -1, idx), axis=1)
    right = np.minimum.accumulate(np.where(grid, w, idx)[:, ::-1], axis=1)[:, ::-1]
    left = np.where(left < 0, right, left)
    right = np.where(right >= w, left, right)
    rows, cols = np.nonzero(grid)
    lft, rgt = left[rows, cols], right[rows, cols]
    if (lft >= w).any() or (lft < 0).any():
        raise CalibrationError("a whole row of the flat-field references is dead; check the bright target")
    return rows, cols, lft, rgt


def _channels(image: np.ndarray) -> str:
    return f"×{image.shape[2]}" if image.ndim == 3 else ""


def _channels_of(shape: tuple[int, ...]) -> str:
    return f"×{shape[2]}" if len(shape) == 3 else ""


def _mean_stack(images: Sequence[np.ndarray], what: str) -> np.ndarray:
    if not images:
        raise CalibrationError(f"no {what} captures; pass at least one (several are better: they are averaged)")
    first = images[0].shape
    total = np.zeros(first, np.float64)
    for i, image in enumerate(images):
        if image.shape != first:
            raise CalibrationError(f"{what} capture {i + 1} is {image.shape[1]}×{image.shape[0]}, the first is "
                                   f"{first[1]}×{first[0]}: all captures must come from one camera setting")
        if image.dtype != np.uint8:
            raise CalibrationError(f"{what} capture {i + 1} is {image.dtype}; flat-field works on 8-bit captures")
        total += image
    return (total / len(images)).astype(np.float32)


def build_flatfield(darks: Sequence[np.ndarray], brights: Sequence[np.ndarray], line_scan: bool = False,
                    min_signal: float | None = None) -> tuple[FlatField, dict]:
    """The correction from dark and bright captures, and facts about it (dead pixels, signal level).

    ``min_signal`` (grey levels) is the smallest ``bright - dark`` a working pixel has; default: a tenth of
    the median signal. Raises :class:`CalibrationError` when darks and brights differ in size, the bright
    references are no brighter than the dark ones, or they are saturated."""
    dark = _mean_stack(darks, "dark")
    bright = _mean_stack(brights, "bright")
    if dark.shape != bright.shape:
        raise CalibrationError(f"dark captures are {dark.shape[1]}×{dark.shape[0]} but bright captures are "
                               f"{bright.shape[1]}×{bright.shape[0]}; take both with the same camera setting")
    if line_scan:
        dark, bright = dark.mean(axis=0), bright.mean(axis=0)
    signal = bright - dark
    median = float(np.median(signal))
    if median < 5:
        raise CalibrationError(f"the bright captures are only {median:.1f} grey levels above the dark ones; light "
                               "a uniform white target (or raise the exposure) for the bright references, and cap "
                               "the lens for the dark ones")
    if float(np.mean(bright)) > SATURATED or float(np.mean(bright >= 254.5)) > 0.01:
        raise CalibrationError(f"the bright captures are saturated (mean {float(np.mean(bright)):.0f}, "
                               f"{100 * float(np.mean(bright >= 254.5)):.1f} % of pixels at 255); lower the light or "
                               "the exposure until the brightest part stays below about 230")
    threshold = median / 10 if min_signal is None else float(min_signal)
    dead = signal < threshold
    if dead.ndim == (2 if line_scan else 3):  # colour: a pixel is dead when any of its channels is
        dead = dead.any(axis=-1)
    if dead.mean() > 0.05:
        raise CalibrationError(f"{100 * dead.mean():.1f} % of the pixels gain less than {threshold:.1f} grey levels "
                               "from dark to bright: the bright target does not fill the view or is unevenly lit; "
                               "fix the set-up and capture the references again")
    good = ~dead
    target = float(signal[good].mean())
    gain = np.ones_like(signal)
    gain[good] = target / signal[good]
    info = {"dark_frames": len(darks), "bright_frames": len(brights), "dark_mean": round(float(dark.mean()), 3),
            "bright_mean": round(float(bright.mean()), 3), "signal_mean": round(target, 3),
            "dead_pixels": int(dead.sum()), "min_signal": round(threshold, 3),
            "gain_range": [round(float(gain.min()), 4), round(float(gain.max()), 4)]}
    if dead.any():
        where = np.argwhere(dead)[:20]
        info["dead_pixel_list"] = [[int(v) for v in p] for p in where]
    return FlatField(dark.astype(np.float32), gain.astype(np.float32), bool(line_scan), dead), info


def column_profile(image: np.ndarray) -> np.ndarray:
    """Mean over the lines (rows) of each column; colour frames are averaged over their channels."""
    profile = image.astype(np.float64).mean(axis=0)
    return profile.mean(axis=1) if profile.ndim == 2 else profile


def nonuniformity(image: np.ndarray) -> dict[str, float]:
    """Residual non-uniformity of a capture of a uniform scene, in %: ``column`` = std / mean of the column
    profile (what striping and vignetting across the line do), ``row`` the same along the rows (area-scan
    vignetting), ``pixel`` = std / mean over all pixels (includes the read noise of one frame)."""
    data = image.astype(np.float64)
    if data.ndim == 3:
        data = data.mean(axis=2)
    col, row = data.mean(axis=0), data.mean(axis=1)
    mean = float(data.mean())
    if mean <= 0:
        raise CalibrationError("the check capture is black; capture a uniformly lit target")
    return {"column_pct": round(100 * float(col.std()) / mean, 4), "row_pct": round(100 * float(row.std()) / mean, 4),
            "pixel_pct": round(100 * float(data.std()) / mean, 4), "mean": round(mean, 3)}


def residual_report(flatfield: FlatField, check: np.ndarray) -> dict:
    """Non-uniformity of ``check`` (a flat capture) before and after correction, and the improvement factor
    of the column non-uniformity."""
    before = nonuniformity(check)
    after = nonuniformity(flatfield.apply(check))
    factor = before["column_pct"] / after["column_pct"] if after["column_pct"] > 0 else float("inf")
    return {"before": before, "after": after, "column_improvement": round(factor, 2)}


def save_profile_plot(check: np.ndarray, corrected: np.ndarray, path, title: str = "") -> None:
    """PNG of the column profiles of a flat capture before and after correction (relative to their means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before, after = column_profile(check), column_profile(corrected)
    nu_b, nu_a = nonuniformity(check)["column_pct"], nonuniformity(corrected)["column_pct"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(100 * (before / before.mean() - 1), lw=0.8, color="tab:red", label=f"before: {nu_b:.3f} % (std/mean)")
    ax.plot(100 * (after / after.mean() - 1), lw=0.8, color="tab:green", label=f"after: {nu_a:.3f} %")
    ax.set(xlabel="column (pixel along the line)", ylabel="column mean / frame mean - 1 (%)",
           title=title or "column non-uniformity of a flat capture, before and after flat-field")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    write_figure(fig, path)
