"""The docstrings' ``>>>`` examples run, here in ``make test``: every module of the repository's packages whose
source holds one is imported and run through :mod:`doctest`. An example that cannot run on a CPU machine without
data (a camera, a database server, trained weights) is written as prose or a plain code block, never skipped.

Only the modules with examples are imported, so a module that imports torch, PyQt6 or TensorRT lazily is not
imported for nothing (and one without its optional library installed is not collected at all)."""
from __future__ import annotations

import doctest
import importlib

import pytest

from tests.conftest import REPO

PACKAGES = ("inspection_core", "inspection", "engines", "calibration", "station", "ui")
SKIP = "doctest: +" + "SKIP"  # spelt in two pieces so that this file does not match its own test


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, str]:
    return {_module_name(path): path.read_text(encoding="utf-8")
            for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


SOURCES = _sources()
WITH_EXAMPLES = sorted(name for name, text in SOURCES.items() if ">>>" in text)


def test_modules_with_examples_are_found():
    assert "inspection_core.tiling" in WITH_EXAMPLES and "inspection.scoring" in WITH_EXAMPLES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_the_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a relative path writes it here
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    assert tests, f"{name} holds '>>>' outside any docstring doctest can find: make it an example or prose"
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_no_example_is_skipped():
    skipped = [name for name, text in SOURCES.items() if SKIP in text]
    assert not skipped, (f"{skipped}: an example that cannot run here is prose or a plain code block, not a "
                         "skipped doctest")
