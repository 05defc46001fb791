"""The ONNX export that travels inside a weights folder, so a station without torch runs the weights.

A weights folder (``model.safetensors`` + ``config.json``, :mod:`engines.weights`) may carry its inference graph for
ONNX Runtime: ``model.onnx`` (a network with scoring modes also ``model.bank.onnx``, GR against its stored bank),
written by ``engines build --weights DIR --into-weights`` (:func:`write_weights_exports`), and ``onnx.json``, the
manifest of hashes::

    {"format": 1, "weights": {"file": "model.safetensors", "sha256": ...}, "network": SHA-256 of model + model_config,
     "exports": [{"file": "model.onnx", "sha256": ..., "mode": "batch", "tile": 128, "opset": 17,
                  "parity": {... against torch fp32 at export ...}, ...}],
     "versions": {...}, "exported_at": ..., "command": "engines build --weights ... --into-weights"}

The graph reads its parameters from ``model.safetensors`` itself (ONNX external data, :func:`engines.export.
point_at_safetensors`), so an export costs kilobytes beside the weights, and it cannot run other weights than
those in the folder. The station opens it with ONNX Runtime directly (:func:`open_weights_export`, from
:func:`engines.cache.engine_for_weights`) after checking the manifest: the weights file, the network's config and
the graph must still be the ones exported. Weights without an export (or with a stale one) are built into an
engine folder in the cache as before, which needs torch; on a base install the user is told in one line how to
get it (:func:`no_export_message`).

Why the export lives in the weights folder and not as an engine folder shipped beside it: an engine folder carries
a copy of the weights (28 MB more for BFFN) and is tied to the ONNX Runtime version that built it, so a newer
onnxruntime on the line would refuse it and need torch to rebuild; the graph in the weights folder shares the
weights file and runs on any ONNX Runtime.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from engines.backends.common import default_threads
from engines.backends.onnxruntime_backend import OnnxRuntimeEngine
from engines.errors import EngineError
from engines.models import model_spec
from engines.weights import WeightsBundle, resolve_weights
from inspection_core.engine import Engine
from inspection_core.extras import MissingExtra, has_torch, missing_train_message
from inspection_core.hashing import file_sha256

log = logging.getLogger(__name__)
EXPORTS_FILE = "onnx.json"
FORMAT = 1


def export_file(mode: str, tile: int, default_mode: str = "batch", default_tile: int = 0) -> str:
    """``model.onnx`` for the default scoring mode at the weights' own tile; ``model.<mode>.onnx`` for another mode
    (GR's ``bank``), ``model.t<tile>[.<mode>].onnx`` for another tile."""
    parts = ["model"]
    if default_tile and tile != default_tile:
        parts.append(f"t{tile}")
    if mode != default_mode:
        parts.append(mode)
    return ".".join(parts + ["onnx"])


def network_sha256(bundle: WeightsBundle) -> str:
    """SHA-256 of what shapes the graph besides the weights: the network's registry name and config."""
    text = json.dumps({"model": bundle.model, "model_config": bundle.model_config}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_exports(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``onnx.json``, or None where there is none; :class:`EngineError` when it cannot be read."""
    path = Path(folder) / EXPORTS_FILE
    if not path.is_file():
        return None
    try:
        exports = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path} cannot be read ({exc}); write it again with "
                          f"`engines build --weights {folder} --into-weights`") from None
    if not isinstance(exports, dict) or exports.get("format") != FORMAT or not isinstance(exports.get("exports"), list):
        raise EngineError(f"{path} is not a format-{FORMAT} export manifest; write it again with "
                          f"`engines build --weights {folder} --into-weights`")
    return exports


def export_problems(bundle: WeightsBundle, exports: dict[str, Any] | None = None,
                    weights_sha256: str | None = None) -> list[str]:
    """Every reason the exports listed in the weights folder's manifest do not run these weights (empty when they
    do): the weights file or the network config changed since the export, or a graph file is missing or changed."""
    exports = exports if exports is not None else read_exports(bundle.path)
    if exports is None:
        return [f"{bundle.path} has no {EXPORTS_FILE}"]
    found = []
    sha = weights_sha256 or bundle.sha256()
    if exports.get("weights", {}).get("sha256") != sha:
        found.append(f"{bundle.weights_file.name} has changed since the export (SHA-256 differs)")
    if exports.get("network") != network_sha256(bundle):
        found.append("the network's config (config.json: model, model_config) has changed since the export")
    for entry in exports["exports"]:
        path = bundle.path / entry["file"]
        if not path.is_file():
            found.append(f"{entry['file']} is missing")
        elif file_sha256(path) != entry["sha256"]:
            found.append(f"{entry['file']} has changed since the export (SHA-256 differs)")
    return found


def find_export(bundle: WeightsBundle, tile: int, mode: str) -> dict[str, Any] | None:
    """The manifest entry of the folder's export for ``tile`` and ``mode`` when the folder lists one (None
    otherwise), without checking hashes."""
    exports = read_exports(bundle.path)
    for entry in (exports or {}).get("exports", []):
        if int(entry.get("tile", 0)) == tile and entry.get("mode") == mode:
            return entry
    return None


def into_weights_command(bundle: WeightsBundle, tile: int = 0) -> str:
    """The command that writes a weights folder's ONNX export (needs torch)."""
    path = bundle.path
    shipped = path.parent.name == "weights" and path.parent.parent.name == "engines"
    words = ["engines", "build", "--weights", path.name if shipped else str(path), "--into-weights"]
    if tile and tile != bundle.tile:
        words += ["--tile", str(tile)]
    return shlex.join(words)


def no_export_message(bundle: WeightsBundle, tile: int, mode: str, backend: str, precision: str,
                      why: str = "") -> str:
    """One line for a base install: these weights need torch to run as asked, and how to get it."""
    modes = f", mode {mode}" if model_spec(bundle.model).has_modes else ""
    if backend == "onnxruntime" and precision == "fp32":
        what = why or f"carry no ONNX export for {tile} px tiles{modes}"
        return (missing_train_message(f"{bundle.model} weights {bundle.path} {what}, and exporting them")
                + f"; then run `{into_weights_command(bundle, tile)}`")
    return missing_train_message(f"building {bundle.model} weights {bundle.path} for {backend} {precision}")


def open_weights_export(bundle: WeightsBundle, entry: dict[str, Any], threads: int = 0, device: str = "cpu",
                        weights_sha256: str | None = None) -> Engine:
    """ONNX Runtime on the weights folder's export ``entry`` (from :func:`find_export`); the caller has checked the
    manifest (:func:`export_problems`)."""
    spec = model_spec(bundle.model)
    sha = weights_sha256 or bundle.sha256()
    engine = OnnxRuntimeEngine(bundle.path / entry["file"], bundle.model, sha, bundle.input_spec(),
                               int(entry["tile"]), threads or default_threads(), "fp32", device, spec.task.value)
    engine.manifest = {"format": FORMAT, "model": bundle.model, "kind": spec.task.value,
                       "mode": entry["mode"] if spec.has_modes else None, "input": bundle.input_spec().to_dict(),
                       "tile": int(entry["tile"]), "backend": "onnxruntime", "device": device, "precision": "fp32",
                       "weights": {"file": bundle.weights_file.name, "sha256": sha, "source": str(bundle.path)},
                       "onnx": entry, "source": f"the ONNX export in {bundle.path}"}
    engine.folder = bundle.path
    return engine


def weights_export_engine(bundle: WeightsBundle, tile: int, mode: str, threads: int = 0,
                          device: str = "cpu") -> Engine | None:
    """ONNX Runtime on the weights folder's own export for ``tile`` and ``mode``, or None where the folder has none
    (or, on an install with torch, a stale one: the caller then builds from the weights). On an install without
    torch a stale export is :class:`~inspection_core.extras.MissingExtra`, saying what changed."""
    entry = find_export(bundle, tile, mode)
    if entry is None:
        return None
    sha = bundle.sha256()
    found = export_problems(bundle, weights_sha256=sha)
    if found:
        if has_torch():
            log.warning("not using the ONNX export in %s: %s; building from the weights instead", bundle.path,
                        "; ".join(found))
            return None
        raise MissingExtra(no_export_message(bundle, tile, mode, "onnxruntime", "fp32",
                                             why=f"have an ONNX export that no longer matches them ({found[0]})"))
    return open_weights_export(bundle, entry, threads=threads, device=device, weights_sha256=sha)


# ---------------------------------------------------------------------------------------------- writing (torch)

def export_modes(bundle: WeightsBundle) -> list[str]:
    """The scoring modes to export: every mode the network has, ``bank`` only where the weights store a bank."""
    spec = model_spec(bundle.model)
    if not spec.has_modes:
        return [spec.modes[0]]
    from engines.models import has_bank, has_relations
    from engines.weights import load_model

    model = load_model(bundle)
    return [m for m in spec.modes if m != "bank" or (has_relations(model) and has_bank(model))]


def write_weights_exports(weights: str | Path | WeightsBundle, tile: int = 0, threads: int = 0,
                          command: str = "") -> dict[str, Any]:
    """Export the weights into their own folder for every scoring mode (:func:`export_modes`), check each against
    the torch fp32 reference on seeded random tiles, and write ``onnx.json``; return it. Needs torch."""
    import numpy as np

    from engines.backends.torch_backend import TorchEngine
    from engines.export import OPSET, export_onnx
    from engines.inputs import random_inputs
    from engines.manifest import library_versions
    from engines.parity import compare_outputs
    from engines.verify import TOLERANCES

    bundle = weights if isinstance(weights, WeightsBundle) else resolve_weights(weights)
    spec = model_spec(bundle.model)
    tile = tile or bundle.tile
    spec.check_side(tile, export=True)
    before = read_exports(bundle.path)
    kept = []  # exports for other tiles stay listed while they still run these weights
    if before is not None and before.get("weights", {}).get("sha256") == bundle.sha256() \
            and before.get("network") == network_sha256(bundle):
        kept = [e for e in before["exports"] if int(e.get("tile", 0)) != tile
                and (bundle.path / e["file"]).is_file() and file_sha256(bundle.path / e["file"]) == e["sha256"]]
    entries = []
    for mode in export_modes(bundle):
        name = export_file(mode, tile, spec.modes[0], bundle.tile)
        path = bundle.path / name
        export_onnx(bundle, path, tile=tile, mode=mode, weights_beside=True)
        entry = {"file": name, "sha256": file_sha256(path), "bytes": path.stat().st_size, "mode": mode,
                 "tile": tile, "opset": OPSET, "kind": spec.task.value}
        engine = OnnxRuntimeEngine(path, bundle.model, bundle.sha256(), bundle.input_spec(), tile,
                                   threads or default_threads(), "fp32", "cpu", spec.task.value)
        reference = TorchEngine.from_bundle(bundle, threads=threads or default_threads(), mode=mode)
        x = random_inputs(8, bundle.input_spec(), tile)
        try:
            got, want = engine.infer(x), reference.infer(x)
        finally:
            engine.close()
            reference.close()
        entry["parity"] = {"against": "torch fp32 cpu", "inputs": int(len(x)),
                           "source": "seeded random tiles", **compare_outputs(np.asarray(got), np.asarray(want),
                                                                               spec.task.value)}
        if entry["parity"]["mean_abs"] > TOLERANCES["fp32"]["mean_abs"] or entry["parity"]["max_abs"] > 1e-3:
            raise EngineError(f"the ONNX export {path} is further from torch fp32 than fp32 allows "
                              f"({entry['parity']}); it was not recorded. Report it with the weights")
        entries.append(entry)
    manifest = {"format": FORMAT, "weights": {"file": bundle.weights_file.name, "sha256": bundle.sha256()},
                "network": network_sha256(bundle), "model": bundle.model, "exports": kept + entries,
                "versions": library_versions(),
                "exported_at": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
                "command": command or into_weights_command(bundle, tile)}
    target = bundle.path / EXPORTS_FILE
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    temporary.replace(target)
    log.info("wrote %s: %s", target, ", ".join(f"{e['file']} ({e['bytes']} bytes)" for e in entries))
    return manifest
