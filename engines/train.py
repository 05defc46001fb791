"""Training of the segmentation networks on tiles, with resumable checkpoints and a fixed seed.

Paper settings are the defaults: RMSprop, learning rate 5e-4, batch 16, 30 epochs, 128×128 tiles, a principal
and two auxiliary cross-entropy losses. One epoch is as many tiles as the tiler would cut from the training
images (so an epoch "sees" the training set once, on average).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engines.errors import InputError
from engines.training import (
    EpochStats,
    Phase,
    TrainingHooks,
    TrainingLoop,
    WeightAverage,
    distributed,
    optimizer_step,
    pick_device,
    start_run,
)
from inspection_core.defaults import DEFAULT_MIN_AREA_PX, DEFAULT_OVERLAP
from inspection_core.preprocess import InputSpec, normalize_tiles, whole_frame
from inspection_core.tiling import plan_tiles

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    model: str = "bffn"
    data: str = ""
    out: str = ""
    epochs: int = 30
    batch: int = 16
    lr: float = 5e-4
    tile: int = 128
    overlap: int = DEFAULT_OVERLAP
    holdout: float = 0.2
    seed: int = 0
    aux_weight: float = 1.0
    optimizer: str = "rmsprop"  # the paper's; "adam" converges faster from scratch (see docs/MODELS.md)
    loss: str = "ce"  # the paper's cross-entropy; "ce+dice" adds a soft Dice term against background collapse
    defect_fraction: float = 0.5
    sampling: str = "grid"  # "grid": the tiles the station's tiler cuts; "random": random crops (session-1 runs)
    steps_per_epoch: int = 0  # 0 = as many tiles as the tiler cuts from the training images, / batch
    threads: int = 0
    min_area_px: int = DEFAULT_MIN_AREA_PX
    model_config: dict = field(default_factory=dict)
    init: str = ""  # start from these weights (folder or shipped name) instead of random initialisation
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    amp: bool = False  # mixed precision (float16 + gradient scaling on CUDA, bfloat16 on the CPU)
    validate: bool = True  # score the validation images after every epoch
    validate_as: str = "quick"  # "quick": whole images at 0.5 / min_area_px; "station": tiles, stitching, rules
    split: str = ""  # a split.json ({"train", "validation", "holdout"}): train on train, validate on validation
    extra_data: tuple = ()  # further folders (the line's data set): LINE_HOLDOUT of each kept aside, the rest trains
    init_backbone: str = ""  # start the ResNet backbone from these weights (any network trained here)
    backbone_lr: float = 1.0  # the backbone's learning rate as a fraction of lr (e.g. 0.1 for a transferred start)
    class_balanced: bool = False  # defect crops: a class drawn uniformly, then an image of it
    hard_negatives: float = 0.0  # fraction of crops drawn from mined false-alarm tiles of defect-free images
    mine_every: int = 1  # re-mine hard negatives every this many epochs
    mine_threshold: float = 0.3  # a defect-free tile is a hard negative when its top score reaches this
    channels_last: bool = True  # NHWC memory layout (same arithmetic, faster oneDNN convolutions on the CPU)
    prefetch: int = 2  # batches cut ahead by a background thread (0 = in the training loop)
    gain_target: float = 0.0  # InputSpec.gain_target: each image scaled so its median grey is this (0 = off)
    border: int = 0  # InputSpec.border: mirrored context (px) on every side of an image before it is tiled
    photometric: str = "jitter"  # "jitter": contrast x0.8-1.2, +-20 grey; "exposure": gain and gamma of the lightings
    edge_fraction: float = 0.0  # share of defect crops drawn at defect pixels near the image edge
    paste_fraction: float = 0.0  # share of plain crops of defect-free images that get a pasted real defect
    context: float = 0.0  # > 0: InputSpec.context on, and this share of crops is a whole image shrunk to one tile
    whole_crops: float = 0.0  # this share of crops is a whole image shrunk to one tile, without the context pass
    ema: float = 0.0  # > 0: an exponential moving average of the weights (this decay per step) is validated and saved


OPTIMIZERS = ("rmsprop", "adam")
LOSSES = ("ce", "ce+dice")


def parameter_groups(model, lr: float, backbone_lr: float) -> list[dict]:
    """``model``'s parameters for the optimizer at learning rate ``lr``: one group, or the ResNet backbone's apart
    at ``backbone_lr`` × ``lr``."""
    from engines.models.backbone_transfer import backbone_parameters

    if backbone_lr == 1.0:
        return [{"params": list(model.parameters()), "lr": lr}]
    names = backbone_parameters(model)
    if not names:
        raise InputError(f"--backbone-lr: {type(model).__name__} has no ResNet backbone")
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n in names], "lr": lr * backbone_lr},
            {"params": [p for n, p in named if n not in names], "lr": lr}]


def make_optimizer(name: str, parameters, lr: float, fused: bool = True):
    """``parameters``: parameters, or groups that carry their own ``lr`` (:func:`parameter_groups`).

    Adam runs torch's fused kernel (one pass over each tensor instead of a dozen elementwise ops): the same update,
    up to float rounding, in about a third of the optimiser's time on these CPUs (docs/BENCHMARKS.md). RMSprop has
    no fused kernel in torch. ``fused=False`` gives the for-loop Adam of the trainer as first landed."""
    import torch

    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr)
    if name == "adam":  # the trainers' devices (engines.training.pick_device), CPU and CUDA, both have the kernel
        return torch.optim.Adam(parameters, lr=lr, fused=fused)
    raise InputError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


def segmentation_loss(name: str):
    """Cross-entropy (the paper), or cross-entropy plus a soft Dice term on the defect probability."""
    import torch

    ce = torch.nn.CrossEntropyLoss()
    if name == "ce":
        return ce
    if name != "ce+dice":
        raise InputError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")

    def ce_dice(logits, target):
        p = 1.0 - logits.softmax(1)[:, 0]
        t = (target > 0).float()
        dice = 1.0 - (2.0 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
        return ce(logits, target) + dice

    return ce_dice


def train_segmentation(settings: TrainSettings, progress: bool = True, train_samples=None, held_samples=None) -> dict:
    """Train, checkpoint every epoch to ``out/checkpoint.pt`` (resumed automatically), validate on the held-out
    split, and write the final weights (``model.safetensors`` + ``config.json``) to ``out``.

    ``train_samples``/``held_samples`` give the split explicitly (``engines compare`` passes its folds); otherwise
    ``settings.data`` is loaded and split by ``settings.holdout``. Under ``torchrun`` every process trains on its
    own tile stream (seeded by rank) with gradients averaged by DistributedDataParallel; rank 0 validates, logs,
    checkpoints and writes the weights. Mixed precision (``settings.amp``) is float16 with a gradient scaler on
    CUDA and bfloat16 autocast on the CPU. The epoch loop is the one shared with the classifiers
    (:class:`engines.training.TrainingLoop`); :class:`SegmentationHooks` adds the tiles, the loss, hard-negative
    mining, validation and ``best/``.
    """
    import torch

    from engines.data.segmentation import load_dataset, stratified_split
    from engines.models import build_model
    from engines.weights import save_weights

    rank, world, local_rank = distributed()
    device = pick_device(settings.device, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_process = rank == 0
    out = start_run(settings.out, settings.threads, settings.seed)
    split_record = None
    if train_samples is None:
        samples = load_dataset(settings.data)
        if settings.split:
            train_samples, held_samples, split_record = samples_from_split(samples, settings.split)
        else:
            train_idx, held_idx = stratified_split(samples, settings.holdout, settings.seed)
            train_samples = [samples[i] for i in train_idx]
            held_samples = [samples[i] for i in held_idx]
    held_samples = held_samples or []
    split_record = dict(split_record or
                        {"train": [s.name for s in train_samples], "holdout": [s.name for s in held_samples]})
    if settings.extra_data:  # the line's images train beside the base; a share stays aside for engines accept --line
        from engines.data.segmentation import extra_folder_split

        split_record["extra"] = []
        for folder in settings.extra_data:
            more, _, record = extra_folder_split(folder, seed=settings.seed)
            train_samples = list(train_samples) + more
            split_record["extra"].append(record)
            log.info("%s: %d images train, %d kept aside for engines accept --line", folder, len(record["train"]),
                     len(record["holdout"]))
    if main_process:
        (out / "split.json").write_text(json.dumps(split_record, indent=1))
    for flag, share in (("--context", settings.context), ("--whole-crops", settings.whole_crops)):
        if not 0 <= share < 1:
            raise InputError(f"{flag} {share}: the share of crops that are whole images must be in 0..1 (e.g. 0.2; "
                             "0 = none)")
    if settings.context and settings.whole_crops:
        raise InputError("--context F already makes F of the crops whole images (and scores the whole frame on the "
                         "line); give --whole-crops alone for the crops without the context pass")
    spec = InputSpec(channels=1, gain_target=settings.gain_target, border=settings.border,
                     context=settings.context > 0)
    if spec.context and settings.validate and settings.validate_as != "station":
        log.warning("--context: the quick validation scores whole images without the context pass, so best/ is "
                    "chosen by another judge than the line's; add --validate-as station")
    if whole_frame(spec):  # training cuts its tiles from frames prepared as the line prepares them
        from engines.data.segmentation import prepared_sample

        train_samples = [prepared_sample(s, spec) for s in train_samples]
    config = {"in_channels": spec.channels, **settings.model_config}
    model = build_model(settings.model, config)
    start_note = {}
    if settings.init:
        from engines.weights import load_model, resolve_weights

        start = load_model(resolve_weights(settings.init))
        model.load_state_dict(start.state_dict())
        log.info("initialised from %s", settings.init)
    if settings.init_backbone:
        start_note = init_backbone_from(model, settings.init_backbone)
        log.info("backbone initialised from %s: %s", settings.init_backbone, json.dumps(start_note))
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    steps = settings.steps_per_epoch or max(1, sum(plan_tiles(s.image.shape, settings.tile, settings.overlap).n_tiles
                                                     for s in train_samples) // (settings.batch * world))
    total_steps = settings.epochs * steps

    def cosine(optimizer):  # closed-form decay over the whole run: resuming with more epochs stretches it smoothly
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))

    loop = TrainingLoop(model, out, device=device, amp=settings.amp, lr=settings.lr, title=settings.model,
                        progress=progress, main_process=main_process)
    loop.resume()
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    hooks = SegmentationHooks(settings, model, net, train_samples, held_samples, spec, steps, rank, start_note)
    phase = Phase(1, "train", settings.epochs,
                  make_optimizer=lambda: make_optimizer(settings.optimizer,
                                                        parameter_groups(model, settings.lr, settings.backbone_lr),
                                                        settings.lr),
                  make_scheduler=cosine)
    history = loop.run([phase], hooks)
    if hooks.average is not None:  # the weights written are the average that was validated
        model.load_state_dict(hooks.average.weights)
    model.eval().cpu().to(memory_format=torch.contiguous_format)
    if main_process:
        training = {"settings": asdict(settings), "history": history, "command": " ".join(sys.argv),
                    "train_images": len(train_samples), "holdout_images": len(held_samples), "world_size": world,
                    "device": str(device), **({"start": start_note} if start_note else {})}
        save_weights(model, out, settings.model, model.config.to_dict(), spec.to_dict(), settings.tile, training)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return history[-1] if history else {}


class SegmentationHooks(TrainingHooks):
    """What a segmentation run adds to the shared loop: tiles from the sampler (hard negatives re-mined every
    ``mine_every`` epochs), the principal and auxiliary losses (:func:`training_step`), validation on full images
    (rank 0), and ``best/`` (the epoch with the best validation F1, then pixel IoU)."""

    def __init__(self, settings: TrainSettings, model, net, train_samples, held_samples, spec, steps: int,
                 rank: int, start_note: dict) -> None:
        self.settings, self.model, self.net = settings, model, net
        self.train_samples, self.held_samples, self.spec = train_samples, held_samples, spec
        self.steps, self.rank, self.start_note = steps, rank, start_note
        self.hard: list = []
        self.mine_seconds = 0.0
        self.start_epoch = 0
        self.best: dict | None = None
        self.parts: StepParts | None = None
        self.device = self.amp_dtype = None
        self.average: WeightAverage | None = None

    def start_phase(self, phase: Phase, optimizer, loop: TrainingLoop) -> None:
        from engines.weights import WEIGHTS_FILE

        s = self.settings
        self.device, self.amp_dtype, self.main_process = loop.device, loop.amp_dtype, loop.main_process
        self.start_epoch = loop.done.get(phase.number, 0)
        self.best = _best_so_far(loop.history)
        if self.best is not None and not (Path(s.out) / "best" / WEIGHTS_FILE).is_file():
            log.warning("%s holds no weights, though epoch %s (validation F1 %s) was written there: it was deleted "
                        "or moved. best/ will hold the best of the epochs from here on; put the old folder back "
                        "first to keep it", Path(s.out) / "best", self.best.get("epoch"),
                        self.best.get("best_f1", self.best.get("f1")))
            self.best = None
        self.parts = StepParts(self.spec, loop.device, segmentation_loss(s.loss), s.aux_weight, optimizer,
                               loop.scaler, loop.amp_dtype, s.channels_last)
        saved = loop.extra.get("ema")
        if s.ema:
            self.average = WeightAverage(self.model, s.ema)
            if saved is not None:
                self.average.load_state_dict(saved)
            elif self.start_epoch:
                log.info("--ema: the checkpoint has no average; it starts from the weights after epoch %d",
                         self.start_epoch)
        elif saved is not None:
            log.warning("the checkpoint kept a weight average (--ema %s) that this command does not: the epochs from "
                        "here on validate and save the trained weights; give --ema %s to go on with it",
                        saved["decay"], saved["decay"])

    def epoch_batches(self, phase: Phase, epoch: int):
        from engines.data.segmentation import TileSampler

        s = self.settings
        t0 = time.time()
        self.mine_seconds = 0.0
        if s.hard_negatives > 0 and (not self.hard or (epoch - self.start_epoch) % max(1, s.mine_every) == 0):
            self.hard = mine_hard_negatives(self.model, self.train_samples, s, self.spec, self.device,
                                            self.amp_dtype)
            self.mine_seconds = time.time() - t0
            log.info("mined %d hard-negative tiles (top score >= %.2f) in %.0f s", len(self.hard),
                     s.mine_threshold, self.mine_seconds)
        sampler = TileSampler(self.train_samples, s.tile, s.defect_fraction,
                              seed=(s.seed * 1000 + epoch) * 64 + self.rank,
                              overlap=s.overlap if s.sampling == "grid" else None,
                              class_balanced=s.class_balanced, hard_fraction=s.hard_negatives,
                              hard_negatives=self.hard, photometric=s.photometric, border=s.border,
                              edge_fraction=s.edge_fraction, paste_fraction=s.paste_fraction,
                              whole_fraction=s.context or s.whole_crops)
        return sampler.batches(s.batch, self.steps, s.prefetch), self.steps

    def train_mode(self) -> None:
        self.net.train()

    def step(self, batch, phase: Phase, check) -> float:
        tiles, masks = batch
        loss = training_step(self.net, tiles, masks, self.parts, check=check)
        if self.average is not None:
            self.average.update(self.model)
        return loss

    def checkpoint_extra(self) -> dict:
        return {"ema": self.average.state_dict()} if self.average is not None else {}

    def end_epoch(self, stats: EpochStats) -> dict:
        if self.average is None:
            return self._end_epoch(stats)
        with self.average.applied(self.model):  # the average is what is validated and kept as best/
            return {**self._end_epoch(stats), "ema": self.average.decay}

    def _end_epoch(self, stats: EpochStats) -> dict:
        from engines.evaluate import evaluate_as_station, evaluate_full_images
        from engines.weights import save_weights

        s, model = self.settings, self.model
        model.eval()
        metrics = {}
        if self.main_process and self.held_samples and s.validate:
            t0 = time.time()
            if s.validate_as == "station":
                metrics = evaluate_as_station(model.cpu(), s.model, self.held_samples, self.spec, s.tile, s.overlap,
                                              min_area_px=s.min_area_px)
            else:
                metrics = evaluate_full_images(model.cpu(), self.held_samples, self.spec, min_area_px=s.min_area_px)
            metrics["validate_seconds"] = round(time.time() - t0, 1)
            model.to(self.device)
        epoch = stats.epoch
        record = {"epoch": epoch + 1, "step": (epoch + 1) * stats.steps, "loss": round(stats.loss, 5),
                  "seconds": round(stats.seconds, 1),
                  "train_tiles_per_s": round(stats.steps * s.batch / max(stats.step_seconds, 1e-9), 2),
                  **({"mine_seconds": round(self.mine_seconds, 1), "hard_tiles": len(self.hard)}
                     if s.hard_negatives else {}), **metrics}
        if self.main_process and metrics and _score(record) > _score(self.best):
            self.best = record
            save_weights(model.cpu(), Path(s.out) / "best", s.model, model.config.to_dict(), self.spec.to_dict(),
                         s.tile, {"settings": asdict(s), "epoch": epoch + 1, "validation": metrics,
                                  "start": self.start_note})
            model.to(self.device)
        return record


@dataclass(frozen=True)
class StepParts:
    """What one training step needs besides the network and its batch (shared with ``benchmarks/train_speed.py``,
    so the benchmark times the very step that trains)."""

    spec: object
    device: object
    criterion: object
    aux_weight: float
    optimizer: object
    scaler: object
    amp_dtype: object = None
    channels_last: bool = True


def training_step(net, tiles: np.ndarray, masks: np.ndarray, parts: StepParts, check=None) -> float:
    """One optimiser step on uint8 ``tiles`` and int64 ``masks``: the principal plus weighted auxiliary losses,
    forward under autocast when ``amp_dtype`` is set. Returns the loss. ``check(loss)`` runs before ``backward``,
    so a check that raises (a NaN loss) leaves the weights untouched."""
    import torch

    x = torch.from_numpy(normalize_tiles(tiles, parts.spec)).to(parts.device, non_blocking=True)
    if parts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(masks).to(parts.device, non_blocking=True)
    with torch.autocast(parts.device.type, dtype=parts.amp_dtype or torch.float32, enabled=parts.amp_dtype is not None):
        outputs = net(x)
        principal, *aux = outputs if isinstance(outputs, tuple) else (outputs,)
        principal, aux = principal.float(), [a.float() for a in aux]
    loss = parts.criterion(principal, y) + parts.aux_weight * sum(parts.criterion(a, y) for a in aux)
    return optimizer_step(loss, parts.optimizer, parts.scaler, check)


def _score(record: dict | None) -> tuple[float, float]:
    """How epochs are ranked for ``best/``: validation F1 at the best threshold, then pixel IoU."""
    if not record:
        return (-1.0, -1.0)
    return (record.get("best_f1", record.get("f1", -1.0)), record.get("pixel_iou", -1.0))


def _best_so_far(history: list[dict]) -> dict | None:
    scored = [r for r in history if "f1" in r]
    return max(scored, key=_score) if scored else None


def samples_from_split(samples, path) -> tuple[list, list, dict]:
    """``(train, validation, record)`` from a split file: its ``train`` list trains; ``validation`` (or, in a
    two-way file, ``holdout``) validates. A three-way file's ``holdout`` images are used by neither."""
    from engines.data.segmentation import read_split

    split = read_split(path)
    by_name = {s.name: s for s in samples}
    check = "validation" if "validation" in split else "holdout"
    missing = [n for part in ("train", check) for n in split.get(part, []) if n not in by_name]
    if missing:
        raise InputError(f"{len(missing)} images of {path} are not in the data folder (first: {missing[0]}); "
                         "pass the --data folder the split was made from")
    overlap = set(split.get("train", [])) & (set(split.get("validation", [])) | set(split.get("holdout", [])))
    if overlap:
        raise InputError(f"{path} lists {len(overlap)} images both for training and for judging; remake the split")
    train = [by_name[n] for n in split["train"]]
    validation = [by_name[n] for n in split.get(check, [])]
    return train, validation, split


