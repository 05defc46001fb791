"""Parity of a built engine with the torch fp32 reference: the same inputs run through both, compared in the
user's terms (the share of decisions on which they agree) and as score differences."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.backends.common import default_threads
from engines.backends.torch_backend import TorchEngine
from engines.errors import EngineError
from engines.inputs import batches, data_images, network_inputs, random_inputs
from engines.manifest import is_engine_dir, read_manifest
from engines.weights import resolve_weights
from inspection_core.engine import Engine
from inspection_core.preprocess import defect_scores
from inspection_core.defaults import DEFAULT_LABEL_THRESHOLD


def reference_engine(folder_or_weights: str | Path, threads: int = 0, device: str = "cpu") -> Engine:
    """The torch fp32 reference for an engine folder (from the weights it carries) or a weights folder."""
    manifest = read_manifest(folder_or_weights) if is_engine_dir(folder_or_weights) else {}
    return TorchEngine.from_bundle(resolve_weights(folder_or_weights), threads=threads or default_threads(),
                                   device=device, mode=manifest.get("mode") or "batch")


def compare_outputs(got: np.ndarray, want: np.ndarray, kind: str,
                    threshold: float = DEFAULT_LABEL_THRESHOLD) -> dict[str, float]:
    """How far two engines' probabilities are apart, in the user's terms: the share of decisions (pixels or
    labels, defect score at ``threshold``) on which they agree, and the max / mean absolute score difference."""
    if got.shape != want.shape:
        raise EngineError(f"outputs differ in shape: {got.shape} against {want.shape}")
    if kind == "segmentation":
        a, b = defect_scores(got), defect_scores(want)
    else:
        a, b = got, want
    diff = np.abs(a.astype(np.float64) - b)
    return {"decision_agreement": round(float(((a >= threshold) == (b >= threshold)).mean()), 6),
            "max_abs": significant(diff.max()), "mean_abs": significant(diff.mean())}


def significant(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant digits (score differences span 1e-9 to 1: fixed decimals would hide the
    small ones as 0)."""
    return float(f"{float(x):.{digits}g}")


def measure_parity(engine: Engine, weights_dir: Path, settings, kind: str, tile: int, spec) -> dict:
    """Parity of a freshly built engine with the torch fp32 CPU reference on the same inputs (``settings``: the
    :class:`engines.build.BuildSettings` it was built with: its ``data``, ``parity_images``, ``threads``, ``batch``)."""
    if settings.data:
        x = network_inputs(data_images(settings.data, settings.parity_images), kind, tile, spec, limit=64)
        source = f"{settings.data} ({settings.parity_images} images)"
    else:
        x = random_inputs(8, spec, tile)
        source = "seeded random tiles (no --data given)"
    reference = reference_engine(weights_dir, threads=settings.threads)
    step = min(settings.batch[2], max(settings.batch[1], 1))
    got = np.concatenate([engine.infer(b) for b in batches(x, step)])
    want = np.concatenate([reference.infer(b) for b in batches(x, step)])
    reference.close()
    return {"against": "torch fp32 cpu", "inputs": int(len(x)), "source": source,
            **compare_outputs(got, want, kind)}
