"""GR (paper 001): shapes in both relation modes, batch (in)dependence, the multi-label SupCon loss of Eq. (2)
against a loop reference, graph initialisation and GCN normalisation, ablation switches, a two-phase overfit,
weights round trip, ONNX parity, and the classification baselines."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.data.multilabel import cooccurrence
from engines.models import CLASSIFICATION_MODELS, MODEL_NAMES, SEGMENTATION_MODELS, build_model
from engines.models.gr import GR, GRConfig, compute_reference_bank, phase2_loss, supcon_loss
from engines.export import export_onnx
from engines.weights import load_model, resolve_weights, save_weights
from inspection_core.preprocess import InputSpec

SMALL = {"backbone": "resnet18", "num_classes": 3, "label_dim": 32, "proj_dim": 32, "in_channels": 1}
SIDE = 64


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    torch.manual_seed(0)


def small_model(**overrides) -> GR:
    torch.manual_seed(0)
    return GR(GRConfig(**{**SMALL, **overrides}))


@pytest.fixture(scope="module")
def banked():
    """A small GR in eval mode with a co-occurrence graph and a reference bank of 5 'training' images."""
    torch.manual_seed(0)
    model = GR(GRConfig(**SMALL))
    model.init_graph(np.array([[5, 2, 0], [2, 4, 1], [0, 1, 3]]))
    with torch.no_grad():  # make the relation branch weigh in, so batch effects are far above float noise
        model.gr.w_rn.weight.mul_(10.0)
    model.set_reference_bank(compute_reference_bank(model, torch.randn(5, 1, SIDE, SIDE)))
    return model.eval()


# ------------------------------------------------------------------------------------------------------- shapes


def test_config_defaults_follow_the_paper_and_round_trip():
    cfg = GRConfig()
    assert (cfg.backbone, cfg.label_dim, cfg.tau, cfg.alpha, cfg.use_gr, cfg.cosine) == ("resnet50", 512, 0.1, 0.4,
                                                                                          True, True)
    assert GRConfig(**cfg.to_dict()) == cfg
    small = GRConfig(**SMALL)
    assert build_model("gr", small.to_dict()).config == small


@pytest.mark.parametrize("bad, match", [
    ({"backbone": "vgg16"}, "backbone"), ({"num_classes": 0}, "num_classes"), ({"label_dim": 1.5}, "label_dim"),
    ({"tau": 0}, "tau"), ({"alpha": -1}, "alpha"), ({"use_gr": 1}, "use_gr"), ({"gr_dim": 0}, "gr_dim"),
])
def test_bad_config_names_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        GRConfig(**bad)


def test_train_and_eval_shapes_in_both_relation_modes():
    model = small_model().train()
    x = torch.randn(4, 1, SIDE, SIDE)
    out = model(x)
    assert out["logits1"].shape == out["logits2"].shape == (4, 3)
    assert out["features"].shape == (4, 3, 32)
    bank = out["features"].detach()[:2]
    banked_out = model(x, reference=bank)
    assert banked_out["logits2"].shape == (4, 3)
    (phase2_loss(out, torch.ones(4, 3)) + banked_out["logits2"].mean()).backward()
    assert model.gr.edges.grad is not None and model.gr.nodes.grad is not None and model.gr.proj.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 3)
        assert model(x, reference=bank).shape == (4, 3)
        assert model(x, reference=bank.flatten(1)).shape == (4, 3)


def test_resnet50_paper_config_forward():
    model = build_model("gr", {"num_classes": 4}).eval()  # ResNet-50, d = 512, RGB stem
    assert model.category_pooling.in_features == 2048 and model.category_pooling.out_features == 4 * 512
    with torch.no_grad():
        out = model(torch.randn(2, 3, SIDE, SIDE))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_reference_bank_scores_do_not_depend_on_the_batch(banked):
    x = torch.randn(4, 1, SIDE, SIDE)
    others = torch.randn(3, 1, SIDE, SIDE)
    bank = banked.reference_bank
    assert bank.shape == (5, 3 * 32)
    with torch.no_grad():
        alone = torch.cat([banked(x[i:i + 1], reference=bank) for i in range(4)])
        together = banked(x, reference=bank)
        mixed = banked(torch.cat([others, x.flip(0)]), reference=bank)[3:].flip(0)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=0)


def test_batch_mode_scores_change_with_the_batch(banked):
    x = torch.randn(4, 1, SIDE, SIDE)
    with torch.no_grad():
        alone = banked(x[:1])
        in_batch = banked(x)[:1]
        in_other_batch = banked(torch.cat([x[:1], torch.randn(3, 1, SIDE, SIDE)]))[:1]
    assert (alone - in_batch).abs().max() > 1e-3, "image-wise relations must make scores depend on the batch"
    assert (in_batch - in_other_batch).abs().max() > 1e-3


def test_empty_bank_equals_scoring_alone_in_batch_mode(banked):
    x = torch.randn(1, 1, SIDE, SIDE)
    with torch.no_grad():
        torch.testing.assert_close(banked(x, reference=torch.zeros(0, 96)), banked(x), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------ SupCon


def supcon_reference(features: torch.Tensor, labels: torch.Tensor, tau: float, cosine: bool = True) -> float:
    """Eq. (2) written out with loops over A_I, A_P(i, j) and A_D(i, j)."""
    b, c, _ = features.shape
    active = [(i, j) for i in range(b) for j in range(c) if labels[i, j] == 1]

    def dist(u, v):
        u, v = features[u].double(), features[v].double()
        return float(torch.nn.functional.cosine_similarity(u, v, dim=0)) if cosine else float(u @ v)

    total = 0.0
    for anchor in active:
        i, j = anchor
        a_d = [a for a in active if a != anchor]
        a_p = [p for p in a_d if p[1] == j]
        if not a_p:
            continue
        denominator = sum(math.exp(dist(anchor, a) / tau) for a in a_d)
        total += -sum(math.log(math.exp(dist(anchor, p) / tau) / denominator) for p in a_p) / len(a_p)
    return total / len(active)


@pytest.mark.parametrize("cosine", [True, False])
def test_supcon_matches_the_loop_reference(cosine):
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(6, 4, 8, generator=gen) * (1.0 if cosine else 0.3)
    labels = (torch.rand(6, 4, generator=gen) < 0.5).float()
    labels[5] = 0  # a defect-free image
    labels[0, 3], labels[1:, 3] = 1, 0  # class 3 in one image only: an anchor without positives
    got = supcon_loss(features, labels, tau=0.1, cosine=cosine)
    assert got.item() == pytest.approx(supcon_reference(features, labels, 0.1, cosine), rel=1e-4)


def _clustered(gen: torch.Generator, b: int = 8, c: int = 3, d: int = 16):
    labels = (torch.rand(b, c, generator=gen) < 0.6).float()
    labels[: c, :] = torch.eye(c)  # every class present at least twice
    labels[c: 2 * c, :] = torch.eye(c)
    prototypes = torch.randn(c, d, generator=gen) * 3
    features = prototypes[None].expand(b, c, d) + 0.2 * torch.randn(b, c, d, generator=gen)
    return features, labels


def test_supcon_is_lower_for_clustered_features():
    gen = torch.Generator().manual_seed(0)
    features, labels = _clustered(gen)
    clustered = supcon_loss(features, labels, 0.1)
    flat = features.reshape(-1, features.shape[-1])
    shuffled = flat[torch.randperm(flat.shape[0], generator=gen)].reshape(features.shape)
    assert clustered < 0.5 * supcon_loss(shuffled, labels, 0.1)


def test_supcon_is_invariant_to_batch_order_and_ignores_unlabelled_images():
    gen = torch.Generator().manual_seed(1)
    features, labels = _clustered(gen)
    base = supcon_loss(features, labels, 0.1)
    perm = torch.randperm(features.shape[0], generator=gen)
    torch.testing.assert_close(supcon_loss(features[perm], labels[perm], 0.1), base)
    extra = torch.cat([features, torch.randn(2, 3, 16, generator=gen)])
    torch.testing.assert_close(supcon_loss(extra, torch.cat([labels, torch.zeros(2, 3)]), 0.1), base)


def test_supcon_without_active_labels_is_zero_with_a_gradient():
    features = torch.randn(4, 3, 8, requires_grad=True)
    loss = supcon_loss(features, torch.zeros(4, 3), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(features.grad, torch.zeros_like(features))
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(features, torch.zeros(4, 2), 0.1)


# ------------------------------------------------------------------------------------------------------- graph


def test_graph_init_is_row_normalised_learnable_and_gcn_normalised():
    model = small_model()
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]], np.float32)
    counts = cooccurrence(labels)
    np.testing.assert_array_equal(counts, labels.T @ labels)
    model.init_graph(counts)
    edges = model.gr.edges
    assert isinstance(edges, torch.nn.Parameter) and edges.requires_grad
    assert any(p is edges for p in model.parameters())
    np.testing.assert_allclose(edges.detach().numpy(), counts / counts.sum(1, keepdims=True), rtol=1e-6)
    torch.testing.assert_close(edges.sum(1), torch.ones(3))
    with torch.no_grad():  # as if learned: rows no longer sum to one, so D is not the identity
        edges.mul_(torch.tensor([[1.0], [2.0], [0.5]])).add_(0.05)
    e = edges.detach().double().numpy()
    d_inv_sqrt = np.diag(1.0 / np.sqrt(e.sum(axis=1)))
    np.testing.assert_allclose(model.gr.normalized_edges().detach().numpy(), d_inv_sqrt @ e @ d_inv_sqrt, rtol=1e-5)


def test_graph_init_handles_absent_classes_and_refuses_bad_counts():
    model = small_model()
    model.init_graph(np.array([[3, 0, 0], [0, 0, 0], [0, 0, 2]]))
    torch.testing.assert_close(model.gr.edges.detach(), torch.eye(3))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        model.init_graph(np.eye(4))
    with pytest.raises(ValueError, match="non-negative"):
        model.init_graph(-np.eye(3))


def test_nodes_are_initialised_from_the_first_classifier():
    model = small_model()
    with torch.no_grad():
        model.classifier1.weight.add_(1.0)
    model.init_nodes()
    torch.testing.assert_close(model.gr.nodes.detach(), model.classifier1.weight.detach())
    assert model.gr.nodes.data_ptr() != model.classifier1.weight.data_ptr()


# ---------------------------------------------------------------------------------------------------- ablations


def test_without_gr_module_there_are_no_gr_parameters_and_first_classifier_scores():
    model = small_model(use_gr=False)
    full = small_model()
    assert model.gr is None and model.gr_parameters() == []
    assert not any(name.startswith("gr.") for name, _ in model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
    x = torch.randn(2, 1, SIDE, SIDE)
    out = model.train()(x)
    assert out["logits2"] is None
    phase2_loss(out, torch.ones(2, 3)).backward()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.classifier1(model.label_features(x)))
        torch.testing.assert_close(model(x[:1]), model(x)[:1], atol=1e-5, rtol=0)  # no batch dependence
    with pytest.raises(ValueError, match="use_gr=False"):
        model.init_graph(np.eye(3))


def test_cosine_and_linear_first_classifier():
    cosine = small_model().classifier1
    linear = small_model(cosine=False).classifier1
    assert hasattr(cosine, "scale") and not hasattr(cosine, "bias") and cosine.scale.requires_grad
    assert hasattr(linear, "bias") and not hasattr(linear, "scale")
    x = torch.randn(5, 3, 32)
    with torch.no_grad():
        torch.testing.assert_close(cosine(3.0 * x), cosine(x))  # scale-invariant: a cosine
        expected = 10.0 * torch.nn.functional.cosine_similarity(x, cosine.weight[None], dim=-1)
        torch.testing.assert_close(cosine(x), expected)
        torch.testing.assert_close(linear(x), (x * linear.weight).sum(-1) + linear.bias)
        torch.testing.assert_close(linear(3.0 * x) - linear.bias, 3.0 * (linear(x) - linear.bias))


# ------------------------------------------------------------------------------------------------------ overfit


def _synthetic_batch(side: int = SIDE):
    """8 images with 3 labels: 0 = horizontal bar, 1 = vertical bar, 2 = bright square; all combinations."""
    gen = torch.Generator().manual_seed(5)
    labels = torch.tensor([[(k >> j) & 1 for j in range(3)] for k in range(8)], dtype=torch.float32)
    x = 0.1 * torch.randn(8, 1, side, side, generator=gen)
    for i, row in enumerate(labels):
        if row[0]:
            x[i, 0, 10:14, 4:-4] += 2.0
        if row[1]:
            x[i, 0, 4:-4, 40:44] += 2.0
        if row[2]:
            x[i, 0, 44:56, 8:20] -= 2.0
    return x, labels


def test_two_phase_training_overfits_a_tiny_batch():
    model = small_model().train()
    x, y = _synthetic_batch()
    optimizer = torch.optim.Adam(model.fc2_parameters(), lr=1e-3)
    phase1 = []
    for _ in range(20):
        out = model(x)
        loss = model.phase1_loss(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        phase1.append(loss.item())
    assert all(p.grad is None for p in model.gr_parameters()), "phase 1 trains the FC2-module only"
    assert phase1[-1] < 0.7 * phase1[0], f"phase-1 loss went from {phase1[0]:.3f} to {phase1[-1]:.3f}"
    assert torch.equal((out["logits1"] > 0).float(), y), "the first classifier must fit the tiny batch"
    model.init_nodes()
    model.init_graph(cooccurrence(y.numpy()))
    start = {name: p.detach().clone() for name, p in model.gr.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    phase2 = []
    for _ in range(20):
        out = model(x)
        loss = model.phase2_loss(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        phase2.append(loss.item())
    assert phase2[-1] < 0.5 * phase2[0], f"phase-2 loss went from {phase2[0]:.3f} to {phase2[-1]:.3f}"
    with torch.no_grad():
        final = model(x)["logits2"]
    assert torch.equal((final > 0).float(), y), "the second classifier must fit the tiny batch"
    for name, p in model.gr.named_parameters():  # nodes, edges, Proj, w_RN and Cls2 all learn in phase 2
        assert not torch.equal(p.detach(), start[name]), f"gr.{name} did not change in phase 2"


# ------------------------------------------------------------------------------------------- weights and ONNX


def test_weights_round_trip_keeps_graph_and_bank(banked, tmp_path):

    path = save_weights(banked, tmp_path / "gr", "gr", banked.config.to_dict(), InputSpec(channels=1).to_dict(), SIDE,
                        {"note": "untrained"}, half=False)
    loaded = load_model(resolve_weights(path))
    assert loaded.config == banked.config and not loaded.training
    assert torch.equal(loaded.reference_bank, banked.reference_bank)
    assert torch.equal(loaded.gr.edges, banked.gr.edges)
    x = torch.randn(3, 1, SIDE, SIDE)
    with torch.no_grad():
        assert torch.equal(loaded(x), banked(x))
        assert torch.equal(loaded(x, reference=loaded.reference_bank), banked(x, reference=banked.reference_bank))


@pytest.mark.parametrize("use_bank", [False, True])
def test_onnx_export_matches_onnxruntime(banked, use_bank, tmp_path):
    import onnxruntime as ort

    weights = save_weights(banked, tmp_path / "gr", "gr", banked.config.to_dict(), InputSpec(channels=1).to_dict(),
                           SIDE, {"note": "untrained"}, half=False)
    path = export_onnx(resolve_weights(weights), tmp_path / "gr.onnx", mode="bank" if use_bank else "batch")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    x = torch.randn(3, 1, SIDE, SIDE)
    for batch in (x[:1], x):
        with torch.no_grad():
            expected = torch.sigmoid(banked(batch, reference=banked.reference_bank if use_bank else None)).numpy()
        (got,) = session.run(None, {"tiles": batch.numpy()})
        assert got.shape == (len(batch), 3)
        np.testing.assert_allclose(got, expected, atol=1e-3)
    if use_bank:  # one tile alone scores as within the batch, in ONNX Runtime too
        (alone,) = session.run(None, {"tiles": x[:1].numpy()})
        (together,) = session.run(None, {"tiles": x.numpy()})
        np.testing.assert_allclose(alone, together[:1], atol=1e-5)


def test_bank_export_needs_a_bank(tmp_path):
    model = small_model()
    weights = save_weights(model, tmp_path / "gr", "gr", model.config.to_dict(), InputSpec(channels=1).to_dict(), SIDE,
                           {"note": "untrained"}, half=False)
    with pytest.raises(ValueError, match="reference bank"):
        export_onnx(resolve_weights(weights), tmp_path / "x.onnx", mode="bank")


# ------------------------------------------------------------------------------------------ registry, baselines


def test_registry_has_classification_models():
    assert CLASSIFICATION_MODELS == ("gr", "resnet50", "vgg16", "inceptionv3")
    assert MODEL_NAMES == SEGMENTATION_MODELS + CLASSIFICATION_MODELS
    with pytest.raises(ValueError, match="must agree"):
        build_model("vgg16", {"arch": "resnet50"})


@pytest.mark.parametrize("name, side", [("resnet50", 32), ("vgg16", 32), ("inceptionv3", 75)])
def test_classification_baselines_give_multilabel_logits(name, side):
    from engines.models.classifiers import ClassifierConfig

    model = build_model(name, {"num_classes": 3, "in_channels": 1}).eval()
    assert model.config == ClassifierConfig(arch=name, num_classes=3, in_channels=1)
    with torch.no_grad():
        out = model(torch.randn(1, 1, side, side))
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    if name == "inceptionv3":
        with pytest.raises(ValueError, match="at least 75"):
            model(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("bad, match", [({"arch": "alexnet"}, "arch"), ({"arch": "vgg16", "num_classes": 0},
                                                                        "num_classes")])
def test_bad_classifier_config(bad, match):
    from engines.models.classifiers import ClassifierConfig

    with pytest.raises(ValueError, match=match):
        ClassifierConfig(**bad)
