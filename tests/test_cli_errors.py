"""User errors and bugs do not look alike (issue 27): through each command, bad input is one line and exit status 2;
a built-in exception is a bug, shown with its traceback, exit status 1. The commands tell them apart only by the
packages' declared user-error roots, never by a built-in class."""
from __future__ import annotations

import builtins
from pathlib import Path

import pytest

import calibration.cli
import engines.cli
import station.cli
from calibration.errors import CalibrationError, ProfileNotFound
from engines.data.segmentation import DatasetError
from engines.errors import EngineError, EnginesError, InputError, MissingFile, TrainingDiverged
from engines.models.backbone_transfer import BackboneTransferError
from engines.weights import WeightsError
from inspection.errors import InspectionError
from inspection_core.errors import (EXIT_BUG, EXIT_USAGE, ImageReadError, InspectionCoreError, SettingError,
                                    TilingError, report_error, user_error_root, user_errors)
from station.errors import LedgerError, RecipeError, StationError

BUILTIN_EXCEPTIONS = [v for v in vars(builtins).values() if isinstance(v, type) and issubclass(v, BaseException)]


def _one_line_error(text: str, prog: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text
    assert len(lines) == 1, text
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]


def _bug_report(text: str, prog: str, message: str) -> None:
    assert "Traceback (most recent call last):" in text
    assert message in text
    assert f"{prog}: internal error:" in text and "is a bug" in text
    assert f"{prog}: error:" not in text


# ----------------------------------------------------------------------------------------------- the roots


def test_the_user_error_roots_are_the_packages_own_classes():
    roots = user_errors()  # the three commands are imported above: every package's errors module is loaded
    assert set(roots) == {InspectionCoreError, EnginesError, CalibrationError, StationError}
    assert not [root for root in roots if root.__module__ == "builtins"]
    for builtin in BUILTIN_EXCEPTIONS:  # ValueError, FileNotFoundError, OSError, KeyError, ...: all bugs
        assert not issubclass(builtin, roots), builtin


def test_a_built_in_class_cannot_be_declared_a_user_error():
    for builtin in (ValueError, FileNotFoundError, OSError, Exception):
        with pytest.raises(TypeError, match="user-error root"):
            user_error_root(builtin)
    assert set(user_errors()) == {InspectionCoreError, EnginesError, CalibrationError, StationError}


@pytest.mark.parametrize("error", [
    SettingError("score_threshold must be in (0, 1], got 7"), TilingError("x"), ImageReadError("a.png", "empty file"),
    InspectionError("x"), EngineError("x"), WeightsError("x"), DatasetError("x"), InputError("--batch 0"),
    MissingFile("no ONNX file at x"), TrainingDiverged("x"), BackboneTransferError("x"), ProfileNotFound("x"),
    RecipeError("x"), LedgerError("x")])
def test_every_user_error_derives_from_a_root(error):
    assert isinstance(error, user_errors())


def test_user_errors_that_are_also_built_ins_keep_their_callers_working():
    assert issubclass(SettingError, ValueError) and issubclass(InputError, ValueError)  # recipe checks catch these
    assert issubclass(MissingFile, FileNotFoundError)
    assert not issubclass(TrainingDiverged, ValueError) and not issubclass(ImageReadError, OSError)


def test_report_error_tells_them_apart(capsys):
    assert report_error("tool", SettingError("score_threshold must be in (0, 1], got 7")) == EXIT_USAGE == 2
    assert _one_line_error(capsys.readouterr().err, "tool") == "tool: error: score_threshold must be in (0, 1], got 7"
    try:
        raise ValueError("a plain ValueError")
    except ValueError as exc:
        assert report_error("tool", exc) == EXIT_BUG == 1
    _bug_report(capsys.readouterr().err, "tool", "ValueError: a plain ValueError")


# ------------------------------------------------------------------------------- user errors, real bad input


def test_engines_missing_weights_is_one_line(tmp_path, capsys):
    assert engines.cli.main(["eval", "--weights", str(tmp_path / "no-weights"), "--data", str(tmp_path)]) == 2
    line = _one_line_error(capsys.readouterr().err, "engines")
    assert f"no weights at {tmp_path / 'no-weights'}" in line


