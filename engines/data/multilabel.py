"""Multi-label image classification data (paper 001): each image carries the set of defect classes it shows
(empty = defect-free).

Generic format (any user can fill it)::

    DIR/images/NAME.{png,jpg,jpeg,bmp,tif,tiff}
    DIR/classes.txt     one class name a line, in label-column order (blank lines and lines starting # ignored)
    DIR/labels.csv      header ``file,labels``; one row per image: ``NAME.png,scratch+pinhole``

Labels of a row are separated by ``+`` or ``;`` (both accepted, surrounding spaces ignored); an empty field means
defect-free. Every image needs exactly one row and every row an image; a label must be listed in classes.txt.
Images are read as stored: grey stays ``(H, W)``, colour becomes RGB ``(H, W, 3)`` (alpha dropped).

Readers for the real sets need no conversion:

* ``neu-seg``: ``images/training/*.jpg`` (read grey) with label maps ``annotations/training/*.png``; an image's labels
  are the classes present in its map (1 inclusion, 2 patches, 3 scratches).
* ``magnetic-tile``: ``MT_<Class>/*.jpg`` (grey); one label per defective image, the folder name without ``MT_``,
  lowercased; ``MT_Free`` images have none.

:func:`load_multilabel` picks the reader from the folder's layout.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.errors import InputError
from engines.data.segmentation import IMAGE_SUFFIXES, DatasetError, folds_by_group, picked, read_grey, split_by_group
from inspection_core import imageio
from inspection_core.errors import ImageReadError
from inspection_core.preprocess import resize_to_input

NEU_CLASSES = ("inclusion", "patches", "scratches")  # label-map values 1, 2, 3
MAGNETIC_TILE_CLASSES = ("blowhole", "break", "crack", "fray", "uneven")
LABEL_SEPARATORS = re.compile(r"[+;]")


@dataclass(frozen=True)
class MLSample:
    """One image (uint8, grey ``(H, W)`` or RGB ``(H, W, 3)``) with the names of the classes it shows."""

    name: str
    image: np.ndarray
    labels: tuple[str, ...]

    @property
    def defective(self) -> bool:
        return bool(self.labels)


@dataclass(frozen=True)
class MultiLabelSet:
    """Samples with the ordered class list that fixes the label columns."""

    samples: list[MLSample]
    classes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if len(set(self.classes)) != len(self.classes):
            raise DatasetError(f"duplicate class names in {self.classes}")
        known = set(self.classes)
        for s in self.samples:
            unknown = [label for label in s.labels if label not in known]
            if unknown:
                raise DatasetError(f"{s.name} has label(s) {unknown} not among the classes {list(self.classes)}")

    def __len__(self) -> int:
        return len(self.samples)

    def matrix(self) -> np.ndarray:
        return label_matrix(self.samples, self.classes)

    def subset(self, indices) -> MultiLabelSet:
        return MultiLabelSet([self.samples[i] for i in indices], self.classes)


# ------------------------------------------------------------------------------------------------------- labels


def label_matrix(samples, classes) -> np.ndarray:
    """``(N, C)`` float32 0/1 targets, column order ``classes``; a label not in ``classes`` is an error."""
    index = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(samples), len(index)), np.float32)
    for i, s in enumerate(samples):
        for label in s.labels:
            if label not in index:
                raise DatasetError(f"{s.name} has label {label!r}, not among the classes {list(classes)}")
            out[i, index[label]] = 1.0
    return out


def cooccurrence(matrix: np.ndarray) -> np.ndarray:
    """Label-pair counts ``M = YᵀY`` (C, C) int64 from a 0/1 label matrix (N, C): ``M_ij`` = number of images with
    both labels i and j; the diagonal ``M_ii`` is the number of images with label i (the pair (i, i)). This is the
    statistical matrix of paper 001 §3.2.1 (``GR.init_graph`` row-normalises it)."""
    y = (np.asarray(matrix) > 0.5).astype(np.int64)
    if y.ndim != 2:
        raise ValueError(f"expected a label matrix (N, C), got shape {y.shape}")
    return y.T @ y


# ------------------------------------------------------------------------------------------------------ readers


def read_image(path: Path) -> np.ndarray:
    """uint8 grey ``(H, W)`` or RGB ``(H, W, 3)`` as stored (alpha dropped), read by the station's one reader
    (:func:`inspection_core.imageio.read_image`); :class:`DatasetError` naming a missing, unreadable or corrupt
    file."""
    try:
        image = imageio.read_image(path, imageio.ImageMode.UNCHANGED)
    except ImageReadError as exc:
        if exc.os_error is not None:  # the system's own words (they name the file), as a user error
            raise DatasetError(exc.reason) from exc.os_error
        raise DatasetError(f"cannot decode image {path}: the file is corrupt or not an image") from None
    if image.dtype != np.uint8:
        raise DatasetError(f"image {path} is {image.dtype}; only 8-bit images are supported")
    if image.ndim == 3 and image.shape[2] == 4:
        import cv2

        image = cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    return image


def parse_labels(field_text: str) -> tuple[str, ...]:
    """``"scratch+pinhole"`` or ``"scratch; pinhole"`` → ``("scratch", "pinhole")``; empty → ``()``."""
    return tuple(part.strip() for part in LABEL_SEPARATORS.split(field_text or "") if part.strip())


def read_classes(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing: list the class names there, one a line")
    names = tuple(line.strip() for line in path.read_text().splitlines()
                  if line.strip() and not line.strip().startswith("#"))
    if not names:
        raise DatasetError(f"{path} lists no classes")
    if len(set(names)) != len(names):
        raise DatasetError(f"{path} lists a class twice: {names}")
    bad = [n for n in names if LABEL_SEPARATORS.search(n) or "," in n]
    if bad:
        raise DatasetError(f"{path}: class names may not contain '+', ';' or ',': {bad}")
    return names


def load_generic_multilabel(root: Path, limit: int = 0) -> MultiLabelSet:
    """``images/*`` + ``labels.csv`` + ``classes.txt`` (see the module docstring). The whole table is checked;
    with ``limit``, only that many images, spread evenly over it, are read (0 = all)."""
    root = Path(root)
    images_dir, labels_path = root / "images", root / "labels.csv"
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} is missing: put the images there")
    if not labels_path.is_file():
        raise DatasetError(f"{labels_path} is missing: one row per image, header 'file,labels'")
    classes = read_classes(root / "classes.txt")
    known = set(classes)
    rows: dict[str, tuple[str, ...]] = {}
    with open(labels_path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if header[:2] != ["file", "labels"]:
            raise DatasetError(f"{labels_path} must start with the header 'file,labels', found {','.join(header)!r}")
        for line_no, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) > 2:
                raise DatasetError(f"{labels_path}:{line_no}: expected 'file,labels', got {len(row)} fields "
                                   "(separate labels with '+' or ';', not ',')")
            name, labels = row[0].strip(), parse_labels(row[1] if len(row) > 1 else "")
            unknown = [label for label in labels if label not in known]
            if unknown:
                raise DatasetError(f"{labels_path}:{line_no}: label(s) {unknown} of {name} are not in "
                                   f"{root / 'classes.txt'} ({', '.join(classes)})")
            if name in rows:
                raise DatasetError(f"{labels_path}:{line_no}: {name} has a second row")
            rows[name] = tuple(dict.fromkeys(labels))  # drop repeats, keep order
    files = {p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = sorted(set(rows) - files)
    if missing:
        raise DatasetError(f"{labels_path} names {len(missing)} image(s) not in {images_dir}: {missing[:5]}")
    unlabelled = sorted(files - set(rows))
    if unlabelled:
        raise DatasetError(f"{len(unlabelled)} image(s) in {images_dir} have no row in {labels_path} (give "
                           f"defect-free images an empty label field): {unlabelled[:5]}")
    samples = [MLSample(name, read_image(images_dir / name), rows[name]) for name in picked(sorted(rows), limit)]
    return MultiLabelSet(samples, classes)


def save_multilabel(dataset: MultiLabelSet, root: Path) -> Path:
    """Write ``dataset`` in the generic format (images as PNG named after the sample, ``/`` → ``_``)."""
    import cv2

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in dataset.classes))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "labels"])
        for s in dataset.samples:
            name = Path(s.name.replace("/", "_")).with_suffix(".png").name
            image = s.image if s.image.ndim == 2 else cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR)
            ok, data = cv2.imencode(".png", image)
            if not ok:
                raise DatasetError(f"cannot encode {s.name} as PNG")
            data.tofile(str(root / "images" / name))
            writer.writerow([name, "+".join(s.labels)])
    return root


def neu_seg_labels(root: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(image name, labels)`` of every NEU-Seg training image, from the annotation maps only (fast)."""
    root = Path(root)
    images_dir, annotations_dir = root / "images" / "training", root / "annotations" / "training"
    for folder in (images_dir, annotations_dir):
        if not folder.is_dir():
            raise DatasetError(f"{folder} is missing: NEU-Seg needs images/training and annotations/training")
    out = []
    for image_path in sorted(images_dir.glob("*.jpg")):
        annotation = annotations_dir / f"{image_path.stem}.png"
        if not annotation.is_file():
            raise DatasetError(f"{image_path.name} has no annotation map {annotation}")
        present = np.unique(read_grey(annotation))
        out.append((image_path.name, tuple(NEU_CLASSES[v - 1] for v in (1, 2, 3) if v in present)))
    return out


def load_neu_seg_multilabel(root: Path, limit: int = 0) -> MultiLabelSet:
    """NEU-Seg with the classes present in each label map as the image's labels; images read grey (``limit``: as
    in :func:`load_generic_multilabel`)."""
    root = Path(root)
    samples = [MLSample(name, read_grey(root / "images" / "training" / name), labels)
               for name, labels in picked(neu_seg_labels(root), limit)]
    return MultiLabelSet(samples, NEU_CLASSES)


def magnetic_tile_labels(root: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``("MT_<Class>/NAME.jpg", labels)`` from the folder names only (fast)."""
    root = Path(root)
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("MT_")):
        labels = () if folder.name == "MT_Free" else (folder.name[3:].lower(),)
        out += [(f"{folder.name}/{p.name}", labels) for p in sorted(folder.glob("*.jpg"))]
    return out


def load_magnetic_tile_multilabel(root: Path, limit: int = 0) -> MultiLabelSet:
    """Magnetic tile: one label per defective image (its folder), none for ``MT_Free``; images read grey. The class
    list is the five known classes plus any other ``MT_*`` folder found (sorted), whatever ``limit`` picks."""
    root = Path(root)
    pairs = magnetic_tile_labels(root)
    found = {label for _, labels in pairs for label in labels}
    classes = MAGNETIC_TILE_CLASSES + tuple(sorted(found - set(MAGNETIC_TILE_CLASSES)))
    return MultiLabelSet([MLSample(name, read_grey(root / name), labels) for name, labels in picked(pairs, limit)],
                         classes)


def load_multilabel(root: str | Path, limit: int = 0) -> MultiLabelSet:
    """Load any supported layout; :class:`DatasetError` says which layouts exist. ``limit``: read only that many
    images, spread evenly over the folder (0 = all)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    if any(p.is_dir() for p in root.glob("MT_*")):
        dataset = load_magnetic_tile_multilabel(root, limit)
    elif (root / "annotations").is_dir():
        dataset = load_neu_seg_multilabel(root, limit)
    elif (root / "labels.csv").is_file() or (root / "images").is_dir():
        dataset = load_generic_multilabel(root, limit)
    else:
        raise DatasetError(
            f"{root} is not a known multi-label layout: use DIR/images/* with DIR/labels.csv (file,labels) and "
            "DIR/classes.txt, or a magnetic-tile (MT_*/) or NEU-Seg (images/, annotations/) folder"
        )
    if not dataset.samples:
        raise DatasetError(f"no images found under {root}")
    return dataset


