"""Building blocks the networks share: the torchvision ResNet backbone (BFFN, its segmentation baselines and GR
stand on it) and the conv-BN-ReLU unit."""
from __future__ import annotations

from torch import nn

from engines.models import RESNETS

BACKBONES = RESNETS


def resnet_backbone(name: str, in_channels: int) -> tuple[nn.Module, tuple[int, int, int]]:
    """An untrained torchvision ResNet (``weights=None``: nothing is downloaded) taking ``in_channels`` (the stem
    convolution is replaced when that is not 3), and the channels of its layer1, layer3 and layer4 outputs."""
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    expansion = 4 if name == "resnet50" else 1
    return net, (64 * expansion, 256 * expansion, 512 * expansion)


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    """``k``×``k`` convolution (no bias, same padding), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )
