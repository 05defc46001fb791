"""The one training loop of the segmentation networks and the multi-label classifiers (:mod:`engines.train`,
:mod:`engines.train_cls`): device, mixed precision, optimiser and scheduler per phase, the epoch loop with its
progress bar, the loss check, the history, and the checkpoint it resumes from.

A job gives the loop its :class:`Phase` list (one for a segmentation network or a classification baseline; GR's
pre-training and normal phase) and a :class:`TrainingHooks` object for what differs: the batches of an epoch, the
forward pass and loss of one step, and what ends an epoch (validation, ``best/``)::

    loop = TrainingLoop(model, out, device=device, amp=settings.amp, lr=settings.lr, title="bffn")
    loop.resume()                      # out/checkpoint.pt, when there is one: weights now, optimiser per phase
    history = loop.run([Phase(1, "train", epochs, make_optimizer, make_scheduler)], hooks)

The checkpoint (``out/checkpoint.pt``, written through a temporary file every epoch) holds ``model``,
``optimizer``, ``scheduler`` (when the phase has one), ``epoch`` (finished in the current phase), ``phase``,
``done`` (epochs finished per phase, JSON), ``history`` (JSON) and the job's own keys (given back after
:meth:`TrainingLoop.resume` as ``loop.extra``; a :class:`WeightAverage` is kept there). Checkpoints of the earlier
separate loops are resumed as they are: a segmentation one (no ``phase``) is phase 1 after ``epoch`` epochs.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from engines.errors import InputError, check_loss

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
LOOP_KEYS = ("model", "optimizer", "scheduler", "epoch", "history", "phase", "done")


def distributed() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` when launched by ``torchrun`` (``WORLD_SIZE`` > 1), else ``(0, 1, 0)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(name: str, local_rank: int = 0):
    """``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"`` (this process's GPU under torchrun) or
    ``"cuda:N"`` as a torch device; asking for CUDA where there is none is refused with what to use instead."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            from engines.errors import BackendUnavailable

            raise BackendUnavailable("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        return torch.device("cuda", local_rank if name == "cuda" else int(name.split(":", 1)[1]))
    return torch.device("cpu")


def start_run(out: str | Path, threads: int, seed: int) -> Path:
    """What every training run does first: its folder made (``out``, returned as a path), torch's CPU threads set
    (``threads``; 0: torch's default) and its random seed."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return out


def mixed_precision(device, amp: bool):
    """``(autocast dtype or None, gradient scaler)``: float16 with gradient scaling on CUDA, bfloat16 on the CPU
    (no scaling needed), nothing without ``amp``."""
    import torch

    amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if amp else None
    return amp_dtype, torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")


def optimizer_step(loss, optimizer, scaler, check: Callable[[float], None] | None = None) -> float:
    """One optimiser step on ``loss`` through the gradient scaler; returns the loss value. ``check(value)`` runs
    before ``backward``, so a check that raises (a NaN loss) leaves the weights untouched."""
    value = float(loss.detach())
    if check is not None:
        check(value)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return value


def load_optimizer_state(optimizer, state: dict) -> None:
    """Resume ``optimizer`` from a checkpoint's ``state``, keeping this optimiser's kernel (``fused``, ``foreach``):
    torch would otherwise take the checkpoint's, so a run checkpointed before Adam was fused would resume on the
    slower for-loop kernel. The moments and step counts are the same either way."""
    kernels = ("fused", "foreach")
    groups = [{**saved, **{k: group[k] for k in kernels if k in group}}
              for saved, group in zip(state["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({**state, "param_groups": groups})


class WeightAverage:
    """An exponential moving average of a network's weights and its batch-norm statistics (``engines train
    --ema DECAY``): after every optimiser step ``average = d * average + (1 - d) * weights``, with ``d`` warmed up
    as ``min(DECAY, (1 + n) / (10 + n))`` over the first ``n`` steps so that the start's weights fade quickly.
    Integer buffers (batch-norm's step counters) are copied. The average is what gets validated and saved; the
    optimiser goes on training the weights themselves."""

    def __init__(self, model, decay: float) -> None:
        if not 0 < decay < 1:
            raise InputError(f"--ema {decay}: the decay per step must be in 0..1 (e.g. 0.999, which averages about "
                             "the last 1,000 steps; 0 = off)")
        self.decay, self.steps = float(decay), 0
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model) -> None:
        import torch

        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            for name, value in model.state_dict().items():
                average = self.weights[name]
                if average.is_floating_point():
                    average.mul_(d).add_(value.detach().to(average.dtype), alpha=1 - d)
                else:
                    average.copy_(value)

    @contextmanager
    def applied(self, model):
        """The average in ``model`` inside the block; the trained weights are put back after it."""
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.weights)
        try:
            yield model
        finally:
            model.load_state_dict(trained)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for name, value in state["weights"].items():
            self.weights[name].copy_(value)


@dataclass
class Phase:
    """One training phase: its number and name, its epochs, and how its optimiser (and, optionally, a scheduler
    stepped after every optimiser step) are made. ``on_start`` runs when the phase starts afresh, not when a run is
    resumed inside it (GR initialises its graph there). ``title`` names the phase in the progress bar and the loss
    check (the classifiers' phases are titled; a segmentation run's single phase is not)."""

    number: int
    name: str
    epochs: int
    make_optimizer: Callable[[], Any]
    make_scheduler: Callable[[Any], Any] | None = None
    on_start: Callable[[], None] | None = None
    title: str = ""


@dataclass
class EpochStats:
    """What the loop measured over one epoch's steps, for the job's epoch record."""

    phase: Phase
    epoch: int  # 0-based
    steps: int
    loss: float  # mean over the steps
    seconds: float  # the whole epoch until now, batches' preparation included
    step_seconds: float  # the steps alone


class TrainingHooks:
    """What a job adds to the loop. ``start_phase`` is told the phase's optimiser before its first epoch here."""

    def start_phase(self, phase: Phase, optimizer, loop: "TrainingLoop") -> None:
        """Called when a phase begins (or resumes) in this run, with its optimiser."""

    def epoch_batches(self, phase: Phase, epoch: int) -> tuple[Iterable, int]:
        """The batches of one epoch and how many there are."""
        raise NotImplementedError

    def train_mode(self) -> None:
        """Put the network in training mode (called after :meth:`epoch_batches`, before the first step)."""
        raise NotImplementedError

    def step(self, batch, phase: Phase, check: Callable[[float], None]) -> float:
        """Forward, loss and optimiser step on one batch (:func:`optimizer_step` with ``check``); the loss value."""
        raise NotImplementedError

    def end_epoch(self, stats: EpochStats) -> dict:
        """Validation and anything else that ends an epoch; returns the epoch's record for the history."""
        raise NotImplementedError

    def checkpoint_extra(self) -> dict:
        """The job's own keys in every checkpoint."""
        return {}


@dataclass
class TrainingLoop:
    """The epoch loop over phases, with checkpoints in ``out`` and resuming from them (see the module's doc)."""

    model: Any
    out: Path
    device: Any
    amp: bool = False
    lr: float = 0.0  # quoted by the loss check's advice
    title: str = ""  # the progress bar's name, e.g. the model's
    progress: bool = True
    main_process: bool = True  # logs and writes checkpoints (rank 0 under torchrun)
    history: list[dict] = field(default_factory=list)
    done: dict[int, int] = field(default_factory=dict)  # epochs finished per phase
    current: int | None = None  # the phase the checkpoint was written in
    extra: dict = field(default_factory=dict)  # the job's own keys of the checkpoint resumed from

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.amp_dtype, self.scaler = mixed_precision(self.device, self.amp)
        self._saved: dict | None = None  # the checkpoint's optimiser and scheduler, for the phase it was written in

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT

    def resume(self, check: Callable[[dict], None] | None = None) -> bool:
        """Load the checkpoint's weights and position, when there is a checkpoint; ``check(state)`` may refuse it
        (raise) before anything is loaded. The optimiser's state is loaded when its phase starts in :meth:`run`."""
        if not self.checkpoint.exists():
            return False
        import torch

        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        if check is not None:
            check(state)
        self.model.load_state_dict(state["model"])
        self.current = int(state.get("phase", 1))
        self.history = json.loads(state["history"])
        self.done = ({int(k): int(v) for k, v in json.loads(state["done"]).items()} if "done" in state
                     else {self.current: int(state["epoch"])})
        self._saved = {"optimizer": state["optimizer"], "scheduler": state.get("scheduler")}
        self.extra = {k: v for k, v in state.items() if k not in LOOP_KEYS}
        log.info("resumed from %s: phase %d after %d epoch(s)", self.checkpoint, self.current,
                 self.done.get(self.current, 0))
        return True

    def run(self, phases: list[Phase], hooks: TrainingHooks) -> list[dict]:
        """Train every phase from where the checkpoint left it; returns the whole history (resumed epochs too)."""
        from tqdm import tqdm

        for phase in phases:
            if self.current is not None and phase.number < self.current:
                if self.done.get(phase.number, 0) != phase.epochs:
                    log.warning("phase %d (%s) finished after %d epoch(s) in the checkpoint; it is not repeated",
                                phase.number, phase.name, self.done.get(phase.number, 0))
                continue
            start_epoch = self.done.get(phase.number, 0)
            if start_epoch == 0 and phase.on_start is not None:
                phase.on_start()
            if start_epoch >= phase.epochs:
                continue
            optimizer = phase.make_optimizer()
            scheduler = phase.make_scheduler(optimizer) if phase.make_scheduler is not None else None
            if self._saved is not None and self.current == phase.number:
                load_optimizer_state(optimizer, self._saved["optimizer"])
                if scheduler is not None and self._saved["scheduler"] is not None:
                    # closed-form schedules: the position is all that is needed (more epochs stretch the curve)
                    scheduler.last_epoch = int(self._saved["scheduler"].get("last_epoch", 0))
            self._saved, self.current = None, phase.number
            hooks.start_phase(phase, optimizer, self)
            for epoch in range(start_epoch, phase.epochs):
                t0, total = time.time(), 0.0
                batches, steps = hooks.epoch_batches(phase, epoch)
                hooks.train_mode()
                t_steps = time.time()
                desc = " ".join(filter(None, [self.title, phase.title, f"epoch {epoch + 1}/{phase.epochs}"]))
                bar = tqdm(batches, total=steps, desc=desc, disable=not (self.progress and self.main_process),
                           file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 60.0)
                where = f"phase {phase.number} epoch {epoch + 1}" if phase.title else f"epoch {epoch + 1}"
                for step, batch in enumerate(bar, 1):
                    value = hooks.step(batch, phase, check=lambda v, s=step: check_loss(v, f"{where} step {s}",
                                                                                        self.lr))
                    if scheduler is not None:
                        scheduler.step()
                    total += value
                    bar.set_postfix(loss=f"{value:.4f}")
                step_seconds = time.time() - t_steps
                record = hooks.end_epoch(EpochStats(phase, epoch, steps, total / steps, time.time() - t0,
                                                    step_seconds))
                self.history.append(record)
                self.done[phase.number] = epoch + 1
                if self.main_process:
                    log.info("epoch %s", json.dumps(record))
                    self.save(optimizer, scheduler, phase, epoch + 1, hooks.checkpoint_extra())
        return self.history

    def save(self, optimizer, scheduler, phase: Phase, epoch: int, extra: dict) -> None:
        """Write the checkpoint through a temporary file, so that a kill never leaves half of one."""
        import torch

        state = {"model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                 **({"scheduler": scheduler.state_dict()} if scheduler is not None else {}),
                 "epoch": epoch, "history": json.dumps(self.history), "phase": phase.number,
                 "done": json.dumps(self.done), **extra}
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint)
