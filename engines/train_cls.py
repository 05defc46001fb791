"""Training of the multi-label classifiers: GR (paper 001, two phases, Algorithm 1) and its baselines ResNet-50,
VGG-16 and Inception-v3 (one phase, per-label BCE), with resumable checkpoints and a fixed seed.

Paper settings (§4.2) are the defaults: SGD, momentum 0.9, weight decay 5e-4, batch 32, learning rate 1e-3 in both
phases, 40 epochs, augmentation by horizontal flip, vertical flip, rotation and colour jitter. Readings and
departures:

* **Epochs.** "All iteration training is terminated after 40 epochs" while Algorithm 1 has one epoch loop per
  phase: read as 40 epochs *per phase* (``epochs`` for the normal phase, ``pretrain_epochs`` for the node
  pre-training phase, -1 = as many as ``epochs``; 0 skips it = the "without pre-training phase" ablation). With
  ``use_gr=False`` (the "without GR-module" ablation) only the FC2-module exists and phase 1 runs for ``epochs``.
  A baseline has one phase of ``epochs``.
* **Learning rate.** The paper gives an "initial" learning rate but no schedule; none is invented: it stays
  constant. Each phase gets a fresh SGD optimiser (phase 1 on :meth:`GR.fc2_parameters`, phase 2 on all).
* **Input size.** Every image (patch) is resized to ``size``×``size`` with ``cv2.INTER_AREA`` (the paper trains on
  1024×1024 patches; 224 is the default here, for memory and speed). Grey images are replicated to three channels
  (``in_channels=3``, the paper's RGB ResNet stem) or fed as one (``in_channels=1``).
* **Augmentation** (the paper names four, without magnitudes): horizontal and vertical flip (each p = 0.5), a
  rotation by a random multiple of 90° plus a small random angle (±10°, reflected border), and colour jitter:
  brightness and contrast factors in [0.8, 1.2] and, for colour data, a per-channel gain in [0.9, 1.1].
* **Epoch and batches.** One epoch is ``steps_per_epoch`` batches (0 = ⌈training images / batch⌉, one pass);
  the batches are consecutive slices of a seeded shuffled order of the training images (topped up from a
  second shuffled order when the pass does not fill the last batch, so every batch is full: GR relates the
  images of a batch and its contrastive loss needs pairs). The order and the augmentation are seeded by
  (seed, phase, epoch), so a resumed run draws what an uninterrupted one would.
* **Graph.** At the start of phase 2 the category nodes are copied from the first classifier and the edges are
  set from the co-occurrence counts of the *training split* (``cooccurrence``, recorded in the training info).
  Both are weights: a run resumed inside phase 2 takes them from the checkpoint and does not re-initialise.
* **Reference bank.** After training, ``bank_size`` training images (31 = B−1 for the paper's B = 32) chosen,
  seeded, so that every class present in the training split appears in at least one, are run through the model
  and their label-level features stored as GR's reference bank; the station can then score each patch alone
  (``evaluate_cls.predict(mode="bank")``).
"""
from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from engines.data.multilabel import (
    MultiLabelSet,
    cooccurrence,
    load_multilabel,
    resize_images,
    stratified_multilabel_split,
)
from engines.errors import InputError
from engines.evaluate_cls import rounded, score_set
from engines.models import CLASSIFICATION_MODELS, build_model, has_relations, model_spec
from engines.training import (
    EpochStats,
    Phase,
    TrainingHooks,
    TrainingLoop,
    optimizer_step,
    pick_device,
    start_run,
)
from engines.weights import save_weights
from inspection_core.preprocess import InputSpec, normalize_tiles

log = logging.getLogger(__name__)

ROTATE_DEGREES = 10.0  # small random angle added to the 90° turns
BRIGHTNESS, CONTRAST, CHANNEL_GAIN = 0.2, 0.2, 0.1  # colour jitter ranges: factors in [1 - r, 1 + r]


