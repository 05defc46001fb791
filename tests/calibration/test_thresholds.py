"""Decision thresholds: the operating-point rule, segmentation thresholds chosen on real magnetic-tile images with
the shipped BFFN on ONNX Runtime (judged as the station judges), classifier per-class thresholds, and targets that
cannot be met."""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import CalibrationError
from calibration.thresholds import choose_operating_point, load_validation, with_rates
from inspection_core.preprocess import InputSpec
from inspection_core.records import Frame, Verdict
from inspection_core.tiling import plan_tiles
from inspection_core.verdict import DecisionRules

SAMPLES = Path(__file__).resolve().parents[2] / "station" / "samples" / "magnetic-tile"


def point(threshold, tp, fp, fn, tn, **extra):
    return {"threshold": threshold, "tp": tp, "fp": fp, "fn": fn, "tn": tn, **extra}


def test_operating_point_meets_the_escape_target_with_fewest_false_rejects():
    sweep = [point(0.1, 10, 9, 0, 1), point(0.3, 10, 4, 0, 6), point(0.5, 9, 2, 1, 8), point(0.7, 7, 1, 3, 9),
             point(0.9, 2, 0, 8, 10)]
    chosen, met = choose_operating_point(sweep, target_escape=0.0)
    assert met and chosen["threshold"] == 0.3 and chosen["false_reject_rate"] == 0.4
    chosen, met = choose_operating_point(sweep, target_escape=0.1)
    assert met and chosen["threshold"] == 0.5 and chosen["escape_rate"] == 0.1
    chosen, met = choose_operating_point(sweep[2:], target_escape=0.0)  # nothing reaches 0 escapes
    assert not met and chosen["threshold"] == 0.5
    # ties on false rejects: the lower escape rate, then the higher threshold
    chosen, _ = choose_operating_point([point(0.2, 5, 1, 1, 9), point(0.4, 6, 1, 0, 9), point(0.6, 6, 1, 0, 9)], 0.5)
    assert chosen["threshold"] == 0.6
    assert with_rates(point(0.5, 3, 1, 1, 3)) | {} == {**point(0.5, 3, 1, 1, 3), "escape_rate": 0.25,
                                                        "false_reject_rate": 0.25}


