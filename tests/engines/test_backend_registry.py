"""The backend registry (engines/backends/registry.py): each backend is declared once, and the commands' choices,
the recipe checks, engine folders, the build's checks, the manifest checks, `engines list` and the station all
find backends through it. A fake backend declared by a fixture shows that every one of them picks it up."""
from __future__ import annotations

import argparse
import doctest
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engines.backends.registry as registry
from engines.backends.registry import (
    BACKENDS,
    BackendSpec,
    available_backends,
    backend_names,
    backend_spec,
    recipe_backend_names,
    register,
    resolve_backend,
)
from engines.errors import BackendUnavailable
from inspection_core.engine import Engine
from inspection_core.preprocess import InputSpec


def backend_choices(parser: argparse.ArgumentParser) -> dict[str, tuple[str, ...]]:
    """``{"sub command": choices}`` of every ``--backend`` option in a command's parser tree."""
    found: dict[str, tuple[str, ...]] = {}

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, (*path, name))
            elif "--backend" in action.option_strings:
                found[" ".join(path)] = tuple(action.choices)

    walk(parser, ())
    return found


def parsers() -> dict[str, argparse.ArgumentParser]:
    from calibration.cli import build_parser as calibration_parser
    from engines.cli import build_parser as engines_parser
    from station.cli import build_parser as station_parser

    return {"engines": engines_parser(), "station": station_parser(), "calibration": calibration_parser()}


# ---------------------------------------------------------------------------------------------- a fake backend


class FakeEngine(Engine):
    """Scores every pixel as background: enough to show which code opened it."""

    backend = "fake"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        out = np.zeros((len(batch), 2, self.tile, self.tile), np.float32)
        out[:, 0] = 1.0
        return out


def open_fake(folder: Path, manifest: dict, threads: int, device: str) -> Engine:
    return FakeEngine(manifest["model"], manifest["weights"]["sha256"], InputSpec(**manifest["input"]),
                      manifest["tile"], manifest["precision"], manifest["kind"])


def no_gpu_here(device: str) -> None:
    raise BackendUnavailable("the fake GPU backend needs a fake GPU: use --backend fake")


@pytest.fixture
def fake_backends():
    """Two extra declarations: ``fake`` (CPU, fp32, runs here; its library is ``json``) and ``fake-gpu`` (CUDA
    only, never available), removed afterwards."""
    register(BackendSpec("fake", title="Fake", summary="a test double", devices=("cpu",), precisions=("fp32",),
                         opener=open_fake, check=lambda device: None, library="json"))
    register(BackendSpec("fake-gpu", title="FakeGPU", summary="a test double on a GPU it never finds",
                         devices=("cuda",), precisions=("fp32", "int8"), opener=open_fake, check=no_gpu_here,
                         aliases={"fake-gpu-fast": "cuda"}))
    try:
        yield
    finally:
        BACKENDS.pop("fake", None)
        BACKENDS.pop("fake-gpu", None)


@pytest.fixture
def fake_folder(tmp_path, fake_backends) -> Path:
    """An engine folder of the fake backend, with a manifest like `engines build` writes."""
    from engines.manifest import FORMAT, library_versions, write_manifest
    from inspection_core.hashing import file_sha256

    folder = tmp_path / "fake-engine"
    folder.mkdir()
    (folder / "model.fake").write_bytes(b"fake weights")
    write_manifest(folder, {
        "format": FORMAT, "model": "bffn", "kind": "segmentation", "input": InputSpec().to_dict(), "tile": 128,
        "backend": "fake", "device": "cpu", "precision": "fp32", "batch": {"min": 1, "opt": 8, "max": 8},
        "weights": {"file": "model.fake", "sha256": file_sha256(folder / "model.fake")}, "onnx": None,
        "engine": None, "versions": library_versions(), "machine": {"gpu": None}, "built_at": "now",
        "build_command": "engines build --weights W --backend fake --out DIR"})
    return folder


def recipe_text(weights: str, backend: str) -> str:
    return (f'[product]\nname = "part"\n\n[source]\nkind = "replay"\npath = "images"\n\n[engine]\n'
            f'weights = "{weights}"\nbackend = "{backend}"\nthreads = 1\n')


def load(tmp_path: Path, weights: str, backend: str):
    from station.recipe import load_recipe

    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "r.toml"
    path.write_text(recipe_text(weights, backend))
    return load_recipe(path)


# ------------------------------------------------------------------------------------------------------- tests


def test_each_backend_is_declared_once_with_what_it_can_do():
    assert backend_names() == ("onnxruntime", "torch", "tensorrt")
    assert backend_names(device="cpu") == ("onnxruntime", "torch")
    assert recipe_backend_names() == ("onnxruntime", "torch", "torch-cuda", "tensorrt")
    assert [resolve_backend(n) for n in recipe_backend_names()] == [
        ("onnxruntime", "cpu"), ("torch", "cpu"), ("torch", "cuda"), ("tensorrt", "cuda")]
    assert backend_spec("tensorrt").devices == ("cuda",) and not backend_spec("tensorrt").torch_cuda
    assert backend_spec("torch").precisions == ("fp32", "fp16")
    with pytest.raises(BackendUnavailable, match="unknown backend 'openvino'; choose one of onnxruntime, torch, "
                                                 "tensorrt"):
        backend_spec("openvino")
    with pytest.raises(BackendUnavailable, match="'openvino'.*torch-cuda"):
        resolve_backend("openvino")


