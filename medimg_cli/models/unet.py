"""``unet``: MONAI's ``BasicUNet`` with a classification head on its deepest features.

The encoder (``conv_0`` and four ``down`` stages, so inputs must be divisible by 16) and the
decoder (four ``upcat`` stages with skip connections and a final 1x1 conv) are MONAI's; this
module only routes the bottleneck ``(B, features[4], *spatial/16)`` to a classification head
for ``classification`` and ``multitask``, and skips the decoder when no mask is needed.
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from medimg_cli.models import MODELS
from medimg_cli.models.heads import ClassificationHead


@MODELS.register("unet")
class UNet(nn.Module):
    """U-Net for segmentation, classification or both.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: image-level classes.
        num_seg_classes: mask classes including background.
        task: ``classification``, ``segmentation`` or ``multitask``.
        features: six widths as in ``monai.networks.nets.BasicUNet``.
        dropout: dropout inside the U-Net blocks and before the classification head.
    """

    TASKS = ("classification", "segmentation", "multitask")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        features: tuple[int, ...] = (16, 16, 32, 64, 128, 16),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.task = task
        self.net = BasicUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_seg_classes,
            features=tuple(features),
            dropout=dropout,
        )
        self.head = ClassificationHead(features[4], num_classes, dropout) if task != "segmentation" else None

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` image, spatial sizes divisible by 16 -> dict of logits."""
        net = self.net
        x0 = net.conv_0(image)
        x1 = net.down_1(x0)
        x2 = net.down_2(x1)
        x3 = net.down_3(x2)
        x4 = net.down_4(x3)
        out = {}
        if self.head is not None:
            out["class_logits"] = self.head(x4)
        if self.task != "classification":
            u = net.upcat_4(x4, x3)
            u = net.upcat_3(u, x2)
            u = net.upcat_2(u, x1)
            u = net.upcat_1(u, x0)
            out["seg_logits"] = net.final_conv(u)
        return out
