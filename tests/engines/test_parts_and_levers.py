"""Issue 25: splits by physical part, exposure normalisation and mirrored borders that travel with the weights, and
the sampling levers (exposure augmentation, edge defects, pasted defects); recall per exposure and at the edge."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from engines.acceptance import Goals, auc, breakdown, class_separation, held_out_goals
from engines.data.parts import exposure_of, part_ids
from engines.data.segmentation import (
    EDGE_PX,
    SegSample,
    TileSampler,
    fold_split_by_part,
    leaked_parts,
    load_dataset,
    prepared_sample,
    three_way_split,
)
from engines.evaluate import at_edge, image_level_metrics
from inspection_core.preprocess import InputSpec, add_border, apply_gain, crop_border, prepare_image


def _surface(rng, size=(120, 160)) -> np.ndarray:
    """A tile's own texture: random grey structure, blurred a little (a surface, not noise)."""
    return cv2.GaussianBlur(rng.normal(0, 1, size).astype(np.float32), (0, 0), 1.5)


def _shot(surface: np.ndarray, gain: float, rng) -> np.ndarray:
    """One exposure of a surface: the same texture at another gain, with a little sensor noise."""
    image = 40 * gain + 12 * gain * surface / surface.std() + rng.normal(0, 1, surface.shape)
    return image.clip(0, 255).astype(np.uint8)


def _tiles(parts: list[tuple[str, list[tuple[int, int]]]], seed=0) -> list[SegSample]:
    """Magnetic-tile style samples: each part (class, [(exposure, running number), ...]) is one surface shot at
    several exposures."""
    rng = np.random.default_rng(seed)
    out = []
    for category, shots in parts:
        surface = _surface(rng)
        for exposure, number in shots:
            image = _shot(surface, 0.6 + 0.3 * exposure, rng)
            mask = np.zeros(image.shape, bool)
            if category != "free":
                mask[50:60, 70:80] = True
            folder = "MT_Free" if category == "free" else f"MT_{category.title()}"
            out.append(SegSample(f"{folder}/exp{exposure}_num_{number}.jpg", image, mask,
                                 None if category == "free" else category))
    return out


def test_exposure_is_read_from_magnetic_tile_names():
    assert exposure_of("MT_Break/exp2_num_276373.jpg") == 2
    assert exposure_of("exp6_num_10.png") == 6
    assert exposure_of("MT_Free/img3.jpg") is None


def test_parts_join_runs_of_numbers_and_the_same_surface_under_other_names():
    samples = _tiles([
        ("crack", [(1, 100), (2, 120), (3, 140)]),      # one run: one part
        ("crack", [(1, 5000), (3, 5030)]),              # another run: another part ...
        ("free", [(1, 100), (2, 118)]),                 # same numbers as the crack run, other class: its own part
        ("free", [(4, 90000), (5, 90020)]),
    ])
    # ... and the first surface shot again much later under another number (a second session)
    rng = np.random.default_rng(0)
    first = _surface(rng)
    again = SegSample("MT_Crack/exp5_num_9000.jpg", _shot(first, 2.0, np.random.default_rng(9)),
                      samples[0].mask.copy(), "crack")
    samples.append(again)
    grouping = part_ids(samples)
    ids = grouping.ids
    assert ids[0] == ids[1] == ids[2], "a run of rising numbers in one class is one part"
    assert ids[3] == ids[4] and ids[3] != ids[0]
    assert ids[5] == ids[6] and ids[5] != ids[0], "the same numbers in another class are another part"
    assert ids[7] == ids[8] and ids[7] != ids[5]
    assert ids[9] == ids[0], "the same surface under a distant number is joined by its image"
    assert grouping.parts == 4 and grouping.by_image >= 1
    assert grouping.similar_within > 0.75


def _write_folder(data, samples: list[SegSample]):
    """The samples as a magnetic-tile folder (MT_Class/NAME.jpg, NAME.png masks for defects)."""
    for s in samples:
        (data / s.name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / s.name), s.image)
        if s.defective:
            cv2.imwrite(str((data / s.name).with_suffix(".png")), s.mask.astype(np.uint8) * 255)
    return data


def test_loading_warns_of_images_whose_class_and_mask_disagree(tmp_path, caplog):
    import logging

    from engines.data.segmentation import label_conflicts, load_dataset

    samples = _tiles([("crack", [(1, 10), (2, 30)]), ("free", [(1, 90_000)])])
    samples[1].mask[:] = False  # a crack image whose mask marks nothing (magnetic-tile has three such uneven ones)
    data = _write_folder(tmp_path / "mt", samples)
    (data / "MT_Crack" / "exp1_num_10.png").unlink()  # a defect image without its mask file reads as empty too
    with caplog.at_level(logging.WARNING, logger="engines.data.segmentation"):
        loaded = load_dataset(data)
    assert label_conflicts(loaded) == (["MT_Crack/exp1_num_10.jpg", "MT_Crack/exp2_num_30.jpg"], [])
    assert "2 image(s) of" in caplog.text and "are in a defect class but their mask is empty (or missing)" in caplog.text
    assert "MT_Crack/exp2_num_30.jpg" in caplog.text and "check those masks" in caplog.text


