"""Image guards applied before any tiling: size limits, bit depth, implausible frames.

>>> guard = FrameGuard(min_width=32, min_height=32, max_width=16384, max_height=65536)
>>> guard.refuse(Frame(np.zeros((48, 64), np.uint8), 1, 0, "doc")) is None  # None: inspect it
True
>>> refused = guard.refuse(Frame(np.zeros((16, 64), np.uint8), 2, 0, "doc"))  # or the NotInspected record saying why
>>> refused.reason.value, refused.detail
('too_small', '64x16 px, below the minimum 32x32 ([frames] min_width, min_height)')
>>> to_8bit(np.array([[4080]], np.uint16), bit_depth=12)
array([[255]], dtype=uint8)

Deep images (16-bit files with 10, 12 or 16 significant bits; Mono10/12/14/16 camera frames) are scaled to the
8 bits the engines take by their real bit depth: shifted right by ``bit_depth - 8``, so a 12-bit image holding an
8-bit one times 16 gives back exactly that 8-bit image. Values above the bit depth saturate at 255 (and are
reported), never wrap around.

A frame the station cannot judge never passes: all black, saturated, or deep data read at the wrong bit depth (a
16-bit file whose values never exceed 4095 read at ``bit_depth = 16`` is 12-bit data, near black in 8 bits) is
``implausible``, and the recipe's ``[frames] implausible`` says what becomes of it (NOT_INSPECTED by default).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from inspection_core.records import Defect, Frame, InspectionResult, NotInspected, NotInspectedReason, Verdict
from station.recipe import DEFAULT_MAX_INSPECT_S, ImplausiblePolicy

log = logging.getLogger(__name__)

#: A frame whose brightest sampled pixel is at most this is "all black" (lens cap, light off, no part).
BLACK_LEVEL = 8
#: A frame with at least this share of sampled pixels at 255 is "saturated" (over-exposed).
SATURATED_SHARE = 0.9


def to_8bit(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """``image`` as ``uint8``: 8-bit images as they are; deeper ones shifted right by ``bit_depth - 8`` and clipped
    (values beyond ``bit_depth`` bits saturate). ``bit_depth`` is 8..16."""
    if not 8 <= int(bit_depth) <= 16:
        raise ValueError(f"bit_depth must be 8..16, got {bit_depth}")
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise ValueError(f"cannot scale a {image.dtype} image to 8 bits; images are uint8 or uint16")
    shifted = image >> np.uint16(int(bit_depth) - 8)
    return np.ascontiguousarray(np.minimum(shifted, 255).astype(np.uint8))


def beyond_depth(image: np.ndarray, bit_depth: int) -> bool:
    """True when a 16-bit image holds values above ``bit_depth`` bits (the recipe's bit depth is too small)."""
    return image.dtype == np.uint16 and int(image.max(initial=0)) >= (1 << int(bit_depth))


def depth_hint(raw_max: int, bit_depth: int) -> str | None:
    """What a 16-bit image's largest value says of its real depth, when it is at least 4 bits below ``bit_depth``
    (its 8-bit image then holds at most 15): e.g. ``depth_hint(2240, 16)`` is "values never exceed 4095: 12-bit
    data read as 16-bit; set [frames] bit_depth = 12". None when the data fills its range plausibly."""
    bits = max(8, int(raw_max).bit_length())
    if bits > int(bit_depth) - 4:
        return None
    return (f"values never exceed {(1 << bits) - 1}: {bits}-bit data read as {int(bit_depth)}-bit; set [frames] "
            f"bit_depth = {bits}")


def implausible(image: np.ndarray, hint: str | None = None) -> str | None:
    """Why a frame is almost certainly not a part the station can judge (all black, saturated; with ``hint``, from
    :func:`depth_hint`, deep data read at the wrong depth), or None.

    Judged on every 4th pixel of every 4th row, so it costs little on large frames."""
    sample = image[::4, ::4]
    if sample.size == 0:
        return None
    brightest = int(sample.max())
    if brightest <= BLACK_LEVEL:
        return f"implausible frame: all black (brightest pixel {brightest})" + (f"; {hint}" if hint else "")
    if hint:
        return f"implausible frame: dark (brightest pixel {brightest}); {hint}"
    share = float(np.count_nonzero(sample >= 255)) / sample.size
    if share >= SATURATED_SHARE:
        return f"implausible frame: saturated ({share:.0%} of the pixels at 255)"
    return None


def implausible_failure(frame: Frame, detail: str, engine_id: str) -> InspectionResult:
    """The FAIL result of a frame the station cannot judge (``[frames] implausible = "fail"``), made without
    inference: an all-zero score map and one ``implausible`` defect over the whole frame."""
    h, w = frame.image.shape[:2]
    defect = Defect(label="implausible", bbox=(0, 0, w, h), area_px=w * h,
                    centroid=(round((w - 1) / 2, 2), round((h - 1) / 2, 2)), mean_score=1.0, max_score=1.0)
    return InspectionResult(frame=frame, mask=np.zeros((h, w), np.float32), defects=(defect,), verdict=Verdict.FAIL,
                            engine_id=engine_id, timings={"total": 0.0},
                            latency_ms=(time.monotonic_ns() - frame.timestamp_ns) / 1e6)


@dataclass(frozen=True)
class FrameGuard:
    """Size limits (pixels, inclusive) a frame must meet before it is tiled; see :meth:`refuse`."""

    min_width: int = 32
    min_height: int = 32
    max_width: int = 16384
    max_height: int = 65536
    on_implausible: ImplausiblePolicy = ImplausiblePolicy.NOT_INSPECTED
    max_inspect_s: float = DEFAULT_MAX_INSPECT_S  # 0: no limit
    tile_ms: float | None = None  # None: the time per tile measured on the line

    @classmethod
    def from_config(cls, config) -> FrameGuard:
        """From a recipe's :class:`station.recipe.FramesConfig`."""
        return cls(config.min_width, config.min_height, config.max_width, config.max_height,
                   ImplausiblePolicy(config.implausible), float(config.max_inspect_s), config.tile_ms)

    def implausible(self, frame: Frame) -> str | None:
        """Why ``frame`` cannot be judged (:func:`implausible`, with the source's ``meta["depth_hint"]``), or None.
        A part already known to be incomplete (``meta["gaps"]`` / ``meta["issues"]``) fails for that: None."""
        if frame.meta.get("gaps") or frame.meta.get("issues"):
            return None
        image = frame.image
        if not isinstance(image, np.ndarray) or image.size == 0:
            return None
        return implausible(image, frame.meta.get("depth_hint"))

    def too_slow(self, frame: Frame, tiles: int, tile_s: float | None, measured: bool = True) -> NotInspected | None:
        """The ``too_slow`` record of a frame whose ``tiles`` would take longer than ``max_inspect_s`` at
        ``tile_s`` seconds each (``tile_ms`` when the recipe sets it), or None (also when no time per tile is
        known yet, or there is no limit). ``measured``: how ``tile_s`` was found, for the detail."""
        if self.tile_ms is not None:
            tile_s, how = self.tile_ms / 1e3, "[frames] tile_ms"
        else:
            how = "measured on this line" if measured else "measured on its first batch"
        if not self.max_inspect_s or tile_s is None or tiles * tile_s <= self.max_inspect_s:
            return None
        h, w = frame.image.shape[:2]
        return NotInspected.of(frame, NotInspectedReason.TOO_SLOW,
                               f"{w}x{h} px is {tiles} tiles at {tile_s * 1e3:.1f} ms each ({how}): about "
                               f"{tiles * tile_s:.0f} s of inference, more than [frames] max_inspect_s = "
                               f"{self.max_inspect_s:g} s; refuse such frames by size with smaller [frames] "
                               "max_width/max_height, allow more time with a larger max_inspect_s (0 = no limit), "
                               "or run a faster backend")

    def refuse(self, frame: Frame) -> NotInspected | None:
        """The NOT_INSPECTED record of a frame that must not be inspected (too small, too large, incomplete), or
        None to inspect it. Line-scan parts (``meta["part"]``) are not refused: they were tiled while they
        arrived, their length is capped by the source, and missing lines fail them as "incomplete" defects."""
        if "part" in frame.meta:
            return None
        image = frame.image
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
            shape = getattr(image, "shape", None)
            return NotInspected.of(frame, NotInspectedReason.TOO_SMALL, f"no image data (shape {shape})")
        height, width = image.shape[:2]
        if width < self.min_width or height < self.min_height:
            return NotInspected.of(frame, NotInspectedReason.TOO_SMALL,
                                   f"{width}x{height} px, below the minimum {self.min_width}x{self.min_height} "
                                   "([frames] min_width, min_height)")
        if width > self.max_width or height > self.max_height:
            return NotInspected.of(frame, NotInspectedReason.TOO_LARGE,
                                   f"{width}x{height} px, above the maximum {self.max_width}x{self.max_height} "
                                   "([frames] max_width, max_height)")
        if frame.meta.get("incomplete"):  # an area-scan buffer that came short (zero-padded)
            return NotInspected.of(frame, NotInspectedReason.INCOMPLETE,
                                   "the camera delivered a short buffer (zero-padded)")
        return None
