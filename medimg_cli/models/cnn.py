"""``cnn``: a plain convolutional baseline, in 2D or 3D.

Encoder: ``len(channels)`` stages of [conv3-BN-ReLU] x 2, each followed by 2x max pooling
except the last. Classification: global average pooling, dropout, linear. Masks come from a
light decoder: a 1x1 projection of every stage, upsampled to the input size and summed,
then a 1x1 convolution to ``num_seg_classes`` logits.
"""

from __future__ import annotations

import torch
from monai.networks.layers import Pool
from torch import nn

from medimg_cli.models import MODELS
from medimg_cli.models.heads import ClassificationHead, LightDecoder, double_conv, task_groups


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
        widths = [in_channels, *channels]
        self.stages = nn.ModuleList(
            double_conv(spatial_dims, a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        width = widths[-1]
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.head = ClassificationHead(width, num_classes, dropout) if task != "segmentation" else None
        self.decoder = (
            LightDecoder(spatial_dims, channels, num_seg_classes, decoder_channels)
            if task != "classification"
            else None
        )

    def layer_groups(self) -> dict[str, list[str]]:
        """Group name -> parameter-name prefixes, encoder first (see ``medimg_cli.models.transfer``)."""
        groups = {f"stage{i + 1}": [f"stages.{i}"] for i in range(len(self.stages))}
        return groups | task_groups(self)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` image -> dict of logits (see ``medimg_cli.models``)."""
        features, x = [], image
        for index, stage in enumerate(self.stages):
            x = stage(x if index == 0 else self.pool(x))
            features.append(x)
        out = {}
        if self.head is not None:
            out["class_logits"] = self.head(x)
        if self.decoder is not None:
            out["seg_logits"] = self.decoder(features, image.shape[2:])
        return out
