"""``cnn``: a plain convolutional baseline, in 2D or 3D.

Encoder: ``len(channels)`` stages of [conv3-BN-ReLU] x 2, each followed by 2x max pooling
except the last. Classification: global average pooling, dropout, linear. Masks come from a
light decoder: a 1x1 projection of every stage, upsampled to the input size and summed,
then a 1x1 convolution to ``num_seg_classes`` logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv, Pool
from torch import nn

from medimg_cli.models import MODELS
from medimg_cli.models.heads import ClassificationHead


@MODELS.register("cnn")
class CNN(nn.Module):
    """Conv-BN-ReLU baseline with a classification head and/or a light mask decoder.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: image-level classes.
        num_seg_classes: mask classes including background.
        task: ``classification``, ``segmentation`` or ``multitask``.
        channels: output channels of each encoder stage.
        dropout: dropout before the linear layer.
        decoder_channels: width of the light mask decoder.
    """

    TASKS = ("classification", "segmentation", "multitask")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        channels: tuple[int, ...] = (16, 32, 64),
        dropout: float = 0.2,
        decoder_channels: int = 16,
    ) -> None:
        super().__init__()
        self.task = task
        stages, width = [], in_channels
        for out in channels:
            stages.append(
                nn.Sequential(
                    Convolution(spatial_dims, width, out, kernel_size=3, norm="batch", act="relu"),
                    Convolution(spatial_dims, out, out, kernel_size=3, norm="batch", act="relu"),
                )
            )
            width = out
        self.stages = nn.ModuleList(stages)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.head = ClassificationHead(width, num_classes, dropout) if task != "segmentation" else None
        if task != "classification":
            conv = Conv[Conv.CONV, spatial_dims]
            self.lateral = nn.ModuleList(conv(c, decoder_channels, kernel_size=1) for c in channels)
            self.seg_out = conv(decoder_channels, num_seg_classes, kernel_size=1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` image -> dict of logits (see ``medimg_cli.models``)."""
        features, x = [], image
        for index, stage in enumerate(self.stages):
            x = stage(x if index == 0 else self.pool(x))
            features.append(x)
        out = {}
        if self.head is not None:
            out["class_logits"] = self.head(x)
        if self.task != "classification":
            size = image.shape[2:]
            mode = "bilinear" if image.dim() == 4 else "trilinear"
            fused = sum(
                F.interpolate(lateral(f), size=size, mode=mode, align_corners=False)
                for lateral, f in zip(self.lateral, features, strict=True)
            )
            out["seg_logits"] = self.seg_out(F.relu(fused))
        return out
