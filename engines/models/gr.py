"""GR: the two-stage multi-label defect classifier of paper 001 (Zhou et al., "Graph reasoning module ... mobile
screen defect inspection", FITEE 2023): a feature-clustering-based classification module (FC2-module) with a
graph reasoning module (GR-module) stacked on it.

Flow (paper Fig. 3, Eqs. (1)-(7))::

    I ─ ResNet ─ GAP ─ category pooling (linear → C×d) ─ X (B, C, d) ─ Cls1 (cosine) ─ S (B, C)
                                                          │                              │
                     nodes N (C, d) ─ Ê N = N' ───────────┼──────────────┐               │
                     edges E (C, C) ─ Ê = D^-1/2 E D^-1/2 │              │               │
                                                          Proj ─ Z ─ R = softmax(Z Zᵀ)   │
                                                          │              R' = R · softmax(S)
                                                          │              Fa(R' N' w_RN) ─┐
                                                          └──────────── X' = concat(X, ·) ─ Cls2 (linear) ─ S'

Choices the paper leaves open are written next to the code that makes them; the main ones:

* **Input channels.** ``in_channels=3`` by default (the paper's RGB ResNet stem); grey tiles are replicated to
  three channels by :func:`inspection_core.preprocess.prepare_image` with ``InputSpec(channels=3)``. ``in_channels=1``
  replaces the stem convolution instead (as BFFN does).
* **Cosine classifier scale.** Eq. (1)'s first classifier is "a cosine similarity function between feature vectors
  and weight vectors"; a cosine lies in [-1, 1], too narrow for a sigmoid/BCE, so it is multiplied by a *learnable*
  scale initialised to ``cosine_scale`` = 10 (Gidaris & Komodakis 2018, whom the paper cites for the cosine
  classifier, learn this scale). No bias. With ``cosine=False`` (Table 4's "linear combination space") it is a
  conventional linear classifier per label (``w_c·X_c + b_c``) and the contrastive distance is the dot product.
* **Shapes of the GR-module.** ``R' = R·softmax(S)`` is (B, B)·(B, C) = (B, C) with the softmax over the categories
  ("normalize the scores S over all categories"); ``R'N'`` is (B, C)·(C, d) = (B, d); ``w_RN`` is a (d, gr_dim)
  matrix (bias-free linear layer, ``gr_dim`` = d unless set) and ``Fa`` is LeakyReLU(0.2) (the paper names neither;
  ML-GCN's activation); ``X' = concat(flatten(X), Fa(R'N'w_RN))`` has C·d + gr_dim features; the second classifier
  is ``Linear(C·d + gr_dim, C, bias=False)`` ("a single linear layer without bias").
* **Proj.** "a single linear layer" that "can condense channels": ``Linear(C·d, proj_dim)`` with bias,
  ``proj_dim`` = 512 (not given). Eq. (5) is a plain dot product — no 1/sqrt(dim) temperature — and is kept so.
* **Edges.** ``M`` counts label pairs over the training images *including the pair (i, i)*, i.e. ``M = YᵀY``, whose
  diagonal is the number of images with label i (a self-loop; without it a class that never co-occurs, e.g. every
  magnetic-tile class, would have a zero row and Eq. (3)'s D^-1/2 would divide by zero). A class that never
  occurs gets an identity row. ``E`` is a learnable parameter (row-normalised only at initialisation); D's
  diagonal is clamped to ≥ 1e-6 so a learned non-positive row sum cannot give NaN. The paper calls G undirected
  but its row normalisation makes E asymmetric; the formula is followed.
* **Nodes.** "Initialize category nodes N of graph G with the weights of the first classifier" (Algorithm 1,
  line 9): ``nodes`` is a separate learnable (C, d) parameter, copied from the first classifier's raw weight
  matrix by :meth:`GR.init_nodes` at the start of phase 2 (and at construction, so an un-pretrained model — the
  "without pre-training" ablation — starts from the random classifier weights). Gradients are not detached
  anywhere: S feeds R' and is trained by both losses in phase 2 ("end-to-end training").
* **Final score.** The paper calls S' = Cls2(X') "the final classification scores"; in eval mode the model returns
  S' logits (N, C) (S when ``use_gr=False``); ``sigmoid`` gives the per-label probabilities, positive above 0.5.
* **Batch dependence.** Eq. (5) relates the images "in the same batch". ``forward(x)`` does exactly that.
  ``forward(x, reference=bank)`` relates each image to itself plus a fixed bank of training label-level features
  (:meth:`GR.set_reference_bank`, :func:`compute_reference_bank`) instead of the other images of its batch:
  ``R_i = softmax([Z_i·Z_i, Z_i·Z_b1, ..., Z_i·Z_bM])`` and ``R'_i = R_i0·softmax(S_i) + Σ_m R_im·softmax(S_bm)``
  with the bank's Z and S recomputed from its features by the current Proj and Cls1. The image itself is kept in
  the softmax because during training it always is (it is part of its own batch); a bank of B−1 images (31 for
  the paper's B = 32) gives the softmax the width it had in training. A patch's scores then depend on that patch
  and the bank only, so a tile can be scored alone, in any batch, deterministically.

Training (Algorithm 1; no CLI here): phase 1 trains the FC2-module with :func:`phase1_loss` (BCE + α·SupCon on
S and X; optimise :meth:`GR.fc2_parameters`); then :meth:`GR.init_nodes` and :meth:`GR.init_graph` with the training
set's co-occurrence counts (:func:`engines.data.multilabel.cooccurrence`); phase 2 trains everything with
:func:`phase2_loss` (mean of both classifiers' BCE). The "without pre-training phase" ablation skips phase 1 (init the
graph, then phase 2 from scratch); "without GR-module" is ``use_gr=False`` (FC2-module only, phase 1 loss);
"linear instead of cosine space" is ``cosine=False``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.errors import InputError
from engines.models.blocks import BACKBONES, resnet_backbone
FEATURES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


@dataclass(frozen=True)
class GRConfig:
    """Everything needed to rebuild the network; saved as JSON beside the weights. The learned graph (nodes,
    edges) and the reference bank are weights, not config."""

    num_classes: int = 4  # the paper's bubble, pinhole, scratch, tin ash
    in_channels: int = 3  # paper: RGB ResNet stem; grey tiles are replicated (InputSpec(channels=3)), or use 1
    backbone: str = "resnet50"  # paper: ResNet-50; resnet18 for CPU work
    label_dim: int = 512  # d, paper: 512
    tau: float = 0.1  # SupCon temperature, paper: 0.1
    alpha: float = 0.4  # weight of SupCon in phase 1 (Eq. 8), paper: 0.4
    use_gr: bool = True  # False: the "without GR-module" ablation (FC2-module only)
    cosine: bool = True  # False: Table 4's "linear combination space" (linear Cls1, dot-product SupCon)
    cosine_scale: float = 10.0  # initial value of the learnable scale of the cosine classifier (not in the paper)
    proj_dim: int = 512  # output width of Proj in Eq. (4) (not in the paper)
    gr_dim: int | None = None  # output width of w_RN in Eq. (7); None = label_dim (not in the paper)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise InputError(f"backbone {self.backbone!r} is not one of {BACKBONES}")
        for field in ("num_classes", "in_channels", "label_dim", "proj_dim"):
            _check_positive_int(field, getattr(self, field))
        if self.gr_dim is not None:
            _check_positive_int("gr_dim", self.gr_dim)
        for field in ("use_gr", "cosine"):
            if not isinstance(getattr(self, field), bool):
                raise InputError(f"{field} must be true or false, got {getattr(self, field)!r}")
        for field, low in (("tau", 0.0), ("cosine_scale", 0.0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
                raise InputError(f"{field} must be a positive number, got {value!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha >= 0:
            raise InputError(f"alpha must be a number >= 0, got {self.alpha!r}")

    @property
    def enhanced_dim(self) -> int:
        return self.gr_dim if self.gr_dim is not None else self.label_dim

    def to_dict(self) -> dict:
        return asdict(self)


def _check_positive_int(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{field} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------------------------- losses


def supcon_loss(label_features: torch.Tensor, labels: torch.Tensor, tau: float = 0.1,
                cosine: bool = True) -> torch.Tensor:
    """The multi-label supervised contrastive loss of Eq. (2).

    ``label_features`` (B, C, d) are the label-level features X_ij of a batch, ``labels`` (B, C) the 0/1 truth Y_ij.

    * A_I = {X_ij : Y_ij = 1}: only the label-level features of labels the image *has* take part, as anchors and
      as contrast; features of absent labels (and all features of defect-free images) are ignored.
    * For the anchor X_ij: A_D(i, j) = A_I \\ {X_ij} (the softmax denominator); positives A_P(i, j) = {X_pj ∈ A_D :
      Y_pj = 1}: the *same category j* of *other* images that have label j. Everything else in A_D is negative,
      including the image's own features of its other labels.
    * dist is the cosine similarity (``cosine=True``; the dot product for the linear-space ablation), divided by τ.
    * L = 1/|A_I| Σ_anchors −1/|A_P| Σ_p log softmax. The paper does not say what an anchor without positives (a
      label present in one image of the batch only) contributes: its inner sum is empty, so it contributes 0 while
      still counting in |A_I| (the formula's normaliser, kept literally). A batch with fewer than two active
      label-level features gives 0 (with a graph, so ``backward`` still works).
    """
    if label_features.dim() != 3:
        raise ValueError(f"label_features must be (B, C, d), got shape {tuple(label_features.shape)}")
    b, c, d = label_features.shape
    if tuple(labels.shape) != (b, c):
        raise ValueError(f"labels must be (B, C) = ({b}, {c}), got shape {tuple(labels.shape)}")
    features = label_features.reshape(b * c, d)
    active = labels.reshape(b * c) > 0.5
    category = torch.arange(c, device=features.device).repeat(b)
    anchors = features[active]
    n = anchors.shape[0]
    if n < 2:
        return label_features.sum() * 0.0
    if cosine:
        anchors = F.normalize(anchors, dim=1)
    logits = anchors @ anchors.t() / tau
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    cat = category[active]
    positive = (cat[:, None] == cat[None, :]) & ~self_mask
    n_positive = positive.sum(dim=1)
    per_anchor = -torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / n_positive.clamp(min=1)
    return per_anchor.sum() / n


def phase1_loss(outputs: dict, labels: torch.Tensor, alpha: float = 0.4, tau: float = 0.1,
                cosine: bool = True) -> torch.Tensor:
    """Eq. (8): L_Pre = L_BCE(S) + α·L_SupCon(X) (node pre-training phase; only the FC2-module learns). Pass the
    model's config values (``GR.phase1_loss`` does)."""
    labels = labels.float()
    bce = F.binary_cross_entropy_with_logits(outputs["logits1"], labels)
    return bce + alpha * supcon_loss(outputs["features"], labels, tau, cosine)


def phase2_loss(outputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """Normal training phase: "the average sum of classification loss L_BCE of the two classifiers". Without the
    GR-module there is one classifier and this is its BCE."""
    labels = labels.float()
    losses = [F.binary_cross_entropy_with_logits(outputs["logits1"], labels)]
    if outputs.get("logits2") is not None:
        losses.append(F.binary_cross_entropy_with_logits(outputs["logits2"], labels))
    return sum(losses) / len(losses)


# --------------------------------------------------------------------------------------------------------- modules


class FirstClassifier(nn.Module):
    """Cls1: per label c, ``scale·cos(X_c, w_c)`` (learnable scale, no bias) or, with ``cosine=False``, the
    conventional ``w_c·X_c + b_c``. Input (B, C, d), output (B, C)."""

    def __init__(self, num_classes: int, dim: int, cosine: bool, scale: float) -> None:
        super().__init__()
        self.cosine = cosine
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's initialisation, row by row
        if cosine:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            bound = dim**-0.5
            self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            return self.scale * (F.normalize(x, dim=-1) * F.normalize(self.weight, dim=-1)).sum(-1)
        return (x * self.weight).sum(-1) + self.bias


class GRModule(nn.Module):
    """The graph reasoning module (Eqs. (3)-(7)) and the second classifier. Holds the category nodes N (C, d),
    the learnable edges E (C, C) and the optional reference bank of label-level features (M, C·d)."""

    def __init__(self, cfg: GRConfig) -> None:
        super().__init__()
        c, d = cfg.num_classes, cfg.label_dim
        self.num_classes, self.dim = c, d
        self.nodes = nn.Parameter(torch.zeros(c, d))
        self.edges = nn.Parameter(torch.eye(c))  # replaced by init_graph(co-occurrence counts)
        self.proj = nn.Linear(c * d, cfg.proj_dim)
        self.w_rn = nn.Linear(d, cfg.enhanced_dim, bias=False)
        self.act = nn.LeakyReLU(0.2)
        self.classifier = nn.Linear(c * d + cfg.enhanced_dim, c, bias=False)
        self.register_buffer("reference_bank", torch.zeros(0, c * d))

    def normalized_edges(self) -> torch.Tensor:
        """Ê = D^-1/2 E D^-1/2 with D_ii = Σ_j E_ij (clamped to ≥ 1e-6)."""
        inv_sqrt = self.edges.sum(dim=1).clamp(min=1e-6).rsqrt()
        return inv_sqrt[:, None] * self.edges * inv_sqrt[None, :]

    def relations(self, z: torch.Tensor, scores: torch.Tensor, bank_z: torch.Tensor | None,
                  bank_scores: torch.Tensor | None) -> torch.Tensor:
        """R' (B, C): Eq. (5) then Eq. (6), over the batch or over {the image itself} ∪ bank."""
        if bank_z is None:
            return torch.softmax(z @ z.t(), dim=1) @ torch.softmax(scores, dim=1)
        logits = torch.cat([(z * z).sum(dim=1, keepdim=True), z @ bank_z.t()], dim=1)  # (B, 1 + M)
        r = torch.softmax(logits, dim=1)
        return r[:, :1] * torch.softmax(scores, dim=1) + r[:, 1:] @ torch.softmax(bank_scores, dim=1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # The bank's row count is data, not architecture: take whatever size the saved weights have.
        saved = state_dict.get(prefix + "reference_bank")
        ref = self.reference_bank
        if saved is not None and saved.dim() == 2 and saved.shape[1] == ref.shape[1]:
            self.reference_bank = torch.zeros(saved.shape, dtype=ref.dtype, device=ref.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor, scores: torch.Tensor, bank_z: torch.Tensor | None = None,
                bank_scores: torch.Tensor | None = None) -> torch.Tensor:
        flat = x.flatten(1)  # (B, C·d)
        nodes = self.normalized_edges() @ self.nodes  # N' (C, d), Eq. (3)
        r = self.relations(self.proj(flat), scores, bank_z, bank_scores)  # R' (B, C), Eqs. (4)-(6)
        enhanced = torch.cat([flat, self.act(self.w_rn(r @ nodes))], dim=1)  # X', Eq. (7)
        return self.classifier(enhanced)  # S'


class GR(nn.Module):
    """The two-stage network. ``forward(x, reference=None)``:

    * training mode: a dict ``{"logits1": S (B, C), "logits2": S' (B, C) or None without the GR-module,
      "features": X (B, C, d)}`` for :func:`phase1_loss` / :func:`phase2_loss`;
    * eval mode: the final logits (B, C) — S' (S without the GR-module); ``sigmoid`` gives probabilities.

    ``reference`` (M, C·d) or (M, C, d), e.g. ``model.reference_bank``, relates each image to the bank (plus itself)
    instead of to the rest of its batch; ignored without the GR-module.
    """

    def __init__(self, config: GRConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or GRConfig()
        net, _ = resnet_backbone(cfg.backbone, cfg.in_channels)
        self.backbone = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                      net.layer1, net.layer2, net.layer3, net.layer4)
        # Category pooling: GAP, then "a linear layer of size C×d".
        self.category_pooling = nn.Linear(FEATURES[cfg.backbone], cfg.num_classes * cfg.label_dim)
        self.classifier1 = FirstClassifier(cfg.num_classes, cfg.label_dim, cfg.cosine, cfg.cosine_scale)
        self.gr = GRModule(cfg) if cfg.use_gr else None
        self.init_nodes()

    # ------------------------------------------------------------------------------------------------ pieces
    def label_features(self, x: torch.Tensor) -> torch.Tensor:
        """X = pooling(F(I)), Eq. (1), as (B, C, d)."""
        pooled = self.backbone(x).mean(dim=(2, 3))
        return self.category_pooling(pooled).reshape(-1, self.config.num_classes, self.config.label_dim)

    def _bank(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, d = self.config.num_classes, self.config.label_dim
        bank = reference.reshape(-1, c, d)
        return self.gr.proj(bank.flatten(1)), self.classifier1(bank)

    def forward(self, x: torch.Tensor, reference: torch.Tensor | None = None):
        features = self.label_features(x)
        logits1 = self.classifier1(features)
        logits2 = None
        if self.gr is not None:
            bank_z, bank_scores = self._bank(reference) if reference is not None else (None, None)
            logits2 = self.gr(features, logits1, bank_z, bank_scores)
        if self.training:
            return {"logits1": logits1, "logits2": logits2, "features": features}
        return logits2 if logits2 is not None else logits1

    # -------------------------------------------------------------------------------------------- training
    def phase1_loss(self, outputs: dict, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return phase1_loss(outputs, labels, cfg.alpha, cfg.tau, cfg.cosine)

    @staticmethod
    def phase2_loss(outputs: dict, labels: torch.Tensor) -> torch.Tensor:
        return phase2_loss(outputs, labels)

    def fc2_parameters(self) -> list[nn.Parameter]:
        """The FC2-module's parameters (backbone, category pooling, first classifier): phase 1 trains these."""
        return [p for name, p in self.named_parameters() if not name.startswith("gr.")]

    def gr_parameters(self) -> list[nn.Parameter]:
        return list(self.gr.parameters()) if self.gr is not None else []

    @torch.no_grad()
    def init_nodes(self) -> None:
        """Algorithm 1, line 9: copy the first classifier's weights into the category nodes N."""
        if self.gr is not None:
            self.gr.nodes.copy_(self.classifier1.weight)

    @torch.no_grad()
    def init_graph(self, cooccurrence_counts) -> None:
        """Algorithm 1, line 10: E_ij = M_ij / Σ_k M_ik from the training set's label-pair counts M (C, C)
        (``engines.data.multilabel.cooccurrence``: YᵀY, diagonal = label counts). A class with no counts gets an
        identity row. E stays learnable."""
        if self.gr is None:
            raise ValueError("this GR model was built with use_gr=False: it has no graph")
        counts = torch.as_tensor(np.asarray(cooccurrence_counts, dtype=np.float64))
        c = self.config.num_classes
        if tuple(counts.shape) != (c, c):
            raise ValueError(f"co-occurrence counts must be ({c}, {c}), got shape {tuple(counts.shape)}")
        if not torch.isfinite(counts).all() or (counts < 0).any():
            raise ValueError("co-occurrence counts must be finite and non-negative")
        rows = counts.sum(dim=1, keepdim=True)
        edges = torch.where(rows > 0, counts / rows.clamp(min=1e-12), torch.eye(c, dtype=counts.dtype))
        self.gr.edges.copy_(edges.to(self.gr.edges))

    # ------------------------------------------------------------------------------------------ reference bank
    @property
    def reference_bank(self) -> torch.Tensor | None:
        """The stored bank (M, C·d), or None without the GR-module. M = 0 until :meth:`set_reference_bank`."""
        return self.gr.reference_bank if self.gr is not None else None

    @torch.no_grad()
    def set_reference_bank(self, features: torch.Tensor) -> None:
        """Store label-level features (M, C, d) or (M, C·d) of training images (:func:`compute_reference_bank`);
        they are saved with the weights."""
        if self.gr is None:
            raise ValueError("this GR model was built with use_gr=False: it has no image relations")
        width = self.config.num_classes * self.config.label_dim
        features = torch.as_tensor(features).detach()
        if features.dim() not in (2, 3) or features.numel() == 0 or features[0].numel() != width:
            raise ValueError(f"a reference bank is (M, {self.config.num_classes}, {self.config.label_dim}) or "
                             f"(M, {width}) with M >= 1, got shape {tuple(features.shape)}")
        ref = self.gr.reference_bank
        self.gr.reference_bank = features.reshape(-1, width).to(dtype=ref.dtype, device=ref.device).clone()


@torch.no_grad()
def compute_reference_bank(model: GR, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Label-level features (M, C·d) of training images (already normalised tensors (M, in_channels, H, W)), from
    the model in eval mode (BatchNorm running statistics; the model's mode is restored). Store them with
    ``model.set_reference_bank(...)``. Choose the images to cover every label; B−1 of them (31 for B = 32) keeps the
    relation softmax as wide as in training."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (M, channels, H, W) tensor, got shape {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    try:
        parts = [model.label_features(images[i:i + batch_size]).flatten(1) for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)
