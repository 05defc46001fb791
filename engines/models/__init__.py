"""Networks built by name from a small registry that says what each one can do; each one's config is saved next
to its weights.

Segmentation: ``bffn`` is paper 000's network (``engines/models/bffn.py``); ``fcn``, ``unet``, ``deeplabv3plus`` and
``bisenet`` are the baselines it is compared against (``engines/models/baselines.py``).

Multi-label classification: ``gr`` is paper 001's two-stage network (``engines/models/gr.py``); ``resnet50``,
``vgg16`` and ``inceptionv3`` are its baselines (``engines/models/classifiers.py``).

The registry (:data:`MODELS`, :func:`model_spec`) is plain data and imports no torch, so the ``engines`` command
takes its choices from it and the checks that need no network (input sides, scoring modes, channels) run before
anything heavy is loaded::

    >>> spec = model_spec("vgg16")
    >>> spec.task, spec.sides.accepts(64), spec.onnx_sides.accepts(64), spec.onnx_sides.nearest(64)
    (<Task.CLASSIFICATION: 'classification'>, True, False, [224])
    >>> type(build_model("bffn", {"use_sam": False})).__name__  # an untrained network (this imports torch)
    'BFFN'
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from importlib import import_module
from typing import Any

from engines.errors import InputError

RESNETS = ("resnet18", "resnet34", "resnet50")  # torchvision and segmentation_models_pytorch both have these


class Task(str, Enum):
    """What a network's output means."""

    SEGMENTATION = "segmentation"  # (N, K, s, s) class probabilities per pixel
    CLASSIFICATION = "classification"  # (N, K) independent label probabilities (multi-label)


