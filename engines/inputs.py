"""Network inputs from images, prepared exactly as the station prepares them: images read by the station's one
reader, tiles cut by its tiler (segmentation) or whole images resized to the input side (classification), then
normalised. The build's parity check, ``engines verify`` and INT8 calibration all feed engines from here."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from engines.data.multilabel import load_multilabel
from engines.data.segmentation import DatasetError, load_dataset, picked
from engines.errors import EngineError
from inspection_core import imageio
from inspection_core.errors import ImageReadError
from inspection_core.preprocess import add_border, context_tile, normalize_tiles, prepare_image, resize_to_input
from inspection_core.tiling import plan_tiles, tile_image


def read_images(paths) -> list[np.ndarray]:
    """uint8 grey or RGB images from files (alpha dropped), read by the station's one reader
    (:func:`inspection_core.imageio.read_image`, safe for non-ASCII paths); unreadable files are named in the error."""
    import cv2

    images = []
    for path in paths:
        try:
            image = imageio.read_image(path, imageio.ImageMode.UNCHANGED)
        except ImageReadError:
            raise EngineError(f"cannot read image {path}: missing or corrupt; remove it from the set") from None
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
        if image.dtype != np.uint8:
            raise EngineError(f"{path} is {image.dtype}, not 8-bit; convert it to 8 bits")
        images.append(image)
    return images


def named_images(data: str | Path, limit: int = 0) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 image) pairs of a data folder in any layout ``engines eval`` reads, or a folder of plain
    images; ``limit`` picks that many spread evenly over the folder (0 = all)."""
    data = Path(data)
    try:
        return [(s.name, s.image) for s in load_dataset(data, limit)]  # reads only the images it picks
    except DatasetError:
        try:
            return [(s.name, np.asarray(s.image)) for s in load_multilabel(data, limit).samples]
        except DatasetError:
            files = imageio.image_files(data) if data.is_dir() else [data] if data.is_file() else []
            if not files:
                raise EngineError(f"no images in {data}; pass a data folder (--data)") from None
            files = picked(files, limit)
            return list(zip((f.name for f in files), read_images(files)))


def data_images(data: str | Path, count: int) -> list[np.ndarray]:
    """``count`` images spread evenly over a data folder (see :func:`named_images`)."""
    return [image for _, image in named_images(data, count)]


def network_inputs(images: list[np.ndarray], kind: str, tile: int, spec, limit: int = 0) -> np.ndarray:
    """Normalised float32 network inputs from images, prepared exactly as the station prepares them: tiles cut
    by the station's tiler from the prepared, bordered frame, and the context pass's whole frame shrunk to one tile
    where the spec has one (segmentation), or whole images resized to the input side (classification)."""
    if kind == "classification":
        batch = normalize_tiles(resize_to_input(images, tile, spec), spec)
    else:
        parts = []
        for image in images:
            prepared = prepare_image(image, spec)
            bordered = add_border(prepared, spec)
            parts.append(tile_image(bordered, plan_tiles(bordered.shape[:2], tile, 0)))
            if spec.context:
                parts.append(context_tile(prepared, tile)[None])
        batch = normalize_tiles(np.concatenate(parts), spec)
    return batch[:limit] if limit else batch


def random_inputs(count: int, spec, tile: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (count, tile, tile) if spec.channels == 1 else (count, tile, tile, spec.channels)
    return normalize_tiles(rng.integers(0, 256, shape, dtype=np.uint8), spec)


def batches(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(x), size):
        yield np.ascontiguousarray(x[start:start + size])
