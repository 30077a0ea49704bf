"""Blocks shared by the model families: conv blocks, a classification head, a light mask decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv
from torch import nn


def double_conv(spatial_dims: int, in_channels: int, out_channels: int, dropout: float = 0.0) -> nn.Sequential:
    """[3x3 conv, batch norm, ReLU] x 2: ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``."""
    return nn.Sequential(
        Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, norm="batch", act="relu", dropout=dropout),
        Convolution(spatial_dims, out_channels, out_channels, kernel_size=3, norm="batch", act="relu", dropout=dropout),
    )


def task_groups(model: nn.Module) -> dict[str, list[str]]:
    """The layer groups ``head`` and ``decoder`` of a model that has them (not ``None``)."""
    return {name: [name] for name in ("head", "decoder") if getattr(model, name, None) is not None}


class ClassificationHead(nn.Module):
    """Global average pooling, dropout and a linear layer.

    Args:
        in_channels: channels ``C`` of the feature map ``(B, C, *spatial)``.
        num_classes: number of output logits ``K``.
        dropout: dropout probability before the linear layer.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` features -> ``(B, K)`` logits."""
        pooled = features.flatten(2).mean(dim=2)
        return self.linear(self.dropout(pooled))


class LightDecoder(nn.Module):
    """Masks from a classifier's features: FPN-style fusion of every scale at the input size.

    Each feature map ``(B, C_i, *spatial_i)`` goes through a 1x1 convolution to ``width``
    channels and is resized (bi/trilinear) to the image size; the sum passes a ReLU and a 1x1
    convolution to ``num_seg_classes`` logits ``(B, num_seg_classes, *image_spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels ``C_i`` of each feature map, in the order ``forward`` gets them.
        num_seg_classes: mask classes including background.
        width: channels of the fused map.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], num_seg_classes: int, width: int = 16) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.lateral = nn.ModuleList(conv(c, width, kernel_size=1) for c in in_channels)
        self.seg_out = conv(width, num_seg_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Feature maps ``[(B, C_i, *spatial_i)]`` and the image size -> ``(B, K, *size)`` logits."""
        mode = "bilinear" if len(size) == 2 else "trilinear"
        fused = sum(
            F.interpolate(lateral(f), size=tuple(size), mode=mode, align_corners=False)
            for lateral, f in zip(self.lateral, features, strict=True)
        )
        return self.seg_out(F.relu(fused))
