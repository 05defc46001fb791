"""What review needs (issue 29): images of every reject and of a share of passes, under a size bound, oldest pruned
first, reviewed rows' images kept; on real SQLite ledgers, real PNG files and a short real line run."""
from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection_core.records import Defect, Frame, InspectionResult, PartIdentity, Verdict
from station.cli import SAMPLES
from station.errors import RecipeError
from station.recipe import load_recipe, shipped_recipe_path
from station.rejectlog import SCHEMA_VERSION, RejectLog, mask_path_of, pass_sampled, sample_key
from tests.station.test_cli import run_station
from tests.station.test_recipe import MINIMAL, write

DEFECT = Defect(label="defect", bbox=(1, 2, 3, 4), area_px=12, centroid=(2.5, 3.5), mean_score=0.7, max_score=0.9)


def part(frame_id: int, verdict: Verdict, part_id: str | None = None, noise: bool = False) -> InspectionResult:
    """A part as the line records it; ``noise``: an image PNG cannot compress (files of a known, steady size)."""
    rng = np.random.default_rng(frame_id)
    image = rng.integers(0, 256, (48, 48), np.uint8) if noise else np.full((24, 32), frame_id % 256, np.uint8)
    identity = PartIdentity(part_id=part_id) if part_id else PartIdentity()
    frame = Frame(image=image, frame_id=frame_id, timestamp_ns=1_000 + frame_id, source="replay:test",
                  meta={"file": f"f{frame_id}.png"}, identity=identity)
    defects = (DEFECT,) if verdict is Verdict.FAIL else ()
    return InspectionResult(frame=frame, mask=np.zeros(image.shape[:2], np.float32), defects=defects,
                            verdict=verdict, engine_id="bffn/onnxruntime", latency_ms=1.0)


