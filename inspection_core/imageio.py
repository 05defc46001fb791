"""The one image reader of the station: files to numpy arrays, safe for non-ASCII paths on every platform.

Bytes are read with ``np.fromfile`` and decoded with ``cv2.imdecode`` (``cv2.imread`` cannot open non-ASCII paths
on Windows). Colour comes back RGB (RGBA with alpha), like the camera's frames, never OpenCV's BGR.

>>> import tempfile
>>> folder = tempfile.TemporaryDirectory()
>>> part, part16 = Path(folder.name) / "pièce.png", Path(folder.name) / "part16.tif"
>>> cv2.imencode(".png", np.zeros((4, 6), np.uint8))[1].tofile(part)
>>> cv2.imencode(".tif", np.full((4, 6), 4095, np.uint16))[1].tofile(part16)
>>> image = read_image(part, ImageMode.GREY)
>>> image.dtype, image.shape
(dtype('uint8'), (4, 6))
>>> read_image(part16, ImageMode.GREY, keep_depth=True).dtype
dtype('uint16')
>>> folder.cleanup()

Every failure is an :class:`~inspection_core.errors.ImageReadError` naming the file and saying what is wrong.
"""
from __future__ import annotations

import enum
import fnmatch
import os
import re
from pathlib import Path

import cv2
import numpy as np

from inspection_core.errors import ImageReadError

#: The file name endings read as images (in any case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: Reason given for a file of zero bytes.
EMPTY = "empty file"
#: Reason given for bytes that OpenCV cannot decode.
UNDECODABLE = "not a decodable image (corrupt, truncated or not an image)"


class ImageMode(str, enum.Enum):
    """How the decoded image is laid out.

    ``GREY``: ``(H, W)``, colour files converted to grey. ``COLOUR``: RGB ``(H, W, 3)``, grey files repeated and
    alpha dropped. ``UNCHANGED``: as stored: grey ``(H, W)``, colour RGB ``(H, W, 3)``, with alpha RGBA
    ``(H, W, 4)``, and the file's bit depth.
    """

    GREY = "grey"
    COLOUR = "colour"
    UNCHANGED = "unchanged"


_FLAGS = {ImageMode.GREY: cv2.IMREAD_GRAYSCALE, ImageMode.COLOUR: cv2.IMREAD_COLOR,
          ImageMode.UNCHANGED: cv2.IMREAD_UNCHANGED}


def read_image(path: str | os.PathLike[str], mode: ImageMode | str = ImageMode.GREY, *,
               keep_depth: bool = False) -> np.ndarray:
    """Decode one image file into a C-contiguous array laid out as ``mode`` says (see :class:`ImageMode`).

    Without ``keep_depth`` grey and colour images are 8-bit (``uint8``); with it a 16-bit file stays ``uint16``
    (``IMREAD_ANYDEPTH``), so the caller can scale by the camera's real bit depth. ``ImageMode.UNCHANGED`` always
    keeps the file's depth. Raises :class:`~inspection_core.errors.ImageReadError` for a missing, unreadable,
    empty or undecodable file.
    """
    mode = ImageMode(mode)
    flags = _FLAGS[mode]
    if keep_depth and mode is not ImageMode.UNCHANGED:
        flags |= cv2.IMREAD_ANYDEPTH
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(path, str(exc) or type(exc).__name__, os_error=exc) from exc
    if data.size == 0:
        raise ImageReadError(path, EMPTY)
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else UNDECODABLE
        raise ImageReadError(path, first) from exc
    if image is None or image.size == 0:
        raise ImageReadError(path, UNDECODABLE)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return np.ascontiguousarray(image)


def natural_key(path: Path) -> list[object]:
    """Sort key that puts ``img2`` before ``img10`` (frame sequences are rarely zero-padded)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def image_files(folder: str | os.PathLike[str], pattern: str | None = None) -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`) of ``folder``, not recursive, whose names match the ``pattern``
    glob when one is given, in natural order (:func:`natural_key`); empty when there are none."""
    root = Path(folder).expanduser()
    files = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and (pattern is None or fnmatch.fnmatch(p.name, pattern))]
    return sorted(files, key=natural_key)
