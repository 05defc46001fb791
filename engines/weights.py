"""Saving and loading trained weights without pickle: ``model.safetensors`` plus ``config.json`` in one folder.

Shipped weights live in ``engines/weights/<name>/`` and are found by name (``bffn-magnetic-tile``); any other
folder is found by path.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.errors import EnginesError
from engines.models import build_model
from inspection_core.hashing import file_sha256
from inspection_core.preprocess import InputSpec

SHIPPED = Path(__file__).parent / "weights"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class WeightsError(EnginesError):
    """Weights are missing, incomplete or do not fit the network they name."""


@dataclass(frozen=True)
class WeightsBundle:
    """A weights folder: where it is, the network's registry name and config, how inputs are prepared, the tile
    size it was trained on, and the training record."""

    path: Path
    model: str
    model_config: dict[str, Any]
    input: dict[str, Any]
    tile: int
    info: dict[str, Any]

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS_FILE

    def sha256(self) -> str:
        return file_sha256(self.weights_file)

    def input_spec(self):
        return InputSpec(**self.input)

    def judging_rule(self) -> dict[str, Any] | None:
        """The decision rule ``engines accept`` learned for these weights and wrote beside them (``threshold``,
        ``min_area_px``, ``overlap`` and where it was learned), or ``None``."""
        config = json.loads((self.path / CONFIG_FILE).read_text())
        rule = config.get(JUDGING_KEY)
        return dict(rule) if isinstance(rule, dict) else None


#: config.json's key for the rule learned by `engines accept` (issue 27: the rule travels with the weights).
JUDGING_KEY = "judging"


def write_judging_rule(bundle: WeightsBundle, rule: dict[str, Any]) -> Path:
    """Write ``rule`` into the weights' ``config.json`` (key :data:`JUDGING_KEY`), replacing the file atomically;
    the weights file is untouched, so engines built from them stay valid."""
    path = bundle.path / CONFIG_FILE
    config = json.loads(path.read_text())
    config[JUDGING_KEY] = rule
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(config, indent=2) + "\n")
    temporary.replace(path)
    return path


def resolve_weights(name_or_path: str | Path) -> WeightsBundle:
    """Find a weights folder by shipped name or path (an engine folder stands for the weights it carries) and
    read its config."""
    path = Path(name_or_path)
    if (path / "manifest.json").exists() and (path / "weights" / CONFIG_FILE).exists():
        path = path / "weights"  # a built engine folder carries the weights it was built from
    if not (path / CONFIG_FILE).exists() and (SHIPPED / str(name_or_path) / CONFIG_FILE).exists():
        path = SHIPPED / str(name_or_path)
    if not (path / CONFIG_FILE).exists():
        shipped = sorted(p.name for p in SHIPPED.iterdir() if (p / CONFIG_FILE).exists()) if SHIPPED.is_dir() else []
        raise WeightsError(
            f"no weights at {name_or_path!s}: expected a folder with {CONFIG_FILE} and {WEIGHTS_FILE} "
            f"(shipped names: {', '.join(shipped) or 'none'}; train one with `engines train`)"
        )
    if not (path / WEIGHTS_FILE).exists():
        raise WeightsError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}; copy it from the training run folder")
    config = json.loads((path / CONFIG_FILE).read_text())
    try:
        return WeightsBundle(path, config["model"], config.get("model_config", {}), config.get("input", {}),
                             int(config["tile"]), config.get("training", {}))
    except KeyError as exc:
        raise WeightsError(f"{path / CONFIG_FILE} lacks the key {exc}; it was not written by `engines train`") from exc


def save_weights(model, out: Path, model_name: str, model_config: dict, input_spec: dict, tile: int,
                 training: dict, half: bool = True) -> Path:
    """Write ``model.safetensors`` (fp16 unless ``half`` is False; the auxiliary heads are kept so training can
    resume) and ``config.json``."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    config = {"model": model_name, "model_config": model_config, "input": input_spec, "tile": tile,
              "training": training, "torch": torch.__version__}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_model(bundle: WeightsBundle):
    """The network in eval mode on the CPU, in float32, with its weights loaded (no pickle involved)."""
    from safetensors.torch import load_file

    model = build_model(bundle.model, bundle.model_config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(bundle.weights_file)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{bundle.weights_file} does not fit {bundle.model} with its config: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
