"""The manifest written beside every built engine, and the checks made before an engine is loaded.

An engine folder (``engines build --out DIR``) holds::

    manifest.json        what was built, from what, with what, on what, and how well it matched torch at build
    weights/             the weights it was built from (model.safetensors + config.json): the torch reference
    model.onnx           the ONNX export (onnxruntime, tensorrt); model.int8.onnx / model.fp16.onnx when quantised
    model.plan           the serialized TensorRT engine (tensorrt)
    timing.cache         TensorRT's timing cache, reused by the next build in this folder (tensorrt)

Loading refuses a folder whose files do not match their SHA-256 in the manifest, or whose backend library
versions or GPU differ from this machine's; the message names each difference and the ``engines build`` command
that rebuilds the folder here.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

from engines.backends.gpu import gpu_info
from engines.backends.registry import BACKENDS, library_version
from engines.errors import EngineError
from inspection_core.hashing import file_sha256

MANIFEST = "manifest.json"
FORMAT = 1


class ManifestError(EngineError):
    """An engine folder's manifest is missing, unreadable, or does not match the folder or this machine."""


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries an engine depends on (None where absent): each declared backend's library
    (:mod:`engines.backends.registry`), and the CUDA that torch uses; without importing TensorRT's CUDA."""
    versions = {spec.library_module: library_version(spec.library_module) for spec in BACKENDS.values()}
    versions["cuda"] = None
    if versions.get("torch") is not None:  # a base install has no torch (and no CUDA through it)
        import torch

        versions["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    return versions


def machine(device: str) -> dict[str, Any]:
    """What the engine runs on: the host, and for CUDA devices the GPU (name, compute capability, driver)."""
    info: dict[str, Any] = {"host": platform.node(), "cpu": platform.processor() or platform.machine()}
    if device.startswith("cuda"):
        info["gpu"] = gpu_info()
    else:
        info["gpu"] = None
    return info


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder} is not an engine folder: it has no {MANIFEST}; build one with "
                            "`engines build --weights RUN_DIR --backend onnxruntime --out DIR`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} cannot be read ({exc}); rebuild the folder with `engines build`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a format-{FORMAT} engine manifest; rebuild the folder with `engines build`")
    return manifest


def is_engine_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def problems(folder: str | Path, manifest: dict[str, Any] | None = None, *, check_files: bool = True) -> list[str]:
    """Every reason the engine in ``folder`` cannot run here as built (empty when it can)."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    found: list[str] = []
    if check_files:
        for part in ("weights", "onnx", "engine"):
            entry = manifest.get(part)
            if not entry:
                continue
            path = folder / entry["file"]
            if not path.is_file():
                found.append(f"{part} file {entry['file']} is missing")
            elif file_sha256(path) != entry["sha256"]:
                found.append(f"{part} file {entry['file']} has changed since the build (SHA-256 differs)")
    # The backend's library version must match: an ONNX file runs on any ONNX Runtime, but the parity figures in
    # the manifest were measured with one; a TensorRT plan runs only on the TensorRT version and GPU that built it.
    backend = BACKENDS.get(manifest.get("backend", ""))
    built = manifest.get("versions", {})
    here = library_versions()
    for key in (backend.library_module,) if backend is not None else ():
        if here.get(key) is None:
            found.append(f"{key} is not installed here (built with {key} {built.get(key)})")
        elif built.get(key) != here.get(key):
            found.append(f"built with {key} {built.get(key)}, this machine has {key} {here.get(key)}")
    device = manifest.get("device", "cpu")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            found.append(f"built for a CUDA GPU ({(manifest.get('machine', {}).get('gpu') or {}).get('name')}), "
                         "this machine has none")
        else:
            was, now = manifest.get("machine", {}).get("gpu") or {}, gpu_info() or {}
            for key in ("name", "compute_capability"):
                if was.get(key) != now.get(key):
                    found.append(f"built on GPU {key} {was.get(key)!r}, this GPU has {key} {now.get(key)!r}")
            if (backend is None or backend.torch_cuda) and built.get("cuda") != here.get("cuda"):
                found.append(f"built with CUDA {built.get('cuda')}, torch here uses CUDA {here.get('cuda')}")
    return found


def check(folder: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of ``folder`` when its engine can run here; else :class:`ManifestError` naming each
    difference and the command that rebuilds the folder."""
    manifest = manifest or read_manifest(folder)
    found = problems(folder, manifest)
    if found:
        command = manifest.get("build_command") or "engines build --weights WEIGHTS --backend BACKEND --out DIR"
        raise ManifestError(f"engine {folder} cannot be loaded: " + "; ".join(found)
                            + f". Rebuild it on this machine: {command}")
    return manifest
