"""Engine folders: their layout, opening one by its manifest, and finding them.

A folder holds ``manifest.json`` (:mod:`engines.manifest`), ``weights/`` (the torch reference), and the built
artefact of its backend: ``model.onnx`` (or its quantised ``model.int8.onnx`` / ``model.fp16.onnx``) for ONNX
Runtime, ``model.plan`` for TensorRT. Every load goes through :func:`open_engine`, which checks the manifest first.
"""
from __future__ import annotations

from pathlib import Path

from engines.backends.common import cache_dir, default_threads
from engines.backends.onnxruntime_backend import Int8Guard, OnnxRuntimeEngine
from engines.backends.registry import BACKENDS
from engines.backends.tensorrt_backend import TensorRTEngine
from engines.backends.torch_backend import TorchEngine
from engines.errors import EngineError
from engines.manifest import check, is_engine_dir
from engines.weights import resolve_weights
from inspection_core.engine import Engine
from inspection_core.preprocess import InputSpec

WEIGHTS_DIR = "weights"
ONNX_FILE, PLAN_FILE, TIMING_CACHE = "model.onnx", "model.plan", "timing.cache"
CALIBRATION_CACHE = "int8-calibration.cache"


def open_folder(folder: Path, manifest: dict, threads: int = 0, device: str | None = None) -> Engine:
    """Open the engine in ``folder`` as ``manifest`` describes it, without checking the manifest (the build's own
    parity check and the cache, which checks it itself, open folders this way); :func:`open_engine` checks. The
    manifest's backend opens it: its declaration's opener (:mod:`engines.backends.registry`)."""
    threads = threads or default_threads()
    device = device or manifest.get("device", "cpu")
    backend = BACKENDS.get(manifest["backend"])
    if backend is None:
        raise EngineError(f"{folder}: unknown backend {manifest['backend']!r} in its manifest; rebuild it with "
                          "`engines build`")
    engine: Engine = backend.open_folder(Path(folder), manifest, threads, device)
    engine.manifest, engine.folder = manifest, Path(folder)
    return engine


def _described(manifest: dict) -> tuple:
    """What every backend's engine is told: model, weights SHA-256, input spec, tile, precision, kind."""
    return (manifest["model"], manifest["weights"]["sha256"], InputSpec(**manifest["input"]), manifest["tile"],
            manifest["precision"], manifest["kind"])


def open_onnxruntime_folder(folder: Path, manifest: dict, threads: int, device: str) -> Engine:
    """The onnxruntime declaration's opener: the quantised or converted graph where there is one, else the export,
    with its int8 guard."""
    model, sha, spec, tile, precision, kind = _described(manifest)
    name = (manifest.get("engine") or manifest["onnx"])["file"]
    guarded = manifest.get("int8_guard")
    guard = Int8Guard(folder / guarded["fallback"], guarded["below"], guarded["threshold"],
                      guarded["margin"]) if guarded else None
    return OnnxRuntimeEngine(folder / name, model, sha, spec, tile, threads, precision, device, kind, guard=guard)


def open_torch_folder(folder: Path, manifest: dict, threads: int, device: str) -> Engine:
    """The torch declaration's opener: the folder's own weights (a CUDA graph for the profile's batch on CUDA)."""
    return TorchEngine.from_bundle(resolve_weights(folder / WEIGHTS_DIR), threads=threads, device=device,
                                   precision=manifest["precision"], graph_batch=manifest["batch"]["opt"],
                                   mode=manifest.get("mode") or "batch")


def open_tensorrt_folder(folder: Path, manifest: dict, threads: int, device: str) -> Engine:
    """The tensorrt declaration's opener: the serialized plan on ``device``."""
    model, sha, spec, tile, precision, kind = _described(manifest)
    engine = TensorRTEngine(folder / PLAN_FILE, model, sha, spec, tile, precision, device=device)
    engine.kind = kind
    return engine


def open_engine(folder: str | Path, threads: int = 0, device: str | None = None) -> Engine:
    """Open a built engine folder after checking its manifest against its files, the libraries and the GPU here
    (:class:`engines.manifest.ManifestError` names each difference and the command that rebuilds it)."""
    folder = Path(folder)
    manifest = check(folder)
    return open_folder(folder, manifest, threads=threads, device=device)


def engine_folders(roots) -> list[Path]:
    """Engine folders directly in, or one level below, each root (the cache's ``engines/`` is always searched)."""
    found: list[Path] = []
    for root in [*map(Path, roots), cache_dir() / "engines"]:
        if is_engine_dir(root):
            found.append(root)
        elif root.is_dir():
            found.extend(sorted(p for p in root.iterdir() if p.is_dir() and is_engine_dir(p)))
    seen, unique = set(), []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique
