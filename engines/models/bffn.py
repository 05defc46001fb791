"""BFFN: the Bilateral Feature Fusion Network (paper 000, "Bilateral Feature Fusion Network" for mobile-camera
cover-glass defects).

Flow (paper Fig. 2)::

    x ─ stem ─ layer1 (/4, shallow) ─ layer2 (/8) ─ layer3 (/16) ─ SAM3 ─────────────┐ low
                                                   └ layer4 (/32) ─ SAM4 ─(+)─ GAP ──┤ high
                                                                                 BFFM (/16)
    shallow (/4) ──────────────── concat(up(BFFM)) ── conv block ── classifier ── up ×4 ── logits

Choices the paper leaves open are written next to the code that makes them, and collected in
``docs/MODELS.md``.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.errors import InputError
from engines.models.blocks import BACKBONES, conv_bn_relu, resnet_backbone
FUSIONS = ("bffm", "sum", "concat")


@dataclass(frozen=True)
class BFFNConfig:
    """Everything needed to rebuild the network; saved as JSON beside the weights."""

    num_classes: int = 2
    in_channels: int = 1
    backbone: str = "resnet18"
    use_sam: bool = True
    fusion: str = "bffm"  # "bffm" (paper), or "sum"/"concat" for the Table 4 ablation
    embed_dim: int = 64  # paper: "Embedding dim of 64"
    heads: int = 4  # paper: "Number of heads of 4"
    attn_dropout: float = 0.1  # paper: "Dropout rate of 0.1"
    fusion_channels: int = 128
    shallow_channels: int = 48
    decoder_channels: int = 128
    max_rel_pos: int = 64  # largest feature side the relative position tables cover

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise InputError(f"backbone {self.backbone!r} is not one of {BACKBONES}")
        if self.fusion not in FUSIONS:
            raise InputError(f"fusion {self.fusion!r} is not one of {FUSIONS}")
        if self.embed_dim % self.heads:
            raise InputError(f"embed_dim {self.embed_dim} must be a multiple of heads {self.heads}")

    def to_dict(self) -> dict:
        return asdict(self)


class ChannelLayerNorm(nn.Module):
    """Layer normalisation over the channels of each position of an NCHW map.

    The paper says "layer normalization" after each convolution of the SAM without saying over which axes;
    normalising per position over channels (as in ConvNeXt) keeps the module independent of the input size.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=16)
