"""Issue 27: a recipe switched over OPC UA while the operator panel shows parts. A real asyncua client prepares
recipes that differ only in their rules; the panel's overlays and the ledger's rows follow each one, because both
read what the line's active judge decided (``InspectionResult.decided``, the rows' recipe label), not a copy.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("asyncua")

from inspection_core.records import InspectionResult  # noqa: E402
from station.recipe import load_recipe, shipped_recipe_path  # noqa: E402
from tests.station.test_opcua import SAMPLES, Plc, Station, rows, run, session  # noqa: E402
from ui.overlay import overlay_mask  # noqa: E402

#: The shipped rule, and two recipes that differ from it only in one rule each: the blowhole's weaker pixels
#: (scores 0.5 to 0.95) become defect pixels; no defect is large enough to fail a part.
SHIPPED_THRESHOLD = 0.95
RULES = {"lenient": ("score_threshold", 0.5), "lax": ("min_area_px", 100_000)}


#: The lenient recipe also names a calibration profile that is not there (required = false): it runs uncalibrated,
#: and the panel's calibration line says so in red while it judges.
MISSING_PROFILE = "UNCALIBRATED (profile 'cam-Z' not found)"


def write_recipe(root, name: str, key: str, value: float) -> None:
    text = shipped_recipe_path("magnetic_tile").read_text()
    text, n = re.subn(rf"(?m)^{key} = [0-9.]+", f"{key} = {value}", text)
    assert n == 1, f"the shipped recipe's [rules] {key} line moved: update this test"
    if name == "lenient":
        text += f'\n[calibration]\nprofile = "cam-Z"\nroot = "{(root / "no-profiles").as_posix()}"\nrequired = false\n'
    (root / f"{name}.toml").write_text(text.replace('path = "../samples/magnetic-tile"', f'path = "{SAMPLES.as_posix()}"')
                                       .replace("threads = 0", "threads = 1"))


def painted(panel, result: InspectionResult) -> np.ndarray:
    """The pixels the panel painted as defects: its image against the same frame with only the boxes drawn."""
    from PyQt6.QtGui import QImage

    image = panel.image_view.image().convertToFormat(QImage.Format.Format_RGB888)
    height, width = image.height(), image.width()
    assert (height, width) == result.frame.image.shape[:2], "a small frame is drawn at its own size"
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    shown = np.frombuffer(bits, np.uint8).reshape(height, image.bytesPerLine())[:, :3 * width].reshape(height, width, 3)
    return (shown != overlay_mask(result.frame.image, None, 0.5, result.defects)).any(axis=-1)


def decided(result: InspectionResult) -> np.ndarray:
    shape = result.frame.image.shape[:2]
    return np.zeros(shape, bool) if result.decided is None else result.decided


@pytest.mark.gui
def test_a_recipe_switched_over_opcua_repaints_the_panel_and_relabels_the_rows(tmp_path, qtbot):
    from ui.panel import StationPanel

    for name, (key, value) in RULES.items():
        write_recipe(tmp_path, name, key, value)
    (tmp_path / "station").mkdir()
    station = Station(tmp_path / "station", recipes=[str(tmp_path / f"{name}.toml") for name in RULES])
    try:
        panel = StationPanel(station.line.feed, station.line.stats, refresh_ms=20)
        qtbot.addWidget(panel)
        panel.show()
        qtbot.waitExposed(panel)
        recipes = {"magnetic_tile": station.recipe, **{n: load_recipe(tmp_path / f"{n}.toml") for n in RULES}}
        seen: dict[str, dict[str, tuple[dict, InspectionResult | None]]] = {}

        async def body():
            async with session(station) as client:
                plc = await Plc(client).setup()
                _, completed, error = await plc.prepare("magnetic_tile")  # the active recipe: Ready at once
                assert (completed, error) == (True, 0)
                for recipe_id, recipe in recipes.items():
                    if recipe_id != "magnetic_tile":
                        _, completed, error = await plc.prepare(recipe_id)
                        assert (completed, error) == (False, 0)  # its model loads: RecipePrepared follows
                        await plc.wait_recipe(recipe_id)
                        await plc.wait_state("Ready")
                        fingerprint = await (await plc.vision.get_child(
                            [f"{plc.st}:Station", f"{plc.st}:ActiveRecipeFingerprint"])).read_value()
                        assert fingerprint == recipe.fingerprint()
                    label = f"magnetic_tile {recipe.fingerprint()}"
                    assert station.line.judge.recipe == label
                    note = MISSING_PROFILE if recipe_id == "lenient" else "none (the recipe has no [calibration])"
                    qtbot.waitUntil(lambda n=note: panel.counter_labels["calibration"].text() == f"Calibration: {n}",
                                    timeout=10_000)
                    seen[recipe_id] = {}
                    for _ in range(4):  # one pass over the folder (three parts and a corrupt file) per recipe
                        drawn = panel.frames_drawn
                        _, event = await plc.single_job()
                        [row] = rows(station.db, "WHERE id = ?", (int(event.ResultId),))
                        assert (row["recipe"], await plc.part("Recipe")) == (label, label), recipe_id
                        assert row["calibration"] is None
                        if row["verdict"] == "NOT_INSPECTED":  # the corrupt file: labelled by the active judge
                            seen[recipe_id][row["file"]] = (row, None)
                            continue
                        _, result = station.line.feed.latest()
                        assert result.frame.file == row["file"] and result.verdict.value == row["verdict"]
                        assert row["engine_id"] == result.engine_id == station.line.judge.engine_id
                        qtbot.waitUntil(lambda n=drawn: panel.frames_drawn > n, timeout=10_000)
                        assert panel.verdict_label.text() == row["verdict"]
                        # the panel paints exactly what the active rules decided, no more, no less
                        shown, wanted = painted(panel, result), decided(result)
                        assert int((shown != wanted).sum()) == 0, (
                            f"{recipe_id}, {row['file']}: the panel painted {shown.sum()} px, the rules decided "
                            f"{wanted.sum()} px")
                        seen[recipe_id][row["file"]] = (row, result)

        run(body())
    finally:
        station.close()

    assert {recipe_id: sorted(files) for recipe_id, files in seen.items()} == {
        recipe_id: sorted(seen["magnetic_tile"]) for recipe_id in recipes}, "the same files under each recipe"
    for file, (row, shipped) in seen["magnetic_tile"].items():
        lenient, lax = seen["lenient"][file][1], seen["lax"][file][1]
        if shipped is None:
            assert {seen[r][file][0]["verdict"] for r in recipes} == {"NOT_INSPECTED"}
            continue
        assert not (decided(shipped) & (shipped.mask < SHIPPED_THRESHOLD)).any()
        assert not (decided(lenient) & (lenient.mask < 0.5)).any()
        assert not decided(lax).any() and lax.verdict.value == seen["lax"][file][0]["verdict"] == "PASS"
    fails = [file for file, (row, _) in seen["magnetic_tile"].items() if row["verdict"] == "FAIL"]
    assert fails, "the folder holds a part the shipped rule fails"
    for file in fails:  # the same part, judged three ways, painted and recorded three ways
        shipped, lenient = seen["magnetic_tile"][file][1], seen["lenient"][file][1]
        assert (decided(lenient) & (lenient.mask < SHIPPED_THRESHOLD)).any(), "0.5 keeps pixels 0.95 ignored"
        assert decided(lenient).sum() > decided(shipped).sum() > 0
        assert seen["lax"][file][0]["verdict"] == "PASS"
