"""Image guards applied before any tiling: size limits, bit depth, implausible frames.

>>> guard = FrameGuard(min_width=32, min_height=32, max_width=16384, max_height=65536)
>>> guard.refuse(frame)            # None, or the NotInspected record saying why   # doctest: +SKIP
>>> to_8bit(np.array([[4080]], np.uint16), bit_depth=12)
array([[255]], dtype=uint8)

Deep images (16-bit files with 10, 12 or 16 significant bits; Mono10/12/14/16 camera frames) are scaled to the
8 bits the engines take by their real bit depth: shifted right by ``bit_depth - 8``, so a 12-bit image holding an
8-bit one times 16 gives back exactly that 8-bit image. Values above the bit depth saturate at 255 (and are
reported), never wrap around.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from inspection_core.records import Frame, NotInspected, NotInspectedReason

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


def implausible(image: np.ndarray) -> str | None:
    """A warning for a frame that is almost certainly not a part (all black, saturated), or None.

    Judged on every 4th pixel of every 4th row, so it costs little on large frames."""
    sample = image[::4, ::4]
    if sample.size == 0:
        return None
    if int(sample.max()) <= BLACK_LEVEL:
        return f"implausible frame: all black (brightest pixel {int(sample.max())})"
    share = float(np.count_nonzero(sample >= 255)) / sample.size
    if share >= SATURATED_SHARE:
        return f"implausible frame: saturated ({share:.0%} of the pixels at 255)"
    return None


@dataclass(frozen=True)
class FrameGuard:
    """Size limits (pixels, inclusive) a frame must meet before it is tiled; see :meth:`refuse`."""

    min_width: int = 32
    min_height: int = 32
    max_width: int = 16384
    max_height: int = 65536

    @classmethod
    def from_config(cls, config) -> FrameGuard:
        """From a recipe's :class:`station.recipe.FramesConfig`."""
        return cls(config.min_width, config.min_height, config.max_width, config.max_height)

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
