"""Reading calibration captures: files or folders of 8-bit images, with messages that say what is wrong."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from calibration.errors import CalibrationError
from inspection_core import imageio
from inspection_core.errors import ImageReadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(paths: str | Path | Sequence[str | Path], what: str = "images") -> list[Path]:
    """Image files from files and folders (a folder gives its image files, sorted, not recursive)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CalibrationError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the {what} folder {path}; "
                                       "put the captures there or pass the image files themselves")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise CalibrationError(f"{what}: {path} does not exist (relative paths start at {Path.cwd()}); "
                                   "check the path")
    if not files:
        raise CalibrationError(f"no {what} given; pass image files or folders")
    return files


def read_image(path: Path, what: str = "image") -> np.ndarray:
    """One 8-bit image as the station holds frames: grey ``(H, W)``, RGB ``(H, W, 3)`` or RGBA ``(H, W, 4)`` uint8,
    read by the station's one reader (:func:`inspection_core.imageio.read_image`)."""
    try:
        image = imageio.read_image(path, imageio.ImageMode.UNCHANGED)
    except ImageReadError as exc:
        if exc.os_error is not None:
            raise CalibrationError(f"cannot read the {what} {path}: {exc.os_error}") from None
        raise CalibrationError(f"the {what} {path} is not a decodable image (corrupt, truncated or not an image); "
                               "capture it again or leave it out") from None
    if image.dtype != np.uint8:
        raise CalibrationError(f"the {what} {path} is {image.dtype}, the station works on 8-bit images; capture in "
                               "an 8-bit pixel format (Mono8, RGB8) or convert the file")
    return image


def read_images(paths: Iterable[Path], what: str) -> list[np.ndarray]:
    """Decode every file; all must have the same size and channels (one camera, one setting)."""
    images, first = [], None
    for path in paths:
        image = read_image(path, what)
        if first is None:
            first = (path, image.shape)
        elif image.shape != first[1]:
            raise CalibrationError(f"{what} {path} is {_shape(image.shape)} but {first[0]} is {_shape(first[1])}: "
                                   "every capture must come from the same camera at the same setting")
        images.append(image)
    return images


def to_grey(image: np.ndarray) -> np.ndarray:
    import cv2

    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY)


def _shape(shape: tuple[int, ...]) -> str:
    text = f"{shape[1]}×{shape[0]}"
    return text + (f"×{shape[2]}" if len(shape) == 3 else "")
