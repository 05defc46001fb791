"""What the seeded synthetic generators (:mod:`engines.data.synthetic_lens`, :mod:`engines.data.synthetic_screen`)
share: spec checks, seeds, fast normal noise, drawing coordinates, the defect-placement rule, and the writing of a
data-set folder.

Every helper draws from the caller's ``numpy.random.Generator`` in a fixed order, so a seed gives the same bytes
whichever generator calls it (the generators' tests pin checksums of their images).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from statistics import NormalDist
from typing import Callable, Iterable, Sequence

import numpy as np

from engines.errors import InputError

SHIFT = 3  # cv2 sub-pixel bits of every drawing call
SCALE = 1 << SHIFT

#: 256 equiprobable quantiles of N(0, 1): normal noise from random bytes, ~4x faster than standard_normal.
NORMAL_LUT = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)


# ------------------------------------------------------------------------------------------------ checks
def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_range(owner: str, name: str, value, lo: float, hi: float, integer: bool = False) -> None:
    """``owner.name`` must be a pair ``(a, b)`` with ``lo <= a <= b <= hi`` (ints when ``integer``)."""
    ok = isinstance(value, tuple) and len(value) == 2 and all(is_number(v) for v in value)
    if ok and integer:
        ok = all(isinstance(v, int) for v in value)
    if not ok or not lo <= value[0] <= value[1] <= hi:
        raise InputError(f"{owner}.{name} must be a ({'int' if integer else 'number'}) pair lo <= hi within "
                         f"[{lo}, {hi}], got {value!r}")


def check_int(name: str, value, low: int) -> None:
    """``value`` must be an int (numpy ints too, not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name} must be an int >= {low}, got {value!r}")


def item_seed(seed: int, index: int) -> int:
    """Seed of item ``index`` in the data set written with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------ drawing
def normal_noise(rng: np.random.Generator, shape: tuple[int, int], lut: np.ndarray = NORMAL_LUT) -> np.ndarray:
    """``shape`` float32 values of ``lut`` (default: N(0, 1) quantiles) indexed by random bytes."""
    return lut[np.frombuffer(rng.bytes(shape[0] * shape[1]), np.uint8).reshape(shape)]


def fixed_point(points: np.ndarray, x0: float, y0: float) -> np.ndarray:
    """``(x, y)`` points relative to ``(x0, y0)`` as cv2's sub-pixel int32 polygon (``SHIFT`` bits)."""
    return np.rint((points - (x0, y0)) * SCALE).astype(np.int32).reshape(-1, 1, 2)


def clipped_box(h: int, w: int, px: float, py: float, half_x: float, half_y: float) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the box ``half_x`` / ``half_y`` around ``(px, py)``, clipped to an ``h`` × ``w``
    image."""
    x0, x1 = max(0, int(math.floor(px - half_x))), min(w, int(math.ceil(px + half_x)) + 1)
    y0, y1 = max(0, int(math.floor(py - half_y))), min(h, int(math.ceil(py + half_y)) + 1)
    return y0, y1, x0, x1


def offsets(y0: int, y1: int, x0: int, x1: int, px: float, py: float) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``x - px`` (a row) and ``y - py`` (a column) over the box, for broadcasting."""
    return (np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(px),
            np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(py))


# ------------------------------------------------------------------------------------------------ defects
def defect_plan(rng: np.random.Generator, spec) -> tuple[int, np.ndarray]:
    """How many defects a sample gets (0 with probability ``spec.defect_free_prob``, else ``spec.defect_count``
    lo..hi) and the class probabilities (``spec.class_weights`` normalised)."""
    defective = rng.random() >= spec.defect_free_prob
    n_defects = int(rng.integers(spec.defect_count[0], spec.defect_count[1] + 1)) if defective else 0
    return n_defects, np.asarray(spec.class_weights, float) / sum(spec.class_weights)


def claim_pixels(areas: list[int], instances: np.ndarray, labelled: np.ndarray, n_px: int,
                 min_area: int) -> list[int] | None:
    """The defects' areas after a new defect of ``n_px`` pixels takes the ``labelled`` pixels of ``instances``
    (1-based ids of the earlier defects), or None when it would leave an earlier one fewer than ``min_area``."""
    taken = np.bincount(instances[labelled], minlength=len(areas) + 1)[1:]
    if any(a - t < min_area for a, t in zip(areas, taken)):
        return None
    return [a - int(t) for a, t in zip(areas, taken)] + [n_px]


def bbox_of(ys: np.ndarray, xs: np.ndarray, x0: int = 0, y0: int = 0) -> list[int]:
    """``[x, y, w, h]`` of pixel coordinates (offset by ``x0``, ``y0``)."""
    return [int(xs.min()) + x0, int(ys.min()) + y0, int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


# ------------------------------------------------------------------------------------------------ data sets
def write_png(path: Path, array: np.ndarray) -> None:
    """Write a grey (or BGR) uint8 array as a PNG, safe for non-ASCII paths (the data sets' writer)."""
    import cv2

    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"cannot encode {path}")
    buf.tofile(str(path))


def prepare_folder(out_dir: str | Path, ours: Callable[[Path], bool], what: str, generator: str,
                   images: Iterable[tuple[str, str]], files: Sequence[str]) -> Path:
    """Make ``out_dir`` ready for a data set: new, empty, or one written by ``generator`` before (``ours``), whose
    ``images`` (``(folder, glob)`` pairs) and ``files`` are removed. Anything else is refused with a message."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not ours(out):
            raise InputError(f"{out} is not empty and is not a {what} written by {generator}; "
                             "refusing to write into it — give a new or empty folder")
        for folder, pattern in images:
            for p in (out / folder).glob(pattern) if (out / folder).is_dir() else ():
                p.unlink()
        for name in files:
            (out / name).unlink(missing_ok=True)
    return out


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A UTF-8 CSV with ``\\n`` line ends (the same bytes on every platform)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
