"""INT8 calibration data: a managed set of real camera images in a profile, for ``engines build --precision int8``.

Layout inside a profile version::

    int8/000001_<original name>          the images, byte-for-byte copies of the files given
    int8/manifest.json                   {"images": [{"file", "sha256", "source", "added", "width", "height"}]}
    int8/calibration.cache               TensorRT's calibration cache, written by the engine build when it ran

``calibration int8 add --camera ID IMAGES...`` writes a new profile version whose set is the previous set plus
the new images (a file already in the set, by SHA-256, is not added twice). The engines side reads the sets through
:func:`engines.int8_sets.int8_set`, which this module registers when imported (the ``engines`` command imports it)::

    files = int8_images("cam-A@v4")                 # or a Profile, a version folder, or the int8 folder
    cache = calibration_cache_path("cam-A@v4")      # read it if present; write it after a calibration run

The cache belongs to the network it was built for; the engines side should rebuild it (delete the file) when it
calibrates another network with the same set.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from calibration.errors import CalibrationError, ProfileCorrupt
from calibration.images import list_images, read_image
from calibration.profile import Profile, ProfileStore, utc_now
from engines.int8_sets import register_int8_sets
from engines.errors import EngineError
from inspection_core.hashing import file_sha256

INT8_DIR = "int8"
MANIFEST = f"{INT8_DIR}/manifest.json"
CACHE_FILE = "calibration.cache"


def _resolve_dir(profile_or_dir: Profile | str | Path) -> Path:
    """The ``int8`` folder of a profile, a profile version folder, a camera folder (its latest version), the int8
    folder itself, or a profile name (``cam-A``, ``cam-A@v3``) in the default store (``$STATION_PROFILES``)."""
    if isinstance(profile_or_dir, Profile):
        return profile_or_dir.path / INT8_DIR
    path = Path(profile_or_dir).expanduser()
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return path
        if (path / "profile.json").is_file():
            return path / INT8_DIR
        store = ProfileStore(path.parent)
        if store.versions(path.name):
            return store.load(path.name).path / INT8_DIR
        raise CalibrationError(f"{path} is neither a calibration profile version (profile.json), a camera folder "
                               "of a profile store, nor an int8 folder (manifest.json)")
    if isinstance(profile_or_dir, str):
        return ProfileStore().load(profile_or_dir).path / INT8_DIR
    raise CalibrationError(f"{path} does not exist; pass a profile name (cam-A@v3) or a profile version folder")


def _manifest(folder: Path) -> list[dict]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise CalibrationError(f"no INT8 calibration images in {folder.parent} (no {path.name}); add some with "
                               "`calibration int8 add --camera CAMERA IMAGES...`")
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["images"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProfileCorrupt(f"cannot read {path} ({exc}); add the images again (a new version)") from None


def int8_images(profile_or_dir: Profile | str | Path) -> list[Path]:
    """The INT8 calibration images of a profile, in the order they were added (each must exist)."""
    folder = _resolve_dir(profile_or_dir)
    files = [folder / entry["file"] for entry in _manifest(folder)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ProfileCorrupt(f"INT8 images listed in {folder / 'manifest.json'} are missing: {missing[:5]}")
    return files


def calibration_cache_path(profile_or_dir: Profile | str | Path) -> Path:
    """Where the TensorRT INT8 calibration cache of this set is kept (it may not exist yet)."""
    return _resolve_dir(profile_or_dir) / CACHE_FILE


def engines_int8_set(name: str) -> tuple[list[Path], Path]:
    """The INT8 set a name gives ``engines build --calibration``: its image files and its calibration cache
    (:func:`engines.int8_sets.int8_set`); a name that is not a profile's set raises :class:`EngineError` saying why."""
    try:
        return int8_images(name), calibration_cache_path(name)
    except CalibrationError as exc:
        raise EngineError(str(exc)) from None


register_int8_sets(engines_int8_set)


def add_images(store: ProfileStore, camera: str, images: Sequence[str | Path],
               any_size: bool = False) -> tuple[Profile, int]:
    """A new version of ``camera``'s profile whose INT8 set holds the previous images plus ``images``; returns it
    and the number of images actually added (duplicates by SHA-256 are skipped)."""
    base = store.latest(camera)
    if base is None:
        raise CalibrationError(f"camera {camera!r} has no profile yet in {store.root}; calibrate it first (e.g. "
                               f"`calibration flatfield --camera {camera} ...`) so its frame size is known")
    files = list_images(images, "INT8 calibration images")
    previous = _manifest(base.path / INT8_DIR) if base.section("int8") else []
    known = {entry["sha256"] for entry in previous}
    new_entries, sources = [], []
    for path in files:
        image = read_image(path, "INT8 calibration image")
        if not any_size:
            base.check_fits(image.shape[1], image.shape[0], None, what=f"the image {path}",
                            fix="add images taken by this camera, or pass --any-size to take images of any size")
        digest = file_sha256(path)
        if digest in known:
            continue
        known.add(digest)
        number = len(previous) + len(new_entries) + 1
        new_entries.append({"file": f"{number:06d}_{path.name}", "sha256": digest, "source": str(path.resolve()),
                            "added": utc_now(), "width": int(image.shape[1]), "height": int(image.shape[0])})
        sources.append(path)
    entries = previous + new_entries
    with store.new_version(camera, None, step="int8", base=base) as draft:
        for entry in previous:
            draft.carry(base.path / INT8_DIR / entry["file"], f"{INT8_DIR}/{entry['file']}")
        for entry, path in zip(new_entries, sources):
            draft.add_file(f"{INT8_DIR}/{entry['file']}", path)
        draft.save_json(MANIFEST, {"images": entries})
        draft.sections["int8"] = {"images": len(entries), "manifest": MANIFEST, "cache": f"{INT8_DIR}/{CACHE_FILE}",
                                  "files": [MANIFEST] + [f"{INT8_DIR}/{e['file']}" for e in entries]}
    return draft.profile, len(new_entries)
