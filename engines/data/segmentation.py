"""Segmentation data: readers for the generic folder format and the real sets, splits, and a tile sampler.

Generic format (any user can fill it)::

    DIR/images/NAME.{png,jpg,bmp,tif}
    DIR/masks/NAME.png        0 = background, 255 (or class ids 1..K) = defect

Readers for ``magnetic-tile`` (``MT_*/NAME.jpg`` + ``NAME.png``) and ``neu-seg`` need no conversion;
:func:`load_dataset` picks the right one from the folder's layout.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.errors import EnginesError, InputError
from inspection_core import imageio
from inspection_core.errors import ImageReadError
from inspection_core.tiling import plan_tiles

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(EnginesError):
    """A data folder is missing, empty or not in a known layout."""


@dataclass(frozen=True)
class SegSample:
    """One image with its binary defect mask (``bool``, same size) and its image-level class name
    (``None`` for defect-free)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    category: str | None

    @property
    def defective(self) -> bool:
        return self.category is not None


def read_grey(path: Path) -> np.ndarray:
    """uint8 grey ``(H, W)`` by the station's one reader (:func:`inspection_core.imageio.read_image`);
    :class:`DatasetError` naming a missing, unreadable or corrupt file."""
    try:
        return imageio.read_image(path, imageio.ImageMode.GREY)
    except ImageReadError as exc:
        if exc.os_error is not None:  # the system's own words (they name the file), as a user error
            raise DatasetError(exc.reason) from exc.os_error
        raise DatasetError(f"cannot decode image {path}: the file is corrupt or not an image") from None


def spread(n: int, limit: int) -> list[int]:
    """``limit`` indices spread evenly over ``range(n)`` (all of them when ``limit`` is 0 or at least ``n``)."""
    if not limit or limit >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


def picked(items: list, limit: int) -> list:
    return [items[i] for i in spread(len(items), limit)]


def load_magnetic_tile(root: Path, limit: int = 0) -> list[SegSample]:
    """``MT_<Class>/NAME.jpg`` with mask ``NAME.png`` (defect where > 127); MT_Free is defect-free. ``limit``: that
    many images spread evenly over the folder, and only those are read (0 = all)."""
    listed = [(folder, image_path)
              for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("MT_"))
              for image_path in sorted(folder.glob("*.jpg"))]
    samples = []
    for folder, image_path in picked(listed, limit):
        category = None if folder.name == "MT_Free" else folder.name[3:].lower()
        mask_path = image_path.with_suffix(".png")
        image = read_grey(image_path)
        mask = read_grey(mask_path) > 127 if mask_path.exists() else np.zeros(image.shape, bool)
        samples.append(SegSample(f"{folder.name}/{image_path.name}", image, mask, category))
    return samples


def load_generic(root: Path, limit: int = 0) -> list[SegSample]:
    """``images/*`` with ``masks/<stem>.png``; a missing mask means defect-free. ``limit`` as in
    :func:`load_magnetic_tile`."""
    samples = []
    listed = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for image_path in picked(listed, limit):
        image = read_grey(image_path)
        mask_path = root / "masks" / f"{image_path.stem}.png"
        mask = read_grey(mask_path) > 0 if mask_path.exists() else np.zeros(image.shape, bool)
        if mask.shape != image.shape:
            raise DatasetError(f"mask {mask_path} is {mask.shape}, its image is {image.shape}: they must match")
        samples.append(SegSample(image_path.name, image, mask, "defect" if mask.any() else None))
    return samples


def load_neu_seg(root: Path, limit: int = 0) -> list[SegSample]:
    """NEU-Seg: ``images/training/*.jpg`` with label maps ``annotations/training/*.png`` (1..3 = classes).
    ``limit`` as in :func:`load_magnetic_tile`."""
    names = {1: "inclusion", 2: "patches", 3: "scratches"}
    samples = []
    for image_path in picked(sorted((root / "images" / "training").glob("*.jpg")), limit):
        labels = read_grey(root / "annotations" / "training" / f"{image_path.stem}.png")
        present = sorted(int(v) for v in np.unique(labels) if v in names)
        category = "+".join(names[v] for v in present) or None
        samples.append(SegSample(image_path.name, read_grey(image_path), labels > 0, category))
    return samples


