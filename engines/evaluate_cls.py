"""Evaluation of the multi-label classifiers (paper 001: GR and its ResNet-50 / VGG-16 / Inception-v3 baselines).

* :func:`multilabel_metrics` — the paper's measures (§4.1): a label is predicted when its confidence is *strictly*
  above 0.5; per class accuracy = (TP+TN)/N, precision = TP/(TP+FP), recall = TP/(TP+FN) and F-measure = 2PR/(P+R)
  (each 0 where its denominator is 0), and their means "averaged over categories" (macro averages, as Table 2).
  The exact-match ratio (every label of an image right) and the summed counts are added.
* :func:`predict` — per-label probabilities ``sigmoid(logits)`` (N, C). GR relates images to each other (Eq. (5)),
  so its scores depend on what is scored together: ``mode="batch"`` scores consecutive batches of ``batch`` images
  (the paper's setting; on the station, a batch is the patches of one part), ``mode="bank"`` scores every image
  against the reference bank stored with the weights, so any batching gives the same scores. For the baselines
  (and GR without its GR-module) the two modes are the same thing.
* :func:`evaluate_classifier` — loads weights written by :func:`engines.train_cls.train_classifier`, resizes the
  images as training did, scores them and returns the metrics; for GR both modes are scored and their
  ``agreement`` (share of image×class decisions on which they agree) is reported.
* :func:`class_activation_maps` / :func:`save_cams` — class activation maps (Zhou et al., CVPR 2016), see there for
  the linearisation used for GR; :func:`save_class_figure` — per-class precision/recall/F bars.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.data.multilabel import MultiLabelSet, label_matrix, load_multilabel, read_image, resize_images
from engines.errors import InputError
from engines.evaluate import write_figure
from engines.models import has_bank, has_relations
from engines.weights import WeightsBundle, WeightsError, load_model, resolve_weights
from inspection_core.preprocess import normalize_tiles
from inspection_core.defaults import DEFAULT_LABEL_THRESHOLD

MODES = ("batch", "bank")
MEASURES = ("accuracy", "precision", "recall", "f_measure")
CAM_METHODS = ("auto", "cam", "gradcam")


# ------------------------------------------------------------------------------------------------------- metrics


def multilabel_metrics(truth, scores, classes, threshold: float = DEFAULT_LABEL_THRESHOLD) -> dict:
    """The paper's multi-label measures. ``truth`` (N, C) 0/1, ``scores`` (N, C) probabilities; a label is
    predicted when its score is > ``threshold`` (strictly). Returns ``{"per_class": {class: {tp, fp, fn, tn,
    support, accuracy, precision, recall, f_measure}}, "mean": {accuracy, precision, recall, f_measure (macro
    averages over the classes), exact_match, images, tp, fp, fn, tn (summed)}}``.

    A precision, recall or F-measure whose denominator is 0 (no predicted / no true positives of a class) counts
    as 0, also in the mean."""
    t = np.asarray(truth) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    classes = list(classes)
    if t.ndim != 2 or t.shape != s.shape or t.shape[1] != len(classes):
        raise ValueError(f"truth {t.shape} and scores {s.shape} must both be (N, C) with C = {len(classes)} classes")
    p = s > threshold
    n = t.shape[0]
    per_class = {}
    for j, name in enumerate(classes):
        tp = int((t[:, j] & p[:, j]).sum())
        fp = int((~t[:, j] & p[:, j]).sum())
        fn = int((t[:, j] & ~p[:, j]).sum())
        tn = int((~t[:, j] & ~p[:, j]).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f_measure = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "support": tp + fn,
                           "accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall,
                           "f_measure": f_measure}
    mean = {m: float(np.mean([per_class[c][m] for c in classes])) if classes else 0.0 for m in MEASURES}
    mean["exact_match"] = float((t == p).all(axis=1).mean()) if n else 0.0
    mean["images"] = n
    for count in ("tp", "fp", "fn", "tn"):
        mean[count] = sum(per_class[c][count] for c in classes)
    return {"per_class": per_class, "mean": mean}


def rounded(metrics: dict, digits: int = 4) -> dict:
    """A copy of a (nested) metrics dict with floats rounded, for reports."""
    if isinstance(metrics, dict):
        return {k: rounded(v, digits) for k, v in metrics.items()}
    if isinstance(metrics, float):
        return round(metrics, digits)
    return metrics


# --------------------------------------------------------------------------------------------------- scoring


def predict(model, dataset_or_images, size: int, spec, mode: str = "batch", batch: int = 32,
            head: str = "final") -> np.ndarray:
    """Per-label probabilities (N, C) float32 of ``model`` (torch; put in eval mode, left there) for the images.

    ``mode="batch"``: consecutive batches of ``batch`` images are scored together (GR's image-wise relations see
    the batch). ``mode="bank"``: every image is scored against the model's stored reference bank
    (``model(x, reference=model.reference_bank)``), independent of the batching; a GR model without a bank is
    refused. Models without image-wise relations give the same scores in both modes. ``head="first"`` scores a GR
    model with its first classifier S (the FC2-module alone: what phase 1 trains) instead of the final S'."""
    import torch

    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    reference = None
    if mode == "bank" and has_relations(model):
        if not has_bank(model):
            raise InputError("mode 'bank' needs a reference bank in the weights (train_classifier stores one); "
                             "use mode 'batch'")
        reference = model.reference_bank
    images = resize_images(dataset_or_images, size, spec)
    model.eval()
    device = next(model.parameters()).device
    num_classes = model.config.num_classes
    out = np.zeros((len(images), num_classes), np.float32)
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(normalize_tiles(images[start:start + batch], spec)).to(device)
            if head == "first" and has_relations(model):
                logits = model.classifier1(model.label_features(x))
            else:
                logits = model(x, reference=reference) if reference is not None else model(x)
            out[start:start + batch] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def score_set(model, images, truth, classes, size: int, spec, mode: str = "batch", batch: int = 32,
              threshold: float = DEFAULT_LABEL_THRESHOLD, head: str = "final") -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics of ``model`` on images with truth (N, C): ``{"mode", "metrics", "agreement", "modes"}`` and the
    scores of each mode scored. For a GR model with a GR-module and a bank both modes are scored; ``metrics`` are
    those of ``mode``, ``modes`` holds each mode's mean measures, ``agreement`` the share of image×class decisions
    (> threshold) on which the two modes agree (None when only one mode applies)."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    both = has_relations(model) and has_bank(model) and head == "final"
    wanted = MODES if both else (mode,)
    images = resize_images(images, size, spec)  # once for both modes
    scores = {m: predict(model, images, size, spec, m, batch, head) for m in wanted}
    report = {"mode": mode, "metrics": multilabel_metrics(truth, scores[mode], classes, threshold)}
    if both:
        decisions = [scores[m] > threshold for m in MODES]
        report["agreement"] = float((decisions[0] == decisions[1]).mean()) if decisions[0].size else 1.0
        report["modes"] = {m: multilabel_metrics(truth, scores[m], classes, threshold)["mean"] for m in MODES}
    else:
        report["agreement"] = None
    return report, scores