def _relative_indices(h: int, w: int, max_rel_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets between every pair of the ``h*w`` positions, shifted to index the tables."""
    ys, xs = np.repeat(np.arange(h), w), np.tile(np.arange(w), h)
    return ys[:, None] - ys[None, :] + max_rel_pos - 1, xs[:, None] - xs[None, :] + max_rel_pos - 1


class RelativeMHSA(nn.Module):
    """Multi-head self-attention over the positions of a feature map with 2-D relative position logits, as in
    Bottleneck Transformers: logit(i, j) = q_i·k_j + q_i·(r_h[y_i - y_j] + r_w[x_i - x_j])."""

    def __init__(self, dim: int, heads: int, dropout: float, max_rel_pos: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.max_rel_pos = max_rel_pos
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.rel_h = nn.Parameter(torch.randn(2 * max_rel_pos - 1, self.head_dim) * self.head_dim**-0.5)
        self.rel_w = nn.Parameter(torch.randn(2 * max_rel_pos - 1, self.head_dim) * self.head_dim**-0.5)
        self.dropout = nn.Dropout(dropout)

    def _relative_table(self, h: int, w: int) -> torch.Tensor:
        if h > self.max_rel_pos or w > self.max_rel_pos:
            raise InputError(
                f"feature map {h}x{w} exceeds the relative position range {self.max_rel_pos}; use tiles of at most "
                f"{self.max_rel_pos * 16} pixels or rebuild with a larger max_rel_pos"
            )
        dy, dx = (torch.from_numpy(i).to(self.rel_h.device) for i in _relative_indices(h, w, self.max_rel_pos))
        return self.rel_h[dy] + self.rel_w[dx]  # (N, N, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        # The spatial size is a constant of the graph (tiles have a fixed size), so the relative index tables
        # become constants in ONNX instead of a chain of shape operations.
        h, w = int(x.shape[2]), int(x.shape[3])
        n = h * w
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, self.head_dim, n).unbind(1)  # each (b, heads, d, n)
        q = q.transpose(-1, -2) * self.scale  # (b, heads, n, d)
        content = q @ k  # (b, heads, n, n)
        position = torch.einsum("bhnd,nmd->bhnm", q, self._relative_table(h, w))
        attn = self.dropout((content + position).softmax(dim=-1))
        out = v @ attn.transpose(-1, -2)  # (b, heads, d, n)
        return out.reshape(b, c, h, w)


class SelfAttentionModule(nn.Module):
    """SAM: conv → LN → ReLU → MHSA → conv → LN → ReLU, plus the input (residual)."""

    def __init__(self, channels: int, embed_dim: int, heads: int, dropout: float, max_rel_pos: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(channels, embed_dim, 1, bias=False), ChannelLayerNorm(embed_dim), nn.ReLU())
        self.attn = RelativeMHSA(embed_dim, heads, dropout, max_rel_pos)
        self.expand = nn.Sequential(nn.Conv2d(embed_dim, channels, 1, bias=False), ChannelLayerNorm(channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.attn(self.reduce(x)))


class BilateralFeatureFusion(nn.Module):
    """BFFM (paper Fig. 3): each level guides the other through two convolutions and a sigmoid; the guided maps
    are up-sampled to the low level's size, concatenated and re-weighted per channel (SE).

    Open choices: both levels are first projected to ``channels`` with a 3×3 conv-BN-ReLU; the low level is
    brought to the high level's size for its guide with a stride-2 convolution (as BiSeNet V2's aggregation
    layer does); the SE reduction ratio is 4.
    """

    def __init__(self, low_channels: int, high_channels: int, channels: int) -> None:
        super().__init__()
        self.low_proj = conv_bn_relu(low_channels, channels)
        self.high_proj = conv_bn_relu(high_channels, channels)
        self.high_guide = nn.Sequential(conv_bn_relu(high_channels, channels), nn.Conv2d(channels, channels, 3, padding=1))
        self.low_guide = nn.Sequential(conv_bn_relu(low_channels, channels, stride=2), nn.Conv2d(channels, channels, 3, padding=1))
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(2 * channels, 2 * channels // 4, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * channels // 4, 2 * channels, 1),
            nn.Sigmoid(),
        )
        self.out = conv_bn_relu(2 * channels, channels, k=1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        size = low.shape[-2:]
        low_guided = self.low_proj(low) * F.interpolate(
            torch.sigmoid(self.high_guide(high)), size=size, mode="bilinear", align_corners=False
        )
        high_guided = self.high_proj(high) * torch.sigmoid(self.low_guide(low))
        high_guided = F.interpolate(high_guided, size=size, mode="bilinear", align_corners=False)
        both = torch.cat([low_guided, high_guided], dim=1)
        return self.out(both * self.se(both))


class PlainFusion(nn.Module):
    """Ablation stand-in for BFFM: project both levels, up-sample the high one, then sum or concatenate."""

    def __init__(self, low_channels: int, high_channels: int, channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.low_proj = conv_bn_relu(low_channels, channels)
        self.high_proj = conv_bn_relu(high_channels, channels)
        self.out = conv_bn_relu(2 * channels if mode == "concat" else channels, channels, k=1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = self.low_proj(low)
        high = F.interpolate(self.high_proj(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(torch.cat([low, high], 1) if self.mode == "concat" else low + high)


class AuxHead(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, 64), nn.Conv2d(64, num_classes, 1))

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(self.body(x), size=size, mode="bilinear", align_corners=False)


class BFFN(nn.Module):
    """The network. ``forward`` returns the principal logits ``(N, classes, H, W)``; in training mode it
    returns ``(principal, aux_sam3, aux_sam4)`` for the auxiliary losses.

    Input sides must be multiples of 32 (the backbone's stride); 128×128 tiles are the paper's size.
    """

    def __init__(self, config: BFFNConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or BFFNConfig()
        net, (c1, c3, c4) = resnet_backbone(cfg.backbone, cfg.in_channels)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        sam = lambda c: SelfAttentionModule(c, cfg.embed_dim, cfg.heads, cfg.attn_dropout, cfg.max_rel_pos)  # noqa: E731
        self.sam3 = sam(c3) if cfg.use_sam else nn.Identity()
        self.sam4 = sam(c4) if cfg.use_sam else nn.Identity()
        # Global context: GAP at the tail of the backbone, a 1×1 conv, broadcast and summed with SAM4's output.
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c4, c4, 1, bias=False), nn.BatchNorm2d(c4), nn.ReLU(inplace=True))
        if cfg.fusion == "bffm":
            self.fusion = BilateralFeatureFusion(c3, c4, cfg.fusion_channels)
        else:
            self.fusion = PlainFusion(c3, c4, cfg.fusion_channels, cfg.fusion)
        # Fusion with the shallow layer (layer1, stride 4): reduce it to a few channels so the deep semantics
        # dominate, concatenate with the up-sampled fused map, then a convolution block (two 3×3 conv-BN-ReLU).
        self.shallow = conv_bn_relu(c1, cfg.shallow_channels, k=1)
        self.decoder = nn.Sequential(
            conv_bn_relu(cfg.fusion_channels + cfg.shallow_channels, cfg.decoder_channels),
            conv_bn_relu(cfg.decoder_channels, cfg.decoder_channels),
        )
        self.classifier = nn.Conv2d(cfg.decoder_channels, cfg.num_classes, 1)
        self.aux3 = AuxHead(c3, cfg.num_classes)
        self.aux4 = AuxHead(c4, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        f1 = self.layer1(self.stem(x))
        # The SAMs process the maps the backbone extracts (side branches); layer4 consumes the raw layer3
        # output, so the backbone stays a plain ResNet.
        f3 = self.layer3(self.layer2(f1))
        f4 = self.layer4(f3)
        low = self.sam3(f3)
        high = self.sam4(f4) + self.context(f4)
        fused = self.fusion(low, high)
        fused = F.interpolate(fused, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.decoder(torch.cat([fused, self.shallow(f1)], dim=1)))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.training:
            return logits, self.aux3(low, size), self.aux4(high, size)
        return logits