def init_backbone_from(model, source: str) -> dict:
    """Load the ResNet backbone of the network in ``source`` (folder or shipped name) into ``model``; returns the
    record kept in the training config."""
    from engines.models.backbone_transfer import backbone_state, load_backbone
    from engines.weights import load_model, resolve_weights

    bundle = resolve_weights(source)
    report = load_backbone(model, backbone_state(load_model(bundle)))
    return {"init_backbone": str(source), "source_model": bundle.model, "source_sha256": bundle.sha256(),
            "tensors": report["loaded"], "adapted": report["adapted"]}


def mine_hard_negatives(model, train_samples, settings: TrainSettings, spec, device, amp_dtype=None,
                        batch: int = 64) -> list[tuple[int, int, int, float]]:
    """Tiles of the defect-free training images (cut where the station's tiler cuts, on the sampler's padded
    images) whose top defect score reaches ``settings.mine_threshold``: ``(sample index, y0, x0, score)``."""
    import torch

    from engines.data.segmentation import pad_to_tile

    t = settings.tile
    cut = []
    for k, s in enumerate(train_samples):
        if s.defective or s.mask.any():
            continue
        image = pad_to_tile(s.image, t)
        for y0, x0 in plan_tiles(image.shape, t, settings.overlap).origins_array:
            cut.append((k, int(y0), int(x0), image))
    found = []
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        for i in range(0, len(cut), batch):
            chunk = cut[i:i + batch]
            tiles = np.stack([img[y0:y0 + t, x0:x0 + t] for _, y0, x0, img in chunk])
            x = torch.from_numpy(normalize_tiles(tiles, spec)).to(device)
            if settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            top = (1.0 - model(x).float().softmax(1)[:, 0]).amax(dim=(1, 2)).cpu().numpy()
            found += [(k, y0, x0, float(score)) for (k, y0, x0, _), score in zip(chunk, top)
                      if score >= settings.mine_threshold]
    model.train(was_training)
    return found