def load_dataset(root: str | Path, limit: int = 0) -> list[SegSample]:
    """Load any supported layout; raise :class:`DatasetError` that says which layouts exist. ``limit``: that many
    images spread evenly over the folder, and only those are read (0 = all)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    if any(root.glob("MT_*")):
        samples = load_magnetic_tile(root, limit)
    elif (root / "annotations").is_dir():
        samples = load_neu_seg(root, limit)
    elif (root / "images").is_dir():
        samples = load_generic(root, limit)
    else:
        raise DatasetError(
            f"{root} is not a known data layout: use DIR/images/* with DIR/masks/<stem>.png, "
            "or a magnetic-tile (MT_*/) or NEU-Seg (images/, annotations/) folder"
        )
    if not samples:
        raise DatasetError(f"no images found under {root}")
    empty, marked = label_conflicts(samples)
    for names, what in ((empty, "are in a defect class but their mask is empty (or missing)"),
                        (marked, "are defect-free by their folder but their mask marks defect pixels")):
        if names:
            log.warning("%d image(s) of %s %s: %s%s. A segmenter cannot learn or find such a defect, and the "
                        "image-level figures count it by its folder; check those masks", len(names), root, what,
                        ", ".join(names[:5]), f" and {len(names) - 5} more" if len(names) > 5 else "")
    return samples


def label_conflicts(samples: list[SegSample]) -> tuple[list[str], list[str]]:
    """``(defective images whose mask is empty, defect-free images whose mask has pixels)``, by name: where the
    image-level label (the class folder) and the mask disagree."""
    return ([s.name for s in samples if s.defective and not s.mask.any()],
            [s.name for s in samples if not s.defective and s.mask.any()])


def read_split(path: str | Path) -> dict[str, list[str]]:
    """The lists of a split file (``engines split``, a run's ``split.json``: image names by part, ``train``,
    ``validation``, ``holdout``); :class:`~engines.errors.InputError` for a missing, unreadable or malformed file."""
    path = Path(path)
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the split file {path}: {exc.strerror or exc}; check the path, or write a split "
                         "with `engines split`") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a split file (JSON: image names by part): {exc}") from None
    # Only the lists are checked: a part-wise split also carries its grouping (``group_by``, ``parts``).
    if not isinstance(split, dict) or "train" not in split or not all(
            isinstance(split.get(part, []), list) for part in ("train", "validation", "holdout")):
        raise InputError(f"{path} is not a split file: expected JSON lists of image names by part (train, "
                         "validation, holdout), as `engines split` writes")
    return split


def stratified_split(samples: list[SegSample], holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held out), with each image-level category split in the same proportion."""
    return split_by_group([s.category for s in samples], holdout, seed, order=str)


SPLIT_PARTS = ("train", "validation", "holdout")

#: Share of each further data folder (``engines train --data BASE --data LINE``) kept aside from training, so
#: ``engines accept --line`` judges the candidate on line images it has not seen.
LINE_HOLDOUT = 0.25


def extra_folder_split(root: str | Path, holdout: float = LINE_HOLDOUT, seed: int = 0,
                       ) -> tuple[list[SegSample], list[SegSample], dict]:
    """A further data folder of a training run (the line's reviewed images, ``engines dataset --from-ledger``):
    ``(train, held out, record)``. Every image-level class keeps ``holdout`` of its images aside (seeded). The
    training samples are renamed ``<folder name>/<name>`` so they cannot collide with the base folder's; the record
    (kept in the run's ``split.json`` under ``"extra"``) names the folder and its images by their own names."""
    import dataclasses

    root = Path(root)
    samples = load_dataset(root)
    train_idx, held_idx = stratified_split(samples, holdout, seed)
    record = {"data": str(root), "train": [samples[i].name for i in train_idx],
              "holdout": [samples[i].name for i in held_idx]}
    train = [dataclasses.replace(samples[i], name=f"{root.name}/{samples[i].name}") for i in train_idx]
    return train, [samples[i] for i in held_idx], record


def extra_holdout_names(split: dict, root: str | Path) -> list[str] | None:
    """The names of ``root``'s images that a run kept aside (its ``split.json`` ``"extra"`` record for that folder),
    or None when the run did not train on ``root``."""
    wanted = Path(root).resolve()
    for record in split.get("extra", []):
        if Path(record.get("data", "")).resolve() == wanted:
            return list(record.get("holdout", []))
    return None


