"""Multi-label data (paper 001): the generic folder format, its errors, the NEU-Seg and magnetic-tile readers (on
small fakes, and on the real sets where ../shared/data has them), label and co-occurrence matrices, and folds."""
from __future__ import annotations

import collections

import cv2
import numpy as np
import pytest

from engines.data.multilabel import (
    MAGNETIC_TILE_CLASSES,
    NEU_CLASSES,
    MLSample,
    MultiLabelSet,
    cooccurrence,
    label_matrix,
    load_multilabel,
    neu_seg_labels,
    parse_labels,
    save_multilabel,
    stratified_multilabel_folds,
    stratified_multilabel_split,
)
from engines.data.segmentation import DatasetError
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="session")
def neu_seg():
    path = SHARED_DATA / "neu-seg"
    if not path.is_dir():
        pytest.skip(f"needs the real NEU-Seg data at {path} (../shared/data beside the checkout)")
    return path


def _image(seed: int, colour: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (12, 16, 3) if colour else (12, 16), dtype=np.uint8)


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _generic(root, rows, classes=("scratch", "pinhole", "bubble")):
    (root / "images").mkdir(parents=True)
    for i, (name, _) in enumerate(rows):
        _write(root / "images" / name, _image(i))
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    (root / "labels.csv").write_text("file,labels\n" + "".join(f"{n},{lab}\n" for n, lab in rows))
    return root


# ------------------------------------------------------------------------------------------------- generic format


def test_generic_format_round_trip(tmp_path):
    classes = ("scratch", "pinhole", "bubble")
    samples = [MLSample("a.png", _image(0), ("scratch", "bubble")), MLSample("b.png", _image(1, True), ()),
               MLSample("c.png", _image(2), ("pinhole",))]
    save_multilabel(MultiLabelSet(samples, classes), tmp_path / "set")
    loaded = load_multilabel(tmp_path / "set")
    assert loaded.classes == classes and len(loaded) == 3
    for want, got in zip(samples, loaded.samples):
        assert (got.name, got.labels) == (want.name, want.labels)
        assert got.image.dtype == np.uint8
        np.testing.assert_array_equal(got.image, want.image)  # grey stays (H, W); colour comes back RGB
    np.testing.assert_array_equal(loaded.matrix(), [[1, 0, 1], [0, 0, 0], [0, 1, 0]])


def test_a_limit_reads_only_the_images_it_picks_but_checks_the_whole_table(tmp_path):
    from engines.inputs import named_images

    rows = [(f"p{i}.png", "scratch" if i % 2 else "") for i in range(7)]
    root = _generic(tmp_path / "set", rows)
    (root / "images" / "p1.png").write_bytes(b"not an image")  # outside the pick of 3: indices 0, 3 and 6
    picked = load_multilabel(root, limit=3)
    assert [s.name for s in picked.samples] == ["p0.png", "p3.png", "p6.png"]
    assert [s.labels for s in picked.samples] == [(), ("scratch",), ()]
    assert [name for name, _ in named_images(root, 3)] == ["p0.png", "p3.png", "p6.png"]
    with pytest.raises(DatasetError, match="p1.png"):
        load_multilabel(root)  # without a limit the corrupt image is read, and named
    (root / "labels.csv").write_text((root / "labels.csv").read_text() + "ghost.png,scratch\n")
    with pytest.raises(DatasetError, match="ghost.png"):
        load_multilabel(root, limit=3)  # the table is checked whole, whatever the pick


def test_generic_format_accepts_both_separators_and_blank_for_defect_free(tmp_path):
    root = _generic(tmp_path, [("x.png", "scratch; pinhole"), ("y.png", "bubble+scratch"), ("z.png", "")])
    labels = {s.name: s.labels for s in load_multilabel(root).samples}
    assert labels == {"x.png": ("scratch", "pinhole"), "y.png": ("bubble", "scratch"), "z.png": ()}
    assert parse_labels(" a + b ;c ") == ("a", "b", "c") and parse_labels("") == ()


