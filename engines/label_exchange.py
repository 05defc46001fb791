"""Masks exchanged with the labelling tools plants use: COCO instance segmentation JSON and labelme JSON.

A data folder in the generic layout (``DIR/images/NAME.png``, ``DIR/masks/NAME.png``; a line data set's
``DIR/needs_mask/`` too, :mod:`engines.line_dataset`) is exported for a labeller and imported back::

    engines dataset --export-coco line-data --out line-data.coco.json     # one file, every image
    engines dataset --import-coco line-data.coco.json --into line-data
    engines dataset --export-labelme line-data --out line-data.labelme    # one NAME.json per image
    engines dataset --import-labelme line-data.labelme --into line-data

Masks become polygons (:func:`mask_to_instances`): each connected region of one mask value is one instance, its
outline first, then the outlines of its holes, traced by ``cv2.findContours`` through the centres of the region's
boundary pixels. Coordinates are COCO's: ``(0, 0)`` is the top-left corner of the top-left pixel, so the centre of
pixel (column c, row r) is ``(c + 0.5, r + 0.5)``. Polygons become masks (:func:`instance_mask`) with
``cv2.fillPoly``: the pixels inside the outline or on it, less those strictly inside a hole. A mask exported and
imported again is the same mask, pixel for pixel.

- **COCO**: ``images`` (``id``, ``file_name`` relative to DIR, ``width``, ``height``), ``annotations`` (``id``,
  ``image_id``, ``category_id``, ``segmentation``: a list of rings ``[x1, y1, x2, y2, ...]``, ``area`` in pixels,
  ``bbox`` ``[x, y, width, height]``, ``iscrowd`` 0) and ``categories``. In one annotation the first ring is the
  outline and a later ring within it a hole (tools that union the rings, pycocotools among them, fill the holes in);
  a later ring outside it is one more piece. An uncompressed
  RLE ``segmentation`` (``{"counts": [...], "size": [h, w]}``) is read too.
- **labelme**: ``NAME.json`` per image with ``imagePath`` (relative to the JSON), ``imageHeight``, ``imageWidth``,
  ``imageData`` null and ``shapes``: ``shape_type`` ``polygon`` (or ``rectangle`` when read), ``label``,
  ``points``, ``group_id``. A hole is a shape labelled ``_background_`` (labelme's own name for background) with its
  region's ``group_id``; a ``_background_`` shape of no region erases what the shapes before it painted.

Labels: ``defect`` is mask value 255 (the line's masks), ``class_N`` is value N (a data set with class ids); any
other label or category is a defect (255). Importing replaces the masks of the images the file names (an image
listed without a polygon becomes defect-free); an image in ``needs_mask/`` that gets a mask moves to ``images/``
with it (an escape gets its mask), one that gets none stays there. Nothing is changed when the file names an image
the folder does not hold or has the wrong size.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from engines.data.segmentation import IMAGE_SUFFIXES, DatasetError
from engines.errors import InputError
from inspection_core import imageio
from inspection_core.errors import ImageReadError

DEFECT_LABEL, HOLE_LABEL = "defect", "_background_"
#: Where a data folder's images are: training images (``masks/`` beside) and, in a line data set, those waiting for a
#: mask (:mod:`engines.line_dataset`).
IMAGE_FOLDERS = ("images", "needs_mask")
_SHIFT = 3  # fillPoly's fractional bits: vertices at 1/8 pixel
_CLASS = re.compile(r"class_(\d+)$")


@dataclass(frozen=True)
class Instance:
    """One connected region of one mask value: ``rings[0]`` its outline, the rest its holes, each an ``(N, 2)``
    array of pixel-centre coordinates (COCO's: pixel (c, r) is at ``(c + 0.5, r + 0.5)``)."""

    value: int
    rings: tuple[np.ndarray, ...]
    area: int
    bbox: tuple[int, int, int, int]


def label_of(value: int) -> str:
    """The label (COCO category name, labelme label) of a mask value: ``defect`` for 255, ``class_N`` for N."""
    return DEFECT_LABEL if value == 255 else f"class_{value}"


def value_of(label: str) -> int:
    """The mask value of a label: ``class_N`` → N (1..254), anything else a defect (255)."""
    found = _CLASS.match(label.strip())
    if found and 1 <= int(found.group(1)) <= 254:
        return int(found.group(1))
    return 255


def mask_to_instances(mask: np.ndarray) -> list[Instance]:
    """The regions of ``mask`` (``uint8``; 0 background) as polygons with holes, the widest outline first."""
    found = []
    for value in sorted(int(v) for v in np.unique(mask) if v):
        contours, hierarchy = cv2.findContours((mask == value).astype(np.uint8), cv2.RETR_CCOMP,
                                               cv2.CHAIN_APPROX_SIMPLE)
        if hierarchy is None:
            continue
        links = hierarchy[0]
        for i, contour in enumerate(contours):
            if links[i][3] >= 0:  # a hole: goes with its outline
                continue
            rings = [contour]
            child = links[i][2]
            while child >= 0:
                rings.append(contours[child])
                child = links[child][0]
            rings_xy = tuple(r.reshape(-1, 2).astype(np.float64) + 0.5 for r in rings)
            pixels = instance_mask(mask.shape, rings_xy[:1], rings_xy[1:])
            ys, xs = np.nonzero(pixels)
            bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
            found.append(Instance(value, rings_xy, int(pixels.sum()), bbox))
    # the widest outline first: a region inside another's hole comes after it (labelme paints in order)
    return sorted(found, key=lambda inst: -cv2.contourArea(inst.rings[0].astype(np.float32)))


def _fixed(ring: np.ndarray) -> np.ndarray:
    """COCO coordinates → fillPoly's fixed-point pixel indices (pixel centres at whole numbers)."""
    return np.round((np.asarray(ring, np.float64).reshape(-1, 2) - 0.5) * (1 << _SHIFT)).astype(np.int32)


def instance_mask(shape: tuple[int, ...], outlines: Iterable[np.ndarray], holes: Iterable[np.ndarray] = ()
                  ) -> np.ndarray:
    """``bool`` mask of ``shape[:2]``: inside or on an outline, less what is strictly inside a hole."""
    canvas = np.zeros(shape[:2], np.uint8)
    outlines, holes = [_fixed(r) for r in outlines], [_fixed(r) for r in holes]
    if outlines:
        cv2.fillPoly(canvas, outlines, 1, cv2.LINE_8, _SHIFT)
    for hole in holes:  # a hole's ring runs through the region's own pixels: they stay
        cv2.fillPoly(canvas, [hole], 0, cv2.LINE_8, _SHIFT)
        cv2.polylines(canvas, [hole], True, 1, 1, cv2.LINE_8, _SHIFT)
    return canvas.astype(bool)


def _flat(ring: np.ndarray) -> list[float]:
    """A ring as COCO writes it, at least three points (a one- or two-pixel region repeats its points)."""
    points = [[float(x), float(y)] for x, y in ring]
    while len(points) < 3:
        points.append(points[-1])
    return [round(v, 3) for point in points for v in point]


def _points(flat: list[float], where: str) -> np.ndarray:
    if not isinstance(flat, list) or len(flat) < 2 or len(flat) % 2:
        raise InputError(f"{where}: a polygon is a list of x, y pairs, not {str(flat)[:60]}")
    try:
        return np.asarray(flat, np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise InputError(f"{where}: a polygon holds numbers only") from None


def _within(ring: np.ndarray, outline: np.ndarray) -> bool:
    """Every point of ``ring`` inside ``outline`` or on it (a hole of a one-pixel-wide region runs on its outline)."""
    contour = outline.astype(np.float32).reshape(-1, 1, 2)
    return all(cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0 for x, y in ring)


def rings_mask(shape: tuple[int, ...], rings: list[np.ndarray]) -> np.ndarray:
    """One COCO annotation's rings as a mask: the first is an outline, a later one within it a hole, a later one
    outside it one more outline (the region's other piece)."""
    holes = [r for r in rings[1:] if _within(r, rings[0])]
    outlines = [rings[0], *(r for r in rings[1:] if not _within(r, rings[0]))]
    return instance_mask(shape, outlines, holes)


# -- the data folder ------------------------------------------------------------------------------------------------

def folder_images(root: Path) -> dict[str, Path]:
    """The images of a data folder by stem: ``images/`` and (a line data set) ``needs_mask/``."""
    if not (root / "images").is_dir():
        raise DatasetError(f"{root} is not a data folder in the generic layout (no images/ in it); pass the folder "
                           "`engines dataset --from-ledger` or `engines synth lens` wrote")
    found: dict[str, Path] = {}
    for folder in IMAGE_FOLDERS:
        if not (root / folder).is_dir():
            continue
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                if path.stem in found:
                    raise DatasetError(f"{path} and {found[path.stem]} share the name {path.stem!r}; a name is one "
                                       "image: rename or remove one")
                found[path.stem] = path
    return found


def _read(path: Path, mode: str = "grey") -> np.ndarray:
    try:
        return imageio.read_image(path, mode)
    except ImageReadError as exc:
        raise DatasetError(str(exc)) from None


def current_mask(root: Path, image: Path, shape: tuple[int, ...]) -> np.ndarray:
    """An image's mask as the folder holds it (``uint8``; zeros where it has none)."""
    path = root / "masks" / f"{image.stem}.png"
    if image.parent.name != "images" or not path.is_file():
        return np.zeros(shape[:2], np.uint8)
    mask = _read(path, "unchanged")
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != tuple(shape[:2]):
        raise DatasetError(f"mask {path} is {mask.shape}, its image {tuple(shape[:2])}: they must match")
    return mask.astype(np.uint8)


def image_shape(path: Path) -> tuple[int, int]:
    """An image file's ``(height, width)``."""
    return _read(path, "unchanged").shape[:2]


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise InputError(f"{out} exists; choose another --out, or pass --force to replace it")


def export_coco(root: str | Path, out: str | Path, force: bool = False) -> dict[str, int]:
    """Write the folder's images and masks as one COCO instance-segmentation file; counts of what was written."""
    root, out = Path(root), Path(out)
    _refuse_existing(out, force)
    images, annotations, values = [], [], set()
    for image_id, (stem, path) in enumerate(folder_images(root).items(), start=1):
        shape = image_shape(path)
        images.append({"id": image_id, "file_name": path.relative_to(root).as_posix(), "width": int(shape[1]),
                       "height": int(shape[0])})
        for inst in mask_to_instances(current_mask(root, path, shape)):
            values.add(inst.value)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": inst.value,
                                "segmentation": [_flat(r) for r in inst.rings], "area": inst.area,
                                "bbox": list(inst.bbox), "iscrowd": 0})
    values = values or {255}
    ids = {v: i for i, v in enumerate(sorted(values, key=lambda v: (v != 255, v)), start=1)}
    for ann in annotations:
        ann["category_id"] = ids[ann["category_id"]]
    document = {"info": {"description": f"masks of {root}", "version": "1.0"},
                "images": images, "annotations": annotations,
                "categories": [{"id": i, "name": label_of(v), "supercategory": DEFECT_LABEL} for v, i in ids.items()]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return {"images": len(images), "annotations": len(annotations)}


def export_labelme(root: str | Path, out: str | Path, force: bool = False) -> dict[str, int]:
    """Write one labelme JSON per image of the folder into ``out``; counts of what was written."""
    root, out = Path(root), Path(out)
    if out.exists() and any(out.glob("*.json")) and not force:
        raise InputError(f"{out} already holds labelme files; choose another --out, or pass --force to overwrite them")
    out.mkdir(parents=True, exist_ok=True)
    shapes_written = 0
    found = folder_images(root)
    for stem, path in found.items():
        shape = image_shape(path)
        shapes = []
        for group, inst in enumerate(mask_to_instances(current_mask(root, path, shape)), start=1):
            for k, ring in enumerate(inst.rings):
                points = [[round(float(x), 3), round(float(y), 3)] for x, y in ring]
                while len(points) < 3:
                    points.append(points[-1])
                shapes.append({"label": label_of(inst.value) if k == 0 else HOLE_LABEL, "points": points,
                               "group_id": group, "description": "", "shape_type": "polygon", "flags": {}})
        shapes_written += len(shapes)
        document = {"version": "5.4.1", "flags": {}, "shapes": shapes,
                    "imagePath": Path(os.path.relpath(path.resolve(), out.resolve())).as_posix(),
                    "imageData": None, "imageHeight": int(shape[0]), "imageWidth": int(shape[1])}
        (out / f"{stem}.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return {"images": len(found), "shapes": shapes_written}


# -- reading the labellers' files -----------------------------------------------------------------------------------

def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not JSON ({exc})") from None


def _rle(segmentation: dict, shape: tuple[int, int], where: str) -> np.ndarray:
    counts, size = segmentation.get("counts"), segmentation.get("size")
    if not isinstance(counts, list):
        raise InputError(f"{where}: a compressed RLE (a counts string) is not read; export polygons or "
                         "uncompressed RLE from the labelling tool")
    if list(size or []) != list(shape):
        raise InputError(f"{where}: RLE size {size} is not the image's {list(shape)}")
    flat = np.zeros(shape[0] * shape[1], bool)
    position, value = 0, False
    for count in counts:
        flat[position:position + int(count)] = value
        position, value = position + int(count), not value
    return flat.reshape(shape[1], shape[0]).T  # column-major, as COCO counts


def read_coco(path: str | Path, shapes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """The masks a COCO file gives, by image stem; ``shapes``: each image's ``(height, width)`` in the folder."""
    path = Path(path)
    document = _load_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise InputError(f"{path} is not a COCO file (no images list)")
    labels = {c.get("id"): str(c.get("name", "")) for c in document.get("categories", []) if isinstance(c, dict)}
    masks: dict[str, np.ndarray] = {}
    by_id: dict[Any, str] = {}
    for image in document["images"]:
        stem = Path(str(image.get("file_name", ""))).stem
        by_id[image.get("id")] = stem
        masks[stem] = _blank(stem, shapes, (image.get("height"), image.get("width")), path)
    for ann in document.get("annotations", []):
        stem = by_id.get(ann.get("image_id"))
        where = f"{path}: annotation {ann.get('id')}"
        if stem is None:
            raise InputError(f"{where} names image id {ann.get('image_id')}, which the file does not list")
        shape = masks[stem].shape
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, dict):
            pixels = _rle(segmentation, shape, where)
        elif isinstance(segmentation, list) and segmentation:
            pixels = rings_mask(shape, [_points(r, where) for r in segmentation])
        else:
            raise InputError(f"{where} has no segmentation (polygons or RLE)")
        masks[stem][pixels] = value_of(labels.get(ann.get("category_id"), DEFECT_LABEL))
    return masks


def read_labelme(path: str | Path, shapes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """The masks labelme files give (a folder of them, or one), by image stem."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{path} holds no labelme .json files")
    masks: dict[str, np.ndarray] = {}
    for file in files:
        document = _load_json(file)
        if not isinstance(document, dict) or not isinstance(document.get("shapes"), list):
            raise InputError(f"{file} is not a labelme file (no shapes list)")
        stem = Path(str(document.get("imagePath") or file.name)).stem
        mask = masks[stem] = _blank(stem, shapes, (document.get("imageHeight"), document.get("imageWidth")), file)
        groups: dict[Any, list[dict]] = {}
        order: list[Any] = []
        for k, shape in enumerate(document["shapes"]):
            key = shape.get("group_id")
            key = ("alone", k) if key is None else ("group", key)
            if key not in groups:
                order.append(key)
            groups.setdefault(key, []).append(shape)
        for key in order:  # in the order drawn: a later region paints over an earlier one
            rings, holes, value = [], [], 255
            for shape in groups[key]:
                where = f"{file}: shape {shape.get('label')!r}"
                points = _labelme_points(shape, where)
                if str(shape.get("label")) == HOLE_LABEL:
                    holes.append(points)
                else:
                    rings.append(points)
                    value = value_of(str(shape.get("label", DEFECT_LABEL)))
            if rings:
                mask[instance_mask(mask.shape, rings, holes)] = value
            elif holes:  # background of no region: erases
                mask[instance_mask(mask.shape, holes)] = 0
    return masks


def _labelme_points(shape: dict, where: str) -> np.ndarray:
    kind = shape.get("shape_type") or "polygon"
    points = shape.get("points")
    if not isinstance(points, list) or not points:
        raise InputError(f"{where} has no points")
    flat = _points([float(v) for p in points for v in p], where)
    if kind == "rectangle" and len(flat) == 2:
        (x0, y0), (x1, y1) = flat
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    if kind != "polygon":
        raise InputError(f"{where}: shape_type {kind!r} is not read; draw polygons (or rectangles)")
    return flat


def _blank(stem: str, shapes: dict[str, tuple[int, int]], said: tuple[Any, Any], source: Path) -> np.ndarray:
    if stem not in shapes:
        raise InputError(f"{source} names image {stem!r}, which the folder does not hold; import into the folder "
                         "it was exported from")
    if said[0] is not None and said[1] is not None and (int(said[0]), int(said[1])) != tuple(shapes[stem]):
        raise InputError(f"{source}: image {stem!r} is {said[0]}x{said[1]} (height x width) there, "
                         f"{shapes[stem][0]}x{shapes[stem][1]} in the folder")
    return np.zeros(shapes[stem], np.uint8)
