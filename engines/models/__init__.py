"""Networks built by name from a small registry; each one's config is saved next to its weights."""
from __future__ import annotations

from typing import Any

MODEL_NAMES = ("bffn",)


def build_model(name: str, config: dict[str, Any] | None = None):
    """Build an untrained network by registry name with its config dict (as saved in ``config.json``)."""
    if name == "bffn":
        from engines.models.bffn import BFFN, BFFNConfig

        return BFFN(BFFNConfig(**(config or {})))
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