@dataclass(frozen=True)
class Sides:
    """The square input sides a network takes: at least ``minimum`` px, and ``(side // stride) % multiple == 0``.

    ``Sides(32, multiple=32)`` is every multiple of 32 (a stride-32 backbone whose decoder must line up);
    ``Sides(224, multiple=7, stride=32)`` is VGG-16's ONNX export, whose adaptive 7×7 pool exports only when the
    stride-32 feature map is a multiple of 7 (224-255, 448-479, ... px)."""

    minimum: int = 32
    multiple: int = 1
    stride: int = 1
    why: str = ""  # the reason, in the words an error message uses

    def accepts(self, side: int) -> bool:
        return side >= self.minimum and (side // self.stride) % self.multiple == 0

    def nearest(self, side: int) -> list[int]:
        """The valid sides closest to ``side`` (one below, one above; just one where ``side`` is below the
        minimum)."""
        step = self.stride * self.multiple
        below = (side // step) * step
        found = [s for s in (below, below + step) if s >= self.minimum and self.accepts(s)]
        return found or [self.smallest()]

    def smallest(self, at_least: int = 0) -> int:
        """The smallest valid side of at least ``at_least`` px."""
        side = max(self.minimum, at_least)
        while not self.accepts(side):
            side += 1
        return side

    def describe(self) -> str:
        if self.multiple == 1:
            return f"at least {self.minimum} px"
        if self.stride == 1:
            return f"multiples of {self.multiple} from {self.minimum} px"
        step = self.stride * self.multiple
        return f"{step}·k to {step}·k+{self.stride - 1} px"


@dataclass(frozen=True)
class ModelSpec:
    """One registered network: where it is built, and what it can do.

    ``channels``: the input channels it takes, the one training uses first. ``sides``: input sides that work in
    torch; ``export_sides``: the ONNX export's, where narrower. ``modes``: scoring modes (GR: ``batch`` relates the
    images of a batch, ``bank`` relates each one to a stored reference bank). ``phases``: training phases (GR
    pre-trains its FC2-module). ``backbones``: the ResNets its ``backbone`` option takes; ``options``: further
    config keys the command line may set."""

    name: str
    task: Task
    summary: str
    module: str  # where the network is defined (imported when one is built: it imports torch)
    config_class: str  # its config dataclass in ``module``
    factory: str  # the callable in ``module`` that builds the network from its config
    channels: tuple[int, ...] = (1,)
    sides: Sides = Sides()
    export_sides: Sides | None = None
    modes: tuple[str, ...] = ("batch",)
    phases: tuple[str, ...] = ("train",)
    backbones: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    arch_in_config: bool = False  # the config names the architecture (``arch``), shared by a family's module

    @property
    def onnx_sides(self) -> Sides:
        return self.export_sides or self.sides

    @property
    def has_modes(self) -> bool:
        """True when the network scores in more than one way (GR's batch and bank)."""
        return len(self.modes) > 1

    @property
    def pretrains(self) -> bool:
        """True when training has a pre-training phase before the normal one (GR's FC2-module)."""
        return len(self.phases) > 1

    def check_side(self, side: int, export: bool = False) -> None:
        """Raise ``ValueError`` saying which sides would work when ``side`` is not one the network (or, with
        ``export``, its ONNX export) takes."""
        sides = self.onnx_sides if export else self.sides
        if sides.accepts(side):
            return
        what = "its ONNX export" if export and self.export_sides else self.name
        reason = f" ({sides.why})" if sides.why else ""
        if side < sides.minimum:
            raise InputError(f"{self.name}: tile {side} is too small{reason}; use at least {sides.minimum} px")
        if sides.stride == 1:
            raise InputError(f"{self.name}: tile {side} is not a multiple of {sides.multiple}{reason}; try "
                             f"{' or '.join(map(str, sides.nearest(side)))}")
        raise InputError(f"{self.name}: {what} takes sides of {sides.describe()}, not {side}{reason}; try "
                         f"{' or '.join(map(str, sides.nearest(side)))}")

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise InputError(f"{self.name} scores in mode {' or '.join(map(repr, self.modes))}, not {mode!r}")


_RESNET_STRIDE = Sides(32, multiple=32, why="the backbone's stride")
_SMALLEST_RESNET = Sides(32, why="the smallest a ResNet-style backbone takes")
_SEGMENTATION = dict(task=Task.SEGMENTATION, channels=(1,), sides=_RESNET_STRIDE, backbones=RESNETS)
_BASELINE = dict(_SEGMENTATION, module="engines.models.baselines", config_class="BaselineConfig",
                 factory="build_baseline", arch_in_config=True)
_CLASSIFIER = dict(task=Task.CLASSIFICATION, channels=(3, 1), module="engines.models.classifiers",
                   config_class="ClassifierConfig", factory="build_classifier", arch_in_config=True)

#: Every network the station can train, export and run, by registry name (the order is the commands' order).
MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a network to the registry (its name must be new)."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is registered already")
    if not spec.channels or not spec.modes or not spec.phases:
        raise ValueError(f"model {spec.name!r}: channels, modes and phases need at least one entry each")
    MODELS[spec.name] = spec
    return spec


for _spec in (
    ModelSpec("bffn", summary="BFFN, paper 000: bilateral feature fusion on a ResNet", module="engines.models.bffn",
              config_class="BFFNConfig", factory="BFFN", options=("use_sam", "fusion"), **_SEGMENTATION),
    ModelSpec("fcn", summary="FCN-32s on a ResNet (torchvision)", **_BASELINE),
    ModelSpec("unet", summary="U-Net on a ResNet encoder (segmentation_models_pytorch)", **_BASELINE),
    ModelSpec("deeplabv3plus", summary="DeepLabV3+ on a ResNet encoder (segmentation_models_pytorch)", **_BASELINE),
    ModelSpec("bisenet", summary="BiSeNet V1 on a ResNet context path", **_BASELINE),
    ModelSpec("gr", task=Task.CLASSIFICATION, summary="GR, paper 001: FC2-module with a graph reasoning module",
              module="engines.models.gr", config_class="GRConfig", factory="GR", channels=(3, 1),
              sides=_SMALLEST_RESNET, modes=("batch", "bank"), phases=("pretrain", "train"), backbones=RESNETS,
              options=("label_dim", "alpha", "tau", "use_gr", "cosine")),
    ModelSpec("resnet50", summary="ResNet-50 (torchvision)", sides=_SMALLEST_RESNET, **_CLASSIFIER),
    ModelSpec("vgg16", summary="VGG-16 (torchvision)", sides=Sides(32, why="five 2×2 poolings"),
              export_sides=Sides(224, multiple=7, stride=32,
                                 why="VGG-16's adaptive 7×7 pool exports only when the feature map is a multiple "
                                     "of 7: input sides of 224, 448..."), **_CLASSIFIER),
    ModelSpec("inceptionv3", summary="Inception-v3 (torchvision, no auxiliary head)",
              sides=Sides(75, why="Inception-v3's stem"), **_CLASSIFIER),
):
    register(_spec)

SEGMENTATION_MODELS = tuple(n for n, s in MODELS.items() if s.task is Task.SEGMENTATION)
CLASSIFICATION_MODELS = tuple(n for n, s in MODELS.items() if s.task is Task.CLASSIFICATION)
MODEL_NAMES = SEGMENTATION_MODELS + CLASSIFICATION_MODELS
SCORING_MODES = tuple(dict.fromkeys(mode for spec in MODELS.values() for mode in spec.modes))  # batch, bank


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; ``ValueError`` naming the known models otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def model_kind(name: str) -> str:
    """``"segmentation"`` or ``"classification"`` for a registry name."""
    return model_spec(name).task.value


def build_model(name: str, config: dict[str, Any] | None = None):
    """Build an untrained network by registry name with its config dict (as saved in ``config.json``).

    For a baseline the dict may omit ``arch``; it is taken from ``name`` (and must agree with it if given)."""
    spec = model_spec(name)
    config = dict(config or {})
    if spec.arch_in_config:
        arch = config.setdefault("arch", name)
        if arch != name:
            raise InputError(f"model {name!r} was given a config for arch {arch!r}; they must agree")
    module = import_module(spec.module)
    return getattr(module, spec.factory)(getattr(module, spec.config_class)(**config))


# ------------------------------------------------------------------------------ what a built network holds


def has_relations(model) -> bool:
    """True for a network that relates the images it scores together (GR with its GR-module): its scores depend
    on the batch, unless it is scored against a reference bank."""
    return getattr(model, "gr", None) is not None


def has_bank(model) -> bool:
    """True when the network carries a non-empty reference bank (GR trained by ``engines train gr``)."""
    bank = getattr(model, "reference_bank", None)
    return bank is not None and bank.shape[0] > 0
