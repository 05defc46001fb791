"""Baselines (FCN, U-Net, DeepLabV3+, BiSeNet): shapes, training outputs, weights round trip, a short overfit,
and config validation (ONNX export and parity: test_registry.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engines.models import CLASSIFICATION_MODELS, MODEL_NAMES, SEGMENTATION_MODELS, build_model
from engines.models.baselines import ARCHS, BaselineConfig
from inspection_core.preprocess import InputSpec

AUX_OUTPUTS = {"fcn": 1, "unet": 0, "deeplabv3plus": 0, "bisenet": 2}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each baseline, untrained, saved like a training run (fp32), keyed by name: (model in eval mode, folder)."""
    from engines.weights import save_weights

    out = {}
    for name in ARCHS:
        torch.manual_seed(0)
        model = build_model(name, {"in_channels": 1}).eval()
        path = save_weights(model, tmp_path_factory.mktemp(name), name, model.config.to_dict(), InputSpec().to_dict(),
                            128, {"note": "untrained"}, half=False)
        out[name] = (model, path)
    return out


def test_registry_lists_every_baseline():
    assert SEGMENTATION_MODELS == ("bffn", "fcn", "unet", "deeplabv3plus", "bisenet")
    assert MODEL_NAMES == SEGMENTATION_MODELS + CLASSIFICATION_MODELS
    assert set(ARCHS) < set(MODEL_NAMES)


@pytest.mark.parametrize("name", ARCHS)
def test_eval_output_is_full_size_logits(name):
    model = build_model(name, {}).eval()
    assert model.config == BaselineConfig(arch=name)
    with torch.no_grad():
        for shape in [(2, 1, 128, 128), (1, 1, 96, 160)]:
            out = model(torch.randn(*shape))
            assert isinstance(out, torch.Tensor)
            assert out.shape == (shape[0], 2, *shape[2:])
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ARCHS)
def test_training_returns_principal_then_auxiliary_outputs(name):
    model = build_model(name, {"num_classes": 3}).train()
    outputs = model(torch.randn(2, 1, 128, 128))
    principal, *aux = outputs if isinstance(outputs, tuple) else (outputs,)
    assert principal.shape == (2, 3, 128, 128)
    assert len(aux) == AUX_OUTPUTS[name]
    assert all(a.shape == principal.shape for a in aux)
    sum(o.mean() for o in (principal, *aux)).backward()


@pytest.mark.parametrize("name", ARCHS)
def test_weights_round_trip_gives_identical_outputs(saved, name):
    from engines.weights import load_model, resolve_weights

    model, path = saved[name]
    bundle = resolve_weights(path)
    assert bundle.model == name and bundle.model_config["arch"] == name
    loaded = load_model(bundle)
    assert not loaded.training and loaded.config == model.config
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


# ONNX export with a dynamic batch and its parity with torch: test_registry.py, for every registered network.


def _square_defect_batch(n: int = 4, side: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, side, side, generator=gen) * 0.1
    y = torch.zeros(n, side, side, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(4, side - 16, (2,), generator=gen).tolist()
        x[i, 0, r:r + 12, c:c + 12] += 2.0
        y[i, r:r + 12, c:c + 12] = 1
    return x, y


def test_bisenet_overfits_one_batch():
    model = build_model("bisenet", {}).train()
    x, y = _square_defect_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        principal, *aux = model(x)
        loss = F.cross_entropy(principal, y)
        total = loss + sum(F.cross_entropy(a, y) for a in aux)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"principal loss went from {losses[0]:.3f} to {losses[-1]:.3f}"


@pytest.mark.parametrize("bad, match", [
    ({"arch": "segformer"}, "arch 'segformer' is not one of"),
    ({"arch": "unet", "backbone": "vgg16"}, "backbone 'vgg16' is not one of .*resnet18"),
    ({"arch": "bisenet", "num_classes": 0}, "num_classes"),
    ({"arch": "fcn", "in_channels": "1"}, "in_channels"),
])
def test_bad_config_names_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        BaselineConfig(**bad)


def test_build_model_refuses_bad_baseline_configs():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("deeplabv3plus", {"backbone": "mobilenet_v2"})
    with pytest.raises(ValueError, match="must agree"):
        build_model("unet", {"arch": "fcn"})
    with pytest.raises(ValueError, match="bisenet"):
        build_model("pspnet")