# -------------------------------------------------------------------------------------------------- evaluation


def classifier_bundle(weights):
    """``(bundle, classes)`` of classifier weights (a folder, shipped name or :class:`WeightsBundle`); raises
    :class:`WeightsError` when the training record has no class list (not written by the classifier trainer)."""
    bundle = weights if isinstance(weights, WeightsBundle) else resolve_weights(weights)
    classes = bundle.info.get("classes")
    if not classes:
        raise WeightsError(f"{bundle.path} has no class list in its training record; it was not written by the "
                           "classifier trainer (engines train gr|resnet50|vgg16|inceptionv3)")
    return bundle, list(classes)


def evaluate_classifier(weights, data, mode: str = "batch", batch: int = 32, threads: int = 0,
                        threshold: float = DEFAULT_LABEL_THRESHOLD) -> tuple[dict, list[dict]]:
    """Score a data set with trained classifier weights.

    ``weights``: a folder / shipped name or a :class:`engines.weights.WeightsBundle` written by
    :func:`engines.train_cls.train_classifier` (its training record holds the class list); ``data``: a folder
    (:func:`engines.data.multilabel.load_multilabel`) or a :class:`MultiLabelSet`. The data's classes must be the
    weights' classes (any order: label columns are matched by name); otherwise :class:`ValueError` names both
    lists. Images are resized to the weights' tile as in training.

    Returns ``(report, records)``: the report holds the metrics of ``mode`` (per class and mean), and for GR
    ``agreement`` between batch and bank mode plus both modes' means; one record per image (truth, predicted
    labels, scores; for GR also the other mode's labels)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    bundle, classes = classifier_bundle(weights)
    dataset = data if isinstance(data, MultiLabelSet) else load_multilabel(data)
    if set(dataset.classes) != set(classes) or len(dataset.classes) != len(classes):
        raise InputError(f"the data's classes {list(dataset.classes)} differ from the classes the weights were "
                         f"trained on {classes}")
    model = load_model(bundle)
    spec = bundle.input_spec()
    truth = label_matrix(dataset.samples, classes)
    report, scores = score_set(model, dataset, truth, classes, bundle.tile, spec, mode, batch, threshold)
    metrics = report.pop("metrics")
    report = {"weights": str(bundle.path), "model": bundle.model,
              "data": "(in memory)" if isinstance(data, MultiLabelSet) else str(data), "images": len(dataset),
              "classes": classes, "size": bundle.tile, "batch": batch, "threshold": threshold, **report, **metrics}
    other = next((m for m in scores if m != mode), None)
    records = []
    for i, s in enumerate(dataset.samples):
        row = scores[mode][i]
        record = {"name": s.name, "truth": [c for j, c in enumerate(classes) if truth[i, j] > 0.5],
                  "predicted": [c for j, c in enumerate(classes) if row[j] > threshold],
                  "scores": {c: round(float(row[j]), 4) for j, c in enumerate(classes)}}
        record["correct"] = record["truth"] == record["predicted"]
        if other is not None:
            record[f"predicted_{other}"] = [c for j, c in enumerate(classes) if scores[other][i, j] > threshold]
        records.append(record)
    return report, records


# ------------------------------------------------------------------------------------------------------ figures


def save_class_figure(metrics: dict, path, title: str = "") -> Path:
    """Per-class precision / recall / F-measure bars (and their class-averaged means) as PNG. ``metrics`` is
    :func:`multilabel_metrics`' dict (or a report holding ``per_class`` and ``mean``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics["per_class"]) + ["mean"]
    rows = [metrics["per_class"][c] for c in metrics["per_class"]] + [metrics["mean"]]
    x = np.arange(len(names))
    width = 0.26
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 1.5), 4.0))
    for k, (measure, label) in enumerate((("precision", "precision"), ("recall", "recall"),
                                          ("f_measure", "F-measure"))):
        values = [float(r[measure]) for r in rows]
        bars = ax.bar(x + (k - 1) * width, values, width, label=label)
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, [f"{n}\n(n={r.get('support', r.get('images', ''))})" for n, r in zip(names, rows)], fontsize=8)
    ax.set(ylim=(0, 1.22), ylabel="score (label positive when confidence > 0.5)")
    ax.axvline(len(names) - 1.5, color="grey", lw=0.8, ls="--")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    if title:
        ax.set_title(title, fontsize=10)

    return write_figure(fig, path)