@pytest.mark.parametrize("model, flags, message", [
    ("bffn", ["--epochs", "0"], "--epochs 0: give 1 or more"),
    ("gr", ["--epochs", "0"], "--epochs 0: give 1 or more"),
    ("bffn", ["--batch", "0"], "--batch 0: give 1 or more"),
    ("gr", ["--lr", "0"], "--lr 0.0: give a learning rate above 0"),
    ("bffn", ["--steps-per-epoch", "-1"], "--steps-per-epoch -1: give 0 or more"),
])
def test_engines_train_refuses_a_zero_count_instead_of_taking_the_default(tmp_path, capsys, model, flags, message):
    """`--epochs 0` used to train the default 30 (40 for classifiers) epochs: a value given is a value meant."""
    assert engines.cli.main(["train", model, "--data", str(tmp_path), "--out", str(tmp_path / "run"), *flags]) == 2
    assert message in _one_line_error(capsys.readouterr().err, "engines")
    assert not (tmp_path / "run").exists(), "nothing is written for a refused command"


def test_a_missing_or_malformed_split_file_is_a_user_error(tmp_path):
    from engines.data.segmentation import read_split

    with pytest.raises(InputError, match="cannot read the split file"):
        read_split(tmp_path / "split.json")
    (tmp_path / "split.json").write_text("not json")
    with pytest.raises(InputError, match="is not a split file"):
        read_split(tmp_path / "split.json")
    (tmp_path / "split.json").write_text('{"train": "a.png", "holdout": []}')
    with pytest.raises(InputError, match="is not a split file"):
        read_split(tmp_path / "split.json")


def test_the_shipped_part_wise_split_reads_with_its_grouping():
    """`engines split --group-by part` writes the grouping beside the lists; training and accept must read it."""
    from engines.data.segmentation import read_split

    split = read_split(Path(__file__).resolve().parents[1] / "docs/splits/magnetic-tile-by-part.json")
    assert split["group_by"] == "part" and len(split["train"]) > 500
    assert not set(split["train"]) & set(split["validation"]) and not set(split["train"]) & set(split["holdout"])


def test_station_bad_recipe_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "line.toml"
    recipe.write_text('[source]\nkind = "replay"\n')
    assert station.cli.main(["run", "--recipe", str(recipe), "--headless", "--max-frames", "1"]) == 2
    line = _one_line_error(capsys.readouterr().err, "station")
    assert str(recipe) in line and "[product]" in line


def test_calibration_missing_data_folder_is_one_line(tmp_path, capsys):
    code = calibration.cli.main(["--root", str(tmp_path / "profiles"), "flatfield", "--camera", "cam-A",
                                 "--dark", str(tmp_path / "no-dark"), "--bright", str(tmp_path / "no-bright")])
    assert code == 2
    line = _one_line_error(capsys.readouterr().err, "calibration")
    assert str(tmp_path / "no-dark") in line and "does not exist" in line


# ------------------------------------------------------------------------------------ bugs: their traceback


def _raises(error: BaseException):
    def command(args):
        raise error
    return command


@pytest.mark.parametrize("error", [ValueError("a bug that raises ValueError"), KeyError("a-missing-key"),
                                   FileNotFoundError("a bug that opens a file that is not there")])
def test_engines_bug_shows_its_traceback(monkeypatch, capsys, error):
    monkeypatch.setattr(engines.cli, "run_list", _raises(error))
    assert engines.cli.main(["list"]) == 1
    _bug_report(capsys.readouterr().err, "engines", str(error))


@pytest.mark.parametrize("error", [ValueError("a bug that raises ValueError"), KeyError("a-missing-key")])
def test_station_bug_shows_its_traceback(monkeypatch, capsys, tmp_path, error):
    monkeypatch.setattr(station.cli, "run_export", _raises(error))
    args = ["export", "--db", str(tmp_path / "log.db"), "--format", "csv", "--out", str(tmp_path / "out.csv")]
    assert station.cli.main(args) == 1
    _bug_report(capsys.readouterr().err, "station", str(error))


@pytest.mark.parametrize("error", [ValueError("a bug that raises ValueError"), KeyError("a-missing-key")])
def test_calibration_bug_shows_its_traceback(monkeypatch, capsys, tmp_path, error):
    monkeypatch.setattr(calibration.cli, "_list", _raises(error))
    assert calibration.cli.main(["--root", str(tmp_path), "list"]) == 1
    _bug_report(capsys.readouterr().err, "calibration", str(error))
