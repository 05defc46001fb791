"""Engine folders: `engines build` writes the artefacts and a manifest, loading checks the manifest against the files,
the libraries and the GPU, `engines verify` judges parity with the torch reference, `engines bench` measures two
engines in turns, `engines list` says what runs here, and the station loads engines by manifest."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.backends.base import load_engine
from engines.build import BuildSettings, build, parse_batch
from engines.folders import engine_folders, open_engine
from engines.parity import reference_engine
from engines.cli import main as engines_main
from engines.errors import BackendUnavailable, EngineError
from engines.manifest import MANIFEST, ManifestError, library_versions, problems, read_manifest
from engines.weights import resolve_weights
from inspection_core.hashing import file_sha256
from inspection_core.preprocess import InputSpec, normalize_tiles

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ort_folder(untrained_bffn, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("engines") / "bffn-ort"
    build(BuildSettings(weights=str(untrained_bffn), backend="onnxruntime", out=str(out), threads=1))
    return out


@pytest.fixture(scope="module")
def lens_data(tmp_path_factory) -> Path:
    """Six synthetic camera lenses (generic images/ + masks/ layout), real enough to hold defects and an ink ring."""
    from engines.data.synthetic_lens import LensSpec, write_lens_dataset

    return write_lens_dataset(tmp_path_factory.mktemp("lens"), 6, seed=3, spec=LensSpec(size=(256, 256)))


def copy_folder(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_build_writes_artefacts_and_a_complete_manifest(ort_folder, untrained_bffn):
    m = read_manifest(ort_folder)
    assert (m["model"], m["kind"], m["backend"], m["precision"], m["device"], m["tile"]) == \
        ("bffn", "segmentation", "onnxruntime", "fp32", "cpu", 128)
    assert m["batch"] == {"min": 1, "opt": 32, "max": 64}
    assert m["weights"]["sha256"] == resolve_weights(untrained_bffn).sha256()
    assert m["onnx"]["sha256"] == file_sha256(ort_folder / "model.onnx")
    assert m["onnx"]["tensorrt_unsupported_ops"] == {}, "BFFN must stay inside TensorRT's ONNX operator list"
    assert m["versions"]["onnxruntime"] == library_versions()["onnxruntime"]
    assert m["versions"]["tensorrt"] is None and m["machine"]["gpu"] is None
    assert m["built_at"] and m["build_command"].startswith("engines build --weights")
    parity = m["parity"]
    assert parity["against"] == "torch fp32 cpu" and parity["inputs"] == 8
    assert parity["decision_agreement"] >= 0.999 and parity["max_abs"] < 1e-3
    assert not list(ort_folder.parent.glob(".bffn-ort.*")), "no work folder left behind"


def test_opened_engine_matches_the_torch_reference_and_names_its_folder(ort_folder):
    engine = open_engine(ort_folder, threads=1)
    reference = reference_engine(ort_folder, threads=1)
    x = normalize_tiles(np.random.default_rng(0).integers(0, 256, (3, 128, 128), dtype=np.uint8), engine.spec)
    np.testing.assert_allclose(engine.infer(x), reference.infer(x), atol=2e-4)
    assert engine.folder == ort_folder and engine.manifest["backend"] == "onnxruntime"
    assert engine.engine_id.endswith("@onnxruntime-fp32")


def test_a_changed_file_is_refused_with_the_rebuild_command(ort_folder, tmp_path):
    folder = copy_folder(ort_folder, tmp_path / "tampered")
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match=r"onnx file model.onnx has changed.*Rebuild it on this machine: "
                                            r"engines build --weights"):
        open_engine(folder)
    (folder / "weights" / "model.safetensors").unlink()
    assert any("weights file weights/model.safetensors is missing" in p for p in problems(folder))


def test_other_library_versions_and_gpus_are_refused_naming_the_difference(ort_folder, tmp_path):
    folder = copy_folder(ort_folder, tmp_path / "old")
    m = read_manifest(folder)
    m["versions"]["onnxruntime"] = "0.9.0"
    (folder / MANIFEST).write_text(json.dumps(m))
    here = library_versions()["onnxruntime"]
    with pytest.raises(ManifestError, match=f"built with onnxruntime 0.9.0, this machine has onnxruntime {here}"):
        open_engine(folder)
    import torch

    m["versions"]["onnxruntime"] = here
    m["device"] = "cuda"
    m["machine"]["gpu"] = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    (folder / MANIFEST).write_text(json.dumps(m))
    found = problems(folder)
    if not torch.cuda.is_available():
        assert found == ["built for a CUDA GPU (NVIDIA H100 80GB HBM3), this machine has none"]
    else:
        assert found == [] or any("GPU" in p for p in found)


def test_not_an_engine_folder_and_bad_manifest_say_what_to_do(tmp_path):
    with pytest.raises(ManifestError, match="has no manifest.json; build one with `engines build"):
        open_engine(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="cannot be read"):
        open_engine(tmp_path)


def test_failed_builds_leave_the_existing_folder_untouched(ort_folder, tmp_path):
    folder = copy_folder(ort_folder, tmp_path / "keep")
    before = read_manifest(folder)
    with pytest.raises(BackendUnavailable, match="onnxruntime"):
        build(BuildSettings(weights=str(folder), backend="tensorrt", precision="fp16", device="cuda",
                            out=str(folder)))
    assert read_manifest(folder) == before and not list(tmp_path.glob(".keep.*"))


@pytest.mark.parametrize("settings, message", [
    (dict(backend="torch", precision="int8"), "no int8 path"),
    (dict(backend="onnxruntime", precision="fp16"), "fp16 needs the CUDA provider"),
    (dict(backend="onnxruntime", precision="int8"), "int8 needs calibration images"),
    (dict(backend="tensorrt", device="cpu"), "NVIDIA GPU"),
    (dict(backend="onnxruntime", model="gr"), "hold a bffn"),
])
def test_impossible_builds_are_refused_before_any_work(untrained_bffn, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        build(BuildSettings(weights=str(untrained_bffn), out=str(tmp_path / "x"), **settings))
    assert not (tmp_path / "x").exists()


def test_batch_profiles_parse_and_bad_ones_explain():
    assert parse_batch("1:32:64") == (1, 32, 64) and parse_batch("16") == (16, 16, 16)
    for bad in ("32:1:64", "0:1:2", "a:b:c", "1:2"):
        with pytest.raises(ValueError, match="MIN:OPT:MAX"):
            parse_batch(bad)


def test_classifier_engines_in_both_gr_modes_and_torch_fp16(tiny_gr, tmp_path):
    from tests.conftest import TINY_GR_SIZE

    rng = np.random.default_rng(1)
    x = normalize_tiles(rng.integers(0, 256, (5, TINY_GR_SIZE, TINY_GR_SIZE), dtype=np.uint8),
                        resolve_weights(tiny_gr).input_spec())
    for mode in ("batch", "bank"):
        out = tmp_path / f"gr-{mode}"
        m = build(BuildSettings(weights=str(tiny_gr), backend="onnxruntime", out=str(out), mode=mode, threads=1))
        assert m["kind"] == "classification" and m["mode"] == mode and m["classes"] == ["crack", "blowhole", "fray"]
        assert m["onnx"]["tensorrt_unsupported_ops"] == {}
        engine = open_engine(out, threads=1)
        probs = engine.infer(x)
        assert probs.shape == (5, 3) and ((probs > 0) & (probs < 1)).all()
        alone = engine.infer(x[:1])
        if mode == "bank":  # scored against the bank: a patch's scores do not depend on its batch
            np.testing.assert_allclose(alone, probs[:1], atol=1e-5)
        else:  # image-wise relations span the batch: the neighbours change the scores
            assert np.abs(alone - probs[:1]).max() > 1e-6
    m = build(BuildSettings(weights=str(tiny_gr), backend="torch", precision="fp16", out=str(tmp_path / "gr-16"),
                            threads=1))
    assert m["parity"]["max_abs"] < 2e-2 and m["parity"]["max_abs"] > 0, "fp16 arithmetic differs, slightly"
    assert open_engine(tmp_path / "gr-16").precision == "fp16"


def test_onnxruntime_int8_is_calibrated_on_real_images(tiny_gr, lens_data, tmp_path):
    out = tmp_path / "gr-int8"
    m = build(BuildSettings(weights=str(tiny_gr), backend="onnxruntime", precision="int8", out=str(out),
                            calibration=str(lens_data / "images"), data=str(lens_data), threads=1))
    assert m["engine"]["file"] == "model.int8.onnx" and m["int8_calibration"]["inputs"] == 6
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert 0 < m["parity"]["max_abs"] < 0.2 and m["parity"]["source"].startswith(str(lens_data))
    assert "judged by its labels" in m["parity"]["source"] and m["parity"]["label_agreement"] >= 0.98
    assert m["parity"]["tolerances"]["label_agreement"] == 0.98 and "int8_guard" not in m, "no guard: no score map"
    refused = tmp_path / "gr-int8-refused"
    with pytest.raises(EngineError, match=r"int8 engine not written.*judged by its labels.*label_agreement .* < 1.01"):
        build(BuildSettings(weights=str(tiny_gr), backend="onnxruntime", precision="int8", out=str(refused),
                            calibration=str(lens_data / "images"), data=str(lens_data), threads=1),
              tolerances={"label_agreement": 1.01})
    assert not refused.exists()


def test_load_engine_builds_once_into_the_cache_and_rebuilds_when_stale(untrained_bffn):
    first = load_engine(untrained_bffn, "onnxruntime", threads=1)
    folder = first.folder
    built_at = read_manifest(folder)["built_at"]
    assert load_engine(untrained_bffn, "onnxruntime", threads=1).folder == folder
    assert read_manifest(folder)["built_at"] == built_at, "a matching cached engine is reused"
    m = read_manifest(folder)
    m["versions"]["onnxruntime"] = "0.9.0"
    (folder / MANIFEST).write_text(json.dumps(m))
    again = load_engine(untrained_bffn, "onnxruntime", threads=1)
    assert read_manifest(again.folder)["versions"]["onnxruntime"] == library_versions()["onnxruntime"]


def test_a_cached_engine_follows_the_weights_input_settings(untrained_bffn, tmp_path, caplog):
    """The same model.safetensors with another config.json "input" (here the context pass switched on) prepares
    frames otherwise: the cached engine is rebuilt with it, not reused with the old one."""
    weights = Path(shutil.copytree(untrained_bffn, tmp_path / "weights"))
    assert load_engine(weights, "onnxruntime", threads=1).spec == InputSpec()
    config = json.loads((weights / "config.json").read_text())
    config["input"]["context"] = True
    (weights / "config.json").write_text(json.dumps(config))
    engine = load_engine(weights, "onnxruntime", threads=1)
    assert engine.spec == InputSpec(context=True)
    assert InputSpec(**read_manifest(engine.folder)["input"]) == InputSpec(context=True)
    assert "rebuilding cached engine" in caplog.text and "'context': True" in caplog.text


def test_an_engine_folder_stands_for_weights_and_must_match_the_backend(ort_folder):
    assert load_engine(ort_folder, "onnxruntime", threads=1).folder == ort_folder
    with pytest.raises(Exception, match='built for backend onnxruntime, not tensorrt; set backend = "onnxruntime"'):
        load_engine(ort_folder, "tensorrt")
    assert resolve_weights(ort_folder).model == "bffn", "engines eval etc. accept an engine folder as weights"


def _shipped_threshold() -> float:
    from station.recipe import load_recipe, shipped_recipe_path

    return load_recipe(shipped_recipe_path("magnetic_tile")).rules.score_threshold


def test_verify_passes_against_torch_and_fails_against_other_weights(ort_folder, lens_data, tmp_path, capsys):
    report_file = tmp_path / "verify.json"
    assert engines_main(["verify", str(ort_folder), "--against", "torch", "--data", str(lens_data), "--threads", "1",
                         "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert report["passed"] and report["images"] == 6 and report["verdict_agreement"] == 1.0
    assert report["mean_abs"] < 1e-4 and report["rules"]["score_threshold"] == _shipped_threshold()

    import torch

    from engines.models.bffn import BFFN, BFFNConfig
    from engines.weights import save_weights

    torch.manual_seed(7)  # other weights: a stand-in for an engine that drifted
    other = save_weights(BFFN(BFFNConfig()).eval(), tmp_path / "other-weights", "bffn", BFFNConfig().to_dict(),
                         InputSpec().to_dict(), 128, {}, half=False)
    build(BuildSettings(weights=str(other), backend="onnxruntime", out=str(tmp_path / "other"), threads=1))
    code = engines_main(["verify", str(ort_folder), "--against", str(tmp_path / "other"), "--data", str(lens_data),
                         "--threads", "1"])
    assert code == 1
    assert "beyond the fp32 tolerances: " in capsys.readouterr().err


def test_bench_measures_two_engines_in_turns(ort_folder, tmp_path):
    out = tmp_path / "bench.json"
    assert engines_main(["bench", str(ort_folder), "--vs", "torch", "--batch", "2", "--seconds", "1", "--threads",
                         "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    a, b = result["engines"][str(ort_folder)], result["engines"]["torch"]
    assert a["batches"] >= 3 and b["batches"] >= 3 and a["p50_ms"] <= a["p99_ms"]
    assert result["ratio"] == pytest.approx(a["tiles_per_s"] / b["tiles_per_s"], rel=1e-2)
    memory = a["memory"]  # growth may be 0 here: earlier tests left freed memory the allocator reuses
    assert memory["rss_before_mb"] > 0 and memory["peak_rss_mb"] >= memory["rss_before_mb"]
    assert memory["peak_rss_growth_mb"] is None or memory["peak_rss_growth_mb"] >= 0


def test_list_shows_what_runs_here_and_why_not(ort_folder, tmp_path, capsys):
    broken = copy_folder(ort_folder, tmp_path / "engines-built" / "broken")
    (broken / "model.onnx").write_bytes(b"x")
    good = copy_folder(ort_folder, tmp_path / "engines-built" / "good")
    assert set(engine_folders([tmp_path / "engines-built"])) >= {broken, good}
    assert engines_main(["list", str(tmp_path / "engines-built"), "--json"]) == 0
    rows = {Path(r["folder"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert rows["good"]["runs_here"] and not rows["good"]["why_not"]
    assert not rows["broken"]["runs_here"] and "model.onnx has changed" in rows["broken"]["why_not"][0]
    assert engines_main(["list", str(tmp_path / "engines-built")]) == 0
    text = capsys.readouterr().out
    assert "runs here: yes" in text and "runs here: NO - onnx file model.onnx has changed" in text


def test_build_cli_reports_parity_and_errors_in_one_line(untrained_bffn, tmp_path, capsys):
    assert engines_main(["build", "--weights", str(untrained_bffn), "--backend", "torch", "--batch", "4:8:16",
                         "--threads", "1", "--out", str(tmp_path / "t")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["backend"] == "torch" and shown["batch"] == {"min": 4, "opt": 8, "max": 16}
    assert read_manifest(tmp_path / "t")["build_command"].startswith("engines build --weights")
    assert engines_main(["build", "--weights", str(tmp_path / "none"), "--out", str(tmp_path / "u")]) == 2
    assert "no weights at" in capsys.readouterr().err


def test_the_station_loads_a_recipe_engine_folder_by_manifest(ort_folder, tmp_path):
    from station.app import build_inspector
    from station.errors import RecipeError
    from station.recipe import load_recipe
    from tests.station.test_recipe import MINIMAL, write

    (tmp_path / "images").mkdir()
    recipe = load_recipe(write(tmp_path, MINIMAL.replace('weights = "w.safetensors"',
                                                         f'weights = "{ort_folder}"\nthreads = 1')))
    inspector = build_inspector(recipe)
    assert inspector.engine.folder == ort_folder and inspector.engine_id.endswith("@onnxruntime-fp32")
    fp16 = recipe.with_overrides({"engine.precision": "fp16"})
    with pytest.raises(Exception, match="built for precision fp32, not fp16"):
        build_inspector(fp16)
    with pytest.raises(RecipeError, match=r'\[engine\] precision: .* use "fp32", "fp16" or "int8"'):
        recipe.with_overrides({"engine.precision": "fp64"})


def test_verify_a_classifier_engine_on_real_layout_patches(tiny_gr, tmp_path):
    """A GR engine (bank mode) against its torch reference on multi-label patches (generic labels.csv layout):
    label and label-set agreement, score differences, through the same batches."""
    from engines.data.synthetic_screen import ScreenSpec, write_screen_patches
    from engines.verify import verify

    data = write_screen_patches(tmp_path / "patches", 1, seed=2, spec=ScreenSpec(size=(256, 512)), tile=64)
    build(BuildSettings(weights=str(tiny_gr), backend="onnxruntime", mode="bank", out=str(tmp_path / "gr"),
                        threads=1))
    report = verify(tmp_path / "gr", data, threads=1, batch=8)
    assert report["images"] == 32 and report["passed"] and report["failed"] == []
    assert report["label_agreement"] == 1.0 and report["label_set_agreement"] == 1.0
    assert 0 < report["max_abs"] < 1e-4 and "verdict_agreement" not in report
