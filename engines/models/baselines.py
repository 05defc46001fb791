"""Baseline segmentation networks BFFN is compared against (paper 000, "all using resnet18 as their backbone"):
FCN, U-Net, DeepLabV3+ and BiSeNet (V1).

Where a well-kept library has the model, it is used unchanged:

* FCN: torchvision ``models.segmentation.FCN`` with ``FCNHead`` on a torchvision ResNet (``weights=None``, stem
  convolution replaced for grey input, features via ``IntermediateLayerGetter``); auxiliary ``FCNHead`` on layer3
  for training, as torchvision's own ``fcn_resnet*`` builders do. ResNet-18/34's BasicBlock cannot dilate, so the
  head sees stride 32 for every backbone (also ResNet-50, for a like-for-like comparison) and the logits are
  up-sampled bilinearly to the input size (FCN-32s style).
* U-Net and DeepLabV3+: ``segmentation_models_pytorch`` ``Unet`` / ``DeepLabV3Plus`` with the library's default
  decoders (U-Net channels 256-128-64-32-16; DeepLabV3+ output stride 16, ASPP rates 12/24/36, 256 channels),
  ``encoder_weights=None``, ``in_channels`` from the config. No auxiliary outputs.
* BiSeNet V1 (Yu et al., 2018) is in neither library and is written here compactly (:class:`BiSeNet`).

Every model follows BFFN's forward convention: in training mode a tuple ``(principal, *aux)``, in eval mode the
principal logits ``(N, num_classes, H, W)`` at the input size. No pre-trained weights are ever downloaded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engines.errors import InputError
from engines.models import MODELS
from engines.models.blocks import BACKBONES, conv_bn_relu, resnet_backbone

ARCHS = tuple(name for name, spec in MODELS.items() if spec.module == __name__)  # fcn, unet, deeplabv3plus, bisenet


def check_positive_ints(config, *fields: str) -> None:
    """Raise ``ValueError`` naming the first of ``fields`` of ``config`` that is not a positive integer."""
    for field in fields:
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{field} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class BaselineConfig:
    """Everything needed to rebuild a baseline; saved as JSON beside the weights."""

    arch: str
    num_classes: int = 2
    in_channels: int = 1
    backbone: str = "resnet18"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"arch {self.arch!r} is not one of {ARCHS}")
        if self.backbone not in BACKBONES:
            raise InputError(f"backbone {self.backbone!r} is not one of {BACKBONES} (for arch {self.arch!r})")
        check_positive_ints(self, "num_classes", "in_channels")

    def to_dict(self) -> dict:
        return asdict(self)


def _upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FCNBaseline(nn.Module):
    """FCN (Long et al.) from torchvision: ``FCN(IntermediateLayerGetter(resnet), FCNHead, FCNHead)``."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        from torchvision.models._utils import IntermediateLayerGetter
        from torchvision.models.segmentation.fcn import FCN, FCNHead

        self.config = config
        net, (_, c3, c4) = resnet_backbone(config.backbone, config.in_channels)
        backbone = IntermediateLayerGetter(net, return_layers={"layer3": "aux", "layer4": "out"})
        self.net = FCN(backbone, FCNHead(c4, config.num_classes), FCNHead(c3, config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            out = self.net(x)  # torchvision's FCN interpolates both heads to the input size
            return out["out"], out["aux"]
        # Eval: the principal head only (torchvision's forward would also run the auxiliary head).
        return _upsample(self.net.classifier(self.net.backbone(x)["out"]), x.shape[-2:])


class SMPBaseline(nn.Module):
    """U-Net (Ronneberger et al.) or DeepLabV3+ (Chen et al.) from ``segmentation_models_pytorch``."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.config = config
        cls = {"unet": smp.Unet, "deeplabv3plus": smp.DeepLabV3Plus}[config.arch]
        self.net = cls(encoder_name=config.backbone, encoder_weights=None, in_channels=config.in_channels,
                       classes=config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor]:
        logits = self.net(x)
        return (logits,) if self.training else logits


class AttentionRefinement(nn.Module):
    """ARM: 3×3 conv-BN-ReLU to ``cout``, then channel attention (GAP → 1×1 conv → BN → sigmoid) multiplied in."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(cin, cout)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, cout, 1, bias=False),
                                       nn.BatchNorm2d(cout), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * self.attention(x)


class FeatureFusion(nn.Module):
    """FFM: concatenate both paths, 1×1 conv-BN-ReLU, then ``x + x * attention`` (GAP → 1×1 → ReLU → 1×1 →
    sigmoid, reduction 4)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(cin, cout, k=1)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, cout // 4, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(cout // 4, cout, 1), nn.Sigmoid())

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.cat([spatial, context], dim=1))
        return x + x * self.attention(x)


class SegHead(nn.Module):
    """3×3 conv-BN-ReLU, (dropout 0.1), 1×1 classifier, bilinear up-sampling to the input size."""

    def __init__(self, cin: int, mid: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, mid), nn.Dropout(0.1), nn.Conv2d(mid, num_classes, 1))

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return _upsample(self.body(x), size)


class BiSeNet(nn.Module):
    """BiSeNet V1 (Yu et al., ECCV 2018), written here: neither torchvision nor segmentation_models_pytorch has it.

    * Spatial path: three conv-BN-ReLU at stride 2 (7×7/64, 3×3/64, 3×3/128) → stride 8, 128 channels, then a 1×1
      conv-BN-ReLU (channel counts and kernels are not fixed by the paper; these follow the common reference code).
    * Context path: the ResNet's /16 and /32 features, each through an ARM to 128 channels; global average pool of
      the /32 features (1×1 conv-BN-ReLU to 128) broadcast-added to the /32 ARM output; each stage up-sampled ×2
      (bilinear) and refined by a 3×3 conv-BN-ReLU, the /32 result added to the /16 ARM output → context at /8.
    * FFM to 256 channels; output head 3×3 conv-BN-ReLU (64) + 1×1, bilinear ×8 to the input size.
    * Two auxiliary heads (training only, BiSeNet's auxiliary losses) on the context path's outputs at /16 and /8.
    """

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch = 128
        net, (_, c3, c4) = resnet_backbone(cfg.backbone, cfg.in_channels)
        self.spatial = nn.Sequential(conv_bn_relu(cfg.in_channels, 64, k=7, stride=2), conv_bn_relu(64, 64, stride=2),
                                     conv_bn_relu(64, ch, stride=2), conv_bn_relu(ch, ch, k=1))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(c4, ch, k=1))
        self.arm16, self.arm32 = AttentionRefinement(c3, ch), AttentionRefinement(c4, ch)
        self.refine16, self.refine32 = conv_bn_relu(ch, ch), conv_bn_relu(ch, ch)
        self.ffm = FeatureFusion(2 * ch, 256)
        self.head = SegHead(256, 64, cfg.num_classes)
        self.aux16 = SegHead(ch, 64, cfg.num_classes)  # on the /32 branch after refinement (at /16)
        self.aux8 = SegHead(ch, 64, cfg.num_classes)  # on the context path's output (at /8)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        spatial = self.spatial(x)
        f16 = self.layer3(self.layer2(self.layer1(self.stem(x))))
        f32 = self.layer4(f16)
        up32 = self.arm32(f32) + self.global_context(f32)
        context16 = self.refine32(_upsample(up32, f16.shape[-2:]))
        up16 = self.arm16(f16) + context16
        context8 = self.refine16(_upsample(up16, spatial.shape[-2:]))
        logits = self.head(self.ffm(spatial, context8), size)
        if self.training:
            return logits, self.aux8(context8, size), self.aux16(context16, size)
        return logits


def build_baseline(config: BaselineConfig) -> nn.Module:
    """The untrained baseline ``config.arch`` describes."""
    if config.arch == "fcn":
        return FCNBaseline(config)
    if config.arch in ("unet", "deeplabv3plus"):
        return SMPBaseline(config)
    return BiSeNet(config)