@dataclass
class ClsTrainSettings:
    model: str = "gr"  # "gr" | "resnet50" | "vgg16" | "inceptionv3"
    data: str = ""
    out: str = ""
    epochs: int = 40  # per phase for GR (the paper's 40, Algorithm 1 has one epoch loop per phase)
    pretrain_epochs: int = -1  # GR phase 1; -1 = as many as epochs, 0 = no pre-training phase (ablation)
    batch: int = 32
    lr: float = 1e-3  # constant (the paper gives no schedule)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    size: int = 224  # images resized to size×size (cv2.INTER_AREA); the paper trains on 1024×1024
    holdout: float = 0.2
    split: str = ""  # a split.json (train/validation/holdout, `engines split`): train on train, score validation
    seed: int = 0
    threads: int = 0
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    amp: bool = False  # mixed precision (float16 + gradient scaling on CUDA, bfloat16 on the CPU)
    steps_per_epoch: int = 0  # 0 = one pass over the training images
    bank_size: int = 31  # GR reference bank: training images covering every class (B−1 for the paper's B = 32)
    model_config: dict = field(default_factory=dict)  # e.g. {"backbone": "resnet18", "use_gr": False}
    in_channels: int = 3  # 3: grey replicated (the paper's RGB stem); 1: one-channel stem
    augment: bool = True  # the paper's flips, rotation and colour jitter
    validate: bool = True  # score the held-out images after every epoch (batch mode)
    init_backbone: str = ""  # start the ResNet backbone from these weights (any network trained here, same depth)


# ------------------------------------------------------------------------------------------------------ helpers


def augment_batch(images: np.ndarray, rng: np.random.Generator, colour: bool = False) -> np.ndarray:
    """The paper's four augmentations on uint8 images (N, s, s) or (N, s, s, 3), each image drawn independently:
    horizontal flip, vertical flip (p = 0.5 each), rotation by k·90° plus a uniform ±10° angle (reflected border),
    brightness × [0.8, 1.2] and contrast × [0.8, 1.2] around the image mean, and with ``colour`` a per-channel
    gain in [0.9, 1.1]."""
    import cv2

    out = np.empty_like(images)
    for i, image in enumerate(images):
        if rng.random() < 0.5:
            image = image[:, ::-1]
        if rng.random() < 0.5:
            image = image[::-1]
        image = np.ascontiguousarray(np.rot90(image, int(rng.integers(4))))
        angle = float(rng.uniform(-ROTATE_DEGREES, ROTATE_DEGREES))
        h, w = image.shape[:2]
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
        image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        f = image.astype(np.float32)
        mean = f.mean()
        f = (f - mean) * np.float32(rng.uniform(1 - CONTRAST, 1 + CONTRAST)) + mean
        f *= np.float32(rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS))
        if colour and f.ndim == 3:
            f *= rng.uniform(1 - CHANNEL_GAIN, 1 + CHANNEL_GAIN, size=f.shape[2]).astype(np.float32)
        out[i] = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    return out


