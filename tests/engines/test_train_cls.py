"""Multi-label classifier training and evaluation (paper 001): the paper's metrics against a hand-computed example,
GR's two-phase training end to end on a tiny synthetic set (phases, graph from the training split's co-occurrence,
reference bank, resume in the right phase), the baselines, batch/bank agreement, a learnability check that can
fail, per-class figure and class activation maps, and the class-list check."""
from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from engines import evaluate_cls
from engines.data.multilabel import cooccurrence, label_matrix, load_multilabel
from engines.evaluate_cls import (class_activation_maps, evaluate_classifier, multilabel_metrics, predict,
                                  save_cams, save_class_figure, write_cams)
from engines.train_cls import ClsTrainSettings, augment_batch, choose_bank, epoch_batches, train_classifier
from engines.weights import load_model, resolve_weights
from inspection_core.preprocess import InputSpec, normalize_tiles

GR_SMALL = {"backbone": "resnet18", "label_dim": 32, "proj_dim": 32}
SIDE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_set(root, n: int = 24, side: int = SIDE, seed: int = 0, classes=("a", "b")):
    """Grey images in the generic layout; class a = a bright square (side/4), class b = a dark vertical bar;
    the label sets a, b, a+b and none in turn. Returns the folder and the squares' (y, x, side) per file."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    rows, squares = [], {}
    for i in range(n):
        labels = [["a"], ["b"], ["a", "b"], []][i % 4]
        image = rng.normal(110, 6, (side, side)).clip(0, 255).astype(np.uint8)
        name = f"im{i:02d}.png"
        if "b" in labels:
            x = int(rng.integers(4, side - 12))
            image[4:side - 4, x:x + 8] = 20
        if "a" in labels:
            q = side // 4
            y, x = (int(v) for v in rng.integers(2, side - q - 2, 2))
            image[y:y + q, x:x + q] = 240
            squares[name] = (y, x, q)
        cv2.imwrite(str(root / "images" / name), image)
        rows.append((name, "+".join(classes[0 if c == "a" else 1] for c in labels)))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "labels"])
        writer.writerows(rows)
    return root, squares


def tiny_settings(data, out, **overrides) -> ClsTrainSettings:
    base = dict(model="gr", data=str(data), out=str(out), epochs=1, pretrain_epochs=1, batch=6, size=SIDE,
                holdout=0.25, steps_per_epoch=2, bank_size=5, model_config=dict(GR_SMALL))
    return ClsTrainSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def tiny_gr(tmp_path_factory):
    """A GR trained for one pre-training and one normal epoch of two steps on 16 of 24 tiny images."""
    torch.set_num_threads(1)
    root, _ = make_set(tmp_path_factory.mktemp("data") / "set")
    out = tmp_path_factory.mktemp("run") / "gr"
    summary = train_classifier(tiny_settings(root, out), progress=False)
    return root, out, summary


# ------------------------------------------------------------------------------------------------------- metrics


def test_metrics_follow_the_papers_definitions_on_a_hand_computed_example():
    truth = [[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]]
    scores = [[0.9, 0.5, 0.6], [0.2, 0.7, 0.4], [0.51, 0.3, 0.1], [0.6, 0.1, 0.5]]  # 0.5 is not > 0.5: negative
    m = multilabel_metrics(truth, scores, ["x", "y", "z"])
    x, y, z = (m["per_class"][c] for c in "xyz")
    assert (x["tp"], x["fp"], x["fn"], x["tn"]) == (2, 1, 0, 1)
    assert (y["tp"], y["fp"], y["fn"], y["tn"]) == (1, 0, 1, 2)  # with >= 0.5 the first row would be a FP
    assert (z["tp"], z["fp"], z["fn"], z["tn"]) == (1, 0, 1, 2)  # and here the last row
    assert x["accuracy"] == pytest.approx(0.75) and x["precision"] == pytest.approx(2 / 3)
    assert x["recall"] == pytest.approx(1.0) and x["f_measure"] == pytest.approx(0.8)
    assert (y["precision"], y["recall"]) == (1.0, 0.5) and y["f_measure"] == pytest.approx(2 / 3)
    mean = m["mean"]
    assert mean["accuracy"] == pytest.approx(0.75)
    assert mean["precision"] == pytest.approx(8 / 9)
    assert mean["recall"] == pytest.approx(2 / 3)
    assert mean["f_measure"] == pytest.approx((0.8 + 2 / 3 + 2 / 3) / 3)
    assert mean["exact_match"] == pytest.approx(0.25) and mean["images"] == 4
    assert (mean["tp"], mean["fp"], mean["fn"], mean["tn"]) == (4, 1, 2, 5)
    # A class never present nor predicted: accuracy 1, undefined precision/recall/F count as 0.
    empty = multilabel_metrics([[0], [0]], [[0.1], [0.2]], ["w"])["per_class"]["w"]
    assert (empty["accuracy"], empty["precision"], empty["recall"], empty["f_measure"]) == (1.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="C = 2"):
        multilabel_metrics(truth, scores, ["x", "y"])


def test_batches_bank_choice_and_augmentation():
    rng = np.random.default_rng(0)
    batches = epoch_batches(10, 4, 3, rng)
    assert [len(b) for b in batches] == [4, 4, 4] and set(np.concatenate(batches)[:10]) == set(range(10))
    matrix = np.zeros((40, 3))
    matrix[7, 2] = 1  # one rare class
    matrix[::2, 0] = 1
    bank = choose_bank(matrix, 5, seed=1)
    assert len(bank) == 5 and 7 in bank and matrix[bank, 0].any()
    assert choose_bank(matrix, 5, seed=1) == bank and len(choose_bank(matrix, 100, 0)) == 40
    grey = np.random.default_rng(1).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    out = augment_batch(grey, np.random.default_rng(2))
    assert out.shape == grey.shape and out.dtype == np.uint8 and not np.array_equal(out, grey)
    rgb = np.repeat(grey[..., None], 3, axis=3)
    assert augment_batch(rgb, np.random.default_rng(2), colour=True).shape == rgb.shape


# ------------------------------------------------------------------------------------------------------ GR runs


def test_gr_run_records_phases_graph_bank_and_classes(tiny_gr):
    root, out, summary = tiny_gr
    bundle = resolve_weights(out)
    info = bundle.info
    assert bundle.model == "gr" and bundle.tile == SIDE and info["classes"] == ["a", "b"] == summary["classes"]
    assert [(h["phase"], h["stage"], h["epoch"]) for h in info["history"]] == [(1, "pretrain", 1), (2, "train", 1)]
    assert all("f_measure" in h and "loss" in h for h in info["history"]), "held-out metrics every epoch"
    model = load_model(bundle)
    assert model.config.num_classes == 2 and model.config.label_dim == 32
    # The graph comes from the co-occurrence of the training split (not the whole set).
    split = json.loads((out / "split.json").read_text())
    data = load_multilabel(root)
    train = [s for s in data.samples if s.name in set(split["train"])]
    assert len(train) == 16 and len(split["holdout"]) == 8
    counts = cooccurrence(label_matrix(train, data.classes))
    assert info["graph"]["cooccurrence"] == counts.tolist()
    expected = counts / counts.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(info["graph"]["initial_edges"], expected)
    # Saved after 2 SGD steps at lr 1e-3 (fp16 weights): still the row-normalised counts up to small drift.
    np.testing.assert_allclose(model.gr.edges.detach().numpy(), expected, atol=0.02)
    # Reference bank: bank_size training images covering both classes.
    assert tuple(model.reference_bank.shape) == (5, 2 * 32)
    bank_names = info["reference_bank"]
    assert len(bank_names) == 5 and set(bank_names) <= set(split["train"])
    assert {c for s in train if s.name in bank_names for c in s.labels} == {"a", "b"}
    assert summary["agreement"] is not None and 0.0 <= summary["agreement"] <= 1.0
    assert set(info["holdout"]["metrics"]["mean"]) >= {"accuracy", "precision", "recall", "f_measure"}


def test_resume_continues_phase_2_without_repeating_phase_1_or_the_graph_init(tiny_gr, tmp_path, monkeypatch):
    root, out, _ = tiny_gr
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    from engines.models.gr import GR

    def forbidden(*args, **kwargs):
        raise AssertionError("must not run on resume in phase 2")

    monkeypatch.setattr(GR, "init_graph", forbidden)
    monkeypatch.setattr(GR, "phase1_loss", forbidden)
    train_classifier(tiny_settings(root, resumed, epochs=2), progress=False)
    history = resolve_weights(resumed).info["history"]
    assert [(h["phase"], h["epoch"]) for h in history] == [(1, 1), (2, 1), (2, 2)]
    assert history[:2] == resolve_weights(out).info["history"]


@pytest.mark.parametrize("overrides, stages", [
    ({"pretrain_epochs": 0}, [(2, "train", 1)]),  # the "without pre-training phase" ablation
    ({"model_config": {**GR_SMALL, "use_gr": False}}, [(1, "pretrain", 1)]),  # FC2-module only
])
def test_gr_ablations(tmp_path, overrides, stages):
    root, _ = make_set(tmp_path / "set", n=8)
    settings = tiny_settings(root, tmp_path / "run", steps_per_epoch=1, holdout=0.0, batch=4, **overrides)
    summary = train_classifier(settings, progress=False)
    info = resolve_weights(tmp_path / "run").info
    assert [(h["phase"], h["stage"], h["epoch"]) for h in info["history"]] == stages
    assert ("reference_bank" in info) == ("use_gr" not in str(overrides))
    report, records = evaluate_classifier(tmp_path / "run", root, batch=4)
    assert len(records) == 8 and summary["holdout"] == {}
    assert (report["agreement"] is None) == ("use_gr" in str(overrides))


def test_evaluate_reports_four_measures_and_batch_bank_agreement(tiny_gr):
    root, out, _ = tiny_gr
    report, records = evaluate_classifier(out, root, mode="batch", batch=8)
    assert report["images"] == 24 and report["classes"] == ["a", "b"] and len(records) == 24
    for c in ("a", "b"):
        assert set(report["per_class"][c]) >= {"accuracy", "precision", "recall", "f_measure"}
        assert all(0.0 <= report["per_class"][c][k] <= 1.0 for k in ("accuracy", "precision", "recall", "f_measure"))
    assert 0.0 <= report["agreement"] <= 1.0 and set(report["modes"]) == {"batch", "bank"}
    assert set(records[0]) >= {"name", "truth", "predicted", "scores", "correct", "predicted_bank"}
    bank_report, _ = evaluate_classifier(out, root, mode="bank", batch=3)
    assert bank_report["mean"] == report["modes"]["bank"], "bank mode does not depend on the batch size"
    # Scoring against the bank: the batching does not matter.
    bundle = resolve_weights(out)
    model, spec = load_model(bundle), bundle.input_spec()
    data = load_multilabel(root)
    one = predict(model, data, bundle.tile, spec, mode="bank", batch=1)
    five = predict(model, data, bundle.tile, spec, mode="bank", batch=5)
    assert one.shape == (24, 2) and one.dtype == np.float32
    np.testing.assert_allclose(one, five, atol=1e-6, rtol=0)


def test_evaluate_refuses_other_classes_naming_both_lists(tiny_gr, tmp_path):
    _, out, _ = tiny_gr
    other, _ = make_set(tmp_path / "other", n=4, classes=("a", "c"))
    with pytest.raises(ValueError, match=r"\['a', 'c'\].*\['a', 'b'\]"):
        evaluate_classifier(out, other)


# ----------------------------------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("name, size", [("resnet50", 64), ("vgg16", 64), ("inceptionv3", 75)])
def test_baselines_train_one_step_evaluate_and_give_maps(tmp_path, name, size):
    root, _ = make_set(tmp_path / "set", n=8)
    settings = ClsTrainSettings(model=name, data=str(root), out=str(tmp_path / name), epochs=1, batch=4, size=size,
                                holdout=0.0, steps_per_epoch=1)
    train_classifier(settings, progress=False)
    bundle = resolve_weights(tmp_path / name)
    assert bundle.model == name and bundle.info["classes"] == ["a", "b"]
    assert [(h["phase"], h["stage"]) for h in bundle.info["history"]] == [(1, "train")]
    report, records = evaluate_classifier(bundle, root, batch=8)
    assert report["agreement"] is None and len(records) == 8 and "f_measure" in report["mean"]
    model = load_model(bundle)
    image = load_multilabel(root).samples[0].image
    cams = class_activation_maps(model, image, size, bundle.input_spec(), classes=["a", "b"])
    assert set(cams) == {"a", "b"}
    for cam in cams.values():
        assert cam.shape == image.shape and cam.dtype == np.float32 and 0.0 <= cam.min() and cam.max() <= 1.0
    if name == "vgg16":
        with pytest.raises(ValueError, match="gradcam"):
            class_activation_maps(model, image, size, bundle.input_spec(), method="cam")


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 75"):
        train_classifier(ClsTrainSettings(model="inceptionv3", out=str(tmp_path / "x"), size=64))
    with pytest.raises(ValueError, match="unknown classifier"):
        train_classifier(ClsTrainSettings(model="bffn", out=str(tmp_path / "x")))


# -------------------------------------------------------------------------------------------------- learnability


def test_gr_learns_the_easy_set_and_its_cam_finds_the_square(tmp_path, monkeypatch):
    """Can fail: 3 pre-training + 10 normal epochs (39 steps of 8 images, SGD lr 1e-2) must separate squares
    from bars (mean F-measure >= 0.8 on the training images; predicting every label gives 0.67); the CAM of the
    square class must peak on or next to the square."""
    root, squares = make_set(tmp_path / "set")
    out = tmp_path / "gr"
    settings = tiny_settings(root, out, pretrain_epochs=3, epochs=10, batch=8, lr=0.01, steps_per_epoch=0,
                             holdout=0.0, validate=False)
    train_classifier(settings, progress=False)
    report, _ = evaluate_classifier(out, root, batch=8)
    assert report["mean"]["f_measure"] >= 0.8, report["mean"]
    assert report["modes"]["bank"]["f_measure"] >= 0.8, report["modes"]
    figure = save_class_figure(report, tmp_path / "classes.png", title="GR on the tiny set")
    picture = cv2.imread(str(figure))
    assert picture is not None and picture.std() > 5
    # CAMs: on 64-px inputs ResNet's last map is 2×2; at 128 px it is 4×4, fine enough to locate a 16-px square.
    bundle = resolve_weights(out)
    model, spec = load_model(bundle), bundle.input_spec()
    data = {s.name: s.image for s in load_multilabel(root).samples}
    near, inside_higher = [], []
    for name, (y, x, q) in squares.items():
        cam = class_activation_maps(model, data[name], 2 * SIDE, spec, classes=["a", "b"])["a"]
        assert cam.shape == (SIDE, SIDE) and cam.dtype == np.float32 and cam.min() >= 0 and cam.max() <= 1
        py, px = np.unravel_index(int(cam.argmax()), cam.shape)
        near.append(y - q <= py < y + 2 * q and x - q <= px < x + 2 * q)  # within one square side of it
        box = np.zeros(cam.shape, bool)
        box[y:y + q, x:x + q] = True
        inside_higher.append(cam[box].mean() > cam[~box].mean())
    assert np.mean(near) >= 0.8 and np.mean(inside_higher) >= 0.8, (near, inside_higher)
    name = next(iter(squares))
    cams = class_activation_maps(model, data[name], 2 * SIDE, spec, classes=["a", "b"])
    path = save_cams(data[name], cams, tmp_path / "cams.png")
    panel = cv2.imread(str(path))
    assert panel is not None and panel.shape[1] > 3 * panel.shape[0] - 1 and panel.std() > 5
    titles = []
    real_save = evaluate_cls.save_cams
    monkeypatch.setattr(evaluate_cls, "save_cams", lambda image, cams, path: titles.append(list(cams)) or
                        real_save(image, cams, path))
    written = write_cams(out, root, tmp_path / "cam-dir", limit=2)
    assert [p.name for p in written] == ["im00.cam.png", "im01.cam.png"]
    assert all(cv2.imread(str(p)) is not None for p in written)
    scores = predict(model, list(data.values())[:2], bundle.tile, spec, mode="bank", batch=1)
    assert titles == [[f"a {a:.2f}", f"b {b:.2f}"] for a, b in scores], "each overlay is titled class + score"


def test_first_head_scores_the_fc2_module_alone():
    """Phase-1 validation must judge what phase 1 trains (S), not the still-untrained GR-module (S')."""
    from engines.models import build_model

    torch.manual_seed(0)
    model = build_model("gr", {"num_classes": 3, **GR_SMALL}).eval()
    spec = InputSpec(channels=3)
    images = np.random.default_rng(0).integers(0, 255, (4, SIDE, SIDE), dtype=np.uint8)
    first = predict(model, images, SIDE, spec, head="first")
    final = predict(model, images, SIDE, spec)
    x = torch.from_numpy(normalize_tiles(np.repeat(images[..., None], 3, axis=3), spec))
    with torch.no_grad():
        expected = torch.sigmoid(model.classifier1(model.label_features(x))).numpy()
    np.testing.assert_allclose(first, expected, atol=1e-5)
    assert not np.allclose(first, final, atol=1e-3)


def test_a_classifier_trains_on_a_splits_train_part_and_scores_its_validation_part(tmp_path):
    """`engines train gr --split`: as segmentation reads a split (magnetic-tile's part-wise one, for GR as a second
    opinion): train on `train`, score `validation`, never touch `holdout`; names the folder lacks are refused."""
    import json

    from engines.cli import main
    from engines.errors import InputError
    from engines.train_cls import sets_from_split

    torch.set_num_threads(1)
    root, _ = make_set(tmp_path / "set")
    names = sorted(p.name for p in (root / "images").iterdir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": names[:14], "validation": names[14:19], "holdout": names[19:],
                                 "group_by": "part"}))
    out = tmp_path / "gr"
    assert main(["train", "gr", "--data", str(root), "--out", str(out), "--split", str(split), "--epochs", "1",
                 "--pretrain-epochs", "1", "--batch", "6", "--size", str(SIDE), "--steps-per-epoch", "1",
                 "--bank-size", "5", "--threads", "1", "--device", "cpu", "--quiet"]) == 0
    training = json.loads((out / "config.json").read_text())["training"]
    assert (training["train_images"], training["holdout_images"]) == (14, 5)
    assert json.loads((out / "split.json").read_text())["holdout"] == names[19:]
    split.write_text(json.dumps({"train": names[:14] + ["gone.png"], "validation": names[14:19]}))
    from engines.data.multilabel import load_multilabel

    with pytest.raises(InputError, match="1 images of .* are not in the data folder"):
        sets_from_split(load_multilabel(root), str(split))


