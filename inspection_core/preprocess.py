"""Pre- and post-processing shared by training and by every backend (torch, ONNX Runtime, TensorRT), so that
all of them see identical tensors and give comparable outputs."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """How raw uint8 pixels become the network's input: ``(x / 255 - mean) / std`` per channel."""

    channels: int = 1
    mean: float = 0.5
    std: float = 0.25

    def to_dict(self) -> dict:
        return asdict(self)


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)`` from grey, RGB or RGBA input."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        import cv2

        code = cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY
        return cv2.cvtColor(image, code)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    raise ValueError(f"expected a grey (H, W) or colour (H, W, 3|4) image, got shape {image.shape}")


def prepare_image(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Bring a frame to the channel layout the network wants (grey ``(H, W)`` or RGB ``(H, W, 3)``), uint8."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}; convert or rescale the source to 8 bits")
    if spec.channels == 1:
        return to_grey(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3]


def resize_to_input(images, size: int, spec: InputSpec) -> np.ndarray:
    """uint8 images of any size (a sequence, or an ``(N, H, W[, C])`` array) in the network's layout
    (:func:`prepare_image`) and at ``size`` x ``size`` (``cv2.INTER_AREA``), as classifiers are trained and run:
    ``(N, size, size)`` for one channel, ``(N, size, size, 3)`` for three. Images already at that size and layout
    are copied unchanged."""
    import cv2

    shape = (size, size) if spec.channels == 1 else (size, size, 3)
    out = np.empty((len(images), *shape), np.uint8)
    for i, image in enumerate(images):
        image = prepare_image(np.asarray(image), spec)
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        out[i] = image
    return out


def normalize_tiles(tiles: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 tiles ``(N, t, t)`` or ``(N, t, t, C)`` → contiguous float32 ``(N, C, t, t)`` network input."""
    if tiles.ndim == 3:
        tiles = tiles[:, None, :, :]
    elif tiles.ndim == 4:
        tiles = tiles.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"expected tiles (N, t, t) or (N, t, t, C), got shape {tiles.shape}")
    if tiles.shape[1] != spec.channels:
        raise ValueError(f"tiles have {tiles.shape[1]} channels, the network wants {spec.channels}")
    out = tiles.astype(np.float32) * np.float32(1.0 / 255.0)
    out -= np.float32(spec.mean)
    out *= np.float32(1.0 / spec.std)
    return np.ascontiguousarray(out)


def defect_scores(probabilities: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, K, h, w)`` → defect score ``(N, h, w)`` = probability of any non-background
    class (class 0 is background)."""
    if probabilities.ndim != 4 or probabilities.shape[1] < 2:
        raise ValueError(f"expected probabilities (N, K>=2, h, w), got shape {probabilities.shape}")
    return np.clip(1.0 - probabilities[:, 0], 0.0, 1.0).astype(np.float32, copy=False)
