"""The profile store: versioned, dated calibration profiles, one folder per camera.

Layout (the root is ``$STATION_PROFILES`` or ``calibration-profiles/`` in the working directory)::

    ROOT/cam-A/v001/profile.json          camera id, geometry, created (ISO 8601 UTC), version, sections, SHA-256s
                    flatfield_offset.npy  arrays and figures named in the sections
                    flatfield.png ...
    ROOT/cam-A/v002/...                   each calibration step adds a version carrying the earlier sections forward

A profile is named ``cam-A`` (its latest version), ``cam-A@latest``, ``cam-A@v2`` or ``cam-A@2``. A version is
never changed once written: a step builds the new version in a hidden folder and renames it into place, and
two steps racing for the same number simply take the next one. Files carried forward are hard links where the
file system allows, copies otherwise. The one file that may be added later is the TensorRT INT8 calibration
cache (:func:`calibration.int8.calibration_cache_path`), which is derived from the images, not measured.

>>> import tempfile
>>> folder = tempfile.TemporaryDirectory()
>>> store = ProfileStore(Path(folder.name) / "calibration-profiles")
>>> with store.new_version("cam-A", CameraGeometry(640, 480, "Mono8"), step="scale") as draft:
...     draft.sections["scale"] = {"mm_per_px": 0.05}
>>> store.load("cam-A").section("scale")["mm_per_px"], store.load("cam-A").version
(0.05, 1)
>>> folder.cleanup()
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

import numpy as np

from calibration.errors import CalibrationError, ProfileCorrupt, ProfileMismatch, ProfileNotFound
from inspection_core.hashing import file_sha256  # one SHA-256 routine for weights, engine folders and profiles

FORMAT = 1
PROFILE_FILE = "profile.json"
ENV_ROOT = "STATION_PROFILES"
DEFAULT_ROOT = Path("calibration-profiles")
_CAMERA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VERSION_DIR = re.compile(r"v(\d{3,})")

#: What each section holds, written into every profile.json so a reader needs no code to understand it.
SECTION_HELP = {
    "flatfield": "dark offset and gain per pixel (per column for line-scan) applied before tiling: "
                 "corrected = (raw - offset) * gain, clipped to 0..255",
    "scale": "millimetres per pixel along x and y, measured on a target of known pitch",
    "roi": "region of interest (circle cx, cy, r or rectangle x, y, w, h, in pixels, margin applied): "
           "defects outside it are ignored",
    "thresholds": "segmentation operating point (defect score threshold, minimum area) chosen on a labelled "
                  "validation folder for a target escape rate, with its precision / recall and curve",
    "classifier_thresholds": "per-class label thresholds of the multi-label classifier chosen for a target "
                             "escape rate per class",
    "int8": "real images for TensorRT INT8 calibration (int8/manifest.json) and the calibration cache when built",
}


def default_root() -> Path:
    """``$STATION_PROFILES`` when set, else ``calibration-profiles`` in the working directory."""
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser() if env else DEFAULT_ROOT


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def check_camera_id(camera: str) -> str:
    if not isinstance(camera, str) or not _CAMERA_ID.fullmatch(camera):
        raise CalibrationError(f"camera id {camera!r} is not allowed; use 1-64 letters, digits, '.', '_' or '-' "
                               "starting with a letter or digit, e.g. cam-A or the camera's serial number")
    return camera


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"cam-A"`` / ``"cam-A@latest"`` → ``("cam-A", None)``; ``"cam-A@v2"`` / ``"cam-A@2"`` → ``("cam-A", 2)``."""
    camera, sep, version = str(ref).partition("@")
    check_camera_id(camera)
    if not sep or version == "latest":
        return camera, None
    match = re.fullmatch(r"v?(\d+)", version)
    if not match or int(match.group(1)) < 1:
        raise CalibrationError(f"profile name {ref!r}: the version after '@' must be latest, vN or N (N >= 1), "
                               "e.g. cam-A@v3")
    return camera, int(match.group(1))


