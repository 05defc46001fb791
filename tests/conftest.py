"""Fixtures shared by every test package."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
REPO = Path(__file__).resolve().parents[1]

try:  # property tests: repeatable by default (CI), free exploration with HYPOTHESIS_PROFILE=explore
    from hypothesis import settings

    settings.register_profile("repeatable", derandomize=True)
    settings.register_profile("explore", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
except ImportError:  # pragma: no cover - hypothesis comes with the dev extra
    pass
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _station_cache(tmp_path_factory):
    """Exported ONNX files go to a per-session folder, never the user's cache."""
    os.environ["STATION_CACHE"] = str(tmp_path_factory.mktemp("station-cache"))


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (restored afterwards): on a shared 2-core machine two threads fighting
    another job are many times slower than one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def magnetic_tile() -> Path:
    path = SHARED_DATA / "magnetic-tile"
    if not path.is_dir():
        pytest.skip(f"needs the real magnetic-tile data at {path} (../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def untrained_bffn(tmp_path_factory) -> Path:
    """An untrained BFFN saved like a training run (weights + config), for export and parity tests."""
    import torch

    from engines.models.bffn import BFFN, BFFNConfig
    from inspection_core.preprocess import InputSpec
    from engines.weights import save_weights

    torch.manual_seed(0)
    model = BFFN(BFFNConfig()).eval()
    out = tmp_path_factory.mktemp("untrained-bffn")
    save_weights(model, out, "bffn", model.config.to_dict(), InputSpec().to_dict(), 128, {"note": "untrained"},
                 half=False)
    return out


TINY_GR_CLASSES = ["crack", "blowhole", "fray"]
TINY_GR_SIZE = 64


def save_tiny_gr(out: Path, classes, size: int = 64, seed: int = 0) -> Path:
    """An untrained tiny GR (resnet18, 16-d label features, grey input of ``size`` px) with a reference bank of 5
    random entries, saved like a training run with ``classes`` as its class list."""
    import torch

    from engines.models.gr import GR, GRConfig
    from inspection_core.preprocess import InputSpec
    from engines.weights import save_weights

    torch.manual_seed(seed)
    model = GR(GRConfig(num_classes=len(classes), in_channels=1, backbone="resnet18", label_dim=16,
                        proj_dim=16)).eval()
    model.set_reference_bank(torch.randn(5, len(classes), 16))
    save_weights(model, out, "gr", model.config.to_dict(), InputSpec(channels=1).to_dict(), size,
                 {"classes": list(classes)}, half=False)
    return out


@pytest.fixture(scope="session")
def tiny_gr(tmp_path_factory) -> Path:
    return save_tiny_gr(tmp_path_factory.mktemp("tiny-gr"), TINY_GR_CLASSES, TINY_GR_SIZE)
