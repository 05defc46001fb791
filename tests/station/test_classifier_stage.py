"""The classifier stage: [classifier] in recipes, GR on the patch grid of a frame (batch and bank modes), the
Inspector's labels and verdict, their way into the reject log and its JSON export, and the panel's Labels row."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from inspection_core.preprocess import InputSpec
from inspection_core.records import Frame, Verdict
from inspection_core.tiling import plan_tiles
from inspection_core.verdict import decide
from station.classify import PatchClassifier
from station.errors import RecipeError
from station.recipe import ClassifierMode, load_recipe
from tests.conftest import TINY_GR_CLASSES as CLASSES
from tests.conftest import TINY_GR_SIZE as SIZE
from tests.station.test_recipe import MINIMAL, write

RECIPE = MINIMAL  # the smallest valid recipe; these tests add [classifier] to it


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def frame_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(120, 20, (h, w)).clip(0, 255).astype(np.uint8)
    image[h // 4: h // 2, w // 3: w // 3 + 12] = 240
    return image


# ------------------------------------------------------------------------------------------------------ recipe
def test_recipe_without_classifier_table_has_no_stage(tmp_path):
    assert load_recipe(write(tmp_path, RECIPE)).classifier is None


def test_recipe_classifier_defaults_and_values(tmp_path):
    recipe = load_recipe(write(tmp_path, RECIPE + '\n[classifier]\nweights = "runs/gr"\n'))
    c = recipe.classifier
    assert (c.weights, c.patch, c.overlap, c.threshold, c.mode, c.fail_on_labels, c.threads) == \
        ("runs/gr", 1024, 0, None, ClassifierMode.BATCH, True, 0)  # threshold: the learned ones, else 0.5
    recipe = load_recipe(write(tmp_path, RECIPE + '\n[classifier]\nweights = "g"\npatch = 512\noverlap = 64\n'
                               'threshold = 0.3\nmode = "bank"\nfail_on_labels = false\nthreads = 2\n'))
    c = recipe.classifier
    assert (c.patch, c.overlap, c.threshold, c.mode, c.fail_on_labels, c.threads) == \
        (512, 64, 0.3, ClassifierMode.BANK, False, 2)
    assert recipe.as_dict()["classifier"]["mode"] == "bank"


@pytest.mark.parametrize("body, key", [
    ('patch = 1024', "weights"),
    ('weights = "g"\npatch = -1', "patch"),
    ('weights = "g"\npatch = 0\noverlap = 8', "overlap"),
    ('weights = "g"\npatch = 256\noverlap = 256', "overlap"),
    ('weights = "g"\nthreshold = 1.5', "threshold"),
    ('weights = "g"\nmode = "pairs"', "mode"),
    ('weights = "g"\nfail_on_labels = 1', "fail_on_labels"),
    ('weights = "g"\nthreads = -1', "threads"),
    ('weights = "g"\ntreshold = 0.4', "treshold"),
])
def test_recipe_classifier_mistakes_name_the_key(tmp_path, body, key):
    with pytest.raises(RecipeError, match=rf"\[classifier\] {key}:"):
        load_recipe(write(tmp_path, RECIPE + f"\n[classifier]\n{body}\n"))


# ------------------------------------------------------------------------------------------------- classifier
def test_patch_grid_and_labels_are_the_union_of_patches(tiny_gr):
    image = frame_image(200, 300)
    classifier = PatchClassifier(str(tiny_gr), patch=96, overlap=16, threshold=0.5, mode="batch")
    plan = plan_tiles(image.shape, 96, 16)
    _, scores = classifier.scores(image)
    assert scores.shape == (plan.n_tiles, len(CLASSES))
    classifier.threshold = float(np.median(scores))  # some patches labelled, some not
    labels, patches = classifier.classify(image)
    rows, cols = plan.grid_shape
    assert len(patches) == rows * cols == plan.n_tiles
    assert {(p["row"], p["col"]) for p in patches} == {(r, c) for r in range(rows) for c in range(cols)}
    assert [(p["y"], p["x"]) for p in patches] == list(plan.origins)
    assert all(p["size"] == 96 and list(p["scores"]) == CLASSES for p in patches)
    union = {label for p in patches for label in p["labels"]}
    assert labels and set(labels) == union
    assert list(labels) == [c for c in CLASSES if c in union], "labels in class order"
    for p in patches:
        assert p["labels"] == [c for c in CLASSES if p["scores"][c] > classifier.threshold]


def test_small_frame_is_padded_to_one_patch(tiny_gr):
    labels, patches = PatchClassifier(str(tiny_gr), patch=128, threshold=0.0).classify(frame_image(50, 70))
    assert len(patches) == 1 and patches[0]["size"] == 128 and labels == tuple(CLASSES)


def test_whole_frame_mode_scores_the_frame_resized_as_whole_image_training_resizes_it(tiny_gr):
    """patch = 0 (issue 25's GR on whole magnetic-tile images): the frame is one image, resized to the network's
    input side as `engines train gr` resizes whole images, scored once its last line is in."""
    import torch

    from engines.data.multilabel import resize_images
    from engines.weights import load_model, resolve_weights
    from inspection_core.preprocess import normalize_tiles

    image = frame_image(90, 170, seed=3)
    stage = PatchClassifier(str(tiny_gr), patch=0, mode="bank", threshold=0.0)
    labels, patches = stage.classify(image)
    assert len(patches) == 1 and (patches[0]["y"], patches[0]["x"], patches[0]["size"]) == (0, 0, 170)
    assert labels == tuple(CLASSES)
    model = load_model(resolve_weights(tiny_gr)).eval()
    x = torch.from_numpy(normalize_tiles(resize_images([image], SIZE, InputSpec(channels=1)), InputSpec(channels=1)))
    with torch.no_grad():
        expected = torch.sigmoid(model(x, reference=model.reference_bank)).numpy()[0]
    np.testing.assert_allclose([patches[0]["scores"][c] for c in CLASSES], expected, atol=2e-4)
    rows = stage.rows()
    rows.advance(image[:60])  # a part still arriving: nothing is cut before its last line
    assert rows.cut_rows == [] and rows.calls == []
    rows.advance(image, last=True)
    assert rows.finish(image) == (labels, patches)


def test_learned_label_thresholds_travel_with_the_weights_and_a_recipe_threshold_wins(tiny_gr, tmp_path):
    """`engines accept --classifier` writes the label threshold of each class into the classifier's config.json;
    a [classifier] stage without `threshold` uses them (the recipe's own threshold wins)."""
    import shutil

    from engines.weights import resolve_weights, write_judging_rule

    weights = shutil.copytree(tiny_gr, tmp_path / "gr")
    image = frame_image(90, 170, seed=3)
    _, (patch,) = PatchClassifier(str(weights), patch=0, mode="bank").classify(image)
    scores = patch["scores"]
    learned = {c: (1.0 if k else round(scores[c] - 0.01, 4)) for k, c in enumerate(CLASSES)}  # only the first fires
    write_judging_rule(resolve_weights(weights), {"label_thresholds": learned, "learned_on": "split.json validation"})
    stage = PatchClassifier(str(weights), patch=0, mode="bank")
    assert stage.classify(image)[0] == (CLASSES[0],)
    assert "learned by engines accept on split.json validation" in stage.threshold_from
    assert PatchClassifier(str(weights), patch=0, mode="bank", threshold=0.0).classify(image)[0] == tuple(CLASSES)
    write_judging_rule(resolve_weights(weights), {"label_thresholds": {CLASSES[0]: 0.5}})
    with pytest.raises(RecipeError, match=r"lack the classes \['blowhole', 'fray'\]"):
        PatchClassifier(str(weights), patch=0, mode="bank")


def test_bank_mode_labels_of_a_patch_do_not_depend_on_the_other_patches(tiny_gr):
    part = frame_image(SIZE, SIZE, seed=1)
    wide = np.concatenate([part, frame_image(SIZE, 3 * SIZE, seed=2)], axis=1)  # the same patch plus three others
    bank = PatchClassifier(str(tiny_gr), patch=SIZE, mode="bank")
    _, alone = bank.scores(part)
    _, among = bank.scores(wide)
    np.testing.assert_allclose(among[0], alone[0], atol=1e-5)
    bank.threshold = float(alone[0].mean())
    labels_alone, _ = bank.classify(part)
    _, patches = bank.classify(wide)
    assert tuple(patches[0]["labels"]) == labels_alone
    _, batch_among = PatchClassifier(str(tiny_gr), patch=SIZE, mode="batch").scores(wide)
    assert batch_among.shape == among.shape  # batch mode: the four patches are one GR batch


def test_wrong_model_and_missing_bank_are_clear_errors(tiny_gr, untrained_bffn, tmp_path):
    with pytest.raises(RecipeError, match="'bffn' model.*not a classifier"):
        PatchClassifier(str(untrained_bffn))
    from engines.models.gr import GR, GRConfig
    from engines.weights import save_weights

    model = GR(GRConfig(num_classes=2, in_channels=1, backbone="resnet18", label_dim=16, proj_dim=16)).eval()
    save_weights(model, tmp_path / "nobank", "gr", model.config.to_dict(), InputSpec(channels=1).to_dict(), SIZE,
                 {"classes": ["a", "b"]}, half=False)
    with pytest.raises(RecipeError, match="no reference bank"):
        PatchClassifier(str(tmp_path / "nobank"), mode="bank")
    PatchClassifier(str(tmp_path / "nobank"), mode="batch")  # fine without a bank
    with pytest.raises(RecipeError, match=r"\[classifier\] weights: no weights"):
        PatchClassifier(str(tmp_path / "missing"))


def test_decide_fails_on_labels_only_when_asked():
    assert decide((), ("crack",)) is Verdict.FAIL
    assert decide((), ("crack",), fail_on_labels=False) is Verdict.PASS
    assert decide((), ()) is Verdict.PASS


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def station_recipe(tmp_path, untrained_bffn, tiny_gr):
    (tmp_path / "images").mkdir()
    text = RECIPE.replace('weights = "w.safetensors"', f'weights = "{untrained_bffn}"\nbackend = "torch"\nthreads = 1')
    text += f'\n[rules]\nscore_threshold = 1.0\n\n[classifier]\nweights = "{tiny_gr}"\npatch = 128\n' \
            'threshold = 0.0\nthreads = 1\n'  # no segmentation defects; every class in every patch
    return load_recipe(write(tmp_path, text))


def test_inspector_labels_land_in_result_reject_log_and_export(station_recipe, tmp_path, capsys):
    from station.app import build_inspector
    from station.cli import main
    from station.rejectlog import RejectLog

    inspector = build_inspector(station_recipe)
    assert inspector.classifier is not None and inspector.classifier.mode == "batch"
    frame = Frame(image=frame_image(128, 256), frame_id=3, timestamp_ns=time.monotonic_ns(), source="test",
                  meta={"file": "a.png"})
    result = inspector.inspect(frame)
    assert result.labels == tuple(CLASSES) and len(result.patches) == 2
    assert [(p["row"], p["col"]) for p in result.patches] == [(0, 0), (0, 1)]
    assert "classify" in result.timings and result.verdict is Verdict.FAIL  # labels alone fail the part
    db = tmp_path / "log" / "rejects.db"
    with RejectLog(db, save_images=False) as log:
        log.record(result)
        row = log.query()[0]
    stored = json.loads(row["labels_json"])
    assert stored["labels"] == CLASSES and stored["patches"][1]["x"] == 128
    out = tmp_path / "export.json"
    assert main(["export", "--db", str(db), "--format", "json", "--out", str(out)]) == 0
    item = json.loads(out.read_text())[0]
    assert item["labels"] == CLASSES and item["verdict"] == "FAIL"
    assert [p["col"] for p in item["patches"]] == [0, 1] and item["patches"][0]["labels"] == CLASSES

    quiet = station_recipe.with_overrides({"classifier.fail_on_labels": False})
    result = build_inspector(quiet).inspect(frame)
    assert result.labels == tuple(CLASSES) and result.verdict is Verdict.PASS


def test_recipe_with_segmentation_weights_as_classifier_is_refused(station_recipe, untrained_bffn):
    from station.app import build_inspector

    wrong = station_recipe.with_overrides({"classifier.weights": str(untrained_bffn)})
    with pytest.raises(RecipeError, match=r"r\.toml: \[classifier\].*'bffn' model"):
        build_inspector(wrong)


def test_classifier_alone_judges_parts_end_to_end(tmp_path, tiny_gr, capsys):
    """A recipe without [engine]: GR on ONNX Runtime (built into an engine folder, loaded by manifest) judges each
    frame alone; `station run` records its labels in a real SQLite reject log; the engine id names it."""
    import cv2

    from station.app import build_inspector
    from station.cli import main
    from station.rejectlog import RejectLog

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"s{i}.png"), frame_image(128, 256, seed=i))
    text = MINIMAL.split("[engine]")[0] + f'[classifier]\nweights = "{tiny_gr}"\npatch = 128\nthreshold = 0.0\n' \
                                            'threads = 1\n'
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.engine is None and recipe.classifier.backend.value == "onnxruntime"
    inspector = build_inspector(recipe)
    assert inspector.engine is None and inspector.classifier.engine.folder is not None
    assert inspector.engine_id.startswith("gr-") and inspector.engine_id.endswith("@onnxruntime-fp32")
    db = tmp_path / "log.db"
    assert main(["run", "--recipe", str(recipe.path), "--headless", "--no-loop", "--db", str(db),
                 "--threads", "1"]) == 0
    with RejectLog(db, save_images=False) as log:
        rows = log.query()
    assert len(rows) == 3 and all(r["verdict"] == "FAIL" for r in rows)  # threshold 0: every class present
    assert all(json.loads(r["labels_json"])["labels"] == CLASSES for r in rows)
    assert {r["engine_id"] for r in rows} == {inspector.engine_id}
    capsys.readouterr()
    assert main(["run", "--recipe", str(recipe.path), "--headless", "--weights", "x"]) == 2
    assert "has no [engine] (the classifier alone judges); use --classifier-weights" in capsys.readouterr().err
    neither = write(tmp_path, MINIMAL.split("[engine]")[0], name="neither.toml")
    with pytest.raises(RecipeError, match=r"needs an \[engine\] \(segmentation\), a \[classifier\]"):
        load_recipe(neither)


