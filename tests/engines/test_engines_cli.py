"""The `engines` command as a user runs it; `engines eval` judges exactly as `station run` does."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from tests.engines.test_data_train import make_generic_set

ENGINES = [sys.executable, "-m", "engines.cli"]
STATION = [sys.executable, "-m", "station.cli"]


def test_help_lists_the_commands():
    out = subprocess.run([*ENGINES, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "eval", "export"):
        assert command in out
    train_help = subprocess.run([*ENGINES, "train", "--help"], capture_output=True, text=True, check=True).stdout
    assert "RMSprop" in train_help or "rmsprop" in train_help


def test_missing_weights_exit_2_with_a_message(tmp_path):
    done = subprocess.run([*ENGINES, "export", "--weights", str(tmp_path / "none"), "--out", str(tmp_path / "x.onnx")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "engines train" in done.stderr and "Traceback" not in done.stderr


def test_eval_gives_the_same_verdicts_as_station_run(untrained_bffn, tmp_path):
    from station.recipe import load_recipe, shipped_recipe_path

    rules = load_recipe(shipped_recipe_path("magnetic_tile")).rules  # what `station run` applies below
    data = make_generic_set(tmp_path / "set", n=6, size=(200, 260))
    report = tmp_path / "eval.json"
    done = subprocess.run([*ENGINES, "eval", "--weights", str(untrained_bffn), "--data", str(data), "--threads", "2",
                           "--threshold", str(rules.score_threshold), "--min-area", str(rules.min_area_px),
                           "--json", str(report)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    evaluated = {r["name"]: r["verdict"] for r in json.loads(report.read_text())["images_detail"]}
    assert len(evaluated) == 6
    db = tmp_path / "run.db"
    run = subprocess.run([*STATION, "run", "--source", f"replay:{data / 'images'}", "--pattern", "*.png",
                          "--weights", str(untrained_bffn), "--fps", "0", "--no-loop", "--headless",
                          "--db", str(db), "--threads", "2"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with sqlite3.connect(db) as con:
        station = dict(con.execute("SELECT file, verdict FROM inspections").fetchall())
    assert station == evaluated


@pytest.mark.shared_data
def test_station_run_on_magnetic_tile_images_gives_the_verdicts_of_engines_eval(magnetic_tile, tmp_path):
    """The shipped weights with the shipped recipe: the station and `engines eval` judge real images alike."""
    import shutil

    from station.recipe import load_recipe, shipped_recipe_path

    rules = load_recipe(shipped_recipe_path("magnetic_tile")).rules
    data = tmp_path / "mt"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for folder in ("MT_Free", "MT_Blowhole", "MT_Crack", "MT_Uneven"):
        for jpg in sorted((magnetic_tile / folder).glob("*.jpg"))[:3]:
            shutil.copy(jpg, data / "images" / jpg.name)
            shutil.copy(jpg.with_suffix(".png"), data / "masks" / f"{jpg.stem}.png")
    report = tmp_path / "eval.json"
    done = subprocess.run([*ENGINES, "eval", "--weights", "bffn-magnetic-tile", "--data", str(data), "--threads", "2",
                           "--threshold", str(rules.score_threshold), "--min-area", str(rules.min_area_px),
                           "--json", str(report)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    evaluated = {r["name"]: r["verdict"] for r in json.loads(report.read_text())["images_detail"]}
    assert len(evaluated) == 12 and (tmp_path / "eval.pr.png").exists()
    db = tmp_path / "run.db"
    run = subprocess.run([*STATION, "run", "--source", f"replay:{data / 'images'}", "--pattern", "*.jpg",
                          "--fps", "0", "--no-loop", "--headless", "--db", str(db), "--threads", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with sqlite3.connect(db) as con:
        station = dict(con.execute("SELECT file, verdict FROM inspections").fetchall())
    assert station == evaluated


def test_synth_lens_writes_a_set_that_train_and_eval_can_read(tmp_path):
    from engines.data.segmentation import load_dataset

    out = tmp_path / "lens"
    done = subprocess.run([*ENGINES, "synth", "lens", "--out", str(out), "--count", "4", "--size", "160",
                           "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    samples = load_dataset(out)
    assert len(samples) == 4 and all(s.image.shape == (160, 160) for s in samples)
    truth = (out / "truth.csv").read_text().splitlines()[1:]
    assert [s.defective for s in samples] == [line.split(",")[1] == "1" for line in truth]
    bad = subprocess.run([*ENGINES, "synth", "lens", "--out", str(tmp_path / "x"), "--count", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "count" in bad.stderr and "Traceback" not in bad.stderr


def test_synth_screen_writes_multilabel_patches(tmp_path):
    out = tmp_path / "screen"
    done = subprocess.run([*ENGINES, "synth", "screen", "--out", str(out), "--count", "1", "--size", "512",
                           "--tile", "128", "--seed", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0] == "file,labels" and len(rows) == 1 + 16
    assert len(list((out / "images").glob("*.png"))) == 16


def test_classifier_train_eval_and_cam_from_the_command_line(tmp_path):
    data = tmp_path / "screen"
    subprocess.run([*ENGINES, "synth", "screen", "--out", str(data), "--count", "2", "--size", "512", "--tile", "128",
                    "--seed", "4"], check=True, capture_output=True, timeout=120)
    run = tmp_path / "gr"
    done = subprocess.run([*ENGINES, "train", "gr", "--data", str(data), "--out", str(run), "--backbone", "resnet18",
                           "--label-dim", "16", "--epochs", "1", "--pretrain-epochs", "1", "--size", "64",
                           "--batch", "8", "--steps-per-epoch", "1", "--threads", "1", "--bank-size", "7", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "gr" and config["training"]["classes"] == ["bubble", "pinhole", "scratch", "tin_ash"]
    assert [h["phase"] for h in config["training"]["history"]] == [1, 2], "two phases, in order"
    report = tmp_path / "eval.json"
    done = subprocess.run([*ENGINES, "eval", "--weights", str(run), "--data", str(data), "--batch", "8",
                           "--threads", "1", "--json", str(report)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["images"] == 32 and set(result["per_class"]) == {"bubble", "pinhole", "scratch", "tin_ash"}
    assert 0.0 <= result["agreement"] <= 1.0 and (tmp_path / "eval.classes.png").exists()
    done = subprocess.run([*ENGINES, "cam", "--weights", str(run), "--data", str(data), "--out", str(tmp_path / "cam"),
                           "--limit", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "cam").glob("*.cam.png"))) == 2
    wrong = subprocess.run([*ENGINES, "train", "unet", "--data", str(data), "--out", str(tmp_path / "u"),
                            "--label-dim", "8"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "--label-dim" in wrong.stderr and "Traceback" not in wrong.stderr