@dataclass(frozen=True)
class CameraGeometry:
    """What a profile was measured for: frame width and height in pixels and the GenICam pixel format.

    For a line-scan camera (``line_scan``) only the width (pixels per line) and the pixel format must match:
    the number of lines in a frame is a setting of the acquisition, not of the sensor."""

    width: int
    height: int
    pixel_format: str = "Mono8"
    line_scan: bool = False

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise CalibrationError(f"camera {name} must be a whole number of pixels >= 1, got {value!r}")
        if not isinstance(self.pixel_format, str) or not self.pixel_format:
            raise CalibrationError(f"pixel format must be a GenICam name such as Mono8, got {self.pixel_format!r}")

    def describe(self) -> str:
        size = f"{self.width} px per line" if self.line_scan else f"{self.width}×{self.height}"
        return f"{size} {self.pixel_format}" + (" line-scan" if self.line_scan else "")

    def to_dict(self) -> dict[str, Any]:
        return {"width": int(self.width), "height": int(self.height), "pixel_format": self.pixel_format,
                "line_scan": bool(self.line_scan)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CameraGeometry:
        return cls(int(data["width"]), int(data["height"]), str(data["pixel_format"]), bool(data.get("line_scan")))

    def differences(self, width: int | None, height: int | None, pixel_format: str | None) -> list[str]:
        """What differs between this geometry and a camera's, as phrases; empty when it fits. ``None`` means
        "not known" and is not compared."""
        out = []
        if width is not None and int(width) != self.width:
            out.append(f"width {width} px (profile: {self.width} px)")
        if height is not None and not self.line_scan and int(height) != self.height:
            out.append(f"height {height} px (profile: {self.height} px)")
        if pixel_format is not None and pixel_format != self.pixel_format:
            out.append(f"pixel format {pixel_format} (profile: {self.pixel_format})")
        return out


def pixel_format_of(image: np.ndarray) -> str:
    """The GenICam pixel format name of an 8-bit frame as the station holds it: grey Mono8, RGB8 or RGBa8."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return "Mono8"
    return {3: "RGB8", 4: "RGBa8"}.get(image.shape[2], f"{image.shape[2]}-channel")


@dataclass(frozen=True)
class Profile:
    """One version of one camera's calibration, read from ``path/profile.json``.

    ``sections`` maps a section name (:data:`SECTION_HELP`) to its JSON data; ``files`` maps every file of the
    version (relative path) to its SHA-256."""

    camera: str
    version: int
    created: str
    geometry: CameraGeometry
    sections: Mapping[str, Mapping[str, Any]]
    files: Mapping[str, str]
    path: Path
    history: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sections", MappingProxyType(dict(self.sections)))
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))

    @property
    def name(self) -> str:
        """``camera@vN``: the exact version, as the reject log and the station's messages name it."""
        return f"{self.camera}@v{self.version}"

    def section(self, name: str) -> Mapping[str, Any] | None:
        return self.sections.get(name)

    def file(self, relative: str, verify: bool = True) -> Path:
        """The path of one of the version's files, checked against its recorded SHA-256."""
        path = self.path / relative
        if relative not in self.files:
            raise ProfileCorrupt(f"{self.name}: {relative} is not a file of this profile version "
                                 f"(its files: {', '.join(sorted(self.files)) or 'none'})")
        if not path.is_file():
            raise ProfileCorrupt(f"{self.name}: {path} is missing; restore the profile folder from a backup or "
                                 "run the calibration step again (it writes a new version)")
        if verify and file_sha256(path) != self.files[relative]:
            raise ProfileCorrupt(f"{self.name}: {path} does not match the SHA-256 in its profile.json (changed "
                                 "after calibration); run the calibration step again to write a new version")
        return path

    def array(self, relative: str) -> np.ndarray:
        """A ``.npy`` array of the version, checked against its SHA-256."""
        path = self.file(relative)
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ProfileCorrupt(f"{self.name}: cannot read {path} ({exc}); run the calibration step again") from None

    def verify(self) -> list[str]:
        """Problems with the version's files (missing or changed); empty when every SHA-256 matches."""
        problems = []
        for relative in sorted(self.files):
            try:
                self.file(relative)
            except ProfileCorrupt as exc:
                problems.append(str(exc))
        return problems

    def check_fits(self, width: int | None, height: int | None, pixel_format: str | None, what: str = "the camera",
                   fix: str | None = None) -> None:
        """Raise :class:`ProfileMismatch` naming every difference when a camera (or image) does not fit."""
        diffs = self.geometry.differences(width, height, pixel_format)
        if diffs:
            hint = fix or (f"calibrate the camera as it is set up now (e.g. `calibration flatfield --camera "
                           f"{self.camera} ...`, which writes a new version), set the camera back to "
                           f"{self.geometry.describe()}, or name the right profile in the recipe's [calibration]")
            raise ProfileMismatch(f"calibration profile {self.name} does not fit {what}: it gives "
                                  f"{'; '.join(diffs)}; {hint}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "camera": self.camera, "version": self.version, "created": self.created,
                "geometry": self.geometry.to_dict(), "sections": {k: dict(v) for k, v in self.sections.items()},
                "section_help": {k: SECTION_HELP.get(k, "") for k in self.sections},
                "files": dict(self.files), "history": [dict(h) for h in self.history]}


def _read_profile(folder: Path) -> Profile:
    path = folder / PROFILE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileCorrupt(f"{folder} has no {PROFILE_FILE}; it is not a calibration profile version") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileCorrupt(f"cannot read {path} ({exc}); restore it or run the calibration step again") from None
    try:
        if int(data.get("format", 0)) > FORMAT:
            raise ProfileCorrupt(f"{path} was written by a newer station (format {data['format']}); upgrade")
        return Profile(camera=str(data["camera"]), version=int(data["version"]), created=str(data["created"]),
                       geometry=CameraGeometry.from_dict(data["geometry"]), sections=data.get("sections", {}),
                       files=data.get("files", {}), path=folder, history=tuple(data.get("history", ())))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileCorrupt(f"{path} lacks or garbles {exc}; it was not written by `calibration`") from None


class ProfileStore:
    """A folder of camera profiles (see the module docstring for the layout)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = (Path(root).expanduser() if root is not None else default_root()).absolute()

    def __repr__(self) -> str:
        return f"ProfileStore({str(self.root)!r})"

    def cameras(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _CAMERA_ID.fullmatch(p.name)
                      and self.versions(p.name))

    def versions(self, camera: str) -> list[int]:
        folder = self.root / check_camera_id(camera)
        if not folder.is_dir():
            return []
        found = []
        for p in folder.iterdir():
            match = _VERSION_DIR.fullmatch(p.name)
            if match and (p / PROFILE_FILE).is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def version_dir(self, camera: str, version: int) -> Path:
        return self.root / check_camera_id(camera) / f"v{version:03d}"

    def load(self, ref: str) -> Profile:
        """The profile ``ref`` names (``cam-A``, ``cam-A@v2``...); :class:`ProfileNotFound` says what exists."""
        camera, version = parse_ref(ref)
        versions = self.versions(camera)
        if not versions:
            known = ", ".join(self.cameras()) or "none"
            raise ProfileNotFound(f"no calibration profile for camera {camera!r} in {self.root} (cameras there: "
                                  f"{known}); create one with `calibration flatfield|scale|roi --camera {camera} "
                                  f"...`, or point [calibration] root / $STATION_PROFILES at the right store")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise ProfileNotFound(f"camera {camera!r} has no version v{version} in {self.root} (versions: "
                                  f"{', '.join(f'v{v}' for v in versions)})")
        profile = _read_profile(self.version_dir(camera, version))
        if profile.camera != camera or profile.version != version:
            raise ProfileCorrupt(f"{profile.path / PROFILE_FILE} says {profile.name}, but sits in the folder of "
                                 f"{camera}@v{version}; do not move version folders by hand")
        return profile

    def latest(self, camera: str) -> Profile | None:
        return self.load(camera) if self.versions(camera) else None

    def new_version(self, camera: str, geometry: CameraGeometry | None, step: str,
                    base: Profile | None | str = "latest", note: str = "") -> ProfileDraft:
        """A draft of the next version of ``camera``'s profile, to fill and commit (use it as a context manager:
        it commits on success and discards on error). ``base`` (default: the latest version) is carried
        forward: every section the draft does not replace, with its files. ``geometry`` None takes the base's;
        a geometry that differs from the base's is refused (a new camera setup needs a new camera id or new
        references for every section)."""
        check_camera_id(camera)
        if base == "latest":
            base = self.latest(camera)
        if geometry is None:
            if base is None:
                raise CalibrationError(f"camera {camera!r} has no profile yet, so its frame size and pixel format "
                                       "are unknown; start with a step that reads camera images (flatfield, scale, "
                                       "roi), or pass --width, --height and --pixel-format")
            geometry = base.geometry
        elif base is not None:
            base.check_fits(geometry.width, geometry.height, geometry.pixel_format,
                            what=f"the images given to this step ({geometry.describe()})",
                            fix=f"use images from camera {camera} as it was calibrated, or calibrate it under a "
                                "new camera id")
            if geometry.line_scan != base.geometry.line_scan:
                kind = "line-scan" if base.geometry.line_scan else "area-scan"
                raise ProfileMismatch(f"calibration profile {base.name} is for a {kind} camera; pass --line-scan "
                                      "exactly when the camera is a line-scan camera, or use a new camera id")
            geometry = CameraGeometry(geometry.width, base.geometry.height if geometry.line_scan else geometry.height,
                                      geometry.pixel_format, geometry.line_scan)
        return ProfileDraft(self, camera, geometry, step, base, note)


@dataclass
class ProfileDraft:
    """A version being written: put files in :attr:`folder` (or use the helpers), set :attr:`sections`, then
    :meth:`commit`. Sections of the base that are not replaced are carried forward with their files."""

    store: ProfileStore
    camera: str
    geometry: CameraGeometry
    step: str
    base: Profile | None
    note: str = ""
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    folder: Path = field(init=False)
    profile: Profile | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        camera_dir = self.store.root / self.camera
        try:
            camera_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CalibrationError(f"cannot create the profile folder {camera_dir}: {exc}; choose another --root "
                                   "or $STATION_PROFILES") from None
        self.folder = Path(tempfile.mkdtemp(prefix=".draft-", dir=camera_dir)).resolve()

    def __enter__(self) -> ProfileDraft:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    # -- filling --------------------------------------------------------------------------------------------
    def save_array(self, relative: str, array: np.ndarray) -> str:
        np.save(self._target(relative), np.ascontiguousarray(array), allow_pickle=False)
        return relative

    def save_png(self, relative: str, image: np.ndarray) -> str:
        import cv2

        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise CalibrationError(f"cannot encode {relative} as PNG")
        self._target(relative).write_bytes(data.tobytes())
        return relative

    def save_json(self, relative: str, data: Any) -> str:
        self._target(relative).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return relative

    def add_file(self, relative: str, source: Path) -> str:
        shutil.copyfile(source, self._target(relative))
        return relative

    def path(self, relative: str) -> Path:
        """Where a file written by other code (e.g. a matplotlib figure) must go."""
        return self._target(relative)

    def _target(self, relative: str) -> Path:
        target = self.folder / relative
        if self.folder not in target.resolve().parents:
            raise CalibrationError(f"profile file name {relative!r} leaves the profile folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    # -- committing -----------------------------------------------------------------------------------------
    def commit(self) -> Profile:
        """Carry the base forward, hash every file, write profile.json and rename the draft to the next free
        version number; returns the new :class:`Profile`."""
        if self.profile is not None:
            return self.profile
        sections: dict[str, dict[str, Any]] = {}
        if self.base is not None:
            for name, data in self.base.sections.items():
                if name in self.sections or name in self.removed:
                    continue
                sections[name] = dict(data)
                for relative in data.get("files", ()):
                    self.carry(self.base.path / relative, relative)
        sections.update(self.sections)
        files = {}
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            relative = path.relative_to(self.folder).as_posix()
            if relative != PROFILE_FILE:
                files[relative] = file_sha256(path)
        for name, data in sections.items():
            missing = [f for f in data.get("files", ()) if f not in files]
            if missing:
                self.discard()
                raise ProfileCorrupt(f"section {name!r} names files that are not in the profile: {missing}")
        history = [dict(h) for h in (self.base.history if self.base else ())]
        created = utc_now()
        camera_dir = self.store.root / self.camera
        for _ in range(1000):
            versions = self.store.versions(self.camera)
            version = (versions[-1] if versions else 0) + 1
            entry = {"version": version, "step": self.step, "created": created}
            if self.note:
                entry["note"] = self.note
            profile = Profile(self.camera, version, created, self.geometry, sections, files,
                              camera_dir / f"v{version:03d}", tuple(history + [entry]))
            (self.folder / PROFILE_FILE).write_text(json.dumps(profile.to_dict(), indent=2) + "\n", encoding="utf-8")
            try:
                os.rename(self.folder, profile.path)  # fails when another step took this number first
            except OSError:
                if profile.path.exists():
                    continue
                raise
            self.profile = profile
            return profile
        raise CalibrationError(f"could not find a free version number under {camera_dir}")

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def carry(self, source: Path, relative: str) -> None:
        """Put ``source`` into the draft as ``relative`` (a hard link where possible, else a copy)."""
        target = self._target(relative)
        if target.exists():
            return
        if not source.is_file():
            raise ProfileCorrupt(f"{source} is missing, so it cannot be carried into the new version; restore it "
                                 "or redo that calibration step")
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def iter_profiles(store: ProfileStore, camera: str | None = None) -> Iterator[Profile]:
    """Every version in the store (or of one camera), oldest first."""
    for cam in [camera] if camera else store.cameras():
        for version in store.versions(cam):
            yield store.load(f"{cam}@v{version}")