def test_both_stages_name_both_engines(station_recipe):
    from station.app import build_inspector

    inspector = build_inspector(station_recipe)
    seg, cls = inspector.engine_id.split("+")
    assert seg.startswith("bffn-") and seg.endswith("@torch-fp32") and cls.endswith("@onnxruntime-fp32")


def test_export_reads_rows_without_patches(tmp_path):
    from station.rejectlog import decode_labels

    assert decode_labels('["crack"]') == (["crack"], [])
    assert decode_labels('{"labels": ["a"], "patches": [{"row": 0}]}') == (["a"], [{"row": 0}])


# ------------------------------------------------------------------------------------------------------ panel
def test_panel_shows_the_labels(qtbot):
    from dataclasses import replace

    from inspection.feed import ResultFeed
    from tests.ui.conftest import StatsSource, make_result
    from ui.panel import StationPanel

    patches = ({"row": 0, "col": 1, "y": 0, "x": 128, "size": 128, "labels": ["crack"], "scores": {}},)
    result = replace(make_result(frame_id=5), labels=("crack", "fray"), patches=patches)
    feed = ResultFeed()
    panel = StationPanel(feed, StatsSource(), refresh_ms=10)
    qtbot.addWidget(panel)
    assert not panel.labels_label.isVisibleTo(panel)
    feed.publish(result)
    panel.refresh()
    assert panel.labels_label.text() == "Labels: crack, fray" and panel.labels_label.isVisibleTo(panel)
    assert "crack: r0c1" in panel.labels_label.toolTip()
    assert panel.rejects_table.item(0, 4).text() == "crack, fray"
    feed.publish(make_result(frame_id=6, verdict=Verdict.PASS))
    panel.refresh()
    assert not panel.labels_label.isVisibleTo(panel), "no classifier stage: no Labels row"