@pytest.mark.parametrize("breakage, match", [
    ("unknown label", r"labels.csv:3: label\(s\) \['dent'\] of y.png are not in .*classes.txt"),
    ("corrupt image", r"cannot decode image .*y.png"),
    ("no classes", r"classes.txt is missing"),
    ("no labels.csv", r"labels.csv is missing"),
    ("unlabelled image", r"have no row in .*: \['w.png'\]"),
    ("row without image", r"names 1 image\(s\) not in .*\['v.png'\]"),
    ("bad header", r"must start with the header 'file,labels'"),
    ("comma-separated labels", r"labels.csv:2: expected 'file,labels', got 3 fields"),
])
def test_generic_format_errors_name_the_problem(tmp_path, breakage, match):
    root = _generic(tmp_path, [("x.png", "scratch"), ("y.png", "pinhole")])
    csv = root / "labels.csv"
    if breakage == "unknown label":
        csv.write_text("file,labels\nx.png,scratch\ny.png,dent+pinhole\n")
    elif breakage == "corrupt image":
        (root / "images" / "y.png").write_bytes(b"not a png")
    elif breakage == "no classes":
        (root / "classes.txt").unlink()
    elif breakage == "no labels.csv":
        csv.unlink()
    elif breakage == "unlabelled image":
        _write(root / "images" / "w.png", _image(9))
    elif breakage == "row without image":
        csv.write_text(csv.read_text() + "v.png,\n")
    elif breakage == "bad header":
        csv.write_text("image,classes\nx.png,scratch\n")
    elif breakage == "comma-separated labels":
        csv.write_text("file,labels\nx.png,scratch,pinhole\n")
    with pytest.raises(DatasetError, match=match):
        load_multilabel(root)


def test_missing_folder_and_unknown_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_multilabel(tmp_path / "nowhere")
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a known multi-label layout"):
        load_multilabel(tmp_path)