def rows(db: Path) -> list[tuple]:
    """``(id, verdict, file, part_id, image_path, overlay_path)`` of every row, by id."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT id, verdict, file, part_id, image_path, overlay_path FROM inspections "
                           "ORDER BY id").fetchall()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def on_disk(db: Path, relative: str | None) -> bool:
    return relative is not None and (db.parent / relative).is_file()


# -- which passes ----------------------------------------------------------------------------------------------

def test_pass_sampling_is_a_stable_hash_of_the_identity_at_the_share() -> None:
    keys = [f"P-{i}" for i in range(20_000)]
    for share in (0.02, 0.25):
        kept = sum(pass_sampled(k, share) for k in keys)
        assert abs(kept / len(keys) - share) < 0.01, (share, kept)
    assert [pass_sampled(k, 0.02) for k in keys[:500]] == [pass_sampled(k, 0.02) for k in keys[:500]]
    assert not any(pass_sampled(k, 0.0) for k in keys[:500]) and all(pass_sampled(k, 1.0) for k in keys[:500])
    # the part id decides when there is one, else the file, else source and frame id
    assert sample_key(part(3, Verdict.PASS, part_id="P-3")) == "P-3"
    assert sample_key(part(3, Verdict.PASS)) == "f3.png"


def test_passes_are_saved_at_the_configured_share_and_every_reject(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    share = 0.25
    with RejectLog(db, save_pass_share=share) as log:
        for i in range(1, 201):
            log.record(part(i, Verdict.FAIL if i % 10 == 0 else Verdict.PASS, part_id=f"P-{i}"))
    found = rows(db)
    assert len(found) == 200
    for row_id, verdict, _, part_id, image, overlay in found:
        expected = verdict == "FAIL" or pass_sampled(part_id, share)
        assert (image is not None) == expected, (row_id, verdict, part_id)
        if expected:
            assert on_disk(db, image) and on_disk(db, overlay), row_id
    sampled = sum(1 for r in found if r[1] == "PASS" and r[4] is not None)
    assert 0.15 * 180 < sampled < 0.35 * 180  # about a quarter of the 180 passes
    assert sampled == sum(pass_sampled(f"P-{i}", share) for i in range(1, 201) if i % 10)


def test_no_share_keeps_no_pass_image_and_a_failed_pass_image_does_not_stop_the_line(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with RejectLog(db) as log:  # the default: no pass images
        log.record(part(1, Verdict.PASS, part_id="P-1"))
    assert rows(db)[0][4] is None
    db2 = tmp_path / "blocked.db"
    (tmp_path / "blocked_images").write_text("a file where the images folder should be")
    with RejectLog(db2, save_pass_share=1.0) as log:
        row = log.record_row(part(1, Verdict.PASS, part_id="P-1"))  # no EvidenceError: a sample, not evidence
    assert row["image_path"] is None and "pass sample image not saved" in row["detail"]


# -- how long they stay ----------------------------------------------------------------------------------------

def record_under_bound(db: Path, bound_mb: float, count: int, reviews_after: dict[int, list[int]] | None = None,
                       ) -> dict[int, int]:
    """Record ``count`` FAIL parts with a bound; after each, the folder is within it. Returns each row's bytes on
    disk (image, overlay and predicted mask) as first written. ``reviews_after``: after row N, review these rows."""
    sizes: dict[int, int] = {}
    gone: set[int] = set()
    with RejectLog(db, images_max_mb=bound_mb) as log:
        for i in range(1, count + 1):
            row = log.record_row(part(i, Verdict.FAIL, part_id=f"P-{i}", noise=True))
            sizes[row["id"]] = sum((db.parent / f).stat().st_size for f in (row["image_path"], row["overlay_path"],
                                                                              mask_path_of(row["image_path"])))
            total = folder_bytes(log.images_dir)
            assert total <= bound_mb * 1e6, i
            pruned_now = [r[0] for r in rows(db) if r[0] in sizes and r[0] not in gone and not on_disk(db, r[4])]
            if pruned_now:  # down to the bound, not further: the last one pruned would not have fitted
                assert total + sizes[pruned_now[-1]] > bound_mb * 1e6, i
            gone.update(pruned_now)
            for reviewed in (reviews_after or {}).get(i, []):
                log.add_reviews([(reviewed, "good")], reviewer="qa")
    return sizes


def test_retention_prunes_the_oldest_first_down_to_the_bound_and_keeps_the_rows(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    bound_mb = 0.1
    sizes = record_under_bound(db, bound_mb, 40)
    assert sum(sizes.values()) > 3 * bound_mb * 1e6  # the bound had work to do
    found = rows(db)
    assert [r[0] for r in found] == list(range(1, 41))  # every row is still there, image_path and all
    assert all(r[4] is not None and r[5] is not None for r in found)
    kept = [r[0] for r in found if on_disk(db, r[4])]
    gone = [r[0] for r in found if not on_disk(db, r[4])]
    assert gone and kept == list(range(len(gone) + 1, 41))  # the oldest went, the newest stayed
    assert not any(on_disk(db, r[5]) for r in found if r[0] in gone)  # overlays with their images
    assert not any(on_disk(db, mask_path_of(r[4])) for r in found if r[0] in gone)  # and predicted masks
    assert all(on_disk(db, mask_path_of(r[4])) for r in found if r[0] in kept)
    total = sum(sizes[i] for i in kept)
    assert total == folder_bytes(db.parent / "ledger_images") <= bound_mb * 1e6
    assert total + sizes[gone[-1]] > bound_mb * 1e6  # down to the bound, not further


def test_reviewed_images_survive_pruning_and_a_smaller_bound_applies_at_the_next_start(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    bound_mb = 0.1
    record_under_bound(db, bound_mb, 40, reviews_after={3: [1, 3]})
    found = rows(db)
    assert on_disk(db, found[0][4]) and on_disk(db, found[2][4])  # reviewed: kept though the oldest
    assert on_disk(db, found[0][5]) and on_disk(db, found[2][5])
    assert not on_disk(db, found[1][4]) and not on_disk(db, found[3][4])  # their neighbours went
    # the next start with half the bound prunes at once, and still keeps the reviewed ones
    with RejectLog(db, images_max_mb=bound_mb / 2) as log:
        assert folder_bytes(log.images_dir) <= bound_mb / 2 * 1e6
    found = rows(db)
    assert len(found) == 40 and on_disk(db, found[0][4]) and on_disk(db, found[2][4]) and on_disk(db, found[-1][4])


# -- the recipe --------------------------------------------------------------------------------------------------

LOG_BAD = [
    ("save_pass_share = 1.5", "[log] save_pass_share: 1.5 is not allowed; use a share of passes from 0 to 1"),
    ("save_pass_share = -0.1", "[log] save_pass_share: -0.1 is not allowed"),
    ('save_pass_share = "2%"', "[log] save_pass_share: '2%' is not allowed"),
    ("save_pass_share = true", "[log] save_pass_share: True is not allowed"),
    ("images_max_mb = -1", "[log] images_max_mb: -1 is not allowed; use a number of megabytes >= 0"),
    ('images_max_mb = "2 GB"', "[log] images_max_mb: '2 GB' is not allowed"),
    ("save_pass_shar = 0.1", "[log] save_pass_shar: unknown key; did you mean 'save_pass_share'"),
]


@pytest.mark.parametrize(("line", "fragment"), LOG_BAD, ids=[b[0] for b in LOG_BAD])
def test_log_key_errors_are_one_line_recipe_errors(tmp_path: Path, line: str, fragment: str) -> None:
    path = write(tmp_path, MINIMAL.replace("[engine]", f"[log]\n{line}\n[engine]", 1))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert fragment in message, message


def test_log_keys_load_and_the_shipped_recipe_sets_them(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL.replace("[engine]", "[log]\nsave_pass_share = 0\n"
                                                         "images_max_mb = 500\n[engine]", 1)))
    assert (recipe.log.save_pass_share, recipe.log.images_max_mb) == (0.0, 500.0)
    assert load_recipe(write(tmp_path, MINIMAL, "plain.toml")).log.save_pass_share == 0.0  # default: none
    shipped = load_recipe(shipped_recipe_path("magnetic_tile"))
    assert (shipped.log.save_pass_share, shipped.log.images_max_mb) == (0.02, 2000.0)


# -- a real line run -----------------------------------------------------------------------------------------------

def test_a_line_run_keeps_its_sampled_passes_and_stays_under_the_bound(tmp_path: Path) -> None:
    text = shipped_recipe_path("magnetic_tile").read_text(encoding="utf-8")
    text = re.sub(r"save_pass_share = [0-9.]+", "save_pass_share = 0.5", text)
    text = re.sub(r"images_max_mb = [0-9.]+", "images_max_mb = 1.0", text)
    recipe = write(tmp_path, text, "line.toml")
    db = tmp_path / "line.db"
    done = run_station("run", "--recipe", str(recipe), "--source", f"replay:{SAMPLES}", "--headless",
                       "--max-frames", "16", "--fps", "0", "--db", str(db))
    assert done.returncode == 0, done.stderr
    found = rows(db)
    assert len(found) == 16 and {r[1] for r in found} == {"PASS", "FAIL"}
    for row_id, verdict, file, part_id, image, _ in found:
        assert part_id == file  # a replayed part is known by its file's name: the key of the sample
        assert (image is not None) == (verdict == "FAIL" or pass_sampled(file, 0.5)), (row_id, verdict, file)
    assert any(r[1] == "PASS" and r[4] is not None for r in found)
    assert folder_bytes(db.parent / "line_images") <= 1.0e6
    kept = [r[0] for r in found if on_disk(db, r[4])]
    with_images = [r[0] for r in found if r[4] is not None]
    assert kept and kept == with_images[len(with_images) - len(kept):]  # what is left is the newest


# -- the predicted mask beside the image (what `engines dataset --from-ledger` keeps) -------------------------------

def test_the_rules_decided_mask_is_saved_losslessly_beside_each_image_and_pruned_with_it(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    image = np.random.default_rng(0).integers(0, 256, (40, 60), np.uint8)
    decided = np.zeros((40, 60), bool)
    decided[5:15, 10:30] = True
    decided[8:11, 15:20] = False  # a hole: kept as it is
    decided[30:33, 50:52] = True
    scores = np.where(decided, 0.9, 0.0).astype(np.float32)
    scores[35:38, 2:6] = 0.95  # scored high, but the rules did not keep it: not in the mask
    fail = part(1, Verdict.FAIL)
    fail = InspectionResult(Frame(image=image, frame_id=1, timestamp_ns=1, source="replay:test"), scores,
                            fail.defects, Verdict.FAIL, "e", decided=decided)
    with RejectLog(db, save_pass_share=1.0) as log:
        failed = log.record_row(fail)
        passed = log.record_row(part(2, Verdict.PASS, part_id="P-2"))  # no defect kept: an all-zero mask
    mask_file = db.parent / mask_path_of(failed["image_path"])
    assert mask_file.name == Path(failed["image_path"]).stem + "_mask.png"
    saved = cv2.imread(str(mask_file), cv2.IMREAD_UNCHANGED)
    assert saved.dtype == np.uint8 and saved.shape == (40, 60)
    assert np.array_equal(saved, np.where(decided, 255, 0))  # exactly the decision, 0 and 255
    empty = cv2.imread(str(db.parent / mask_path_of(passed["image_path"])), cv2.IMREAD_UNCHANGED)
    assert empty.shape == (24, 32) and not empty.any()
    # no column names it, and the schema is the same
    assert mask_path_of(failed["image_path"]) not in {str(v) for v in failed.values()}
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # the mask file added no column
    # retention deletes it with its image, and counts its bytes
    with RejectLog(db, images_max_mb=1e-6) as log:
        assert log.prune_images() == [] and not mask_file.exists()  # pruned at the start, with the image
    assert folder_bytes(db.parent / "ledger_images") == 0