def test_a_split_by_part_keeps_every_view_of_a_part_on_one_side_and_pinned_parts_out_of_training():
    parts = [("crack", [(e, 1000 * p + 20 * e) for e in range(1, 7)]) for p in range(10)]
    parts += [("free", [(e, 500_000 + 1000 * p + 20 * e) for e in range(1, 4)]) for p in range(20)]
    samples = _tiles(parts)
    part_of = part_ids(samples).ids
    pinned = {samples[0].name}
    split = three_way_split(samples, 0.2, 0.2, seed=3, parts=part_of, not_train=pinned)
    side_of = {n: side for side, names in split.items() for n in names}
    assert sorted(side_of) == sorted(s.name for s in samples)
    for part in set(part_of):
        sides = {side_of[s.name] for s, p in zip(samples, part_of) if p == part}
        assert len(sides) == 1, f"part {part} is split across {sides}"
    assert side_of[samples[0].name] != "train"
    for side, share in (("validation", 0.2), ("holdout", 0.2)):
        crack = [n for n in split[side] if n.startswith("MT_Crack")]
        assert abs(len(crack) - share * 60) <= 6, (side, len(crack))
    named = dict(zip((s.name for s in samples), part_of))
    assert leaked_parts(split, named) == {"validation": 0, "holdout": 0}
    by_file = three_way_split(samples, 0.2, 0.2, seed=3)
    assert sum(leaked_parts(by_file, named).values()) > 10, "a split by file leaks a part's other exposures"
    crack = {s.name for s in samples if s.category == "crack"}
    pinned_all = three_way_split(samples, 0.1, 0.1, seed=3, parts=part_of, not_train=crack)
    assert not crack & set(pinned_all["train"]), "pinned parts stay out of training even past the shares"