def test_the_registry_refuses_a_name_twice_and_aliases_for_devices_it_lacks():
    torch = backend_spec("torch")
    with pytest.raises(ValueError, match="'torch' is registered already"):
        register(torch)
    with pytest.raises(ValueError, match="'torch-cuda' is registered already"):
        register(BackendSpec("other", title="Other", summary="", devices=("cpu",), precisions=("fp32",),
                             opener=open_fake, check=str, aliases={"torch-cuda": "cpu"}))
    with pytest.raises(ValueError, match="alias must name one of its devices"):
        register(BackendSpec("other", title="Other", summary="", devices=("cpu",), precisions=("fp32",),
                             opener=open_fake, check=str, aliases={"other-cuda": "cuda"}))
    assert "other" not in BACKENDS


def test_the_build_refusals_come_from_the_declarations():
    assert backend_spec("torch").refusal("int8", "cpu") == ("the torch backend has no int8 path; build int8 with "
                                                             "--backend onnxruntime or tensorrt")
    assert backend_spec("tensorrt").refusal("fp16", "cpu") == ("TensorRT engines run on an NVIDIA GPU: use --device "
                                                               "cuda (the default for tensorrt)")
    assert backend_spec("onnxruntime").refusal("fp16", "cpu").startswith("onnxruntime fp16 needs the CUDA provider")
    assert backend_spec("onnxruntime").refusal("fp16", "cuda:1") is None
    assert all(backend_spec(n).refusal("fp32", backend_spec(n).default_device) is None for n in backend_names())


def test_the_commands_backend_choices_are_the_registrys_names():
    found = {command: backend_choices(parser) for command, parser in parsers().items()}
    engines = found.pop("engines")
    assert engines.pop("build") == backend_names()
    assert engines and set(engines.values()) == {backend_names(device="cpu")}  # eval, accept, compare run on the CPU
    assert found["station"] and set(found["station"].values()) == {recipe_backend_names()}
    assert found["calibration"] and set(found["calibration"].values()) == {backend_names(device="cpu")}


def test_a_declared_backend_reaches_every_command(fake_backends):
    found = {command: backend_choices(parser) for command, parser in parsers().items()}
    assert "fake" in found["engines"]["build"] and "fake-gpu" in found["engines"]["build"]
    assert "fake" in found["engines"]["eval"] and "fake-gpu" not in found["engines"]["eval"]  # CUDA only
    assert {"fake", "fake-gpu", "fake-gpu-fast"} <= set(found["station"]["run"])
    assert "fake" in found["calibration"]["thresholds"]


def test_a_recipe_with_an_unknown_backend_names_the_registrys(tmp_path):
    from station.errors import RecipeError

    allowed = ", ".join(repr(n) for n in recipe_backend_names())
    with pytest.raises(RecipeError) as caught:
        load(tmp_path, "bffn-magnetic-tile", "openvino")
    assert f"[engine] backend: 'openvino' is not allowed; use one of {allowed}" in str(caught.value)
    assert allowed == "'onnxruntime', 'torch', 'torch-cuda', 'tensorrt'"


def test_a_recipe_takes_a_backend_declared_later_and_refuses_it_once_removed(tmp_path, fake_backends):
    from station.errors import RecipeError
    from station.recipe import Backend

    recipe = load(tmp_path, "bffn-magnetic-tile", "fake-gpu-fast")
    assert recipe.engine.backend == "fake-gpu-fast" and isinstance(recipe.engine.backend, Backend)
    assert resolve_backend(recipe.engine.backend.value) == ("fake-gpu", "cuda")
    assert recipe.as_dict()["engine"]["backend"] == "fake-gpu-fast"
    BACKENDS.pop("fake-gpu")
    with pytest.raises(RecipeError, match=r"'fake-gpu-fast' is not allowed; use one of 'onnxruntime', .*'fake'$"):
        load(tmp_path, "bffn-magnetic-tile", "fake-gpu-fast")


def test_an_engine_folder_opens_through_its_declaration(fake_folder):
    from engines.backends.base import load_engine
    from engines.folders import open_engine
    from engines.manifest import library_versions, problems

    assert "json" in library_versions() and problems(fake_folder) == []  # its library is the one checked
    engine = open_engine(fake_folder)
    assert isinstance(engine, FakeEngine) and engine.folder == fake_folder and engine.engine_id.endswith("@fake-fp32")
    assert isinstance(load_engine(fake_folder, backend="fake"), FakeEngine)
    manifest = json.loads((fake_folder / "manifest.json").read_text())
    manifest["versions"]["json"] = "0.0"
    (fake_folder / "manifest.json").write_text(json.dumps(manifest))
    assert problems(fake_folder) == [f"built with json 0.0, this machine has json {library_versions()['json']}"]