# -------------------------------------------------------------------------------------------------------- folds


def _label_sets(samples) -> list[tuple[str, ...]]:
    if isinstance(samples, MultiLabelSet):
        samples = samples.samples
    return [tuple(sorted(s.labels)) for s in samples]


def stratified_multilabel_folds(samples, k: int, seed: int) -> list[list[int]]:
    """Indices of ``k`` disjoint folds covering every sample once, stratified by *label combination*: the images of
    each distinct label set (defect-free, {scratches}, {inclusion, scratches}, ...) are shuffled and dealt round-robin
    over the folds, each combination starting where the previous one stopped so fold sizes differ by at most one.
    Every combination — hence every label, and the multi-label share — is spread as evenly as its count allows.
    (Label-combination stratification, not Sechidis' iterative stratification: the sets here have few labels, so
    every combination is well populated and this is exact where iterative stratification is approximate.)

    ``samples``: a :class:`MultiLabelSet` or a list of :class:`MLSample`."""
    label_sets = _label_sets(samples)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise InputError(f"k must be an integer of at least 2, got {k!r}")
    if k > len(label_sets):
        raise InputError(f"cannot cut {len(label_sets)} images into {k} folds")
    return folds_by_group(label_sets, k, seed)


def stratified_multilabel_split(samples, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held out) with each label combination split in the proportion ``holdout``."""
    if not 0.0 <= holdout < 1.0:
        raise InputError(f"holdout must be in [0, 1), got {holdout}")
    return split_by_group(_label_sets(samples), holdout, seed)


# ------------------------------------------------------------------------------------------- network inputs


def resize_images(images, size: int, spec) -> np.ndarray:
    """Bring images (a MultiLabelSet, samples, uint8 arrays of any size, grey or RGB, or an (N, H, W[, C]) stack)
    to the network's layout (:func:`inspection_core.preprocess.prepare_image`) and to ``size``×``size`` with
    ``cv2.INTER_AREA``, as training does. Returns uint8 ``(N, size, size)`` (one channel) or
    ``(N, size, size, 3)``; images already at that size and layout are copied unchanged. The resizing itself is
    :func:`inspection_core.preprocess.resize_to_input`, the one the station's classifier stage uses."""
    return resize_to_input(_images_of(images), size, spec)


def _images_of(dataset_or_images) -> list:
    """The uint8 images of a MultiLabelSet, a list of samples, a list of arrays or an (N, H, W[, C]) array."""
    if isinstance(dataset_or_images, MultiLabelSet):
        return [s.image for s in dataset_or_images.samples]
    if isinstance(dataset_or_images, np.ndarray):
        if dataset_or_images.ndim not in (3, 4):
            raise ValueError(f"an image stack is (N, H, W) or (N, H, W, C), got shape {dataset_or_images.shape}")
        return list(dataset_or_images)
    return [getattr(item, "image", item) for item in dataset_or_images]