def test_gr_starts_its_backbone_from_a_segmentation_network(tmp_path):
    """`engines train gr --init-backbone runs/bffn` (issue 25: GR on whole magnetic-tile images from the BFFN that
    learned those tiles): the ResNet-18 is BFFN's before the first step, and the start is recorded."""
    from engines.cli import main
    from engines.models.backbone_transfer import backbone_state
    from engines.models.bffn import BFFN, BFFNConfig
    from engines.weights import save_weights

    torch.set_num_threads(1)
    torch.manual_seed(7)  # a donor unlike a fresh network (fresh ones are seeded alike)
    bffn = BFFN(BFFNConfig()).eval()
    untrained_bffn = save_weights(bffn, tmp_path / "bffn", "bffn", bffn.config.to_dict(), InputSpec().to_dict(), 128,
                                  {}, half=False) or tmp_path / "bffn"
    root, _ = make_set(tmp_path / "set")
    out = tmp_path / "gr"
    args = ["train", "gr", "--data", str(root), "--out", str(out), "--init-backbone", str(untrained_bffn),
            "--backbone", "resnet18", "--in-channels", "1", "--epochs", "1", "--pretrain-epochs", "1",
            "--steps-per-epoch", "1", "--lr", "1e-12", "--batch", "6", "--size", str(SIDE), "--bank-size", "5",
            "--threads", "1", "--device", "cpu", "--quiet"]
    assert main(args) == 0  # two steps at a negligible learning rate: the saved convolutions are the donor's
    donor = backbone_state(load_model(resolve_weights(untrained_bffn)))
    started = backbone_state(load_model(resolve_weights(out)))
    assert set(started) == set(donor)
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight"):
        torch.testing.assert_close(started[name].float(), donor[name].float(), atol=2e-3, rtol=2e-3)  # fp16 file
    fresh = tmp_path / "fresh"
    assert main([a if a != str(out) else str(fresh) for a in args if a not in ("--init-backbone",
                                                                               str(untrained_bffn))]) == 0
    assert not torch.allclose(backbone_state(load_model(resolve_weights(fresh)))["conv1.weight"].float(),
                              donor["conv1.weight"].float(), atol=1e-3)
    start = json.loads((out / "config.json").read_text())["training"]["start"]
    assert start["source_model"] == "bffn" and start["tensors"] > 100
    assert main([*args, "--backbone-lr", "0.1"]) == 2  # refused: the backbone's own rate is segmentation's