def test_engines_split_by_part_records_the_parts_and_refuses_keep(tmp_path, capsys):
    from engines.cli import main

    data = _write_folder(tmp_path / "mt", _tiles([("crack", [(1, 10 + 1000 * p), (2, 30 + 1000 * p)]) for p in range(6)]
                                                 + [("free", [(1, 90_000 + 1000 * p), (3, 90_040 + 1000 * p)])
                                                    for p in range(10)]))
    out = tmp_path / "split.json"
    assert main(["split", "--data", str(data), "--out", str(out), "--validation", "0.2", "--holdout", "0.2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parts"] == 16 and summary["leaked"] == {"validation": 0, "holdout": 0}
    split = json.loads(out.read_text())
    assert split["group_by"] == "part" and len(split["parts"]) == 32
    for side in ("validation", "holdout"):
        for name in split[side]:
            sibling = [n for n, p in split["parts"].items() if p == split["parts"][name]]
            assert all(n in split[side] for n in sibling)
    assert main(["split", "--data", str(data), "--out", str(out), "--keep", str(out)]) == 2
    assert "--group-by file" in capsys.readouterr().err


def test_k_fold_splits_by_part_hold_out_every_image_once_and_keep_parts_whole(tmp_path, capsys):
    """`engines split --folds 5 --fold I` (issue 25: decisions on more than ~100 images): the five held-out parts
    are disjoint and cover every image, no part is on two sides of a fold, each fold's validation is near its share,
    and a pinned part never trains."""
    from engines.cli import main

    parts = [("crack", [(e, 1000 * p + 20 * e) for e in range(1, 4)]) for p in range(10)]
    parts += [("free", [(e, 500_000 + 1000 * p + 20 * e) for e in range(1, 4)]) for p in range(25)]
    samples = _tiles(parts)
    part_of = part_ids(samples).ids
    pinned = {samples[0].name}
    held = []
    for fold in range(5):
        split = fold_split_by_part(samples, part_of, 5, fold, 0.2, seed=1, not_train=pinned)
        side_of = {n: side for side, names in split.items() for n in names}
        assert sorted(side_of) == sorted(s.name for s in samples)
        for part in set(part_of):
            assert len({side_of[s.name] for s, p in zip(samples, part_of) if p == part}) == 1
        assert side_of[samples[0].name] != "train"
        crack = [n for n in split["validation"] if n.startswith("MT_Crack")]
        assert 3 <= len(crack) <= 9, ("validation's share of the class (0.2 of 30 images)", len(crack))
        held.append(set(split["holdout"]))
    assert sum(map(len, held)) == len(samples) == len(set().union(*held)), "every image held out exactly once"
    assert all(abs(len(h) - len(samples) / 5) <= 6 for h in held)
    with pytest.raises(Exception, match="--fold 5: with --folds 5, choose a fold from 0 to 4"):
        fold_split_by_part(samples, part_of, 5, 5, 0.2, seed=1)
    with pytest.raises(Exception, match="--folds 1: k-fold needs at least 2 folds .*--holdout for a single split"):
        fold_split_by_part(samples, part_of, 1, 0, 0.2, seed=1)
    with pytest.raises(Exception, match="fold 25 would hold no part .*35 parts, at most 25 of one class.*at most 25"):
        fold_split_by_part(samples, part_of, 30, 29, 0.2, seed=1)  # more folds than parts: a fold judges nothing
    assert fold_split_by_part(samples, part_of, 25, 24, 0.0, seed=1)["holdout"], "25 folds: each holds a free part"

    data = _write_folder(tmp_path / "mt", samples)
    out = tmp_path / "fold2.json"
    assert main(["split", "--data", str(data), "--out", str(out), "--folds", "5", "--fold", "2",
                 "--validation", "0.2", "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["fold"] == "2 of 5"
    written = json.loads(out.read_text())
    assert written["folds"] == {"k": 5, "fold": 2, "seed": 1} and written["group_by"] == "part"
    assert main(["split", "--data", str(data), "--out", str(out), "--folds", "5"]) == 2
    assert "--folds K and --fold I go together" in capsys.readouterr().err
    assert main(["split", "--data", str(data), "--out", str(out), "--folds", "5", "--fold", "0",
                 "--group-by", "file"]) == 2


def test_a_training_share_keeps_whole_parts_of_each_class_nested_and_leaves_the_judging_parts_alone(tmp_path,
                                                                                                      capsys):
    """`engines split --train-share F` (issue 25's cost of the next step: a learning curve over training parts)."""
    from engines.cli import main
    from engines.data.segmentation import thin_training

    parts = [("crack", [(e, 1000 * p + 20 * e) for e in range(1, 4)]) for p in range(10)]
    parts += [("free", [(e, 500_000 + 1000 * p + 20 * e) for e in range(1, 3)]) for p in range(20)]
    samples = _tiles(parts)
    part_of = part_ids(samples).ids
    full = fold_split_by_part(samples, part_of, 5, 0, 0.2, seed=1)
    part = dict(zip((s.name for s in samples), part_of))

    def trained_parts(split, cls):
        return {part[n] for n in split["train"] if n.startswith(cls)}

    kept = {}
    for share in (0.25, 0.5, 1.0):
        split = thin_training(full, samples, part_of, share, seed=3)
        assert (split["validation"], split["holdout"]) == (full["validation"], full["holdout"])
        assert sorted(split["train"] + split["unused"]) == full["train"]
        for cls in ("MT_Crack", "MT_Free"):
            n = len(trained_parts(full, cls))
            assert len(trained_parts(split, cls)) == -(-n * share // 1), (share, cls)
        assert not {part[n] for n in split["train"]} & {part[n] for n in split["unused"]}, "parts stay whole"
        kept[share] = {part[n] for n in split["train"]}
    assert kept[0.25] < kept[0.5] < kept[1.0], "with one seed a smaller share keeps a subset of a larger one's"
    assert thin_training(full, samples, part_of, 0.5, seed=4)["train"] != thin_training(
        full, samples, part_of, 0.5, seed=3)["train"]
    assert len(trained_parts(thin_training(full, samples, part_of, 0.01, seed=3), "MT_Crack")) == 1, "one a class"

    data = _write_folder(tmp_path / "mt", samples)
    out = tmp_path / "half.json"
    assert main(["split", "--data", str(data), "--out", str(out), "--folds", "5", "--fold", "0", "--validation", "0.2",
                 "--seed", "1", "--train-share", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert written["train"] == thin_training(full, samples, part_of, 0.5, seed=1)["train"]
    assert written["train_share"] == {"share": 0.5, "seed": 1} and summary["unused"] == len(written["unused"]) > 0
    assert summary["train_parts"] == len({part[n] for n in written["train"]})
    for bad in ("0", "1.5"):
        assert main(["split", "--data", str(data), "--out", str(out), "--train-share", bad]) == 2
        assert "--train-share" in capsys.readouterr().err
    assert main(["split", "--data", str(data), "--out", str(out), "--train-share", "0.5", "--group-by", "file"]) == 2
    assert "keeps whole training parts" in capsys.readouterr().err


@pytest.mark.shared_data
def test_magnetic_tile_parts_hold_the_issues_example_and_the_shipped_split_by_part_leaks_nothing(magnetic_tile):
    from pathlib import Path

    samples = load_dataset(magnetic_tile)
    grouping = part_ids(samples)
    ids = dict(zip((s.name for s in samples), grouping.ids))
    example = [f"MT_Break/exp{k}_num_{n}.jpg" for k, n in ((2, 276373), (3, 276387), (4, 276401))]
    assert len({ids[n] for n in example}) == 1
    assert 150 <= grouping.parts <= 230, grouping.parts
    root = Path(__file__).resolve().parents[2]
    by_part = json.loads((root / "docs/splits/magnetic-tile-by-part.json").read_text())
    assert leaked_parts(by_part, ids) == {"validation": 0, "holdout": 0}
    by_file = json.loads((root / "engines/weights/bffn-magnetic-tile/split.json").read_text())
    leaks = leaked_parts(by_file, ids)
    assert leaks["validation"] > 0.8 * len(by_file["validation"]), "the file-wise split measures known parts"


def test_gain_moves_the_median_and_takes_out_an_exposure_change():
    rng = np.random.default_rng(1)
    surface = _surface(rng, (200, 200))
    dark, bright = _shot(surface, 1.0, rng), _shot(surface, 2.2, rng)
    assert abs(float(np.median(apply_gain(dark, 110))) - 110) <= 2
    assert apply_gain(dark, 0) is dark
    spec = InputSpec(gain_target=110)
    a, b = prepare_image(dark, spec).astype(float), prepare_image(bright, spec).astype(float)
    assert np.abs(a - b).mean() < 0.25 * np.abs(dark.astype(float) - bright.astype(float)).mean()
    assert np.array_equal(apply_gain(np.zeros((8, 8), np.uint8), 110), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="gain_target"):
        InputSpec(gain_target=300)


def test_border_mirrors_context_on_every_side_and_crops_back():
    image = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30).astype(np.uint8)
    spec = InputSpec(border=4)
    bordered = add_border(image, spec)
    assert bordered.shape == (28, 38)
    assert np.array_equal(bordered[4:-4, 4:-4], image)
    assert np.array_equal(bordered[3, 4:-4], image[1]), "mirrored about the edge row (which is not repeated)"
    assert np.array_equal(bordered[4:-4, 0], image[:, 4])
    assert np.array_equal(crop_border(bordered, spec), image)
    assert add_border(image, InputSpec()) is image


class _DarknessEngine:
    """An engine whose defect probability at a pixel is its darkness: a pure per-pixel function, so the stitched
    map of any tiling equals that function of the frame; it records the tiles it is given."""

    def __init__(self, spec: InputSpec, tile: int = 32) -> None:
        self.spec, self.tile, self.engine_id, self.seen = spec, tile, "darkness@test", []

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(x.copy())
        grey = x[:, 0] * self.spec.std + self.spec.mean
        p = np.clip(1.0 - grey, 0.0, 1.0)
        return np.stack([1.0 - p, p], axis=1).astype(np.float32)


def test_the_inspector_scores_a_bordered_frame_and_returns_the_frames_own_map():
    from inspection.inspector import Inspector
    from inspection_core.verdict import DecisionRules

    rng = np.random.default_rng(2)
    frame = rng.integers(60, 200, (70, 90)).astype(np.uint8)
    frame[0:3, 0:5] = 0  # a dark defect at the top-left corner
    plain = Inspector(_DarknessEngine(InputSpec()), overlap=8, batch=4, rules=DecisionRules(0.9, 5))
    engine = _DarknessEngine(InputSpec(border=8))
    bordered = Inspector(engine, overlap=8, batch=4, rules=DecisionRules(0.9, 5))
    a, _ = plain.score_map(frame)
    b, _ = bordered.score_map(frame)
    assert a.shape == b.shape == frame.shape
    np.testing.assert_allclose(a, b, atol=1e-5)
    first = engine.seen[0][0, 0] * engine.spec.std + engine.spec.mean  # the first tile, back in 0..1
    expected = add_border(frame, engine.spec)[:32, :32] / 255.0
    np.testing.assert_allclose(first, expected, atol=1e-5)
    assert first[8, 8] == 0.0 and first[6, 6] == 0.0, "the corner defect has mirrored context above and left"
    streaming = Inspector(engine, overlap=8, batch=4, rules=DecisionRules(0.9, 5), streaming=True)
    assert streaming.streams is None, "weights that need the whole frame are not streamed row by row"


def test_the_context_pass_scores_the_frame_shrunk_to_one_tile_and_joins_the_tiles_by_the_maximum():
    from inspection.inspector import Inspector
    from inspection_core.preprocess import context_map, context_tile
    from inspection_core.verdict import DecisionRules

    rng = np.random.default_rng(3)
    frame = rng.integers(60, 200, (70, 90)).astype(np.uint8)
    frame[:, :30] = 20  # a dark band a third of the frame wide
    plain = Inspector(_DarknessEngine(InputSpec()), overlap=8, batch=4, rules=DecisionRules(0.9, 5))
    engine = _DarknessEngine(InputSpec(context=True))
    context = Inspector(engine, overlap=8, batch=4, rules=DecisionRules(0.9, 5))
    assert context.tile_count(frame.shape) == plain.tile_count(frame.shape) + 1
    tiles, _ = plain.score_map(frame)
    joined, timings = context.score_map(frame)
    last = engine.seen[-1]
    assert last.shape == (1, 1, 32, 32), "one more network call: the whole frame as one tile"
    np.testing.assert_allclose(last[0, 0] * 0.25 + 0.5, context_tile(frame, 32) / 255.0, atol=1e-5)
    shrunk = np.clip(1.0 - (last[0, 0] * 0.25 + 0.5), 0, 1)
    np.testing.assert_allclose(joined, np.maximum(tiles, context_map(shrunk, frame.shape)), atol=1e-5)
    assert (joined >= tiles - 1e-6).all() and (joined > tiles + 0.05).any(), "the shrunk frame's map counts too"
    assert set(timings) == {"prepare", "tile", "infer", "stitch"}
    streaming = Inspector(engine, overlap=8, batch=4, rules=DecisionRules(0.9, 5), streaming=True)
    assert streaming.streams is None, "the context pass needs the whole frame: not streamed row by row"


def test_context_crops_are_whole_images_shrunk_as_the_station_shrinks_a_frame():
    from inspection_core.preprocess import context_tile

    spec = InputSpec(border=16, context=True)
    defect = _edge_and_middle(3)
    clean = [SegSample(f"free/{i}.png", np.full((96, 120), 150 + i, np.uint8), np.zeros((96, 120), bool), None)
             for i in range(3)]
    samples = [prepared_sample(s, spec) for s in defect + clean]
    sampler = TileSampler(samples, 32, defect_fraction=1.0, seed=0, augment=False, overlap=8, border=16,
                          whole_fraction=1.0)
    for _ in range(10):  # defect_fraction 1: always a defective image, shrunk whole, its mask alike
        image, mask = sampler.crop()
        assert image.shape == mask.shape == (32, 32)
        np.testing.assert_array_equal(image, context_tile(defect[0].image, 32))
        np.testing.assert_array_equal(mask.astype(bool), context_tile(defect[0].mask, 32))
    sampler = TileSampler(samples, 32, defect_fraction=0.0, seed=0, augment=False, overlap=8, border=16,
                          whole_fraction=1.0)
    seen = {int(sampler.crop()[0][0, 0]) for _ in range(60)}
    assert {150, 151, 152} <= seen, "with defect_fraction 0 the images are drawn uniformly"
    off = [TileSampler(samples, 32, defect_fraction=0.5, seed=4, overlap=8, border=16, **extra).batch(6)
           for extra in ({}, {"whole_fraction": 0.0})]
    np.testing.assert_array_equal(off[0][0], off[1][0])  # without the lever the crops are those of before


def _edge_and_middle(n=6, size=(96, 96)) -> list[SegSample]:
    out = []
    for i in range(n):
        image = np.full(size, 100, np.uint8)
        mask = np.zeros(size, bool)
        mask[0:4, 40:50] = True        # a chip at the top edge
        mask[50:70, 50:70] = True      # and a large defect inside
        image[mask] = 30
        out.append(SegSample(f"crack/{i}.png", image, mask, "crack"))
    return out


def test_edge_fraction_centres_defect_crops_on_defects_at_the_frames_edge():
    spec = InputSpec(border=16)
    samples = [prepared_sample(s, spec) for s in _edge_and_middle()]

    def edge_share(fraction):
        sampler = TileSampler(samples, 32, defect_fraction=1.0, seed=0, augment=False, overlap=8, border=16,
                              edge_fraction=fraction)
        hits = 0
        for _ in range(200):
            image, mask = sampler.crop()
            hits += bool(mask.any()) and image.min() == 30 and _holds_the_chip(image)
        return hits / 200

    assert edge_share(1.0) > 0.95
    assert edge_share(0.0) < 0.5


def _holds_the_chip(tile: np.ndarray) -> bool:
    """The chip is 4 rows deep and mirrored above the edge: 7 dark rows in a band 10 wide."""
    dark_rows = (tile == 30).sum(axis=1)
    return bool(((dark_rows > 0) & (dark_rows <= 10)).sum() >= 5)


def test_pasted_defects_land_on_defect_free_crops_with_their_masks():
    defect = _edge_and_middle(2)
    clean = [SegSample(f"free/{i}.png", np.full((96, 96), 150, np.uint8), np.zeros((96, 96), bool), None)
             for i in range(4)]
    sampler = TileSampler(defect + clean, 64, defect_fraction=0.0, seed=1, augment=False, overlap=16,
                          paste_fraction=1.0)
    assert sampler.pastes, "the defect regions of the training images are the paste bank"
    pasted = 0
    for _ in range(60):
        image, mask = sampler.crop()
        if mask.any() and image.mean() > 120:  # a crop of a clean image that got a defect
            pasted += 1
            assert image[mask.astype(bool)].mean() < 100, "the defect is dark where its mask says"
            assert np.median(image[~mask.astype(bool)]) == 150, "the surface around it is untouched"
    assert pasted > 20
    plain = TileSampler(defect + clean, 64, defect_fraction=0.0, seed=1, augment=False, overlap=16)
    crops = [plain.crop() for _ in range(60)]
    assert not any(mask.any() for image, mask in crops if image.mean() > 120), "no paste without the lever"


def test_exposure_augmentation_spans_the_lightings():
    samples = [SegSample("free/0.png", np.full((64, 64), 100, np.uint8), np.zeros((64, 64), bool), None)]
    means = {}
    for kind in ("jitter", "exposure"):
        sampler = TileSampler(samples, 64, defect_fraction=0.0, seed=0, photometric=kind)
        means[kind] = [float(sampler.crop()[0].mean()) for _ in range(300)]
    assert max(means["jitter"]) - min(means["jitter"]) < 45
    lo, hi = np.percentile(means["exposure"], [5, 95])
    assert lo < 65 and hi > 150, (lo, hi)
    with pytest.raises(ValueError, match="photometric"):
        TileSampler(samples, 64, photometric="neon")


def test_recall_and_false_alarms_per_exposure_and_at_the_edge_and_their_spread_goal():
    rows = []
    for exposure in (1, 2):
        for k in range(10):
            found = k < (9 if exposure == 1 else 6)
            rows.append({"name": f"exp{exposure}_d{k}", "defective": True, "category": "crack", "exposure": exposure,
                         "at_edge": k % 2 == 0, "verdict": "FAIL" if found else "PASS"})
        for k in range(20):
            rows.append({"name": f"exp{exposure}_c{k}", "defective": False, "category": None, "exposure": exposure,
                         "at_edge": None, "verdict": "FAIL" if k < exposure - 1 else "PASS"})
    rows += [{"name": f"exp0_d{k}", "defective": True, "category": "fray", "exposure": 0, "at_edge": False,
              "verdict": "PASS"} for k in range(2)]  # two odd images: listed, but too few to count in the spread
    table = breakdown(rows, "exposure")
    assert table["0"]["recall"] == 0.0
    assert table["1"]["recall"] == 0.9 and table["2"]["recall"] == 0.6
    assert table["1"]["false_alarm_rate"] == 0.0 and table["2"]["false_alarm_rate"] == 0.05
    edge = breakdown(rows, "at_edge")
    assert set(edge) == {"True", "False"} and edge["True"]["defective"] == 10 and edge["False"]["defective"] == 12
    metrics = image_level_metrics([r["defective"] for r in rows], [r["verdict"] == "FAIL" for r in rows])
    metrics["pixel_iou"] = 0.6
    checks = {g["goal"]: g for g in held_out_goals(metrics, rows, Goals())}
    assert checks["recall spread across 2 exposures (max - min)"] == {
        "goal": "recall spread across 2 exposures (max - min)", "at_most": 0.05, "value": 0.3, "met": False}
    assert checks["false alarms spread across 2 exposures (max - min)"]["met"]
    assert at_edge(np.pad(np.ones((3, 3), bool), ((0, 20), (EDGE_PX + 4, 20))))
    assert not at_edge(np.pad(np.ones((3, 3), bool), EDGE_PX + 1))


@pytest.mark.slow
def test_training_with_the_levers_records_its_input_and_the_station_prepares_frames_the_same_way(tmp_path, caplog,
                                                                                                  monkeypatch):
    from engines.cli import main
    from engines.weights import resolve_weights

    samples = _tiles([("crack", [(1, 10 + 1000 * p), (5, 30 + 1000 * p)]) for p in range(3)]
                     + [("free", [(2, 90_000 + 1000 * p)]) for p in range(3)])
    data = tmp_path / "mt"
    for s in samples:
        (data / s.name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / s.name), s.image)
        if s.defective:
            cv2.imwrite(str((data / s.name).with_suffix(".png")), s.mask.astype(np.uint8) * 255)
    run = tmp_path / "run"
    assert main(["train", "bffn", "--data", str(data), "--out", str(run), "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch", "4", "--threads", "2", "--quiet", "--gain-target", "110", "--border", "16",
                 "--photometric", "exposure", "--edge-fraction", "0.5", "--paste-fraction", "0.5",
                 "--context", "0.3"]) == 0
    bundle = resolve_weights(str(run))
    assert bundle.input_spec() == InputSpec(channels=1, gain_target=110.0, border=16, context=True)
    assert "the quick validation scores whole images without the context pass" in caplog.text
    settings = json.loads((run / "config.json").read_text())["training"]["settings"]
    assert settings["photometric"] == "exposure" and settings["paste_fraction"] == 0.5
    assert main(["train", "bffn", "--data", str(data), "--out", str(tmp_path / "bad"), "--epochs", "1",
                 "--context", "1.5", "--quiet"]) == 2
    assert main(["train", "bffn", "--data", str(data), "--out", str(tmp_path / "bad"), "--epochs", "1",
                 "--context", "0.2", "--whole-crops", "0.2", "--quiet"]) == 2
    crops = tmp_path / "crops"  # whole images shrunk as crops, without the context pass on the line
    import engines.data.segmentation as segmentation

    shares = []

    class Spy(segmentation.TileSampler):
        def __init__(self, *args, **kwargs):
            shares.append(kwargs["whole_fraction"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(segmentation, "TileSampler", Spy)
    assert main(["train", "bffn", "--data", str(data), "--out", str(crops), "--epochs", "1", "--steps-per-epoch", "1",
                 "--batch", "4", "--threads", "2", "--quiet", "--whole-crops", "0.5", "--no-validate",
                 "--ema", "0.8"]) == 0
    assert resolve_weights(str(crops)).input_spec() == InputSpec()
    trained = json.loads((crops / "config.json").read_text())["training"]
    assert trained["settings"]["whole_crops"] == 0.5 and trained["settings"]["ema"] == 0.8
    assert trained["history"][0]["ema"] == 0.8, "the average was kept"
    assert main(["train", "bffn", "--data", str(data), "--out", str(tmp_path / "bad-ema"), "--epochs", "1",
                 "--steps-per-epoch", "1", "--ema", "1.5", "--quiet", "--no-validate"]) == 2
    assert shares == [0.5], "the sampler cut that share of whole-image crops"
    report = tmp_path / "eval.json"
    assert main(["eval", "--weights", str(run), "--data", str(data), "--threads", "1", "--json", str(report)]) == 0
    records = json.loads(report.read_text())
    assert records["images"] == len(samples)


def test_k_folds_by_part_never_put_one_part_on_both_sides():
    from engines.data.segmentation import stratified_folds

    samples = _tiles([("crack", [(e, 1000 * p + 20 * e) for e in range(1, 4)]) for p in range(8)]
                     + [("free", [(e, 500_000 + 1000 * p + 20 * e) for e in range(1, 3)]) for p in range(12)])
    parts = part_ids(samples).ids
    folds = stratified_folds(samples, 4, seed=0, parts=parts)
    assert sorted(i for f in folds for i in f) == list(range(len(samples)))
    fold_of = {i: k for k, f in enumerate(folds) for i in f}
    for part in set(parts):
        assert len({fold_of[i] for i, p in enumerate(parts) if p == part}) == 1
    crack = [sum(samples[i].category == "crack" for i in f) for f in folds]
    assert crack == [6, 6, 6, 6], "each class's images spread evenly over the folds"
    by_file = stratified_folds(samples, 4, seed=0)
    split_parts = sum(len({k for k, f in enumerate(by_file) for i in f if parts[i] == part}) > 1 for part in set(parts))
    assert split_parts > 5, "folds by file put one part's exposures in several folds"


def test_auc_counts_the_pairs_a_defect_outscores_and_ties_as_half():
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0 and auc([0.1], [0.9]) == 0.0
    assert auc([0.5, 0.5], [0.5]) == 0.5, "a tie is a coin toss"
    assert auc([0.3, 0.9], [0.2, 0.5, 0.9]) == pytest.approx(3.5 / 6)  # 0.3 > 0.2; 0.9 > 0.2, 0.5, = 0.9
    assert auc([], [0.1]) is None and auc([0.1], []) is None


def test_class_separation_tells_a_class_the_network_does_not_see_from_one_it_does():
    clean = [{"defective": False, "category": None, "max_score": s} for s in (0.1, 0.2, 0.3, 0.4)]
    seen = [{"defective": True, "category": "blowhole", "max_score": s} for s in (0.8, 0.9)]
    unseen = [{"defective": True, "category": "uneven", "max_score": s} for s in (0.15, 0.35)]  # among the clean
    table = class_separation(clean + seen + unseen + [{"defective": True, "category": "break"}])  # no score: out
    assert table == {"all": {"images": 4, "auc": 0.75}, "blowhole": {"images": 2, "auc": 1.0},
                     "uneven": {"images": 2, "auc": 0.5}}
    assert class_separation(seen) == {}, "without defect-free images there is nothing to separate from"


def test_the_lever_table_puts_accept_reports_side_by_side(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "lever_table", Path(__file__).resolve().parents[2] / "benchmarks" / "lever_table.py")
    lever_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lever_table)

    def report(f1, found_dark, paired=None):
        rows = {"1": {"defective": 4, "found": found_dark, "clean": 10, "false_alarms": 0,
                      "recall": found_dark / 4, "false_alarm_rate": 0.0},
                "6": {"defective": 4, "found": 4, "clean": 10, "false_alarms": 2, "recall": 1.0,
                      "false_alarm_rate": 0.2}}
        out = {"rule": {"threshold": 0.9, "min_area_px": 30}, "validation": {"f1": 0.8, "fp_fn": 5},
               "holdout": {"precision": 0.9, "recall": 0.8, "f1": f1, "fp": 2, "tn": 18, "false_alarms": 0.1,
                           "pixel_iou": 0.5, "by_exposure": rows,
                           "edge_recall": {"True": {"found": 1, "defective": 3}, "False": {"found": 4, "defective": 5}},
                           "class_recall": {"break": {"found": 1, "images": 3}}}}
        if paired:
            out["reference"] = {"paired": paired}
        return out

    fused = report(0.81, 1)
    fused["classifier"] = {"thresholds": {"uneven": 0.2, "break": 1.0},
                           "validation": {"fused": {"f1": 0.85, "fp_fn": 4}},
                           "holdout": {**report(0.88, 4)["holdout"], "class_recall": {"break": {"found": 3, "images": 3}}}}
    for name, body in (("ref", report(0.81, 1)), ("lever", report(0.9, 3, {"fixed": 4, "broken": 1, "p_value": 0.375})),
                       ("fused", fused)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "acceptance.json").write_text(json.dumps(body))
    out = tmp_path / "table.md"
    assert lever_table.main([str(tmp_path / "ref"), str(tmp_path / "lever"), str(tmp_path / "fused"), "--labels",
                             "ref,lever,fused", "--out", str(out), "--json", str(tmp_path / "t.json")]) == 0
    text = out.read_text()
    # a report of `engines accept --classifier` shows the fused verdicts, and which labels fail parts
    assert "| fused | 0.9 / 30 px + labels uneven > 0.2 | 0.85 (4) | 0.9 / 0.8 / **0.88** |" in text
    assert "| ref | 1/3 |" in text and "| fused | 3/3 |" in text, "recall per class"
    assert "| ref | 0.9 / 30 px | 0.8 (5) | 0.9 / 0.8 / **0.81** | 2 of 20 (10.0%) |" in text
    assert "+4 / -1, p = 0.375" in text and "| lever | 3/4, 0/10 | 4/4, 2/10 |" in text
    figures = json.loads((tmp_path / "t.json").read_text())
    assert figures["ref"]["recall_spread"] is None, "4 defective images per lighting are too few for the spread"
    assert figures["lever"]["false_alarm_spread"] == 0.2 and figures["lever"]["edge_recall"] == "1/3"
    assert lever_table.main([str(tmp_path / "nowhere")]) == 2


def test_the_kfold_table_adds_up_held_out_counts_over_folds_and_counts_fused_verdicts(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "kfold_table", Path(__file__).resolve().parents[2] / "benchmarks" / "kfold_table.py")
    kfold_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kfold_table)

    def report(tp, fp, fn, tn, uneven, f1, fused=None):
        held = {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "f1": f1,
                "class_recall": {"uneven": {"found": uneven, "images": 3}}}
        out = {"holdout": held, "validation": {"f1": 0.7}}
        if fused:
            out["classifier"] = {"holdout": {**held, **fused}, "validation": {"fused": {"f1": 0.8}}}
        return out

    ruled = {**report(8, 1, 2, 19, 0, 0.84), "rule": {"threshold": 0.95, "min_area_px": 30}}
    ruled["validation"]["fp"] = 3
    ruled["holdout"]["hindsight_rule"] = {"threshold": 0.9, "min_area_px": 10, "f1": 0.88}
    reports = {"accept-exposure-f0": ruled, "accept-exposure-f1": report(9, 0, 1, 20, 1, 0.95),
               "accept-exposure-gr-f0": report(8, 1, 2, 19, 0, 0.84, fused={"tp": 10, "fn": 0, "fp": 3, "tn": 17,
                                                                          "f1": 0.87})}
    for name, body in reports.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "acceptance.json").write_text(json.dumps(body))
    (tmp_path / "accept-ref-f1").mkdir()  # a fold still running: no report yet, left out
    (tmp_path / "accept-ref-f0").mkdir()
    (tmp_path / "accept-ref-f0" / "acceptance.json").write_text(json.dumps(report(6, 4, 4, 16, 0, 0.6)))

    def detail(folder, verdicts, names="abcde", scores=None):  # a, b, f, g defective (uneven); the others defect-free
        rows = [{"name": n, "defective": n in "abfg", "category": "uneven" if n in "abfg" else None,
                 "exposure": 1 + i % 2, "at_edge": (n in "af") if n in "abfg" else None, "verdict": v,
                 **({"max_score": scores[i]} if scores else {})}
                for i, (n, v) in enumerate(zip(names, verdicts))]
        (tmp_path / folder / "holdout.json").write_text(json.dumps({"images_detail": rows}))

    (tmp_path / "accept-control-f0").mkdir()  # the same fine-tune without a lever
    (tmp_path / "accept-control-f0" / "acceptance.json").write_text(json.dumps(report(7, 2, 3, 18, 0, 0.7)))
    detail("accept-control-f0", ["FAIL", "PASS", "PASS", "PASS", "PASS"])  # 1 wrong: b
    detail("accept-ref-f0", ["PASS", "PASS", "FAIL", "FAIL", "PASS"])  # 3 wrong: a, b, c, d
    # fold 0: a (0.9) outscores c, d, e; b (0.2) only c (0.1): 4 of 6 pairs; fold 1: f, g above every clean one
    detail("accept-exposure-f0", ["FAIL", "PASS", "PASS", "PASS", "FAIL"], scores=[0.9, 0.2, 0.1, 0.3, 0.6])
    detail("accept-exposure-f1", ["FAIL", "FAIL", "PASS", "PASS", "PASS"], names="fghij",
           scores=[0.8, 0.7, 0.1, 0.2, 0.3])
    for fold, fit in ((0, 0.95), (1, 0.9)):  # `engines eval --split-part train` of the arm: the fit beside held-out
        (tmp_path / f"eval-train-exposure-f{fold}.json").write_text(json.dumps(
            {"images": 10, "separation": {"uneven": {"images": 4, "auc": fit}}}))
    out = tmp_path / "kfold.md"
    assert kfold_table.main([str(tmp_path), "--out", str(out), "--json", str(tmp_path / "k.json")]) == 0
    table = json.loads((tmp_path / "k.json").read_text())
    assert set(table) == {"ref", "control", "exposure", "exposure-gr"}
    assert table["exposure"]["against_control"] == {"folds": [0], "images": 5, "fixed": 0, "broken": 1,
                                                    "p_value": 1.0}, "e: right under the control, wrong here"
    assert "against_control" not in table["control"] and "against_control" not in table["ref"]
    assert table["exposure"]["against_reference"] == {"folds": [0], "images": 5, "fixed": 3, "broken": 1,
                                                      "p_value": 0.625}
    assert "against_reference" not in table["ref"] and table["exposure-gr"]["against_reference"] is None
    assert "+3 / -1, p = 0.625 (5 images)" in out.read_text()
    judged = table["exposure"]["goals_over_folds"]  # the 10 records of both folds: 3 of 4 found, 1 of 6 false alarms
    goals = {g["goal"]: (g["value"], g["met"]) for g in judged["goals"]}
    assert goals["image-level F1"] == (0.75, False) and goals["false alarms on defect-free images"] == (0.1667, False)
    assert judged["by_exposure"] == {"1": "2/2, 1/4", "2": "1/2, 0/2"}
    assert judged["edge_recall"] == {"at the edge": "2/2", "inside": "1/2"}  # a, f at the edge; b, g inside
    assert "| exposure | 2/2 | 1/2 |" in out.read_text()
    # each fold's own AUC (4 of 6 pairs, then 6 of 6), then their mean; the reference's records carry no score
    assert judged["separation"]["uneven"] == {"auc_per_fold": [0.6667, 1.0], "mean_auc": 0.8334}
    assert judged["separation"]["all"]["mean_auc"] == 0.8334 and table["ref"]["goals_over_folds"]["separation"] == {}
    assert "| exposure | 0.8334 (0.6667, 1.0) | 0.8334 (0.6667, 1.0) |" in out.read_text()
    assert "| exposure | 0 | 10 | 0.95 / 0.6667 |" in out.read_text() and "| exposure | 1 | 10 | 0.9 / 1.0 |" in out.read_text()
    assert table["exposure"]["training_separation"]["1"] == {"images": 10, "uneven": {"images": 4, "auc": 0.9}}
    assert table["exposure-gr"]["goals_over_folds"] is None, "no per-image records: not judged"
    assert "| exposure | 0.75 | 0.1667 |" in out.read_text() and "| ref | " in out.read_text()
    exposure = table["exposure"]
    assert (exposure["tp"], exposure["fp"], exposure["fn"], exposure["tn"]) == (17, 1, 3, 39)
    assert exposure["recall"] == 0.85 and exposure["false_alarm_rate"] == 0.025
    assert exposure["class_recall"] == {"uneven": "1/6"} and exposure["folds"] == [0, 1]
    assert (table["exposure-gr"]["tp"], table["exposure-gr"]["fp"]) == (10, 3), "fused verdicts are counted"
    assert ("| exposure | 2 | 60 | 0.9444 / 0.85 / **0.8947** | 1 of 40 (2.5%) | 0.84 (val 0.7, 3 FA; 0.95 / 30 px; "
            "best rule in hindsight 0.88), 0.95 (val 0.7) |") in out.read_text(), \
        "each fold with what validation said of it"
    assert "| +3 / -1, p = 0.625 (5 images) | +0 / -1, p = 1.0 (5 images) |" in out.read_text()
    assert "| ref | 1 | 30 |" in out.read_text()
    assert kfold_table.main([str(tmp_path / "nowhere")]) == 2
    # arms run on different folds hold different numbers of a class's images: one column per class all the same
    goal = {"goal": "recall of uneven ({} images)", "measure": "recall of uneven", "value": 0.5, "met": False}
    two = {arm: {"goals_over_folds": {"goals": [{**goal, "goal": goal["goal"].format(n), "images": n}],
                                      "by_exposure": {}}}
           for arm, n in (("ref", 59), ("border", 16))}
    text = kfold_table.goals_markdown(two)
    assert "| arm | recall of uneven |" in text and "| ref | 0.5 (59) |" in text and "| border | 0.5 (16) |" in text


def test_build_and_calibration_inputs_are_the_tiles_and_the_context_tile_the_station_scores():
    """`engines build`'s check and int8 calibration (engines.inputs.network_inputs) see what the line feeds the
    network: tiles of the bordered frame, then the frame shrunk to one tile for weights with a context pass."""
    from engines.inputs import network_inputs
    from inspection_core.preprocess import context_tile, normalize_tiles
    from inspection_core.tiling import plan_tiles, tile_image

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (70, 90), dtype=np.uint8), rng.integers(0, 255, (40, 40), dtype=np.uint8)]
    spec = InputSpec(border=8, context=True)
    x = network_inputs(images, "segmentation", 32, spec)
    expected = []
    for image in images:
        bordered = add_border(image, spec)
        expected += [tile_image(bordered, plan_tiles(bordered.shape, 32, 0)), context_tile(image, 32)[None]]
    np.testing.assert_array_equal(x, normalize_tiles(np.concatenate(expected), spec))
    plain = network_inputs(images, "segmentation", 32, InputSpec())
    assert len(plain) == sum(plan_tiles(i.shape, 32, 0).n_tiles for i in images), "no context tile without it"
