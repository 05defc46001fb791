"""Pre- and post-processing shared by training and by every backend (torch, ONNX Runtime, TensorRT), so that
all of them see identical tensors and give comparable outputs."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from inspection_core.errors import SettingError


@dataclass(frozen=True)
class InputSpec:
    """How raw uint8 pixels become the network's input: ``(x / 255 - mean) / std`` per channel.

    It travels with the weights (``config.json``'s ``input``), so training, ``engines eval`` and the line prepare a
    frame the same way:

    - ``gain_target`` > 0: each frame is scaled by one gain so that its median grey level becomes this value
      (:func:`apply_gain`): a lamp that ages or a camera gain that changes scales a frame's grey levels, and
      this takes the scale out before the network sees it (0: frames as they come);
    - ``border`` > 0: the frame gets this many pixels of mirrored context on every side before it is tiled
      (:func:`add_border`), and the stitched score map loses them again (:func:`crop_border`), so a defect at
      the top or left edge sits inside a tile with context, as one at the bottom or right does;
    - ``context``: the whole frame, shrunk to one tile (:func:`context_tile`), is scored too, and its score map,
      grown back to the frame (:func:`context_map`), joins the tiles' map by the maximum: a defect larger than a
      tile, such as a band of another brightness across the part, is seen whole, edges and all (a deviation from
      the paper, which scores 128 px crops only; issue 25).
    """

    channels: int = 1
    mean: float = 0.5
    std: float = 0.25
    gain_target: float = 0.0
    border: int = 0
    context: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.gain_target <= 255:
            raise SettingError(f"gain_target must be a grey level in 0..255 (0 = off), got {self.gain_target}")
        if self.border < 0:
            raise SettingError(f"border must be >= 0 pixels, got {self.border}")

    def to_dict(self) -> dict:
        return asdict(self)


def whole_frame(spec: InputSpec) -> bool:
    """Whether preparing a frame needs all of it (a frame-wide gain, mirrored context at its edges, or the whole
    frame shrunk to one tile): such weights cannot be streamed a tile row at a time."""
    return bool(spec.gain_target or spec.border or spec.context)


def context_tile(image: np.ndarray, tile: int) -> np.ndarray:
    """A prepared frame (:func:`prepare_image`, no border) shrunk to one ``tile`` x ``tile`` tile
    (``cv2.INTER_AREA``; the aspect is not kept): the input of the context pass (:attr:`InputSpec.context`). A
    bool mask is shrunk alike and marks the pixels at least half covered.

    >>> import numpy as np
    >>> mask = np.zeros((40, 80), bool); mask[:20] = True
    >>> context_tile(mask, 4).astype(int).tolist()
    [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    """
    import cv2

    if image.dtype == bool:
        shrunk = cv2.resize(image.astype(np.float32), (tile, tile), interpolation=cv2.INTER_AREA)
        return shrunk >= 0.5
    return cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)


def context_map(scores: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The context pass's ``(tile, tile)`` score map grown back to a frame of ``shape`` (``cv2.INTER_LINEAR``),
    float32."""
    import cv2

    h, w = int(shape[0]), int(shape[1])
    return cv2.resize(np.ascontiguousarray(scores, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def apply_gain(image: np.ndarray, target: float) -> np.ndarray:
    """uint8 ``image`` scaled by the one gain that moves its median grey level to ``target`` (clipped to 0..255);
    unchanged when ``target`` is 0. A black frame (median 0) is left as it is."""
    if not target:
        return image
    median = float(np.median(image[::4, ::4])) if image.size >= 64 else float(np.median(image))
    if median <= 0:
        return image
    lut = np.clip(np.arange(256, dtype=np.float32) * np.float32(target / median) + 0.5, 0, 255).astype(np.uint8)
    return lut[image]


def add_border(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``image`` with ``spec.border`` pixels of mirrored context on every side (``BORDER_REFLECT_101``: the edge
    row is not repeated); unchanged when ``border`` is 0. A single row or column is repeated."""
    b = spec.border
    if not b:
        return image
    widths = [(b, b), (b, b)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="reflect" if min(image.shape[:2]) > 1 else "edge")


def crop_border(stitched: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The part of a map stitched from a bordered image (:func:`add_border`) that covers the frame itself."""
    b = spec.border
    return stitched[b:stitched.shape[0] - b, b:stitched.shape[1] - b] if b else stitched


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
    """Bring a frame to the channel layout the network wants (grey ``(H, W)`` or RGB ``(H, W, 3)``), uint8, at
    the spec's gain (:func:`apply_gain`)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}; convert or rescale the source to 8 bits")
    if spec.channels == 1:
        return apply_gain(to_grey(image), spec.gain_target)
    if image.ndim == 2:
        return apply_gain(np.repeat(image[:, :, None], 3, axis=2), spec.gain_target)
    return apply_gain(image[:, :, :3], spec.gain_target)


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
