"""INT8 calibration images: `calibration int8 add/list`, the manifest, and the functions the engines side calls."""
from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.errors import CalibrationError, ProfileMismatch
from calibration.int8 import add_images, calibration_cache_path, int8_images
from calibration.profile import CameraGeometry, ProfileStore
from inspection_core.hashing import file_sha256
from tests.calibration.conftest import write_png


@pytest.fixture
def store(root):
    store = ProfileStore(root)
    with store.new_version("cam-A", CameraGeometry(64, 48, "Mono8"), step="scale") as draft:
        draft.sections["scale"] = {"mm_per_px": 0.1, "mm_per_px_x": 0.1, "mm_per_px_y": 0.1, "files": []}
    return store


def shots(folder, n, seed=0, shape=(48, 64)):
    rng = np.random.default_rng(seed)
    return [write_png(folder / f"shot_{seed}_{i}.png", rng.integers(0, 255, shape, dtype=np.uint8)) for i in range(n)]


def test_images_are_copied_with_a_manifest_and_found_by_every_handle(store, tmp_path):
    files = shots(tmp_path / "a", 3)
    profile, added = add_images(store, "cam-A", files)
    assert added == 3 and profile.name == "cam-A@v2" and profile.section("scale")  # the scale is carried forward
    found = int8_images(profile)
    assert [p.read_bytes() for p in found] == [p.read_bytes() for p in files]  # byte-for-byte copies, in order
    manifest = json.loads((profile.path / "int8" / "manifest.json").read_text())["images"]
    assert [m["sha256"] for m in manifest] == [file_sha256(p) for p in files]
    assert manifest[0]["source"] == str(files[0].resolve()) and manifest[0]["width"] == 64
    # the same set through every handle the engines side may hold
    assert int8_images("cam-A@v2") == found  # default store: $STATION_PROFILES
    assert int8_images(profile.path) == found and int8_images(profile.path / "int8") == found
    assert int8_images(store.root / "cam-A") == found  # camera folder: its latest version
    assert calibration_cache_path("cam-A") == profile.path / "int8" / "calibration.cache"
    assert profile.verify() == []


def test_adding_again_keeps_the_old_set_and_skips_duplicates(store, tmp_path):
    first = shots(tmp_path / "a", 2)
    add_images(store, "cam-A", first)
    profile, added = add_images(store, "cam-A", [tmp_path / "a", *shots(tmp_path / "b", 1, seed=1)])
    assert added == 1 and len(int8_images(profile)) == 3
    assert len(int8_images("cam-A@v2")) == 2  # the earlier version is unchanged


def test_wrong_size_missing_and_empty_sets_are_refused(store, tmp_path, cli):
    with pytest.raises(ProfileMismatch, match=r"width 32 px \(profile: 64 px\).*--any-size"):
        add_images(store, "cam-A", shots(tmp_path / "small", 1, shape=(48, 32)))
    profile, added = add_images(store, "cam-A", shots(tmp_path / "small2", 1, shape=(48, 32)), any_size=True)
    assert added == 1
    with pytest.raises(CalibrationError, match="no INT8 calibration images .*`calibration int8 add"):
        int8_images("cam-A@v1")
    with pytest.raises(CalibrationError, match="has no profile yet"):
        add_images(store, "cam-Z", shots(tmp_path / "z", 1))
    code, out, err = cli("int8", "list", "cam-A")
    assert code == 0 and "1 INT8 calibration image" in out and "not built yet" in out
    code, out, err = cli("int8", "add", "--camera", "cam-A", tmp_path / "nothing-here")
    assert code == 2 and "does not exist" in err


def test_engines_build_int8_reads_the_profiles_set(store, tmp_path, tiny_gr, one_torch_thread):
    """`engines build --precision int8 --calibration cam-A@v2` calibrates on the profile's managed images."""
    from engines.build import BuildSettings, build

    profile, _ = add_images(store, "cam-A", shots(tmp_path / "a", 4))
    manifest = build(BuildSettings(weights=str(tiny_gr), backend="onnxruntime", precision="int8",
                                   calibration=profile.name, out=str(tmp_path / "gr-int8"), threads=1))
    # a profile's set has no masks: its tiles are taken as they come (no defect/defect-free mix to report)
    assert manifest["int8_calibration"] == {"source": "cam-A@v2", "inputs": 4, "defect_tiles": None}
    assert manifest["engine"]["file"] == "model.int8.onnx" and manifest["parity"]["max_abs"] < 0.2
    from engines.cli import main

    assert main(["build", "--weights", str(tiny_gr), "--precision", "int8", "--calibration", "cam-A@v1",
                 "--out", str(tmp_path / "none")]) == 2  # v1 has no int8 set: one line, no traceback
    assert not (tmp_path / "none").exists()
