"""A data set from the line's reviews (issue 29): the real line runs on replayed frames, QA's marks are recorded with
`station review --mark`, `engines dataset --from-ledger` writes the folder `engines train` reads, and masks go to and
come back from labelling tools as COCO and labelme JSON."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines import label_exchange
from engines.cli import main as engines_main
from engines.data.segmentation import load_dataset
from engines.line_dataset import WAIT_ESCAPE, WAIT_NO_MASK
from inspection_core.records import Defect, Frame, InspectionResult, NotInspected, NotInspectedReason, Verdict
from station.cli import SAMPLES
from station.cli import main as station_main
from station.recipe import shipped_recipe_path
from station.rejectlog import RejectLog, mask_path_of

DEFECT = Defect(label="defect", bbox=(1, 2, 3, 4), area_px=12, centroid=(2.5, 3.5), mean_score=0.7, max_score=0.9)


def engines(*args: str, capsys=None) -> tuple[int, str, str]:
    """Run the `engines` command in this process: its exit status, and what it printed when given ``capsys``."""
    if capsys is not None:
        capsys.readouterr()  # what came before is not this command's
    code = engines_main(list(args))
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def review(db: Path, *marks: str, by: str = "qa-anna", note: str | None = None) -> None:
    """QA's marks, recorded by the real `station review --mark` code."""
    args = ["review", "--db", str(db), "--by", by, *[a for m in marks for a in ("--mark", m)]]
    assert station_main(args + (["--note", note] if note else [])) == 0


def rows(db: Path) -> list[dict]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM inspections ORDER BY id")]


def provenance(folder: Path) -> dict[str, dict]:
    lines = (folder / "provenance.jsonl").read_text().splitlines()
    return {entry["name"]: entry for entry in map(json.loads, lines)}


