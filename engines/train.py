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

from engines.errors import check_loss

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
    overlap: int = 32
    holdout: float = 0.2
    seed: int = 0
    aux_weight: float = 1.0
    optimizer: str = "rmsprop"  # the paper's; "adam" converges faster from scratch (see docs/MODELS.md)
    loss: str = "ce"  # the paper's cross-entropy; "ce+dice" adds a soft Dice term against background collapse
    defect_fraction: float = 0.5
    sampling: str = "grid"  # "grid": the tiles the station's tiler cuts; "random": random crops (session-1 runs)
    steps_per_epoch: int = 0  # 0 = as many tiles as the tiler cuts from the training images, / batch
    threads: int = 0
    min_area_px: int = 20
    model_config: dict = field(default_factory=dict)
    init: str = ""  # start from these weights (folder or shipped name) instead of random initialisation
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    amp: bool = False  # mixed precision (float16 + gradient scaling on CUDA, bfloat16 on the CPU)
    validate: bool = True  # score the held-out images after every epoch


OPTIMIZERS = ("rmsprop", "adam")
LOSSES = ("ce", "ce+dice")


def make_optimizer(name: str, parameters, lr: float):
    import torch

    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


def segmentation_loss(name: str):
    """Cross-entropy (the paper), or cross-entropy plus a soft Dice term on the defect probability."""
    import torch

    ce = torch.nn.CrossEntropyLoss()
    if name == "ce":
        return ce
    if name != "ce+dice":
        raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")

    def ce_dice(logits, target):
        p = 1.0 - logits.softmax(1)[:, 0]
        t = (target > 0).float()
        dice = 1.0 - (2.0 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
        return ce(logits, target) + dice

    return ce_dice


def _distributed():
    """``(rank, world_size, local_rank)`` when launched by ``torchrun`` (``WORLD_SIZE`` > 1), else ``(0, 1, 0)``."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(name: str, local_rank: int = 0):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            from engines.errors import BackendUnavailable

            raise BackendUnavailable("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        return torch.device("cuda", local_rank if name == "cuda" else int(name.split(":", 1)[1]))
    return torch.device("cpu")


def train_segmentation(settings: TrainSettings, progress: bool = True, train_samples=None, held_samples=None) -> dict:
    """Train, checkpoint every epoch to ``out/checkpoint.pt`` (resumed automatically), validate on the held-out
    split, and write the final weights (``model.safetensors`` + ``config.json``) to ``out``.

    ``train_samples``/``held_samples`` give the split explicitly (``engines compare`` passes its folds); otherwise
    ``settings.data`` is loaded and split by ``settings.holdout``. Under ``torchrun`` every process trains on its
    own tile stream (seeded by rank) with gradients averaged by DistributedDataParallel; rank 0 validates, logs,
    checkpoints and writes the weights. Mixed precision (``settings.amp``) is float16 with a gradient scaler on
    CUDA and bfloat16 autocast on the CPU.
    """
    import torch
    from tqdm import tqdm

    from engines.data.segmentation import TileSampler, load_dataset, stratified_split
    from engines.evaluate import evaluate_full_images
    from engines.models import build_model
    from engines.preprocess import InputSpec, normalize_tiles
    from engines.weights import save_weights
    from station.tiling import plan_tiles

    rank, world, local_rank = _distributed()
    device = pick_device(settings.device, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_process = rank == 0
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    if train_samples is None:
        samples = load_dataset(settings.data)
        train_idx, held_idx = stratified_split(samples, settings.holdout, settings.seed)
        train_samples = [samples[i] for i in train_idx]
        held_samples = [samples[i] for i in held_idx]
    held_samples = held_samples or []
    if main_process:
        (out / "split.json").write_text(json.dumps(
            {"train": [s.name for s in train_samples], "holdout": [s.name for s in held_samples]}, indent=1))
    spec = InputSpec(channels=1)
    config = {"in_channels": spec.channels, **settings.model_config}
    model = build_model(settings.model, config)
    if settings.init:
        from engines.weights import load_model, resolve_weights

        start = load_model(resolve_weights(settings.init))
        model.load_state_dict(start.state_dict())
        log.info("initialised from %s", settings.init)
    model.to(device)
    optimizer = make_optimizer(settings.optimizer, model.parameters(), settings.lr)
    steps = settings.steps_per_epoch or max(1, sum(plan_tiles(s.image.shape, settings.tile, settings.overlap).n_tiles
                                                     for s in train_samples) // (settings.batch * world))
    total_steps = settings.epochs * steps
    # Closed-form cosine decay over the whole run: resuming with more epochs stretches the curve smoothly.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    history: list[dict] = []
    start_epoch = 0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.last_epoch = int(state["scheduler"].get("last_epoch", 0))  # the schedule is closed-form
        start_epoch, history = int(state["epoch"]), json.loads(state["history"])
        log.info("resumed from %s at epoch %d", checkpoint, start_epoch)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if settings.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=settings.amp and device.type == "cuda")
    criterion = segmentation_loss(settings.loss)
    for epoch in range(start_epoch, settings.epochs):
        sampler = TileSampler(train_samples, settings.tile, settings.defect_fraction,
                              seed=(settings.seed * 1000 + epoch) * 64 + rank,
                              overlap=settings.overlap if settings.sampling == "grid" else None)
        net.train()
        t0, total = time.time(), 0.0
        bar = tqdm(range(steps), desc=f"{settings.model} epoch {epoch + 1}/{settings.epochs}",
                   disable=not (progress and main_process), file=sys.stderr,
                   mininterval=1.0 if sys.stderr.isatty() else 60.0)
        for step in bar:
            tiles, masks = sampler.batch(settings.batch)
            x = torch.from_numpy(normalize_tiles(tiles, spec)).to(device, non_blocking=True)
            y = torch.from_numpy(masks).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = net(x)
                principal, *aux = outputs if isinstance(outputs, tuple) else (outputs,)
                principal, aux = principal.float(), [a.float() for a in aux]
            loss = criterion(principal, y) + settings.aux_weight * sum(criterion(a, y) for a in aux)
            value = float(loss.detach())
            check_loss(value, f"epoch {epoch + 1} step {step + 1}", settings.lr)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += value
            bar.set_postfix(loss=f"{value:.4f}")
        model.eval()
        metrics = {}
        if main_process and held_samples and settings.validate:
            metrics = evaluate_full_images(model.cpu(), held_samples, spec, min_area_px=settings.min_area_px)
            model.to(device)
        record = {"epoch": epoch + 1, "loss": round(total / steps, 5), "seconds": round(time.time() - t0, 1),
                  **metrics}
        history.append(record)
        if main_process:
            log.info("epoch %s", json.dumps(record))
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": json.dumps(history)},
                       checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
    model.eval().cpu()
    if main_process:
        training = {"settings": asdict(settings), "history": history, "command": " ".join(sys.argv),
                    "train_images": len(train_samples), "holdout_images": len(held_samples), "world_size": world,
                    "device": str(device)}
        save_weights(model, out, settings.model, model.config.to_dict(), spec.to_dict(), settings.tile, training)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return history[-1] if history else {}
