"""Networks built by name from a small registry; each one's config is saved next to its weights.

``bffn`` is the paper's network (``engines/models/bffn.py``); ``fcn``, ``unet``, ``deeplabv3plus`` and ``bisenet``
are the baselines it is compared against (``engines/models/baselines.py``).
"""
from __future__ import annotations

from typing import Any

MODEL_NAMES = ("bffn", "fcn", "unet", "deeplabv3plus", "bisenet")
SEGMENTATION_MODELS = MODEL_NAMES


def build_model(name: str, config: dict[str, Any] | None = None):
    """Build an untrained network by registry name with its config dict (as saved in ``config.json``).

    For a baseline the dict may omit ``arch``; it is taken from ``name`` (and must agree with it if given)."""
    config = dict(config or {})
    if name == "bffn":
        from engines.models.bffn import BFFN, BFFNConfig

        return BFFN(BFFNConfig(**config))
    if name in MODEL_NAMES:
        from engines.models.baselines import BaselineConfig, build_baseline

        arch = config.setdefault("arch", name)
        if arch != name:
            raise ValueError(f"model {name!r} was given a config for arch {arch!r}; they must agree")
        return build_baseline(BaselineConfig(**config))
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