def _subset(folder: Path, names: list[str]) -> Path:
    """A validation folder of some bundled frames with their truth.csv rows."""
    folder.mkdir(parents=True)
    rows = [r for r in csv.DictReader((SAMPLES / "truth.csv").open()) if r["file"] in names]
    with open(folder / "truth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "defective"])
        writer.writeheader()
        for r in rows:
            writer.writerow({"file": r["file"], "defective": r["defective"]})
            shutil.copy(SAMPLES / r["file"], folder / r["file"])
    return folder


VALIDATION = ["blowhole_exp3_num_291038.jpg", "crack_exp3_num_249637.jpg", "uneven_exp3_num_45042.jpg",
              "break_exp4_num_304328.jpg", "free_exp1_num_69803.jpg", "free_exp2_num_260505.jpg",
              "free_exp3_num_351078.jpg", "free_exp6_num_144276.jpg"]


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> Path:
    return _subset(tmp_path_factory.mktemp("val") / "val", VALIDATION)


def test_truth_csv_folder_is_read_and_one_sided_sets_are_refused(validation, tmp_path):
    samples = load_validation(validation)
    assert len(samples) == 8 and sum(s.defective for s in samples) == 4
    only_good = _subset(tmp_path / "good", ["free_exp1_num_69803.jpg"])
    with pytest.raises(CalibrationError, match="no defective image"):
        load_validation(only_good)
    with pytest.raises(CalibrationError, match="not a known data layout"):
        load_validation(tmp_path)


@pytest.mark.slow
def test_segmentation_thresholds_meet_the_target_as_the_station_judges(root, cli, validation, tmp_path):
    from engines.backends.base import load_engine
    from inspection.inspector import Inspector

    code, out, err = cli("thresholds", "--camera", "cam-A", "--weights", "bffn-magnetic-tile", "--data", validation,
                         "--escape-rate", "0.25", "--min-area", "10,30", "--threads", "1", "--width", "640",
                         "--height", "480", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["profile"] == "cam-A@v1" and data["kind"] == "segmentation" and data["target_met"]
    assert data["escape_rate"] <= 0.25 and data["images"] == 8 and data["defective_images"] == 4
    folder = root / "cam-A" / "v001"
    assert (folder / data["curve"]).stat().st_size > 10_000
    sweep = [p for curve in json.loads((folder / data["sweep"]).read_text()).values() for p in curve]
    assert len(sweep) == 2 * 21 and {p["min_area_px"] for p in sweep} == {10, 30}
    meeting = [p for p in sweep if p["escape_rate"] <= 0.25]
    assert data["fp"] == min(p["fp"] for p in meeting)  # the fewest false rejects among the points meeting it
    # the stored point is what the station itself concludes at that operating point
    engine = load_engine("bffn-magnetic-tile", backend="onnxruntime", threads=1)
    inspector = Inspector(engine, overlap=32, batch=32,
                          rules=DecisionRules(score_threshold=data["score_threshold"], min_area_px=data["min_area_px"]))
    fn = fp = 0
    for s in load_validation(validation):
        failed = inspector.inspect(Frame(s.image, 1, time.monotonic_ns(), "t")).verdict is Verdict.FAIL
        fn += s.defective and not failed
        fp += failed and not s.defective
    assert (fn, fp) == (data["fn"], data["fp"])
    assert data["weights_sha256"] == engine.weights_sha256


@pytest.mark.slow
def test_an_unreachable_target_stores_nothing_unless_asked(root, cli, tmp_path):
    val = _subset(tmp_path / "val", ["crack_exp3_num_249637.jpg", "free_exp1_num_69803.jpg"])
    args = ("thresholds", "--camera", "cam-A", "--weights", "bffn-magnetic-tile", "--data", val, "--escape-rate", "0",
            "--min-area", "100000", "--threads", "1", "--width", "640", "--height", "480")
    code, out, err = cli(*args)
    assert code == 1 and "cannot be met" in err and "nothing stored" in err and not root.exists()
    code, out, err = cli(*args, "--keep-best")
    assert code == 0 and "MISSES the target" in out and "escape rate 1.0000" in out


@pytest.mark.slow
def test_classifier_gets_one_threshold_per_class(root, cli, tmp_path, one_torch_thread):
    import torch

    from engines.models.gr import GR, GRConfig
    from engines.weights import save_weights

    classes = ["scratch", "dust"]
    torch.manual_seed(0)
    model = GR(GRConfig(num_classes=2, in_channels=1, backbone="resnet18", label_dim=16, proj_dim=16)).eval()
    weights = tmp_path / "gr"
    save_weights(model, weights, "gr", model.config.to_dict(), InputSpec(channels=1).to_dict(), 64,
                 {"classes": classes}, half=False)
    data = tmp_path / "patches"
    rng = np.random.default_rng(0)
    labels = ["scratch", "dust", "scratch+dust", "", "", "scratch", "dust", ""]
    from tests.calibration.conftest import write_png

    for i in range(len(labels)):
        write_png(data / "images" / f"p{i}.png", rng.integers(0, 255, (64, 64), dtype=np.uint8))
    (data / "classes.txt").write_text("\n".join(classes) + "\n")
    (data / "labels.csv").write_text("file,labels\n" + "".join(f"p{i}.png,{lab}\n" for i, lab in enumerate(labels)))
    code, out, err = cli("thresholds", "--camera", "cam-A", "--weights", weights, "--data", data, "--escape-rate",
                         "0.34", "--width", "64", "--height", "64", "--json")
    assert code == 0, err
    section = json.loads(out)
    assert section["kind"] == "classifier" and set(section["classes"]) == set(classes)
    sweeps = json.loads((root / "cam-A" / "v001" / section["sweep"]).read_text())
    for name, c in section["classes"].items():
        assert c["escape_rate"] <= 0.34 and c["support"] == 3
        assert c["fp"] == min(p["fp"] for p in sweeps[name] if p["escape_rate"] <= 0.34)

    # the station's classifier stage takes them, class by class
    from station.line_calibration import for_recipe
    from station.classify import PatchClassifier
    from station.recipe import load_recipe
    from tests.station.test_recipe import MINIMAL, write

    recipe = load_recipe(write(tmp_path, MINIMAL + f'\n[classifier]\nweights = "{weights}"\n'
                                                   f'[calibration]\nprofile = "cam-A"\nroot = "{root}"\n'))
    classifier = PatchClassifier(str(weights), patch=64)
    for_recipe(recipe, None, classifier)
    wanted = [section["classes"][c]["threshold"] for c in classifier.classes]
    assert classifier.threshold.tolist() == pytest.approx(wanted)
    plan = plan_tiles((64, 128), 64, 0)
    scores = np.array([[t + 0.01 for t in wanted], [t - 0.01 for t in wanted]], np.float32)
    labels, patches = classifier.summarize(plan, scores)
    assert labels == tuple(classifier.classes) and patches[1]["labels"] == []
    # thresholds chosen for other weights are refused
    other = tmp_path / "gr-other"
    torch.manual_seed(1)
    model = GR(GRConfig(num_classes=2, in_channels=1, backbone="resnet18", label_dim=16, proj_dim=16)).eval()
    save_weights(model, other, "gr", model.config.to_dict(), InputSpec(channels=1).to_dict(), 64,
                 {"classes": classes}, half=False)
    from station.errors import RecipeError

    with pytest.raises(RecipeError, match="classifier thresholds of cam-A@v1 were chosen for the weights"):
        for_recipe(recipe, None, PatchClassifier(str(other), patch=64))


def _vignetted_validation(folder: Path, sensor, n: int = 6) -> Path:
    """Captures of a vignetted sensor: every other one with a bright defect near a corner, truth.csv beside."""
    from calibration.synthetic import capture
    from tests.calibration.conftest import write_png

    rng = np.random.default_rng(5)
    rows = []
    for i in range(n):
        scene = np.full((120, 160), 200.0, np.float32)
        if i % 2:
            scene[95:108, 125:140] = 255
        write_png(folder / f"p{i}.png", capture(sensor, 0, rng, scene=scene))
        rows.append(f"p{i}.png,{i % 2}\n")
    (folder / "truth.csv").write_text("file,defective\n" + "".join(rows))
    return folder


def test_thresholds_are_chosen_on_flat_fielded_images_as_the_line_judges_them(root, tmp_path, monkeypatch):
    """The calibrated form of the line's Inspector: the profile's flat-field applies to every validation image
    (uncorrected, the vignetting's bright centre would fail every part)."""
    import calibration.thresholds as thresholds
    from calibration.line import load_line_calibration
    from tests.calibration.test_station_calibration import BrightSpotEngine, make_profile

    sensor = make_profile(root)
    data = _vignetted_validation(tmp_path / "val", sensor)
    monkeypatch.setattr(thresholds, "load_engine", lambda *args, **kwargs: BrightSpotEngine())
    section, _ = thresholds.calibrate_segmentation("stub", data, 0.0, min_areas=(20,), overlap=8, batch=16,
                                                   calibration=load_line_calibration("cam-A", thresholds=False))
    assert section["flatfield_applied_images"] == 6 and section["target_met"]
    assert (section["fn"], section["fp"]) == (0, 0)
    section, _ = thresholds.calibrate_segmentation("stub", data, 0.0, min_areas=(20,), overlap=8, batch=16,
                                                   calibration=load_line_calibration("cam-A", flatfield=False,
                                                                                     thresholds=False))
    assert section["flatfield_applied_images"] == 0 and section["fp"] == 3  # every good part fails uncorrected


def test_a_flatfield_that_does_not_fit_the_validation_images_is_refused(root, validation, monkeypatch):
    """Images of another size than the profile's camera are refused (they used to be judged without the
    flat-field, which is not how the line judges them)."""
    import calibration.thresholds as thresholds
    from calibration.errors import ProfileMismatch
    from calibration.line import load_line_calibration
    from tests.calibration.test_station_calibration import make_profile

    make_profile(root)  # a 160x120 camera with a flat-field; the magnetic-tile images are larger
    monkeypatch.setattr(thresholds, "load_engine", lambda *a, **k: pytest.fail("refused before any engine loads"))
    with pytest.raises(ProfileMismatch, match=r"does not fit the validation image \S+ \(and 7 more of the 8 images\)"
                                              r".*profile: 160 px.*take the validation images with camera cam-A"):
        thresholds.calibrate_segmentation("stub", validation, 0.25, calibration=load_line_calibration("cam-A"))