def test_label_matrix_cooccurrence_and_set_validation():
    samples = [MLSample("a", _image(0), ("b", "a")), MLSample("b", _image(1), ()), MLSample("c", _image(2), ("a",))]
    matrix = label_matrix(samples, ("a", "b", "c"))
    assert matrix.dtype == np.float32 and matrix.shape == (3, 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    counts = cooccurrence(matrix)
    np.testing.assert_array_equal(counts, [[2, 1, 0], [1, 1, 0], [0, 0, 0]])  # diagonal: images with the label
    assert counts.dtype == np.int64
    with pytest.raises(DatasetError, match="'b'"):
        label_matrix(samples, ("a",))
    with pytest.raises(DatasetError, match="not among the classes"):
        MultiLabelSet(samples, ("a",))


# ---------------------------------------------------------------------------------------------------- real layouts


def test_neu_seg_reader_on_a_small_fake(tmp_path):
    maps = {"000001": [0, 1], "000002": [0, 2, 3], "000003": [0], "000004": [1, 2, 3]}
    for stem, values in maps.items():
        label = np.zeros((20, 20), np.uint8)
        for k, v in enumerate(values):
            label[k * 5:(k + 1) * 5] = v
        _write(tmp_path / "annotations" / "training" / f"{stem}.png", label)
        _write(tmp_path / "images" / "training" / f"{stem}.jpg", _image(int(stem), colour=True))
    data = load_multilabel(tmp_path)
    assert data.classes == NEU_CLASSES
    assert {s.name: s.labels for s in data.samples} == {
        "000001.jpg": ("inclusion",), "000002.jpg": ("patches", "scratches"), "000003.jpg": (),
        "000004.jpg": ("inclusion", "patches", "scratches")}
    assert all(s.image.ndim == 2 for s in data.samples)  # RGB-stored grey is read grey
    (tmp_path / "annotations" / "training" / "000004.png").unlink()
    with pytest.raises(DatasetError, match="000004.jpg has no annotation map"):
        load_multilabel(tmp_path)


def test_magnetic_tile_reader_on_a_small_fake(tmp_path):
    for folder, n in (("MT_Blowhole", 2), ("MT_Crack", 1), ("MT_Free", 2)):
        for i in range(n):
            _write(tmp_path / folder / f"exp{i}.jpg", _image(i))
            _write(tmp_path / folder / f"exp{i}.png", np.zeros((12, 16), np.uint8))  # masks are not images
    data = load_multilabel(tmp_path)
    assert data.classes == MAGNETIC_TILE_CLASSES and len(data) == 5
    assert {s.name: s.labels for s in data.samples} == {
        "MT_Blowhole/exp0.jpg": ("blowhole",), "MT_Blowhole/exp1.jpg": ("blowhole",), "MT_Crack/exp0.jpg": ("crack",),
        "MT_Free/exp0.jpg": (), "MT_Free/exp1.jpg": ()}


def test_neu_seg_real_labels_are_plausible(neu_seg):
    pairs = neu_seg_labels(neu_seg)
    assert len(pairs) > 1000
    per_class = collections.Counter(label for _, labels in pairs for label in labels)
    assert set(per_class) == set(NEU_CLASSES)
    assert all(per_class[c] > 0.2 * len(pairs) for c in NEU_CLASSES)
    multi = sum(len(labels) >= 2 for _, labels in pairs) / len(pairs)
    assert 0.1 < multi < 0.3, f"README: about a fifth of NEU-Seg images hold two or more classes; got {multi:.2f}"


def test_magnetic_tile_real_labels(magnetic_tile):
    data = load_multilabel(magnetic_tile)
    assert data.classes == MAGNETIC_TILE_CLASSES
    counts = collections.Counter(s.labels for s in data.samples)
    assert counts == {("blowhole",): 81, ("break",): 59, ("crack",): 40, ("fray",): 22, ("uneven",): 72, (): 666}
    assert all(s.image.dtype == np.uint8 and s.image.ndim == 2 for s in data.samples)
    counts_matrix = cooccurrence(data.matrix())
    np.testing.assert_array_equal(counts_matrix, np.diag([81, 59, 40, 22, 72]))  # single-label: a diagonal graph


# ---------------------------------------------------------------------------------------------------------- folds


def _synthetic_set(n: int = 103) -> list[MLSample]:
    rng = np.random.default_rng(0)
    combos = [(), ("a",), ("b",), ("a", "b"), ("c",), ("a", "c")]
    image = np.zeros((2, 2), np.uint8)
    return [MLSample(f"s{i}", image, combos[rng.choice(len(combos), p=[.3, .25, .2, .1, .1, .05])]) for i in range(n)]


def test_folds_are_disjoint_covering_and_stratified():
    samples = _synthetic_set()
    folds = stratified_multilabel_folds(samples, 5, seed=1)
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(len(samples))) and len(set(flat)) == len(flat)
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for combo in {s.labels for s in samples}:
        per_fold = [sum(samples[i].labels == combo for i in f) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1, (combo, per_fold)
    assert stratified_multilabel_folds(samples, 5, seed=1) == folds
    assert stratified_multilabel_folds(samples, 5, seed=2) != folds
    assert stratified_multilabel_folds(MultiLabelSet(samples, ("a", "b", "c")), 5, seed=1) == folds


def test_fold_and_split_errors_and_split_proportions():
    samples = _synthetic_set(10)
    with pytest.raises(ValueError, match="at least 2"):
        stratified_multilabel_folds(samples, 1, 0)
    with pytest.raises(ValueError, match="cannot cut 10 images into 11 folds"):
        stratified_multilabel_folds(samples, 11, 0)
    samples = _synthetic_set()
    train, held = stratified_multilabel_split(samples, 0.2, seed=0)
    assert sorted(train + held) == list(range(len(samples))) and not set(train) & set(held)
    assert abs(len(held) - 0.2 * len(samples)) <= 3