def epoch_batches(n: int, batch: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``steps`` batches of ``min(batch, n)`` indices: consecutive slices of shuffled orders of ``range(n)``
    (a new shuffled order starts when one runs out)."""
    batch = min(batch, n)
    stream: list[int] = []
    while len(stream) < steps * batch:
        stream += rng.permutation(n).tolist()
    return [np.asarray(stream[k * batch:(k + 1) * batch]) for k in range(steps)]


def choose_bank(matrix: np.ndarray, size: int, seed: int) -> list[int]:
    """Indices of ``size`` (or all, if fewer) training images such that every class present in ``matrix``
    (N, C) appears in at least one of them when ``size`` allows: the rarest uncovered class first, a random image
    of it, until every class is covered; then random further images. Seeded."""
    rng = np.random.default_rng(seed)
    y = np.asarray(matrix) > 0.5
    n = len(y)
    size = min(size, n)
    chosen: list[int] = []
    covered = np.zeros(y.shape[1], bool)
    for c in np.argsort(y.sum(axis=0), kind="stable"):
        if len(chosen) >= size:
            break
        if covered[c] or not y[:, c].any():
            continue
        candidates = [i for i in np.flatnonzero(y[:, c]) if i not in chosen]
        pick = int(rng.choice(candidates))
        chosen.append(pick)
        covered |= y[pick]
    rest = [i for i in rng.permutation(n).tolist() if i not in chosen]
    chosen += rest[:size - len(chosen)]
    return sorted(chosen)


def _phases(settings: ClsTrainSettings, use_gr: bool) -> list[tuple[int, str, int]]:
    """(phase number, name, epochs) in order: one phase, unless the network pre-trains (GR's FC2-module)."""
    if not model_spec(settings.model).pretrains:
        return [(1, "train", settings.epochs)]
    if not use_gr:
        return [(1, "pretrain", settings.epochs)]
    pre = settings.epochs if settings.pretrain_epochs == -1 else settings.pretrain_epochs
    return [(1, "pretrain", pre), (2, "train", settings.epochs)]


def _check_settings(settings: ClsTrainSettings) -> None:
    if settings.model not in CLASSIFICATION_MODELS:
        raise InputError(f"unknown classifier {settings.model!r}; use one of {', '.join(CLASSIFICATION_MODELS)}")
    spec = model_spec(settings.model)
    for name in ("epochs", "batch", "size", "bank_size", "in_channels"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "epochs" else 1):
            raise InputError(f"{name} must be a {'non-negative' if name == 'epochs' else 'positive'} integer, "
                             f"got {value!r}")
    if settings.pretrain_epochs < -1:
        raise InputError(f"pretrain_epochs must be -1 (as many as epochs), 0 (skip) or more, got "
                         f"{settings.pretrain_epochs}")
    if settings.steps_per_epoch < 0:
        raise InputError(f"steps_per_epoch must be >= 0, got {settings.steps_per_epoch}")
    if settings.in_channels not in spec.channels:
        raise InputError(f"in_channels must be {' or '.join(map(str, sorted(spec.channels)))}, got "
                         f"{settings.in_channels}")
    if not spec.sides.accepts(settings.size):
        raise InputError(f"{settings.model} needs images of {spec.sides.describe()}, got size {settings.size}")
    if not settings.lr > 0:
        raise InputError(f"lr must be positive, got {settings.lr}")


def _model_config(settings: ClsTrainSettings, num_classes: int) -> dict:
    config = dict(settings.model_config)
    for key, value in (("num_classes", num_classes), ("in_channels", settings.in_channels)):
        if config.get(key, value) != value:
            raise InputError(f"model_config sets {key}={config[key]}, but the run has {key}={value}")
        config[key] = value
    return config


def _build(settings: ClsTrainSettings, config: dict):
    try:
        return build_model(settings.model, config)
    except TypeError as exc:  # an option the network does not take
        raise InputError(f"{settings.model} does not accept the model options {sorted(config)}: {exc}") from exc


# ------------------------------------------------------------------------------------------------------ training


def sets_from_split(dataset: MultiLabelSet, path: str) -> tuple[MultiLabelSet, MultiLabelSet, dict]:
    """``(train, scored, record)`` from a split file, as segmentation training reads it: its ``train`` list trains,
    its ``validation`` list (a two-way file: ``holdout``) is scored after each epoch; a three-way file's
    ``holdout`` images are used by neither. :class:`InputError` for names the data folder lacks."""
    from engines.data.segmentation import read_split

    split = read_split(path)
    index = {s.name: i for i, s in enumerate(dataset.samples)}
    scored = "validation" if "validation" in split else "holdout"
    missing = [n for part in ("train", scored) for n in split.get(part, []) if n not in index]
    if missing:
        raise InputError(f"{len(missing)} images of {path} are not in the data folder (first: {missing[0]}); "
                         "pass the --data folder the split was made from")
    return (dataset.subset([index[n] for n in split["train"]]),
            dataset.subset([index[n] for n in split.get(scored, [])]), split)


def train_classifier(settings: ClsTrainSettings, progress: bool = True, train_set=None, held_set=None) -> dict:
    """Train ``settings.model`` on multi-label data, checkpoint every epoch to ``out/checkpoint.pt`` (resumed
    automatically, in the right phase), score the held-out split, and write the final weights
    (``model.safetensors`` + ``config.json`` with the class list in the training record) to ``out``.

    ``train_set``/``held_set`` (:class:`MultiLabelSet`) give the split explicitly; otherwise ``settings.data`` is
    loaded and split by ``settings.holdout`` (stratified by label combination). Returns a summary: the weights
    folder, the classes, the last epoch's record and the held-out report (metrics and, for GR, batch/bank
    agreement)."""
    import torch

    _check_settings(settings)
    device = pick_device(settings.device)
    out = start_run(settings.out, settings.threads, settings.seed)
    split_record = None
    if train_set is None:
        dataset = load_multilabel(settings.data)
        if settings.split:
            train_set, held_set, split_record = sets_from_split(dataset, settings.split)
        else:
            train_idx, held_idx = stratified_multilabel_split(dataset, settings.holdout, settings.seed)
            train_set, held_set = dataset.subset(train_idx), dataset.subset(held_idx)
    held_set = held_set if held_set is not None else MultiLabelSet([], train_set.classes)
    classes = list(train_set.classes)
    if list(held_set.classes) != classes:
        raise InputError(f"the held-out set's classes {list(held_set.classes)} differ from the training set's "
                         f"{classes}")
    if len(train_set) < 2:
        raise InputError(f"need at least 2 training images, got {len(train_set)}")
    (out / "split.json").write_text(json.dumps(split_record or
        {"train": [s.name for s in train_set.samples], "holdout": [s.name for s in held_set.samples]}, indent=1))

    spec = InputSpec(channels=settings.in_channels)
    model = _build(settings, _model_config(settings, len(classes)))
    start_note = {}
    if settings.init_backbone:  # a checkpoint in out (resume) overwrites it below
        from engines.train import init_backbone_from

        start_note = init_backbone_from(model, settings.init_backbone)
        log.info("backbone initialised from %s: %s", settings.init_backbone, json.dumps(start_note))
    pretrains = model_spec(settings.model).pretrains
    use_gr = has_relations(model)  # GR with its GR-module: phase 2 and the reference bank
    train_x = resize_images([s.image for s in train_set.samples], settings.size, spec)
    train_y = train_set.matrix()
    held_x = resize_images(held_set, settings.size, spec)
    held_y = held_set.matrix()
    colour = spec.channels == 3 and any(s.image.ndim == 3 for s in train_set.samples)
    counts = cooccurrence(train_y)
    batch = min(settings.batch, len(train_set))
    steps = settings.steps_per_epoch or math.ceil(len(train_set) / batch)
    phases = _phases(settings, use_gr)
    model.to(device)

    loop = TrainingLoop(model, out, device=device, amp=settings.amp, lr=settings.lr, title=settings.model,
                        progress=progress)

    def same_run(state: dict) -> None:
        saved_classes = json.loads(state["classes"])
        if saved_classes != classes or state["model_name"] != settings.model:
            raise InputError(f"{loop.checkpoint} is a {state['model_name']} run on classes {saved_classes}; this run "
                             f"is {settings.model} on {classes}: use another --out or delete the checkpoint")

    loop.resume(check=same_run)

    def sgd(phase: int):  # a fresh SGD optimiser per phase: phase 1 trains the FC2-module alone
        def make():
            params = model.fc2_parameters() if pretrains and phase == 1 else list(model.parameters())
            return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                                   weight_decay=settings.weight_decay)
        return make

    def init_graph() -> None:  # Algorithm 1, lines 9-10 (only when phase 2 starts: on resume it is in the weights)
        model.init_nodes()
        model.init_graph(counts)
        log.info("graph initialised from the training split's co-occurrence %s", counts.tolist())

    hooks = ClassifierHooks(settings, model, train_x, train_y, held_x, held_y, classes, spec, batch, steps, colour,
                            pretrains)
    loop.run([Phase(number, name, epochs, make_optimizer=sgd(number), title=name,
                    on_start=init_graph if use_gr and number == 2 else None)
              for number, name, epochs in phases], hooks)
    history, done = loop.history, loop.done
    graph_info = None
    if use_gr:
        graph_info = {"cooccurrence": counts.tolist(), "initial_edges": _row_normalised(counts).tolist()}

    # ------------------------------------------------------------------------------------- bank, weights
    model.eval()
    bank_names = None
    if use_gr:
        from engines.models.gr import compute_reference_bank

        chosen = choose_bank(train_y, settings.bank_size, settings.seed)
        x = torch.from_numpy(normalize_tiles(train_x[chosen], spec)).to(device)
        model.set_reference_bank(compute_reference_bank(model, x, batch_size=batch))
        bank_names = [train_set.samples[i].name for i in chosen]
        log.info("reference bank: %d training images covering %s", len(chosen),
                 sorted({c for i in chosen for c in train_set.samples[i].labels}))
    holdout = {}
    if len(held_set):
        report, _ = score_set(model, held_x, held_y, classes, settings.size, spec, "batch", batch)
        holdout = rounded(report)
    model.cpu()
    training = {"classes": classes, "settings": asdict(settings), "history": history,
                "phases": [{"phase": p, "stage": n, "epochs": done.get(p, 0)} for p, n, _ in phases],
                "command": " ".join(sys.argv), "train_images": len(train_set), "holdout_images": len(held_set),
                "device": str(device), "holdout": holdout}
    if start_note:
        training["start"] = start_note
    if graph_info is not None:
        training["graph"] = graph_info
    if bank_names is not None:
        training["reference_bank"] = bank_names
    save_weights(model, out, settings.model, model.config.to_dict(), spec.to_dict(), settings.size, training)
    return {"weights": str(out), "classes": classes, "last": history[-1] if history else {},
            "holdout": holdout.get("metrics", {}).get("mean", {}), "agreement": holdout.get("agreement")}


def _row_normalised(counts: np.ndarray) -> np.ndarray:
    """E_ij = M_ij / Σ_k M_ik (identity row for a class without counts), as GR.init_graph sets it."""
    counts = np.asarray(counts, np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    return np.where(rows > 0, counts / np.maximum(rows, 1e-12), np.eye(len(counts)))


class ClassifierHooks(TrainingHooks):
    """What a classifier run adds to the shared loop: seeded batches of training images (augmented with the same
    generator, so a resumed run draws what an uninterrupted one would), per-label BCE or GR's phase losses, and
    the held-out score after every epoch (phase 1: GR's first classifier, the part it trains)."""

    def __init__(self, settings: ClsTrainSettings, model, train_x, train_y, held_x, held_y, classes, spec,
                 batch: int, steps: int, colour: bool, pretrains: bool) -> None:
        self.settings, self.model, self.spec = settings, model, spec
        self.train_x, self.train_y, self.held_x, self.held_y = train_x, train_y, held_x, held_y
        self.classes, self.batch, self.steps, self.colour, self.pretrains = classes, batch, steps, colour, pretrains
        self.rng = None

    def start_phase(self, phase: Phase, optimizer, loop: TrainingLoop) -> None:
        self.optimizer, self.scaler, self.device, self.amp_dtype = optimizer, loop.scaler, loop.device, loop.amp_dtype

    def epoch_batches(self, phase: Phase, epoch: int):
        self.rng = np.random.default_rng([self.settings.seed, phase.number, epoch])
        return epoch_batches(len(self.train_x), self.batch, self.steps, self.rng), self.steps

    def train_mode(self) -> None:
        self.model.train()

    def step(self, idx, phase: Phase, check) -> float:
        import torch

        from engines.models.classifiers import multilabel_bce

        images = augment_batch(self.train_x[idx], self.rng, self.colour) if self.settings.augment else self.train_x[idx]
        x = torch.from_numpy(normalize_tiles(images, self.spec)).to(self.device, non_blocking=True)
        y = torch.from_numpy(self.train_y[idx]).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            outputs = self.model(x)
        if not self.pretrains:
            loss = multilabel_bce(outputs.float(), y)
        else:
            outputs = {k: (v.float() if v is not None else None) for k, v in outputs.items()}
            loss = self.model.phase1_loss(outputs, y) if phase.number == 1 else self.model.phase2_loss(outputs, y)
        return optimizer_step(loss, self.optimizer, self.scaler, check)

    def end_epoch(self, stats: EpochStats) -> dict:
        record = {"phase": stats.phase.number, "stage": stats.phase.name, "epoch": stats.epoch + 1,
                  "loss": round(stats.loss, 5), "seconds": round(stats.seconds, 1)}
        if self.settings.validate and len(self.held_x):
            # Phase 1 trains the FC2-module only: score its first classifier, not the untrained GR-module.
            report, _ = score_set(self.model, self.held_x, self.held_y, self.classes, self.settings.size, self.spec,
                                  "batch", self.batch, head="first" if stats.phase.number == 1 else "final")
            record.update(rounded(report["metrics"]["mean"]))
        return record

    def checkpoint_extra(self) -> dict:
        return {"classes": json.dumps(self.classes), "model_name": self.settings.model}
