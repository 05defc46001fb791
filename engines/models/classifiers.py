"""Multi-label classification baselines GR is compared against (paper 001, Table 2): ResNet-50, VGG-16 and
Inception-v3, straight from torchvision with ``weights=None`` (nothing is downloaded) and the last layer replaced by
one producing ``num_classes`` logits (torchvision's ``num_classes=``), trained with per-label BCE
(:func:`multilabel_bce`); ``sigmoid`` of the logits gives per-label probabilities, positive above 0.5.

* ``in_channels`` other than 3 replaces the first convolution (ResNet ``conv1``, VGG ``features[0]``, Inception
  ``Conv2d_1a_3x3.conv``) with one of the same shape taking that many channels; with 3 (default, the paper's RGB
  input) grey tiles are replicated by ``InputSpec(channels=3)``.
* Inception-v3: ``aux_logits=False`` — the auxiliary classifier is left out (the paper says nothing of it; it needs
  inputs of at least 299-ish px to be meaningful and doubles the head count for little gain), so training and eval
  both return the main logits only; ``transform_input=False`` (that re-normalisation is for ImageNet weights);
  ``init_weights=True`` (torchvision's truncated-normal initialisation). Its stem needs inputs of at least 75×75
  pixels; smaller inputs are refused with a clear error.
* VGG-16 keeps torchvision's classifier (adaptive 7×7 pool, 4096-4096 fully connected layers with dropout), the
  last layer giving ``num_classes`` logits; any input of at least 32×32 works.

Every model returns logits ``(N, num_classes)`` in training and eval mode.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engines.errors import InputError
from engines.models import MODELS

ARCHS = tuple(name for name, spec in MODELS.items() if spec.module == __name__)  # resnet50, vgg16, inceptionv3
MIN_SIDE = {name: MODELS[name].sides.minimum for name in ARCHS}  # the registry's: Inception-v3's stem needs 75 px


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything needed to rebuild a classification baseline; saved as JSON beside the weights."""

    arch: str
    num_classes: int = 4
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"arch {self.arch!r} is not one of {ARCHS}")
        from engines.models.baselines import check_positive_ints

        check_positive_ints(self, "num_classes", "in_channels")

    def to_dict(self) -> dict:
        return asdict(self)


def _replace_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     bias=conv.bias is not None)


class MultiLabelClassifier(nn.Module):
    """A torchvision classification network with ``num_classes`` logits; ``forward`` returns ``(N, C)`` logits."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        import torchvision

        self.config = config
        c, k = config.num_classes, config.in_channels
        if config.arch == "resnet50":
            net = torchvision.models.resnet50(weights=None, num_classes=c)
            if k != 3:
                net.conv1 = _replace_conv(net.conv1, k)
        elif config.arch == "vgg16":
            net = torchvision.models.vgg16(weights=None, num_classes=c)
            if k != 3:
                net.features[0] = _replace_conv(net.features[0], k)
        else:
            net = torchvision.models.inception_v3(weights=None, num_classes=c, aux_logits=False, transform_input=False,
                                                  init_weights=True)
            if k != 3:
                net.Conv2d_1a_3x3.conv = _replace_conv(net.Conv2d_1a_3x3.conv, k)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = MIN_SIDE[self.config.arch]
        if not torch.jit.is_tracing() and min(x.shape[-2:]) < side:
            raise InputError(f"{self.config.arch} needs inputs of at least {side}×{side} pixels, got "
                             f"{tuple(x.shape[-2:])}")
        return self.net(x)


def build_classifier(config: ClassifierConfig) -> MultiLabelClassifier:
    return MultiLabelClassifier(config)


def multilabel_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The baselines' training loss: mean binary cross-entropy over images and labels."""
    return F.binary_cross_entropy_with_logits(logits, labels.float())
