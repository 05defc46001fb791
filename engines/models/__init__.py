"""Networks built by name from a small registry; each one's config is saved next to its weights.

Segmentation: ``bffn`` is paper 000's network (``engines/models/bffn.py``); ``fcn``, ``unet``, ``deeplabv3plus`` and
``bisenet`` are the baselines it is compared against (``engines/models/baselines.py``).

Multi-label classification: ``gr`` is paper 001's two-stage network (``engines/models/gr.py``); ``resnet50``,
``vgg16`` and ``inceptionv3`` are its baselines (``engines/models/classifiers.py``).
"""
from __future__ import annotations

from typing import Any

SEGMENTATION_MODELS = ("bffn", "fcn", "unet", "deeplabv3plus", "bisenet")
CLASSIFICATION_MODELS = ("gr", "resnet50", "vgg16", "inceptionv3")
MODEL_NAMES = SEGMENTATION_MODELS + CLASSIFICATION_MODELS


def _check_arch(name: str, config: dict[str, Any]) -> None:
    arch = config.setdefault("arch", name)
    if arch != name:
        raise ValueError(f"model {name!r} was given a config for arch {arch!r}; they must agree")


def build_model(name: str, config: dict[str, Any] | None = None):
    """Build an untrained network by registry name with its config dict (as saved in ``config.json``).

    For a baseline the dict may omit ``arch``; it is taken from ``name`` (and must agree with it if given)."""
    config = dict(config or {})
    if name == "bffn":
        from engines.models.bffn import BFFN, BFFNConfig

        return BFFN(BFFNConfig(**config))
    if name == "gr":
        from engines.models.gr import GR, GRConfig

        return GR(GRConfig(**config))
    if name in SEGMENTATION_MODELS:
        from engines.models.baselines import BaselineConfig, build_baseline

        _check_arch(name, config)
        return build_baseline(BaselineConfig(**config))
    if name in CLASSIFICATION_MODELS:
        from engines.models.classifiers import ClassifierConfig, build_classifier

        _check_arch(name, config)
        return build_classifier(ClassifierConfig(**config))
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