def test_engines_list_shows_declared_backends_and_their_folders(fake_folder, capsys):
    from engines.cli import main as engines_main

    assert engines_main(["list", "--backends", "--json"]) == 0
    rows = {row["backend"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(rows) == list(BACKENDS) and {"fake", "fake-gpu"} <= set(rows)
    assert rows["fake"]["runs_here"] == ["cpu"] and rows["fake"]["precisions"] == ["fp32"]
    assert rows["fake-gpu"]["runs_here"] == [] and "needs a fake GPU" in rows["fake-gpu"]["why_not"]["cuda"]
    assert engines_main(["list", "--backends"]) == 0
    text = capsys.readouterr().out
    assert "fake-gpu (FakeGPU): a test double on a GPU it never finds" in text
    assert "runs here on cuda: NO - the fake GPU backend needs a fake GPU" in text
    assert engines_main(["list", str(fake_folder.parent), "--json"]) == 0
    folders = {Path(r["folder"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert folders["fake-engine"]["backend"] == "fake" and folders["fake-engine"]["runs_here"]


def test_the_station_loads_a_recipe_engine_through_the_registry(tmp_path, fake_folder):
    from station.app import build_inspector

    inspector = build_inspector(load(tmp_path, str(fake_folder), "fake"))
    assert isinstance(inspector.engine, FakeEngine)


def test_the_builder_takes_devices_from_the_declarations(fake_backends):
    from engines.build import BuildSettings

    assert BuildSettings(weights="w", backend="fake-gpu").resolved_device() == "cuda"
    assert BuildSettings(weights="w", backend="fake").resolved_device() == "cpu"
    assert BuildSettings(weights="w", backend="tensorrt").resolved_device() == "cuda"
    assert backend_spec("fake-gpu").refusal("fp32", "cpu") == ("FakeGPU engines run on an NVIDIA GPU: use --device "
                                                               "cuda (the default for fake-gpu)")
    assert backend_spec("fake").refusal("int8", "cpu") == ("the fake backend has no int8 path; build int8 with "
                                                            "--backend onnxruntime or tensorrt or fake-gpu")


def test_an_unavailable_backend_says_why_and_what_runs_here(tmp_path, capsys):
    spec = backend_spec("tensorrt")
    if spec.available():
        pytest.skip("TensorRT runs here")
    why = spec.unavailable()
    assert ("TensorRT is not installed" in why or "TensorRT" in why and "GPU" in why) and "--backend" in why
    assert "onnxruntime:cpu" in why  # what runs here instead, from the same registry
    with pytest.raises(BackendUnavailable, match="TensorRT"):
        spec.require()
    assert not spec.available("cpu") and "NVIDIA GPU" in spec.unavailable("cpu")
    assert "onnxruntime:cpu" in available_backends() and not any(b.startswith("tensorrt") for b in
                                                                   available_backends())
    # the station refuses to start on it before building anything, with the same message
    from station.app import build_inspector

    recipe = load(tmp_path, "bffn-magnetic-tile", "tensorrt")
    with pytest.raises(BackendUnavailable, match="TensorRT"):
        build_inspector(recipe)
    from engines.backends.common import cache_dir

    assert not list((cache_dir() / "engines").glob(".*.building-*"))  # refused before a build folder was made


def test_the_registry_imports_no_backend_library_and_its_examples_run():
    code = ("import sys, engines.backends.registry, engines.cli, station.recipe, station.cli, calibration.cli; "
            "print(sorted(m for m in ('tensorrt', 'torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert doctest.testmod(registry).failed == 0


def test_engines_build_makes_a_declared_backends_engine_file_through_its_builder(untrained_bffn, tmp_path):
    """`engines build` names no backend: the declaration's builder turns the export into the engine file."""
    import shutil

    from engines.build import BuildSettings, EngineBuild, build
    from inspection_core.hashing import file_sha256

    seen: list[EngineBuild] = []

    def copy_export(job: EngineBuild) -> None:
        seen.append(job)
        shutil.copy2(job.work / "model.onnx", job.work / "model.copied.onnx")
        job.manifest["engine"] = {"file": "model.copied.onnx", "sha256": file_sha256(job.work / "model.copied.onnx")}

    register(BackendSpec("copy", title="Copy", summary="ONNX Runtime on a copy of the export", devices=("cpu",),
                         precisions=("fp32",), exports_onnx=True, opener="engines.folders:open_onnxruntime_folder",
                         check=lambda device: None, library="onnxruntime", builder=copy_export))
    try:
        manifest = build(BuildSettings(weights=str(untrained_bffn), backend="copy", out=str(tmp_path / "engine"),
                                       threads=1, parity_images=1))
    finally:
        BACKENDS.pop("copy", None)
    (job,) = seen
    assert job.settings.backend == "copy" and job.kind == "segmentation" and job.calib is None
    assert manifest["engine"]["file"] == "model.copied.onnx" and (tmp_path / "engine" / "model.copied.onnx").is_file()
    assert manifest["onnx"]["file"] == "model.onnx"