def three_way_split(samples: list[SegSample], validation: float, holdout: float, seed: int,
                    keep: dict[str, list[str]] | None = None, parts: list[str] | None = None,
                    not_train: set[str] | frozenset = frozenset()) -> dict[str, list[str]]:
    """Image names in ``train``/``validation``/``holdout``, each image-level class split in the same proportions.

    With ``keep`` (an earlier two-way split, ``{"train": [...], "holdout": [...]}``), its training images stay in
    training and its held-out images are shared between validation and held-out in the ratio
    ``validation : holdout``: weights trained on the earlier split can go on training without ever having seen
    the new validation or held-out images."""
    names = [s.name for s in samples]
    if parts is not None:
        return _three_way_by_part(samples, parts, validation, holdout, seed, not_train)
    if keep is not None:
        kept_train = set(keep.get("train", []))
        rest = [i for i, n in enumerate(names) if n not in kept_train]
        share = holdout / (validation + holdout) if validation + holdout else 0.0
        val_idx, held_idx = split_by_group([samples[i].category for i in rest], share, seed, order=str)
        return {"train": sorted(n for n in names if n in kept_train),
                "validation": sorted(names[rest[i]] for i in val_idx),
                "holdout": sorted(names[rest[i]] for i in held_idx)}
    if validation < 0 or holdout < 0 or validation + holdout >= 1:
        raise InputError(f"validation {validation} and holdout {holdout} must be >= 0 and add up to less than 1")
    train_val, held = split_by_group([s.category for s in samples], holdout, seed, order=str)
    inner = validation / (1.0 - holdout) if holdout < 1 else 0.0
    fit, val = split_by_group([samples[i].category for i in train_val], inner, seed + 1, order=str)
    return {"train": sorted(names[train_val[i]] for i in fit), "validation": sorted(names[train_val[i]] for i in val),
            "holdout": sorted(names[i] for i in held)}


def _parts_by_class(samples: list[SegSample], parts: list[str]) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """``(members, by_class)``: the sample indices of each part, and each class's parts (sorted)."""
    members: dict[str, list[int]] = {}
    for i, part in enumerate(parts):
        members.setdefault(part, []).append(i)
    by_class: dict[str, list[str]] = {}
    for part in sorted(members):
        by_class.setdefault(str(samples[members[part][0]].category), []).append(part)
    return members, by_class


def _shuffled_parts(samples: list[SegSample], parts: list[str], seed: int, not_train) -> tuple[dict, list]:
    """``(members, classes)``: the sample indices of each part, and for each class in turn (sorted) its parts in a
    seeded shuffle with the ones holding an image named in ``not_train`` (in that order)."""
    members, by_class = _parts_by_class(samples, parts)
    rng = random.Random(seed)
    classes = []
    for category in sorted(by_class):
        order = by_class[category][:]
        rng.shuffle(order)
        classes.append((order, [p for p in order if any(samples[i].name in not_train for i in members[p])]))
    return members, classes


def _three_way_by_part(samples: list[SegSample], parts: list[str], validation: float, holdout: float, seed: int,
                       not_train: set[str] | frozenset) -> dict[str, list[str]]:
    """``three_way_split`` over whole parts (``parts[i]``: sample i's part, :func:`engines.data.parts.part_ids`):
    each class's parts shuffled (seeded) and dealt one by one to the side furthest below its share of the class's
    images, so every image of a part lands on one side and the image shares stay near ``validation``/``holdout``.
    Parts holding an image named in ``not_train`` are dealt first, to validation or held-out only (even past
    their shares)."""
    if validation < 0 or holdout < 0 or validation + holdout >= 1:
        raise InputError(f"validation {validation} and holdout {holdout} must be >= 0 and add up to less than 1")
    members, classes = _shuffled_parts(samples, parts, seed, not_train)
    out: dict[str, list[str]] = {"train": [], "validation": [], "holdout": []}
    for order, pinned in classes:
        order = pinned + [p for p in order if p not in pinned]
        total = sum(len(members[p]) for p in order)
        target = {"holdout": holdout * total, "validation": validation * total, "train": (1 - holdout - validation) * total}
        count = dict.fromkeys(target, 0)
        for part in order:  # each part to the side furthest below its share of this class's images
            sides = ("holdout", "validation") if part in pinned else ("holdout", "validation", "train")
            side = max(sides, key=lambda d: (target[d] - count[d]) / max(target[d], 1e-9) if target[d] else -1e9)
            count[side] += len(members[part])
            out[side] += [samples[i].name for i in members[part]]
    return {side: sorted(names) for side, names in out.items()}


