"""The line runs without torch (issue 30): a base install (`pip install .`) has no torch, and the station, its panel,
calibration and the plant links must not need it. The shipped weights carry their ONNX export with a manifest of
hashes (engines/weights/*/onnx.json), which ONNX Runtime opens directly; commands that need torch say so in one line.

The line is run here in subprocesses whose imports of the training stack fail (a meta-path finder, as on a machine
where it is not installed); `make test-lean` (.ci/lean_check.py) checks a real base install."""
from __future__ import annotations

import configparser
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engines.weights import SHIPPED, resolve_weights
from engines.weights_onnx import EXPORTS_FILE, export_problems, read_exports
from tests.conftest import REPO

#: What the [train] extra brings (setup.cfg) and a base install lacks.
TRAINING_STACK = ("torch", "torchvision", "segmentation_models_pytorch", "timm", "onnx", "onnxscript", "safetensors",
                  "tqdm", "triton")
BLOCKER = textwrap.dedent(f"""
    import sys

    class _NotInstalled:
        '''The training stack is not installed here: importing any of it fails as on a base install.'''
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {TRAINING_STACK!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _NotInstalled())
""")
SAMPLES = REPO / "station" / "samples" / "magnetic-tile"


def run_without_torch(code: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter where the training stack cannot be imported."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "STATION_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)


