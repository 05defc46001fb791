"""The profile store: versions, names, carrying sections forward, immutability, SHA-256 checks, geometry checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.errors import CalibrationError, ProfileCorrupt, ProfileMismatch, ProfileNotFound
from calibration.profile import CameraGeometry, ProfileStore, parse_ref

GEOMETRY = CameraGeometry(640, 480, "Mono8")


def add(store: ProfileStore, section: str, value, geometry=GEOMETRY, camera="cam-A"):
    with store.new_version(camera, geometry, step=section) as draft:
        name = draft.save_array(f"{section}.npy", np.asarray(value))
        draft.sections[section] = {"value": value, "files": [name]}
    return draft.profile


def test_versions_are_numbered_dated_and_carry_earlier_sections(root):
    store = ProfileStore(root)
    v1 = add(store, "flatfield", 1)
    v2 = add(store, "scale", 2)
    v3 = add(store, "flatfield", 3)  # replaces the flat-field, keeps the scale
    assert [v.name for v in (v1, v2, v3)] == ["cam-A@v1", "cam-A@v2", "cam-A@v3"]
    assert store.versions("cam-A") == [1, 2, 3]
    latest = store.load("cam-A")
    assert latest.name == "cam-A@v3" and latest.created.endswith("+00:00")
    assert latest.section("flatfield")["value"] == 3 and latest.section("scale")["value"] == 2
    assert latest.array("scale.npy") == 2 and latest.array("flatfield.npy") == 3
    assert [h["step"] for h in latest.history] == ["flatfield", "scale", "flatfield"]
    assert store.load("cam-A@v1").section("scale") is None
    assert store.load("cam-A@2").name == store.load("cam-A@v2").name == "cam-A@v2"
    data = json.loads((latest.path / "profile.json").read_text())
    assert data["geometry"] == {"width": 640, "height": 480, "pixel_format": "Mono8", "line_scan": False}
    assert set(data["files"]) == {"flatfield.npy", "scale.npy"} and all(len(h) == 64 for h in data["files"].values())
    assert "scale" in data["section_help"]


def test_an_existing_version_is_never_overwritten(root):
    store = ProfileStore(root)
    add(store, "scale", 1)
    before = (root / "cam-A" / "v001" / "profile.json").read_bytes()
    # two drafts built at the same time: the second to commit takes the next number
    d1 = store.new_version("cam-A", None, step="a")
    d2 = store.new_version("cam-A", None, step="b")
    d1.sections["x"] = {"files": []}
    d2.sections["y"] = {"files": []}
    assert (d2.commit().version, d1.commit().version) == (2, 3)
    assert (root / "cam-A" / "v001" / "profile.json").read_bytes() == before
    assert not list((root / "cam-A").glob(".draft-*"))


def test_a_failed_step_leaves_no_version(root):
    store = ProfileStore(root)
    with pytest.raises(RuntimeError):
        with store.new_version("cam-A", GEOMETRY, step="scale") as draft:
            draft.save_array("a.npy", np.zeros(3))
            raise RuntimeError("step failed")
    assert store.versions("cam-A") == [] and not list((root / "cam-A").iterdir())


def test_changed_or_missing_files_are_detected(root):
    store = ProfileStore(root)
    profile = add(store, "scale", 5)
    assert profile.verify() == []
    np.save(profile.path / "scale.npy", np.asarray(6))
    with pytest.raises(ProfileCorrupt, match="does not match the SHA-256"):
        store.load("cam-A").array("scale.npy")
    (profile.path / "scale.npy").unlink()
    problems = store.load("cam-A").verify()
    assert len(problems) == 1 and "missing" in problems[0]


def test_missing_profile_and_version_name_what_exists(root):
    store = ProfileStore(root)
    with pytest.raises(ProfileNotFound, match=r"no calibration profile for camera 'cam-B'.*cameras there: none"):
        store.load("cam-B")
    add(store, "scale", 1)
    with pytest.raises(ProfileNotFound, match=r"no version v7 .*versions: v1"):
        store.load("cam-A@v7")
    with pytest.raises(CalibrationError, match="after '@'"):
        parse_ref("cam-A@seven")
    with pytest.raises(CalibrationError, match="not allowed"):
        parse_ref("../etc")


def test_a_step_with_images_of_another_camera_is_refused(root):
    store = ProfileStore(root)
    add(store, "scale", 1)
    with pytest.raises(ProfileMismatch) as info:
        store.new_version("cam-A", CameraGeometry(800, 600, "Mono8"), step="roi")
    message = str(info.value)
    assert "width 800 px (profile: 640 px)" in message and "height 600 px (profile: 480 px)" in message
    with pytest.raises(ProfileMismatch, match=r"pixel format RGB8 \(profile: Mono8\)"):
        store.new_version("cam-A", CameraGeometry(640, 480, "RGB8"), step="roi")
    with pytest.raises(CalibrationError, match="frame size and pixel format are unknown"):
        store.new_version("cam-new", None, step="thresholds")


def test_check_fits_names_differences_and_line_scan_ignores_height(root):
    store = ProfileStore(root)
    area = add(store, "scale", 1)
    area.check_fits(640, 480, "Mono8")
    with pytest.raises(ProfileMismatch, match=r"cam-A@v1 does not fit the camera.*pixel format Mono12.*calibration "
                                              r"flatfield --camera cam-A"):
        area.check_fits(640, 480, "Mono12")
    line = add(store, "scale", 1, geometry=CameraGeometry(2048, 512, "Mono8", line_scan=True), camera="line-1")
    line.check_fits(2048, 7000, "Mono8")  # any number of lines
    with pytest.raises(ProfileMismatch, match=r"width 4096 px \(profile: 2048 px\)"):
        line.check_fits(4096, 512, "Mono8")