def fold_split_by_part(samples: list[SegSample], parts: list[str], folds: int, fold: int, validation: float, seed: int,
                       not_train: set[str] | frozenset = frozenset()) -> dict[str, list[str]]:
    """Fold ``fold`` of ``folds`` over whole parts: each class's parts shuffled (seeded, the same for every fold) and
    dealt one by one to the fold with the fewest of the class's images, so the ``folds`` held-out parts are disjoint
    and cover every image once (k-fold over parts, issue 25); of the other folds' parts, each class's are dealt to
    validation until it holds ``validation`` of the class's images, and the rest train. Parts holding an image named
    in ``not_train`` go to held-out in their own fold and to validation in the others."""
    if not (isinstance(folds, int) and folds >= 2):
        raise InputError(f"--folds {folds}: k-fold needs at least 2 folds (one held out, the rest to train); use "
                         f"--folds 5 for 5 folds, or --holdout for a single split")
    if not (isinstance(fold, int) and 0 <= fold < folds):
        raise InputError(f"--fold {fold}: with --folds {folds}, choose a fold from 0 to {folds - 1}")
    if not 0 <= validation < 1 - 1 / folds:
        raise InputError(f"validation {validation} must be >= 0 and leave a training part beside one fold in "
                         f"{folds} held out (less than {round(1 - 1 / folds, 3)})")
    members, classes = _shuffled_parts(samples, parts, seed, not_train)
    out: dict[str, list[str]] = {"train": [], "validation": [], "holdout": []}
    dealt = []
    for order, pinned in classes:
        sizes = [0] * folds
        fold_of = {}
        for part in order:  # the fold with the fewest images of this class so far (the first on ties)
            k = min(range(folds), key=lambda j: sizes[j])
            fold_of[part] = k
            sizes[k] += len(members[part])
        dealt.append((order, pinned, fold_of, sum(sizes)))
    per_fold = [sum(1 for _, _, fold_of, _ in dealt for k in fold_of.values() if k == j) for j in range(folds)]
    if 0 in per_fold:  # a fold without a part has nothing to hold out: its run would judge nothing
        largest = max(len(order) for order, _, _, _ in dealt)
        raise InputError(f"--folds {folds}: fold {per_fold.index(0)} would hold no part (the data has "
                         f"{len(members)} parts, at most {largest} of one class); use at most {largest} folds")
    for order, pinned, fold_of, total in dealt:
        in_validation = 0
        for part in pinned + [p for p in order if p not in pinned]:
            names = [samples[i].name for i in members[part]]
            if fold_of[part] == fold:
                out["holdout"] += names
            elif part in pinned or in_validation < validation * total:
                out["validation"] += names
                in_validation += len(names)
            else:
                out["train"] += names
    return {side: sorted(names) for side, names in out.items()}


def thin_training(split: dict[str, list[str]], samples: list[SegSample], parts: list[str], share: float,
                  seed: int) -> dict[str, list[str]]:
    """``split`` with only ``share`` of each class's training parts left in ``train`` (at least one a class), the
    other training images listed under ``unused``; validation and held-out are untouched. Each class's training
    parts are shuffled by ``seed`` alone, and the first ``ceil(share * n)`` are kept, so with one seed a smaller
    share keeps a subset of a larger one's parts: points of a learning curve over the number of training parts."""
    if not 0 < share <= 1:
        raise InputError(f"--train-share {share}: the share of the training parts to keep must be in (0, 1] (e.g. "
                         "0.5; 1 = all)")
    part_of = dict(zip((s.name for s in samples), parts))
    trained = set(split["train"])
    members, by_class = _parts_by_class(samples, parts)
    rng = random.Random(f"train-share {seed}")
    kept: set[str] = set()
    for category in sorted(by_class):
        order = [p for p in by_class[category] if any(samples[i].name in trained for i in members[p])]
        rng.shuffle(order)
        kept.update(order[:math.ceil(share * len(order))])
    return {**split, "train": sorted(n for n in split["train"] if part_of[n] in kept),
            "unused": sorted(n for n in split["train"] if part_of[n] not in kept)}


def leaked_parts(split: dict[str, list[str]], part_of: dict[str, str]) -> dict[str, int]:
    """How many images of each judging part (validation, holdout) share their physical part with a training
    image: the leak a split by file has."""
    trained = {part_of[n] for n in split.get("train", []) if n in part_of}
    return {side: sum(part_of.get(n) in trained for n in split.get(side, []))
            for side in ("validation", "holdout") if side in split}


def _groups(keys, order) -> list[list[int]]:
    """Indices of equal keys, one list per key, the keys sorted (by ``order``)."""
    by_key: dict = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    return [by_key[key] for key in sorted(by_key, key=order)]


def split_by_group(keys, holdout: float, seed: int, order=None) -> tuple[list[int], list[int]]:
    """Indices (train, held out) of samples with group ``keys``: each group shuffled (seeded) and split in the
    proportion ``holdout``, so every group keeps its share on both sides."""
    rng = random.Random(seed)
    train, held = [], []
    for group in _groups(keys, order):
        idx = group[:]
        rng.shuffle(idx)
        n_held = round(len(idx) * holdout)
        held += idx[:n_held]
        train += idx[n_held:]
    return sorted(train), sorted(held)