def command_without_torch(module: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """A console command (``station.cli``, ``engines.cli``, ``calibration.cli``) run without the training stack."""
    return run_without_torch(f"""
        import sys
        from {module} import main
        sys.exit(main({args!r}))
    """, tmp_path)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text and len(lines) == 1, text
    return lines[0]


# ------------------------------------------------------------------------------------------- the line itself


def test_the_line_runs_a_replay_without_torch(tmp_path):
    """A short replay through `station run`, every line module imported, with the training stack absent; nothing is
    built into the engine cache (the shipped ONNX export is opened directly); torch never loads."""
    done = run_without_torch(f"""
        import json, sys
        from station.cli import main
        code = main(["run", "--source", "replay:{SAMPLES}", "--headless", "--max-frames", "3", "--fps", "0",
                     "--db", "run.db", "--json"])
        import calibration.cli, engines.cli, station.app, station.fleet.cli, station.opcua, station.mqtt, ui  # noqa
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "engines")
        stack = sorted(m for m in sys.modules if m.split(".")[0] in {TRAINING_STACK!r})
        print(json.dumps({{"code": code, "engines_modules": loaded, "training_stack": stack}}))
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    *body, last = done.stdout.strip().splitlines()
    report, body = json.loads(last), "\n".join(body)
    summary = json.loads(body[body.index("{"):])
    assert report["code"] == 0 and report["training_stack"] == []
    assert summary["inspected"] == 3 and summary["engine_id"].endswith("@onnxruntime-fp32")
    assert not (tmp_path / "cache" / "engines").exists(), "the shipped weights' export must open without a build"
    # every engines module the line loads is either in the contract's sources or only loaded, never run
    sources = contract("line-without-torch")["source_modules"]
    ran = {"engines.backends.base", "engines.backends.common", "engines.backends.registry",
           "engines.backends.onnxruntime_backend", "engines.cache", "engines.folders", "engines.manifest",
           "engines.weights", "engines.weights_onnx", "engines.errors"}
    assert ran <= set(sources) and set(report["engines_modules"]) >= ran


def test_station_calibration_and_engines_commands_start_without_torch(tmp_path):
    for module, args in (("station.cli", ["--help"]), ("station.cli", ["demo", "--help"]),
                         ("station.cli", ["export", "--help"]), ("station.cli", ["forward", "--help"]),
                         ("calibration.cli", ["--help"]), ("engines.cli", ["--help"]), ("engines.cli", ["list"])):
        done = command_without_torch(module, args, tmp_path)
        assert done.returncode == 0, (module, args, done.stderr)


def ledger(db: Path) -> dict[str, tuple[str, list[dict]]]:
    with sqlite3.connect(db) as con:
        return {Path(f).name: (v, json.loads(d or "[]")) for f, v, d in con.execute(
            "SELECT file, verdict, defects_json FROM inspections")}


@pytest.mark.slow
def test_the_demo_without_torch_gives_the_verdicts_of_the_torch_reference(tmp_path):
    """The 16 bundled frames: `station demo --headless` without torch (the shipped ONNX export on ONNX Runtime),
    against `station demo --backend torch` (the torch fp32 reference, from the weights themselves): the same
    verdicts, the same defects."""
    done = command_without_torch("station.cli", ["demo", "--headless", "--fps", "0", "--db", "lean.db"], tmp_path)
    assert done.returncode == 0, done.stderr
    reference = subprocess.run([sys.executable, "-m", "station.cli", "demo", "--headless", "--fps", "0", "--backend",
                                "torch", "--threads", "2", "--db", "torch.db"], capture_output=True, text=True,
                               timeout=900, cwd=tmp_path, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert reference.returncode == 0, reference.stderr
    lean, torch_ = ledger(tmp_path / "lean.db"), ledger(tmp_path / "torch.db")
    assert len(lean) == 16 and lean.keys() == torch_.keys()
    for name, (verdict, defects) in lean.items():
        want_verdict, want_defects = torch_[name]
        assert verdict == want_verdict, name
        assert [(d["label"], d["area_px"]) for d in defects] == [(d["label"], d["area_px"]) for d in want_defects], name


# -------------------------------------------------------------------------------------- the shipped exports


def test_every_shipped_weights_folder_carries_its_onnx_export_matching_its_weights():
    folders = sorted(p for p in SHIPPED.iterdir() if (p / "config.json").is_file())
    assert {p.name for p in folders} >= {"bffn-magnetic-tile", "gr-neu-seg"}
    for folder in folders:
        bundle = resolve_weights(folder)
        exports = read_exports(folder)
        assert exports is not None, f"{folder} has no {EXPORTS_FILE}: run engines build --weights {folder.name} " \
                                    "--into-weights"
        assert export_problems(bundle, exports) == [], folder
        assert exports["weights"]["sha256"] == bundle.sha256()
        modes = {e["mode"] for e in exports["exports"] if e["tile"] == bundle.tile}
        assert modes == ({"batch", "bank"} if bundle.model == "gr" else {"batch"}), folder
        for entry in exports["exports"]:
            # the graph reads its parameters from model.safetensors: kilobytes, not a second copy of the weights
            assert (folder / entry["file"]).stat().st_size < 1_000_000
            assert entry["parity"]["max_abs"] < 1e-4 and entry["parity"]["decision_agreement"] == 1.0


def test_the_wheel_ships_what_the_line_reads():
    """A base install is not editable (`pip install .`): what the line reads must be package data, the weights'
    exports and the demo's frames with their truth among it."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    shipped = {package: [p.strip() for p in patterns.split(",")]
               for package, patterns in config["options.package_data"].items()}
    needed = [*(SHIPPED.glob("*/model.safetensors")), *(SHIPPED.glob("*/config.json")), *(SHIPPED.glob("*/*.onnx")),
              *(SHIPPED.glob(f"*/{EXPORTS_FILE}")), *SAMPLES.iterdir(), *(REPO / "station" / "recipes").iterdir()]
    assert any(p.name == "truth.csv" for p in needed) and any(p.suffix == ".onnx" for p in needed)
    for path in needed:
        package = path.relative_to(REPO).parts[0]
        relative = path.relative_to(REPO / package)
        assert any(relative.match(pattern) and len(relative.parts) == len(Path(pattern).parts)
                   for pattern in shipped.get(package, [])), f"{path} is not in setup.cfg's package_data"


def test_a_changed_weights_file_or_graph_is_refused_without_torch(tmp_path):
    folder = tmp_path / "bffn"
    shutil.copytree(SHIPPED / "bffn-magnetic-tile", folder)
    graph = folder / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    assert export_problems(resolve_weights(folder)) == ["model.onnx has changed since the export (SHA-256 differs)"]
    done = command_without_torch("station.cli", ["run", "--weights", str(folder), "--source", f"replay:{SAMPLES}",
                                                 "--headless", "--max-frames", "1", "--db", "x.db"], tmp_path)
    line = one_line(done.stderr)
    assert done.returncode == 2 and "no longer matches" in line and "model.onnx has changed" in line
    assert "pip install 'inspection-station[train]'" in line and f"engines build --weights {folder} --into-weights" \
        in line


def test_weights_without_an_export_say_in_one_line_what_to_install_and_run(tmp_path):
    folder = tmp_path / "trained"
    folder.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy2(SHIPPED / "bffn-magnetic-tile" / name, folder / name)
    done = command_without_torch("station.cli", ["run", "--weights", str(folder), "--source", f"replay:{SAMPLES}",
                                                 "--headless", "--max-frames", "1", "--db", "x.db"], tmp_path)
    line = one_line(done.stderr)
    assert done.returncode == 2 and line.startswith("station: error: ")
    assert "carry no ONNX export" in line and "pip install 'inspection-station[train]'" in line
    assert f"engines build --weights {folder} --into-weights" in line
    assert not (tmp_path / "x.db").exists() or sqlite3.connect(tmp_path / "x.db").execute(
        "SELECT COUNT(*) FROM inspections").fetchone()[0] == 0


@pytest.mark.slow
def test_the_shipped_export_is_what_engines_build_writes_for_the_weights(tmp_path):
    """Exported again from the weights (torch), the graph is byte for byte the shipped one: it runs these weights."""
    from engines.weights_onnx import write_weights_exports

    folder = tmp_path / "bffn"
    shutil.copytree(SHIPPED / "bffn-magnetic-tile", folder, ignore=shutil.ignore_patterns("*.onnx", EXPORTS_FILE))
    manifest = write_weights_exports(folder, threads=1)
    shipped = read_exports(SHIPPED / "bffn-magnetic-tile")
    assert [e["sha256"] for e in manifest["exports"]] == [e["sha256"] for e in shipped["exports"]], \
        "the shipped model.onnx is not the export of the shipped weights: engines build --weights " \
        "bffn-magnetic-tile --into-weights"


def test_with_torch_the_station_opens_the_same_export(tmp_path, monkeypatch):
    """The full install runs the file the base install runs (no export of its own into the cache)."""
    from engines.backends.base import load_engine

    monkeypatch.setenv("STATION_CACHE", str(tmp_path))
    engine = load_engine("gr-neu-seg", mode="bank", threads=1)
    assert engine.onnx_file == SHIPPED / "gr-neu-seg" / "model.bank.onnx" and engine.manifest["mode"] == "bank"
    assert not (tmp_path / "engines").exists()


# -------------------------------------------------------------------------- commands that need torch say so


@pytest.mark.parametrize("args", [
    ["train", "bffn", "--data", "d", "--out", "r"],
    ["build", "--weights", "bffn-magnetic-tile", "--into-weights"],
    ["export", "--weights", "bffn-magnetic-tile", "--out", "x.onnx"],
])
def test_engines_commands_that_need_torch_say_so_in_one_line(tmp_path, args):
    done = command_without_torch("engines.cli", args, tmp_path)
    line = one_line(done.stderr)
    assert done.returncode == 2
    assert line == (f"engines: error: `engines {args[0]}` needs torch, which the base install leaves out (the line "
                    "runs without it); install the training extra: pip install 'inspection-station[train]' (in a "
                    "checkout: pip install -e '.[train]')")


def test_the_torch_backend_without_torch_says_what_to_install(tmp_path):
    done = command_without_torch("station.cli", ["run", "--backend", "torch", "--source", f"replay:{SAMPLES}",
                                                 "--headless", "--max-frames", "1", "--db", "x.db"], tmp_path)
    line = one_line(done.stderr)
    assert done.returncode == 2 and "pip install 'inspection-station[train]'" in line


# ------------------------------------------------------------------------------------- the import contract


def contract(name: str) -> dict[str, list[str]]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    section = config[f"importlinter:contract:{name}"]
    return {key: [line.strip() for line in section.get(key, "").splitlines()
                  if line.strip() and not line.strip().startswith("#")]
            for key in ("source_modules", "forbidden_modules", "ignore_imports")}


def test_the_import_contract_forbids_torch_to_the_line():
    found = contract("line-without-torch")
    assert {"inspection_core", "inspection", "station", "ui", "calibration"} <= set(found["source_modules"])
    assert {"torch", "torchvision", "segmentation_models_pytorch"} <= set(found["forbidden_modules"])
    assert all(rule.split(" -> ")[1] == "torch" and rule.startswith("engines.") for rule in found["ignore_imports"])
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (the dev extra)")
    done = subprocess.run([lint, "--contract", "line-without-torch"], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_engines_build_needs_an_out_folder_or_into_weights(capsys):
    from engines.cli import main

    assert main(["build", "--weights", "bffn-magnetic-tile"]) == 2
    assert "--into-weights" in one_line(capsys.readouterr().err)
    assert main(["build", "--weights", "bffn-magnetic-tile", "--into-weights", "--precision", "int8"]) == 2
    assert "leave out --precision" in one_line(capsys.readouterr().err)
