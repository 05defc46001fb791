"""Plain weights opened through the ONNX export they carry (:mod:`engines.weights_onnx`: ONNX Runtime, fp32, no torch
needed), or else built once into an engine folder in the cache (``$STATION_CACHE/engines/``), then loaded like any
engine folder: what :func:`engines.backends.base.load_engine` does for weights that are not an engine folder."""
from __future__ import annotations

import logging
from pathlib import Path

from engines.backends.common import cache_dir, default_threads
from engines.backends.registry import backend_spec
from engines.build import BuildSettings, build
from engines.errors import EngineError
from engines.folders import open_engine, open_folder
from engines.manifest import is_engine_dir, problems, read_manifest
from engines.models import model_spec
from engines.weights import resolve_weights
from engines.weights_onnx import no_export_message, weights_export_engine
from inspection_core.engine import Engine
from inspection_core.preprocess import InputSpec
from inspection_core.extras import MissingExtra, has_torch

log = logging.getLogger(__name__)


def cache_folder(bundle, backend: str, device: str, precision: str, tile: int, mode: str) -> Path:
    """The cache's engine folder for these weights built this way (the scoring mode named for a network that has
    several, GR's batch and bank)."""
    name = f"{bundle.model}-{bundle.sha256()[:16]}-{backend}-{device.replace(':', '')}-{precision}-t{tile}"
    if model_spec(bundle.model).has_modes:
        name += f"-{mode}"
    return cache_dir() / "engines" / name


def engine_for_weights(weights: str | Path, backend: str = "onnxruntime", threads: int = 0, device: str = "cpu",
                       precision: str = "fp32", mode: str = "batch", tile: int = 0) -> Engine:
    """What :func:`engines.backends.base.load_engine` does: open an engine folder; open the ONNX export that
    weights carry (ONNX Runtime fp32, for their tile and mode: what shipped weights do on every install, torch or
    not); or build the weights into a cached engine folder once (rebuilt when its manifest no longer matches this
    machine) and open it. Building needs torch: without it, :class:`~inspection_core.extras.MissingExtra` says in
    one line what to install and run. A cached folder is rebuilt, too, when the weights' input settings
    (``config.json``'s ``input``: gain, border, context pass) are no longer those it was built with."""
    backend_spec(backend)  # BackendUnavailable naming the declared backends
    if is_engine_dir(weights):
        manifest = read_manifest(weights)
        for key, wanted in (("backend", backend), ("precision", precision)):
            if manifest.get(key) != wanted:
                raise EngineError(f"engine folder {weights} was built for {key} {manifest.get(key)}, not {wanted}; "
                                  f"set {key} = \"{manifest.get(key)}\" or build one: engines build --weights "
                                  f"{weights}/weights --{key} {wanted} --out DIR")
        return open_engine(weights, threads=threads, device=device if device != "cpu" else None)
    bundle = resolve_weights(weights)
    spec = model_spec(bundle.model)
    if not spec.has_modes:  # one way of scoring: the mode asked for makes no difference, nor a second folder
        mode = spec.modes[0]
    tile = tile or bundle.tile
    if backend == "onnxruntime" and precision == "fp32":
        engine = weights_export_engine(bundle, tile, mode, threads=threads, device=device)
        if engine is not None:
            return engine
    folder = cache_folder(bundle, backend, device, precision, tile, mode)
    if is_engine_dir(folder):
        manifest = read_manifest(folder)
        found = problems(folder, manifest)
        built_for = InputSpec(**manifest.get("input", {}))
        if built_for != bundle.input_spec():  # config.json's "input" edited: the same weights, other frames
            found.append(f"built for the input {built_for.to_dict()}, and the weights' config.json now says "
                         f"{bundle.input_spec().to_dict()}")
        if not found:
            return open_folder(folder, manifest, threads=threads, device=device)
        log.warning("rebuilding cached engine %s: %s", folder, "; ".join(found))
    if not has_torch():
        raise MissingExtra(no_export_message(bundle, tile, mode, backend, precision))
    settings = BuildSettings(weights=str(bundle.path), backend=backend, out=str(folder), precision=precision,
                             tile=tile, device=device, mode=mode, threads=threads or default_threads())
    log.info("building %s for %s (first use of these weights on this backend)", folder.name, bundle.path)
    build(settings)
    return open_folder(folder, read_manifest(folder), threads=threads, device=device)