def folds_by_group(keys, folds: int, seed: int, order=None) -> list[list[int]]:
    """Indices of ``folds`` disjoint folds covering every sample once: each group shuffled (seeded) and dealt
    round-robin, each group starting where the previous one stopped so fold sizes differ by at most one."""
    rng = random.Random(seed)
    out: list[list[int]] = [[] for _ in range(folds)]
    offset = 0
    for group in _groups(keys, order):
        idx = group[:]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            out[(j + offset) % folds].append(i)
        offset += len(idx)
    return [sorted(f) for f in out]


def pad_to_tile(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` grown to at least ``size`` px on each side by reflection at the bottom and right (unchanged when
    it is that large already): what the tile sampler and hard-negative mining cut tiles from."""
    h, w = image.shape[:2]
    if h >= size and w >= size:
        return image
    import cv2

    return cv2.copyMakeBorder(image, 0, max(0, size - h), 0, max(0, size - w), cv2.BORDER_REFLECT_101)


def prepared_sample(sample: SegSample, spec) -> SegSample:
    """``sample`` as the station prepares a frame for its tiler (:func:`inspection_core.preprocess.prepare_image`
    at the spec's gain, then :func:`~inspection_core.preprocess.add_border`), its mask mirrored alike: what
    training cuts tiles from, so it sees the tiles the line sees."""
    from inspection_core.preprocess import add_border, prepare_image

    image = add_border(prepare_image(sample.image, spec), spec)
    mask = add_border(sample.mask.astype(np.uint8), spec).astype(bool)
    return SegSample(sample.name, image, mask, sample.category)


#: A defect pixel this close to the frame's edge (px) is an edge defect (breaks are chipped edges).
EDGE_PX = 8
#: Exposure augmentation: gain drawn log-uniformly in this range (the magnetic-tile lightings span about x0.43 to
#: x2.3 around their middle one: median image mean 66 at exp1, 152 at exp6, the standard deviation in proportion),
#: and a gamma in this range.
EXPOSURE_GAIN = (0.45, 2.2)
EXPOSURE_GAMMA = (0.8, 1.25)


class TileSampler:
    """``tile``×``tile`` crops for training: with ``overlap`` given, the very tiles the station's tiler cuts
    (:func:`inspection_core.tiling.plan_tiles`); without, random crops. Both with defect-aware sampling: a fraction ``defect_fraction``
    of the crops is centred (with jitter) on a random defect pixel so rare, small defects are seen; the rest are
    uniform crops of uniformly chosen images (mostly defect-free background, which teaches what is normal).

    Augmentations a line needs: flips, 90° rotations, small rotations, brightness/contrast jitter (or, with
    ``photometric="exposure"``, a gain and gamma spanning the data's lightings, :data:`EXPOSURE_GAIN`), blur, noise.

    Levers for what a line misses:

    - ``border``: the samples carry that many px of mirrored context (:func:`prepared_sample`); ``edge_fraction``
      of the defect crops is then centred on a defect pixel within :data:`EDGE_PX` of the frame's own edge
      (images that have one), so defects at the rim (breaks) are seen as often as that;
    - ``paste_fraction``: that share of the plain crops that fall on a defect-free image gets a real defect region
      of a training image pasted in (flipped, rotated, its grey level matched, its edge blended), classes drawn
      uniformly so rare ones are pasted as often as common ones; the mask follows;
    - ``whole_fraction``: that share of the crops is a whole image shrunk to one tile as the station's context
      pass shrinks a frame (:func:`inspection_core.preprocess.context_tile`, its mask alike), a defective image
      with the probability ``defect_fraction`` (class-balanced as the defect crops are), so a defect larger than a
      tile (uneven) is learnt whole.
    """

    def __init__(self, samples: list[SegSample], tile: int, defect_fraction: float = 0.5, seed: int = 0,
                 augment: bool = True, overlap: int | None = None, class_balanced: bool = False,
                 hard_fraction: float = 0.0, hard_negatives: list[tuple[int, int, int, float]] | None = None,
                 photometric: str = "jitter", border: int = 0, edge_fraction: float = 0.0,
                 paste_fraction: float = 0.0, whole_fraction: float = 0.0) -> None:
        if photometric not in ("jitter", "exposure"):
            raise InputError(f"photometric must be 'jitter' or 'exposure', got {photometric!r}")
        self.samples = [SegSample(s.name, pad_to_tile(s.image, tile), pad_to_tile(s.mask.astype(np.uint8), tile), s.category)
                        for s in samples]
        self.origins = None
        if overlap is not None:  # cut where the station's tiler cuts, so training sees the tiles inference sees
            self.origins = [plan_tiles(s.image.shape, tile, overlap).origins_array for s in self.samples]
        self.defective = [i for i, s in enumerate(self.samples) if s.mask.any()]
        # class-balanced: a defect crop first draws a class uniformly, then an image of it (rare cracks and fray
        # are seen as often as the common classes)
        by_class: dict[str, list[int]] = {}
        for i in self.defective:
            by_class.setdefault(str(self.samples[i].category), []).append(i)
        self.defective_by_class = [by_class[k] for k in sorted(by_class)] if class_balanced else None
        self.tile = tile
        self.defect_fraction = defect_fraction if self.defective else 0.0
        # hard negatives: (sample index, y0, x0, score) tiles of defect-free images where the model fired,
        # drawn with probability proportional to the score, a fraction ``hard_fraction`` of the crops
        self.hard = list(hard_negatives or [])
        self.hard_fraction = hard_fraction if self.hard else 0.0
        if self.hard:
            weights = np.asarray([h[3] for h in self.hard], np.float64) + 1e-6
            self.hard_p = weights / weights.sum()
        self.rng = np.random.default_rng(seed)
        self.augment = augment
        self.photometric = photometric
        self.border = border
        # edge defects: defect pixels within EDGE_PX of the frame itself (inside its mirrored border)
        self.edge_pixels: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if edge_fraction > 0:
            for i in self.defective:
                ys, xs = _edge_defect_pixels(samples[i].mask, border)
                if len(ys):
                    self.edge_pixels[i] = (ys, xs)
        self.edge_fraction = edge_fraction if self.edge_pixels else 0.0
        self.pastes = _defect_regions(samples, self.defective, border, tile) if paste_fraction > 0 else []
        self.paste_fraction = paste_fraction if self.pastes else 0.0
        self.whole_fraction = whole_fraction
        self.wholes = [_shrunk_whole(s, border, tile) for s in samples] if whole_fraction > 0 else []

    def _defect_pixel(self, k: int) -> tuple[int, int]:
        """A defect pixel of sample ``k``: near the frame's edge with probability ``edge_fraction`` (when it has
        such pixels), else any."""
        rng = self.rng
        if self.edge_fraction and k in self.edge_pixels and rng.random() < self.edge_fraction:
            ys, xs = self.edge_pixels[k]
        else:
            ys, xs = np.nonzero(self.samples[k].mask)
        j = rng.integers(len(ys))
        return int(ys[j]), int(xs[j])

    def _defect_image(self) -> int:
        rng = self.rng
        if self.defective_by_class is not None:
            group = self.defective_by_class[rng.integers(len(self.defective_by_class))]
            return group[rng.integers(len(group))]
        return self.defective[rng.integers(len(self.defective))]

    def _hard_crop(self) -> tuple[np.ndarray, np.ndarray]:
        k, y0, x0, _ = self.hard[self.rng.choice(len(self.hard), p=self.hard_p)]
        s, t = self.samples[k], self.tile
        image, mask = s.image[y0:y0 + t, x0:x0 + t], s.mask[y0:y0 + t, x0:x0 + t]
        return self._augment(image, mask) if self.augment else (image.copy(), mask.copy())

    def crop(self) -> tuple[np.ndarray, np.ndarray]:
        if self.hard_fraction and self.rng.random() < self.hard_fraction:
            return self._hard_crop()
        if self.whole_fraction and self.rng.random() < self.whole_fraction:
            return self._whole_crop()
        if self.origins is not None:
            return self.grid_crop()
        t, rng = self.tile, self.rng
        if rng.random() < self.defect_fraction:
            k = self._defect_image()
            s = self.samples[k]
            py, px = self._defect_pixel(k)
            cy, cx = py + rng.integers(-t // 3, t // 3 + 1), px + rng.integers(-t // 3, t // 3 + 1)
        else:
            s = self.samples[rng.integers(len(self.samples))]
            cy, cx = rng.integers(s.image.shape[0]), rng.integers(s.image.shape[1])
        h, w = s.image.shape
        y0 = int(np.clip(cy - t // 2, 0, h - t))
        x0 = int(np.clip(cx - t // 2, 0, w - t))
        return self._finish(s, y0, x0)

    def _whole_crop(self) -> tuple[np.ndarray, np.ndarray]:
        """A whole image shrunk to one tile (``whole_fraction``), augmented as a crop is."""
        rng = self.rng
        k = (self._defect_image() if self.defective and rng.random() < self.defect_fraction
             else int(rng.integers(len(self.samples))))
        image, mask = self.wholes[k]
        return self._augment(image, mask) if self.augment else (image.copy(), mask.copy())

    def _finish(self, s: SegSample, y0: int, x0: int) -> tuple[np.ndarray, np.ndarray]:
        """The crop at ``(y0, x0)`` of ``s``: a defect pasted in when it is a plain crop of a defect-free image
        (``paste_fraction``), then augmented."""
        t = self.tile
        image, mask = s.image[y0:y0 + t, x0:x0 + t], s.mask[y0:y0 + t, x0:x0 + t]
        if self.paste_fraction and not s.defective and self.rng.random() < self.paste_fraction:
            image, mask = self._paste(image, mask)
        return self._augment(image, mask) if self.augment else (image.copy(), mask.copy())

    def _paste(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``image`` with one real defect region pasted at a random place (see the class doc)."""
        import cv2

        rng, t = self.rng, self.tile
        by_class = self.pastes
        patches = by_class[rng.integers(len(by_class))]
        patch, region = patches[rng.integers(len(patches))]
        if rng.random() < 0.5:
            patch, region = patch[:, ::-1], region[:, ::-1]
        k = int(rng.integers(4))
        patch, region = np.rot90(patch, k), np.rot90(region, k)
        ph, pw = patch.shape
        y, x = int(rng.integers(0, t - ph + 1)), int(rng.integers(0, t - pw + 1))
        out = image.astype(np.float32)  # a copy
        target = out[y:y + ph, x:x + pw]
        around = ~region
        src_level = float(patch[around].mean()) if around.any() else float(patch.mean())
        gain = (float(target.mean()) + 1.0) / (src_level + 1.0)  # the patch's surface at the new place's grey
        alpha = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 1.5)
        alpha = np.maximum(alpha, region.astype(np.float32))
        out[y:y + ph, x:x + pw] = alpha * np.clip(patch.astype(np.float32) * gain, 0, 255) + (1 - alpha) * target
        new_mask = mask.copy()
        new_mask[y:y + ph, x:x + pw] |= region.astype(new_mask.dtype)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), new_mask

    def grid_crop(self) -> tuple[np.ndarray, np.ndarray]:
        """One of the tiles the station's tiler cuts: a random tile of a random image, or (defect-aware) a random
        tile that holds a randomly chosen defect pixel."""
        t, rng = self.tile, self.rng
        if rng.random() < self.defect_fraction:
            k = self._defect_image()
            s, origins = self.samples[k], self.origins[k]
            py, px = self._defect_pixel(k)
            inside = np.nonzero((origins[:, 0] <= py) & (py < origins[:, 0] + t)
                                & (origins[:, 1] <= px) & (px < origins[:, 1] + t))[0]
            y0, x0 = origins[inside[rng.integers(len(inside))]]
        else:
            k = rng.integers(len(self.samples))
            s, origins = self.samples[k], self.origins[k]
            y0, x0 = origins[rng.integers(len(origins))]
        return self._finish(s, int(y0), int(x0))

    def _augment(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        rng = self.rng
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
        image, mask = np.ascontiguousarray(image), np.ascontiguousarray(mask)
        if rng.random() < 0.3:
            angle = float(rng.uniform(-10, 10))
            m = cv2.getRotationMatrix2D((self.tile / 2, self.tile / 2), angle, 1.0)
            image = cv2.warpAffine(image, m, (self.tile, self.tile), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            mask = cv2.warpAffine(mask, m, (self.tile, self.tile), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
        out = image.astype(np.float32)
        if self.photometric == "exposure":  # another lighting: one gain and a gamma for the whole tile
            gain = float(np.exp(rng.uniform(*np.log(EXPOSURE_GAIN))))
            gamma = float(np.exp(rng.uniform(*np.log(EXPOSURE_GAMMA))))
            out = 255.0 * (out / 255.0) ** gamma * gain
        else:
            out = (out - out.mean()) * rng.uniform(0.8, 1.2) + out.mean() + rng.uniform(-20, 20)
        if rng.random() < 0.2:
            out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.5, 1.2)))
        if rng.random() < 0.3:
            out += rng.normal(0, rng.uniform(1, 6), out.shape).astype(np.float32)
        return np.clip(out, 0, 255).astype(np.uint8), mask

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(tiles uint8 (N, t, t), masks int64 (N, t, t))``."""
        crops = [self.crop() for _ in range(size)]
        return np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops]).astype(np.int64)

    def batches(self, size: int, count: int, prefetch: int = 2):
        """The next ``count`` batches, cut by a background thread ``prefetch`` batches ahead of the consumer, so
        sampling and augmentation (NumPy and OpenCV release the GIL) overlap the training step. The batches are
        exactly those ``count`` calls of :meth:`batch` would give, in the same order."""
        if prefetch <= 0:
            for _ in range(count):
                yield self.batch(size)
            return
        import queue
        import threading

        ready: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for _ in range(count):
                    item = self.batch(size)
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as error:  # handed to the consumer, raised there
                ready.put(error)

        worker = threading.Thread(target=produce, name="tile-sampler", daemon=True)
        worker.start()
        try:
            for _ in range(count):
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(timeout=5)


def _shrunk_whole(sample: SegSample, border: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """A training sample (prepared, with ``border`` px of mirrored context) as the context pass sees its frame: the
    frame without the border, shrunk to one tile; its mask alike (uint8 0/1)."""
    from inspection_core.preprocess import context_tile

    h, w = sample.image.shape[:2]
    frame = (slice(border, h - border), slice(border, w - border)) if border else (slice(None), slice(None))
    return (context_tile(sample.image[frame], tile),
            context_tile(sample.mask[frame].astype(bool), tile).astype(np.uint8))


def _edge_defect_pixels(mask: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    """Defect pixels of a (bordered) mask that lie in the frame itself within :data:`EDGE_PX` of its edge, in the
    bordered mask's coordinates."""
    h, w = mask.shape[0] - 2 * border, mask.shape[1] - 2 * border
    ys, xs = np.nonzero(mask[border:border + h, border:border + w])
    near = np.minimum(np.minimum(ys, h - 1 - ys), np.minimum(xs, w - 1 - xs)) < EDGE_PX
    return ys[near] + border, xs[near] + border


def _defect_regions(samples: list[SegSample], defective: list[int], border: int, tile: int):
    """The defect regions to paste, one list per class: ``(image patch uint8, region bool)`` for each connected
    defect of each defective sample, cut from its frame (not its mirrored border) with 4 px of surface around it,
    and no larger than ``tile`` (a larger defect is cut to a tile around its centre)."""
    import cv2

    by_class: dict[str, list] = {}
    for i in defective:
        s = samples[i]
        h, w = s.mask.shape[0] - 2 * border, s.mask.shape[1] - 2 * border
        frame = s.image[border:border + h, border:border + w]
        defect = s.mask[border:border + h, border:border + w].astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(defect, connectivity=8)
        for c in range(1, count):
            x, y, bw, bh, area = (int(v) for v in stats[c])
            if area < 4:
                continue
            y0, x0 = max(0, y - 4), max(0, x - 4)
            y1, x1 = min(h, y + bh + 4), min(w, x + bw + 4)
            if y1 - y0 > tile:
                y0 = max(0, min(h - tile, (y0 + y1) // 2 - tile // 2))
                y1 = y0 + min(tile, h)
            if x1 - x0 > tile:
                x0 = max(0, min(w - tile, (x0 + x1) // 2 - tile // 2))
                x1 = x0 + min(tile, w)
            region = labels[y0:y1, x0:x1] == c
            if region.any():
                by_class.setdefault(str(s.category), []).append((frame[y0:y1, x0:x1].copy(), region))
    return [by_class[k] for k in sorted(by_class)]


def stratified_folds(samples: list[SegSample], folds: int, seed: int,
                     parts: list[str] | None = None) -> list[list[int]]:
    """Indices of ``folds`` disjoint test folds covering every sample once, each image-level category spread
    evenly over the folds (the paper's k-fold protocol: fold k is the test set, the rest trains). With ``parts``
    (:func:`engines.data.parts.part_ids`), whole parts are dealt: each class's parts, shuffled (seeded), each to
    the fold holding the fewest images of that class so far, so no part is on both sides of any fold."""
    if folds < 2:
        raise InputError(f"folds must be at least 2, got {folds}")
    if folds > len(samples):
        raise InputError(f"cannot cut {len(samples)} images into {folds} folds")
    if parts is None:
        return folds_by_group([s.category for s in samples], folds, seed, order=str)
    members, by_class = _parts_by_class(samples, parts)
    rng = random.Random(seed)
    out: list[list[int]] = [[] for _ in range(folds)]
    for category in sorted(by_class):
        order = by_class[category][:]
        rng.shuffle(order)
        count = [0] * folds
        for part in order:
            k = min(range(folds), key=lambda f: (count[f], len(out[f])))
            count[k] += len(members[part])
            out[k] += members[part]
    return [sorted(f) for f in out]