@pytest.mark.shared_data
def test_shipped_gr_labels_neu_seg_images_in_the_station_as_engines_eval_does():
    """The shipped GR weights (gr-neu-seg, trained on all of NEU-Seg) through the station's classifier stage (ONNX
    Runtime engine, bank mode): NEU-Seg images, each one patch, get the labels that ``engines eval`` gives them
    with the torch reference, and these are the classes present in their masks. (They are training images: this
    checks the station reproduces the model, not how it generalises; the same recipe's held-out figures are in
    ``engines/weights/gr-neu-seg/TRAINING.md``.)"""
    from engines.data.multilabel import load_neu_seg_multilabel
    from engines.evaluate_cls import evaluate_classifier
    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / "neu-seg"
    if not root.is_dir():
        pytest.skip(f"{root} is absent (the real NEU-Seg set lives in ../shared/data)")
    data = load_neu_seg_multilabel(root)
    data = data.subset(list(range(0, len(data), len(data) // 24))[:24])  # spread over the set and its classes
    classifier = PatchClassifier("gr-neu-seg", patch=200, mode="bank", threads=1)
    assert classifier.classes == data.classes and classifier.engine_id.endswith("@onnxruntime-fp32")
    station = [classifier.classify(np.asarray(s.image))[0] for s in data.samples]
    _, records = evaluate_classifier("gr-neu-seg", data, mode="bank", batch=8, threads=1)
    assert station == [tuple(r["predicted"]) for r in records], "station and engines eval disagree"
    right = sum(labels == tuple(c for c in data.classes if c in s.labels) for labels, s in zip(station, data.samples))
    assert right >= 22, f"only {right} of {len(data)} images got exactly the classes in their masks"