def grey(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# -- a real line, reviewed ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def line(tmp_path_factory) -> dict:
    """16 replayed magnetic-tile frames through the real line (shipped recipe and weights, every pass's image kept,
    one engine thread), then QA's marks: a confirmed reject (reviewed twice: the latest counts), two overruled
    rejects, an escape and a confirmed pass."""
    folder = tmp_path_factory.mktemp("line")
    text = shipped_recipe_path("magnetic_tile").read_text(encoding="utf-8")
    text = re.sub(r"save_pass_share = [0-9.]+", "save_pass_share = 1.0", text)
    text = re.sub(r"(?m)^threads = 0", "threads = 1", text)
    recipe = folder / "line.toml"
    recipe.write_text(text, encoding="utf-8")
    db = folder / "line.db"
    done = subprocess.run([sys.executable, "-m", "station.cli", "run", "--recipe", str(recipe), "--source",
                           f"replay:{SAMPLES}", "--headless", "--max-frames", "16", "--fps", "0", "--db", str(db)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    found = rows(db)
    fails = [r["id"] for r in found if r["verdict"] == "FAIL"]
    passes = [r["id"] for r in found if r["verdict"] == "PASS"]
    assert len(fails) >= 3 and len(passes) >= 2, [(r["file"], r["verdict"]) for r in found]
    defective_passes = [r["id"] for r in found if r["verdict"] == "PASS" and not r["file"].startswith("free")]
    escape = (defective_passes or passes)[0]
    good_pass = next(p for p in passes if p != escape)
    confirmed, overruled = fails[0], fails[1:3]
    review(db, f"{confirmed}=good")  # first said good...
    review(db, f"{confirmed}=defect", *(f"{r}=good" for r in overruled), f"{escape}=defect", f"{good_pass}=good",
           by="qa-bert", note="shift B audit")  # ...then defect: the latest review counts
    return {"db": db, "confirmed": confirmed, "overruled": overruled, "escape": escape, "good_pass": good_pass,
            "rows": {r["id"]: r for r in found}, "station": found[0]["station_id"]}


@pytest.mark.slow
def test_the_reviewed_line_becomes_a_folder_engines_train_reads(line: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "line-data"
    code, text, _ = engines("dataset", "--from-ledger", str(line["db"]), "--out", str(out), capsys=capsys)
    assert code == 0
    station = line["station"]
    name = {row_id: f"{station}_{row_id}.png" for row_id in line["rows"]}
    samples = {s.name: s for s in load_dataset(out)}  # the generic layout, as `engines train --data` reads it
    assert set(samples) == {name[line["confirmed"]], name[line["good_pass"]], *(name[r] for r in line["overruled"])}
    for row_id in line["overruled"]:  # false rejects: hard negatives, defect-free
        assert not samples[name[row_id]].defective and not (out / "masks" / name[row_id]).exists()
    assert not samples[name[line["good_pass"]]].defective
    confirmed = samples[name[line["confirmed"]]]  # the predicted mask, exactly as the line decided it
    row = line["rows"][line["confirmed"]]
    predicted = grey(line["db"].parent / mask_path_of(row["image_path"]))
    assert confirmed.defective and predicted.any() and np.array_equal(confirmed.mask, predicted > 0)
    assert (out / "images" / name[line["confirmed"]]).read_bytes() == (line["db"].parent / row["image_path"]).read_bytes()
    # the escape waits for a mask, listed; it is not a (defect-free) training image
    escape = name[line["escape"]]
    assert not (out / "images" / escape).exists() and (out / "needs_mask" / escape).is_file()
    listing = json.loads((out / "needs_mask" / "listing.json").read_text())
    assert [(w["name"], w["row"], w["finding"], w["why"]) for w in listing] == [
        (escape, line["escape"], "escape", WAIT_ESCAPE)]
    # where every image comes from
    origin = provenance(out)
    assert set(origin) == set(samples) | {escape}
    entry = origin[name[line["confirmed"]]]
    assert (entry["ledger"], entry["row"], entry["station_id"], entry["verdict"], entry["finding"]) == (
        str(line["db"].resolve()), line["confirmed"], station, "FAIL", "confirmed reject")
    assert entry["part_id"] == row["part_id"] and entry["time_utc"] == row["time_utc"]
    assert entry["review"]["mark"] == "defect" and entry["review"]["reviewer"] == "qa-bert"
    assert entry["review"]["note"] == "shift B audit" and entry["review_count"] == 2 and entry["mask"] == "predicted"
    assert origin[name[line["overruled"][0]]]["finding"] == "false reject"
    summary = json.loads((out / "line_dataset.json").read_text())
    assert summary["by_finding"] == {"false reject": 2, "confirmed reject": 1, "escape": 1, "confirmed pass": 1}
    assert (summary["images"], summary["defect_free"], summary["with_mask"], summary["needs_mask"]) == (4, 3, 1, 1)
    assert "2 false rejects, 1 confirmed reject, 1 escape, 1 confirmed pass" in text
    assert "needs_mask/listing.json" in text


@pytest.mark.slow
def test_masks_go_to_labelling_tools_and_come_back_and_an_escape_gets_its_mask(line: dict, tmp_path: Path,
                                                                              capsys) -> None:
    out = tmp_path / "line-data"
    assert engines("dataset", "--from-ledger", str(line["db"]), "--out", str(out), "--json", capsys=capsys)[0] == 0
    before = {p.name: grey(p) for p in (out / "masks").iterdir()}
    assert before
    coco, labelme = tmp_path / "labels.coco.json", tmp_path / "labelme"
    assert engines("dataset", "--export-coco", str(out), "--out", str(coco), capsys=capsys)[0] == 0
    assert engines("dataset", "--export-labelme", str(out), "--out", str(labelme), capsys=capsys)[0] == 0
    for exported, flag in ((coco, "--import-coco"), (labelme, "--import-labelme")):  # a round trip keeps the masks
        assert engines("dataset", flag, str(exported), "--into", str(out), capsys=capsys)[0] == 0
        assert {p.name: grey(p) for p in (out / "masks").iterdir()}.keys() == before.keys()
        for mask_name, mask in before.items():
            assert np.array_equal(grey(out / "masks" / mask_name), mask), (flag, mask_name)
    # the labeller draws the escape's defect in the COCO file: it becomes a defect sample
    escape = f"{line['station']}_{line['escape']}"
    document = json.loads(coco.read_text())
    image = next(i for i in document["images"] if Path(i["file_name"]).stem == escape)
    assert image["file_name"] == f"needs_mask/{escape}.png"
    drawn = [10.5, 10.5, 40.5, 12.5, 38.5, 30.5, 12.5, 28.5]
    document["annotations"].append({"id": 99, "image_id": image["id"], "category_id": 1, "segmentation": [drawn],
                                    "area": 0, "bbox": [0, 0, 0, 0], "iscrowd": 0})
    coco.write_text(json.dumps(document))
    code, text, _ = engines("dataset", "--import-coco", str(coco), "--into", str(out), capsys=capsys)
    assert code == 0 and "1 of them moved from needs_mask/" in text
    assert (out / "images" / f"{escape}.png").is_file() and not (out / "needs_mask" / f"{escape}.png").exists()
    sample = next(s for s in load_dataset(out) if s.name == f"{escape}.png")
    expected = label_exchange.instance_mask(sample.image.shape, [np.array(drawn).reshape(-1, 2)])
    assert sample.defective and np.array_equal(sample.mask, expected)
    assert json.loads((out / "needs_mask" / "listing.json").read_text()) == []
    entry = provenance(out)[f"{escape}.png"]
    assert (entry["folder"], entry["mask"], entry["row"]) == ("images", "imported", line["escape"])
    assert entry["mask_source"] == str(coco.resolve())


@pytest.mark.slow
def test_re_running_into_a_folder_is_refused_unless_forced(line: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "line-data"
    assert engines("dataset", "--from-ledger", str(line["db"]), "--out", str(out), capsys=capsys)[0] == 0
    (out / "masks" / "mine.png").write_bytes(b"a labeller's work")
    code, _, err = engines("dataset", "--from-ledger", str(line["db"]), "--out", str(out), capsys=capsys)
    assert code == 2 and "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (out / "masks" / "mine.png").exists()  # untouched
    assert engines("dataset", "--from-ledger", str(line["db"]), "--out", str(out), "--force", capsys=capsys)[0] == 0
    assert not (out / "masks" / "mine.png").exists() and len(load_dataset(out)) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".line-data.")]  # no work folder left


# -- rows the data set cannot use, and several ledgers -------------------------------------------------------------

def result(frame_id: int, verdict: Verdict, decided: np.ndarray | None = None) -> InspectionResult:
    image = np.random.default_rng(frame_id).integers(0, 256, (48, 64), np.uint8)
    frame = Frame(image=image, frame_id=frame_id, timestamp_ns=1_000 + frame_id, source="replay:test",
                  meta={"file": f"f{frame_id}.png"})
    return InspectionResult(frame=frame, mask=np.zeros(image.shape, np.float32),
                            defects=(DEFECT,) if verdict is Verdict.FAIL else (), verdict=verdict,
                            engine_id="e", latency_ms=1.0, decided=decided)


def blob(seed: int) -> np.ndarray:
    decided = np.zeros((48, 64), bool)
    decided[10 + seed:20 + seed, 5:30] = True
    return decided


def test_pruned_images_not_inspected_rows_and_rows_without_a_mask_are_skipped_or_listed(tmp_path: Path,
                                                                                         capsys) -> None:
    db = tmp_path / "s.db"
    with RejectLog(db, station_id="line-7", save_pass_share=1.0) as log:
        ids = [log.record(result(i, Verdict.FAIL, blob(i))) for i in range(1, 4)]
        ids.append(log.record(NotInspected(frame_id=9, timestamp_ns=10, source="replay:test",
                                           reason=NotInspectedReason.UNREADABLE, file="z.png")))
        ids.append(log.record(result(5, Verdict.PASS)))
    found = {r["id"]: r for r in rows(db)}
    (db.parent / found[ids[1]]["image_path"]).unlink()  # gone, as retention prunes an image reviewed too late
    (db.parent / mask_path_of(found[ids[2]]["image_path"])).unlink()  # a row saved before masks were kept
    review(db, *(f"{i}=defect" for i in ids[:4]), f"{ids[4]}=good")
    out = tmp_path / "d"
    code, text, _ = engines("dataset", "--db", str(db), "--out", str(out), "--json", capsys=capsys)
    summary = json.loads(text)
    assert code == 0 and summary["skipped"] == {"image gone (pruned by [log] images_max_mb, or moved)": 1,
                                                "not inspected (no verdict of the engine)": 1}
    assert sorted(p.name for p in (out / "images").iterdir()) == ["line-7_1.png", "line-7_5.png"]
    assert np.array_equal(grey(out / "masks" / "line-7_1.png") > 0, blob(1))
    assert [(w["name"], w["why"]) for w in json.loads((out / "needs_mask" / "listing.json").read_text())] == [
        ("line-7_3.png", WAIT_NO_MASK)]  # a defect without a mask: never a defect-free image


def test_names_stay_unique_over_ledgers_and_stations(tmp_path: Path, capsys) -> None:
    dbs = [tmp_path / "a" / "rejects.db", tmp_path / "b" / "rejects.db", tmp_path / "c.db"]
    for db, station in zip(dbs, ("line-1", "line-1", "line-2")):
        with RejectLog(db, station_id=station) as log:
            log.record(result(1, Verdict.FAIL, blob(0)))
        review(db, "1=good")
    out = tmp_path / "d"
    args = [a for db in dbs for a in ("--from-ledger", str(db))]
    assert engines("dataset", *args, "--out", str(out), capsys=capsys)[0] == 0
    names = sorted(p.name for p in (out / "images").iterdir())
    assert len(names) == 3 and names[2] == "line-2_1.png" and names[0] != names[1]
    assert {e["ledger"] for e in provenance(out).values()} == {str(db.resolve()) for db in dbs}


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (x)")
    unreviewed = tmp_path / "quiet.db"
    with RejectLog(unreviewed) as log:
        log.record(result(1, Verdict.FAIL, blob(0)))
    cases = [(tmp_path / "missing.db", "no reject log at"), (not_sqlite, "not a station ledger"),
             (other, "not a reject log"), (unreviewed, "no reviews")]
    for db, words in cases:
        code, _, err = engines("dataset", "--from-ledger", str(db), "--out", str(tmp_path / "d"), capsys=capsys)
        assert code == 2 and words in err and err.startswith("engines: error: ") and err.count("\n") == 1, err
        assert not (tmp_path / "d").exists()
    code, _, err = engines("dataset", "--from-ledger", str(unreviewed), "--into", str(tmp_path), capsys=capsys)
    assert code == 2 and "--out" in err


# -- polygons and masks -----------------------------------------------------------------------------------------

def realistic_mask(seed: int) -> np.ndarray:
    """Cracks, blowholes with holes, a ring one pixel wide, an island inside a hole, lone pixels at the border."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((96, 128), np.uint8)
    for _ in range(4):
        cv2.ellipse(mask, (int(rng.integers(0, 128)), int(rng.integers(0, 96))),
                    (int(rng.integers(2, 25)), int(rng.integers(1, 14))), float(rng.integers(0, 180)), 0, 360, 255, -1)
    points = np.cumsum(rng.integers(-3, 4, (30, 2)), axis=0) + [60, 50]
    cv2.polylines(mask, [points.astype(np.int32)], False, 255, 1)  # a thin crack
    cv2.circle(mask, (100, 70), 12, 255, -1)
    cv2.circle(mask, (100, 70), 7, 0, -1)  # a hole
    cv2.circle(mask, (100, 70), 2, 255, -1)  # an island in it
    cv2.rectangle(mask, (5, 60), (25, 80), 255, 1)  # a ring one pixel wide
    mask[0, 0] = mask[95, 127] = mask[0, 127] = 255
    mask[rng.random(mask.shape) < 0.01] ^= 255  # lone pixels and pinholes
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_a_realistic_mask_survives_polygons_pixel_for_pixel(seed: int) -> None:
    mask = realistic_mask(seed)
    instances = label_exchange.mask_to_instances(mask)
    assert any(len(i.rings) > 1 for i in instances)  # holes were there to keep
    back = np.zeros_like(mask)
    for inst in instances:
        pixels = label_exchange.rings_mask(mask.shape, list(inst.rings))
        assert pixels.sum() == inst.area
        back[pixels] = inst.value
    assert np.array_equal(back, mask)


def test_coco_and_labelme_files_round_trip_class_ids_and_holes(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    masks = {"a": realistic_mask(1), "b": np.where(realistic_mask(2) > 0, 3, 0).astype(np.uint8),
             "c": np.zeros((96, 128), np.uint8)}
    masks["b"][40:50, 40:60] = 7  # two classes in one image
    for stem, mask in masks.items():
        cv2.imwrite(str(root / "images" / f"{stem}.png"), np.full((96, 128), 90, np.uint8))
        if mask.any():
            cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
    shapes = {stem: (96, 128) for stem in masks}
    label_exchange.export_coco(root, tmp_path / "c.json")
    label_exchange.export_labelme(root, tmp_path / "lm")
    document = json.loads((tmp_path / "c.json").read_text())
    assert {c["name"] for c in document["categories"]} == {"defect", "class_3", "class_7"}
    first = document["annotations"][0]
    assert first["bbox"][2] > 0 and first["area"] > 0 and len(first["segmentation"][0]) >= 6
    labelme = json.loads((tmp_path / "lm" / "a.json").read_text())
    assert labelme["imagePath"] == "../set/images/a.png" and labelme["imageHeight"] == 96
    assert {s["shape_type"] for s in labelme["shapes"]} == {"polygon"}
    assert "_background_" in {s["label"] for s in labelme["shapes"]}  # the holes
    for read in (label_exchange.read_coco(tmp_path / "c.json", shapes),
                 label_exchange.read_labelme(tmp_path / "lm", shapes)):
        assert read.keys() == masks.keys()
        for stem, mask in masks.items():
            assert np.array_equal(read[stem], mask), stem


def test_an_import_naming_an_image_the_folder_lacks_changes_nothing(tmp_path: Path, capsys) -> None:
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((20, 30), np.uint8))
    document = {"images": [{"id": 1, "file_name": "images/a.png", "width": 30, "height": 20},
                           {"id": 2, "file_name": "images/zz.png", "width": 30, "height": 20}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]]}],
                "categories": [{"id": 1, "name": "defect"}]}
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps(document))
    code, _, err = engines("dataset", "--import-coco", str(coco), "--into", str(root), capsys=capsys)
    assert code == 2 and "'zz'" in err and not (root / "masks").exists()
    document["images"] = document["images"][:1]
    document["images"][0]["width"] = 31
    coco.write_text(json.dumps(document))
    code, _, err = engines("dataset", "--import-coco", str(coco), "--into", str(root), capsys=capsys)
    assert code == 2 and "20x31" in err and not (root / "masks").exists()


def test_the_help_reads_like_a_manual(capsys) -> None:
    with pytest.raises(SystemExit):
        engines_main(["dataset", "--help"])
    text = capsys.readouterr().out
    for words in ("--from-ledger", "needs_mask", "provenance.jsonl", "--force", "--export-coco", "--import-labelme",
                  "examples:", "Exit status"):
        assert words in text, words
