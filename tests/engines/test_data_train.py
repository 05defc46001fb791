"""Data readers, splits, the tile sampler, training with resume, and the image-level metrics."""
from __future__ import annotations

import json
import logging
import shutil

import cv2
import numpy as np
import pytest

from engines.data.segmentation import DatasetError, TileSampler, load_dataset, stratified_split
from engines.evaluate import image_level_metrics
from inspection_core.tiling import plan_tiles


def make_generic_set(root, n=8, size=(150, 170), seed=0):
    """DIR/images + DIR/masks with bright squares as defects on half of the images."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = rng.normal(100, 8, size).clip(0, 255).astype(np.uint8)
        mask = np.zeros(size, np.uint8)
        if i % 2 == 0:
            y, x = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
            image[y:y + 20, x:x + 20] = 220
            mask[y:y + 20, x:x + 20] = 255
            cv2.imwrite(str(root / "masks" / f"img{i}.png"), mask)
        cv2.imwrite(str(root / "images" / f"img{i}.png"), image)
    return root


def test_generic_format_reads_masks_and_treats_missing_ones_as_defect_free(tmp_path):
    samples = load_dataset(make_generic_set(tmp_path / "set"))
    assert len(samples) == 8
    assert [s.defective for s in samples] == [i % 2 == 0 for i in range(8)]
    assert all(s.mask.shape == s.image.shape and s.mask.dtype == bool for s in samples)
    assert samples[0].mask.sum() == 400


def test_mask_of_another_size_is_refused(tmp_path):
    root = make_generic_set(tmp_path / "set", n=2)
    cv2.imwrite(str(root / "masks" / "img0.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match="must match"):
        load_dataset(root)


def test_unknown_layout_and_missing_folder_say_what_works(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "odd").mkdir()
    with pytest.raises(DatasetError, match="images/"):
        load_dataset(tmp_path / "odd")


def test_corrupt_image_is_named(tmp_path):
    root = make_generic_set(tmp_path / "set", n=2)
    (root / "images" / "img1.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match="img1.png"):
        load_dataset(root)


def test_a_limit_reads_only_the_images_it_picks_spread_over_the_folder(tmp_path):
    from engines.inputs import named_images

    root = make_generic_set(tmp_path / "set", n=8)
    (root / "images" / "img3.png").write_bytes(b"\x89PNG garbage")  # not among the 3 picked: never read
    assert [s.name for s in load_dataset(root, limit=3)] == ["img0.png", "img4.png", "img7.png"]
    assert [name for name, _ in named_images(root, 3)] == ["img0.png", "img4.png", "img7.png"]
    with pytest.raises(DatasetError, match="img3.png"):
        load_dataset(root)


def test_a_limit_on_the_magnetic_tile_layout_picks_across_its_classes(magnetic_tile):
    picked = load_dataset(magnetic_tile, limit=5)  # the real layout: first and last of the sorted listing, and between
    everything = load_dataset(magnetic_tile)
    assert [s.name for s in picked] == [everything[i].name for i in (0, 235, 470, 704, 939)]
    assert all(np.array_equal(a.mask, everything[i].mask) for a, i in zip(picked, (0, 235, 470, 704, 939)))


def test_stratified_split_keeps_class_proportions(tmp_path):
    samples = load_dataset(make_generic_set(tmp_path / "set", n=20))
    train, held = stratified_split(samples, 0.2, seed=3)
    assert sorted(train + held) == list(range(20)) and not set(train) & set(held)
    assert sum(samples[i].defective for i in held) == 2 and len(held) == 4
    assert stratified_split(samples, 0.2, seed=3) == (train, held)


def test_defect_aware_sampler_puts_defects_in_crops(tmp_path):
    samples = load_dataset(make_generic_set(tmp_path / "set", n=8))
    always = TileSampler(samples, tile=64, defect_fraction=1.0, seed=0, augment=False)
    tiles, masks = always.batch(32)
    assert tiles.shape == (32, 64, 64) and tiles.dtype == np.uint8
    assert all(m.any() for m in masks), "every defect-centred crop must hold defect pixels"
    never = TileSampler(samples, tile=64, defect_fraction=0.0, seed=0)
    assert np.mean([m.any() for m in never.batch(64)[1]]) < 0.5


def test_sampler_pads_images_smaller_than_a_tile(tmp_path):
    samples = load_dataset(make_generic_set(tmp_path / "set", n=2, size=(40, 50)))
    tiles, masks = TileSampler(samples, tile=64, seed=1).batch(4)
    assert tiles.shape == (4, 64, 64) and masks.shape == (4, 64, 64)


@pytest.mark.slow
def test_training_writes_weights_and_resumes_from_its_checkpoint(tmp_path, caplog):
    from engines.backends.base import load_engine
    from engines.train import TrainSettings, train_segmentation

    data = make_generic_set(tmp_path / "set", n=6, size=(128, 128))
    settings = TrainSettings(data=str(data), out=str(tmp_path / "run"), epochs=1, steps_per_epoch=2, batch=4,
                             holdout=0.34, threads=2)
    first = train_segmentation(settings, progress=False)
    assert first["epoch"] == 1 and np.isfinite(first["loss"])
    settings.epochs = 2
    second = train_segmentation(settings, progress=False)
    assert second["epoch"] == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [h["epoch"] for h in config["training"]["history"]] == [1, 2], "resume must keep the first epoch"
    assert config["model"] == "bffn" and config["tile"] == 128
    engine = load_engine(tmp_path / "run", "onnxruntime", threads=1)
    assert engine.infer(np.zeros((1, 1, 128, 128), np.float32)).shape == (1, 2, 128, 128)

    shutil.rmtree(tmp_path / "run" / "best")  # lost between sessions: the next epoch writes it again, whatever its F1
    settings.epochs = 3
    with caplog.at_level(logging.WARNING, logger="engines.train"):
        train_segmentation(settings, progress=False)
    assert "holds no weights, though epoch" in caplog.text
    best = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert best["training"]["epoch"] == 3


def test_image_level_metrics_follow_the_paper_definitions():
    m = image_level_metrics([True, True, True, False, False], [True, True, False, True, False])
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["fp_fn"]) == (2, 1, 1, 1, 2)
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-4) and m["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-4)


@pytest.mark.shared_data
def test_magnetic_tile_reader_matches_the_data_readme(magnetic_tile):
    samples = load_dataset(magnetic_tile)
    assert len(samples) == 940
    counts = {}
    for s in samples:
        counts[s.category] = counts.get(s.category, 0) + 1
    assert counts == {"blowhole": 81, "break": 59, "crack": 40, "fray": 22, "uneven": 72, None: 666}


@pytest.mark.slow
def test_training_can_start_from_existing_weights(tmp_path, untrained_bffn):
    from safetensors.numpy import load_file

    from engines.train import TrainSettings, train_segmentation

    data = make_generic_set(tmp_path / "set", n=4, size=(128, 128))
    settings = TrainSettings(data=str(data), out=str(tmp_path / "run"), epochs=1, steps_per_epoch=1, batch=2,
                             holdout=0.0, threads=2, lr=1e-12, seed=5, init=str(untrained_bffn))
    train_segmentation(settings, progress=False)
    start = load_file(str(untrained_bffn / "model.safetensors"))
    trained = load_file(str(tmp_path / "run" / "model.safetensors"))
    key = "layer1.0.conv1.weight"
    np.testing.assert_allclose(trained[key].astype(np.float32), start[key].astype(np.float32), atol=2e-3)


def test_grid_sampling_cuts_the_station_tilers_tiles(tmp_path):
    samples = load_dataset(make_generic_set(tmp_path / "set", n=6, size=(150, 170)))
    sampler = TileSampler(samples, tile=64, defect_fraction=0.5, seed=0, augment=False, overlap=16)
    cuts = {s.name: [s.image[y:y + 64, x:x + 64] for y, x in plan_tiles(s.image.shape, 64, 16).origins]
            for s in samples}
    tiles, masks = sampler.batch(40)
    for tile in tiles:
        assert any(np.array_equal(tile, c) for cs in cuts.values() for c in cs), "every crop is a tiler tile"
    assert np.mean([m.any() for m in masks]) > 0.4, "defect-aware: about half the tiles hold a defect"
    only = TileSampler(samples, tile=64, defect_fraction=1.0, seed=1, augment=False, overlap=16)
    assert all(m.any() for m in only.batch(16)[1])