# ------------------------------------------------------------------------------------------------------- CAMs


def _feature_module(model):
    """The module whose output is the last convolutional feature map, and what follows it."""
    from torch import nn

    if has_relations(model) or hasattr(model, "category_pooling"):  # GR (with or without its GR-module)
        return model.backbone
    arch = model.config.arch
    if arch == "resnet50":
        return model.net.layer4
    if arch == "inceptionv3":
        return model.net.Mixed_7c
    return [m for m in model.net.features if isinstance(m, nn.ReLU)][-1]  # vgg16: conv5_3 + ReLU, before the pool


def _cam_weights(model):
    """(C, K) weights w_c with CAM_c = Σ_k w_ck F_k, for networks where that is exact (see class_activation_maps);
    None where it is not (VGG-16's fully connected head)."""
    import torch.nn.functional as F

    if hasattr(model, "category_pooling"):
        c, d = model.config.num_classes, model.config.label_dim
        pool = model.category_pooling.weight.reshape(c, d, -1)  # W_pool_c: (d, K) per class
        w1 = model.classifier1.weight  # (C, d)
        w1 = F.normalize(w1, dim=1) if model.config.cosine else w1
        return (w1[:, :, None] * pool).sum(dim=1)  # w_c = W_pool_cᵀ ŵ_c  (C, K)
    if model.config.arch in ("resnet50", "inceptionv3"):
        return model.net.fc.weight  # GAP → (dropout) → fc
    return None


