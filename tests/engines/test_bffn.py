"""BFFN: shapes, training outputs, ablation switches, and the relative position encoding."""
from __future__ import annotations

import pytest
import torch

from engines.models import build_model
from engines.models.bffn import BFFN, BFFNConfig, RelativeMHSA


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


@pytest.mark.parametrize("shape", [(128, 128), (64, 96), (160, 128)])
def test_eval_output_is_full_size_logits(shape):
    model = BFFN().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *shape))
    assert out.shape == (2, 2, *shape)
    assert torch.isfinite(out).all()


def test_training_returns_principal_and_two_auxiliary_outputs():
    model = BFFN().train()
    outputs = model(torch.randn(2, 1, 128, 128))
    assert isinstance(outputs, tuple) and len(outputs) == 3
    assert all(o.shape == (2, 2, 128, 128) for o in outputs)
    sum(o.mean() for o in outputs).backward()
    assert model.aux3.body[1].weight.grad is not None and model.aux4.body[1].weight.grad is not None


@pytest.mark.parametrize("config", [
    {"use_sam": False}, {"fusion": "sum"}, {"fusion": "concat"}, {"use_sam": False, "fusion": "sum"},
    {"in_channels": 3, "num_classes": 7},
])
def test_ablation_switches_build_and_run(config):
    model = build_model("bffn", config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, config.get("in_channels", 1), 128, 128))
    assert out.shape == (1, config.get("num_classes", 2), 128, 128)
    assert (not config.get("use_sam", True)) == isinstance(model.sam3, torch.nn.Identity)


def test_fewer_parameters_without_sam_and_bffm():
    full = sum(p.numel() for p in BFFN().parameters())
    bare = sum(p.numel() for p in BFFN(BFFNConfig(use_sam=False, fusion="sum")).parameters())
    assert bare < full


@pytest.mark.parametrize("bad", [{"backbone": "vgg"}, {"fusion": "max"}, {"embed_dim": 63}])
def test_bad_config_names_the_problem(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        BFFNConfig(**bad)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="bffn"):
        build_model("yolo")


def test_relative_position_encoding_makes_attention_position_aware():
    """Content-only attention is permutation-equivariant; with the relative tables it must not be."""
    attn = RelativeMHSA(dim=16, heads=4, dropout=0.0, max_rel_pos=8).eval()
    x = torch.randn(1, 16, 4, 4)
    perm = torch.randperm(16)
    shuffled = x.flatten(2)[:, :, perm].reshape(1, 16, 4, 4)
    with torch.no_grad():
        out = attn(x).flatten(2)[:, :, perm]
        out_shuffled = attn(shuffled).flatten(2)
        assert not torch.allclose(out, out_shuffled, atol=1e-5)
        attn.rel_h.zero_()
        attn.rel_w.zero_()
        assert torch.allclose(attn(x).flatten(2)[:, :, perm], attn(shuffled).flatten(2), atol=1e-5)


def test_feature_map_beyond_relative_range_is_refused_with_a_hint():
    attn = RelativeMHSA(dim=16, heads=4, dropout=0.0, max_rel_pos=4)
    with pytest.raises(ValueError, match="max_rel_pos"):
        attn(torch.randn(1, 16, 5, 5))