def class_activation_maps(model, image: np.ndarray, size: int, spec, classes=None, method: str = "auto") -> dict:
    """One heat map per class (float32, the image's H×W, in [0, 1]) showing where the network sees that class.

    * ``method="cam"`` (Zhou et al. 2016): ``CAM_c = Σ_k w_ck F_k`` on the last convolutional feature map F (K
      channels), bilinearly upsampled, then min–max normalised per map. For ResNet-50 and Inception-v3 (GAP →
      linear) ``w_c`` is the final layer's row: the class logit is exactly the spatial mean of CAM_c plus the bias.
      For GR the path GAP → category pooling (``X_c = W_pool_c g + b_c``, W_pool_c the class's d rows) → first
      classifier (``S_c = s·cos(X_c, w1_c)``) gives ``S_c = (s/|X_c|)·(ŵ1_cᵀ W_pool_c g + ŵ1_cᵀ b_c)``: for one
      image |X_c| is a positive constant, so with ``w_c = W_pool_cᵀ ŵ1_c`` the first-classifier score S_c is a
      positive multiple of the mean of CAM_c plus a constant — an exact linearisation of S (``cosine=False``: the
      raw w1_c, exactly linear). The GR-module's relation branch (which mixes in other images) is not part of it;
      the maps show what the label-level features see.
    * ``method="gradcam"`` (Selvaraju et al. 2017): weights = spatial mean of d(logit_c)/dF, ReLU of the weighted
      map; works for every model, for GR on its final score S' (against the reference bank when it has one, so the
      map does not depend on other images).
    * ``"auto"``: CAM where it is exact (GR, ResNet-50, Inception-v3), Grad-CAM for VGG-16 (its fully connected
      head has no class weights per channel).

    Keys are the class names when ``classes`` is given, else the class indices. A constant map is all zeros."""
    import cv2
    import torch

    if method not in CAM_METHODS:
        raise InputError(f"method must be one of {CAM_METHODS}, got {method!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    num_classes = model.config.num_classes
    keys = list(classes) if classes is not None else list(range(num_classes))
    if len(keys) != num_classes:
        raise ValueError(f"{len(keys)} class names for a network with {num_classes} classes")
    model.eval()
    device = next(model.parameters()).device
    x = torch.from_numpy(normalize_tiles(resize_images([image], size, spec), spec)).to(device)
    weights = _cam_weights(model) if method != "gradcam" else None
    if method == "cam" and weights is None:
        raise InputError(f"plain CAM needs a GAP + linear head; {model.config.arch} has none: use method 'gradcam'")
    captured = {}
    handle = _feature_module(model).register_forward_hook(lambda module, inp, out: captured.__setitem__("f", out))
    try:
        if weights is not None:
            with torch.no_grad():
                if hasattr(model, "category_pooling"):
                    model.backbone(x)
                else:
                    model(x)
                feats = captured["f"][0].float()  # (K, h, w)
                maps = torch.einsum("ck,khw->chw", weights.float(), feats)
        else:
            with torch.enable_grad():
                reference = model.reference_bank if has_relations(model) and has_bank(model) else None
                logits = model(x, reference=reference) if reference is not None else model(x)
                feats = captured["f"]
                maps = []
                for c in range(num_classes):
                    (grad,) = torch.autograd.grad(logits[0, c], feats, retain_graph=c < num_classes - 1)
                    alpha = grad[0].mean(dim=(1, 2))
                    maps.append(torch.relu((alpha[:, None, None] * feats[0]).sum(0)))
                maps = torch.stack(maps).detach()
    finally:
        handle.remove()
    h, w = image.shape[:2]
    out = {}
    for key, m in zip(keys, maps.cpu().numpy().astype(np.float32)):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        m = m - m.min()
        top = float(m.max())
        out[key] = (m / top if top > 1e-12 else np.zeros_like(m)).astype(np.float32)
    return out


def save_cams(image: np.ndarray, cams: dict, path, alpha: float = 0.5) -> Path:
    """Write ``image | one overlay per class`` (JET colour map blended over the image, class name on top) as PNG;
    small images are enlarged (nearest neighbour) to at least 192 px high."""
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        base = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    else:
        base = cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2BGR)
    h, w = base.shape[:2]
    scale = max(1, int(np.ceil(192 / h)))
    if scale > 1:
        base = cv2.resize(base, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    panels = [base]
    for key, cam in cams.items():
        cam = np.clip(np.asarray(cam, np.float32), 0.0, 1.0)
        if cam.shape != (h, w):
            raise ValueError(f"CAM of {key!r} is {cam.shape}, the image is {(h, w)}")
        heat = cv2.applyColorMap((cam * 255).round().astype(np.uint8), cv2.COLORMAP_JET)
        if scale > 1:
            heat = cv2.resize(heat, base.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        overlay = cv2.addWeighted(base, 1.0 - alpha, heat, alpha, 0.0)
        cv2.putText(overlay, str(key), (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(overlay)
    separator = np.full((base.shape[0], 4, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [separator, p]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.concatenate(row, axis=1)):
        raise InputError(f"cannot write {path}")
    return path


def write_cams(weights, data, out_dir, names=None, limit: int = 12, size: int = 0, method: str = "auto") -> list[Path]:
    """CAM panels (:func:`save_cams`) for trained weights: ``data`` is one image file or a multi-label data folder
    (``names`` picks images by name, else the first ``limit``); ``size`` is the network input side (0 = the weights'
    tile; a larger one gives a finer map). Each overlay is titled with its class and the network's score for it
    (GR: against its reference bank). Writes ``out_dir/<image stem>.cam.png``; returns the paths."""
    bundle, classes = classifier_bundle(weights)
    data = Path(data)
    if data.is_file():
        items = [(data.name, read_image(data))]
    else:
        samples = load_multilabel(data).samples
        if names:
            wanted = set(names)
            samples = [s for s in samples if s.name in wanted or Path(s.name).name in wanted]
            if not samples:
                raise InputError(f"none of {sorted(wanted)[:5]} is an image of {data}")
        items = [(s.name, s.image) for s in samples[:limit]]
    model, spec = load_model(bundle), bundle.input_spec()
    mode = "bank" if has_relations(model) and has_bank(model) else "batch"  # one image alone, deterministic
    out_dir = Path(out_dir)
    paths = []
    for name, image in items:
        cams = class_activation_maps(model, image, size or bundle.tile, spec, classes=classes, method=method)
        scores = predict(model, [image], bundle.tile, spec, mode=mode, batch=1)[0]
        cams = {f"{c} {score:.2f}": cams[c] for c, score in zip(classes, scores)}  # each panel: class, score
        stem = Path(name.replace("/", "__")).stem
        paths.append(save_cams(image, cams, out_dir / f"{stem}.cam.png"))
    return paths
