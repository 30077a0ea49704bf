"""U-Nets from MONAI, with a classification head on their deepest features, in 2D and 3D.

- ``unet``: MONAI's ``BasicUNet``. Encoder ``conv_0`` and four ``down`` stages (inputs divisible
  by 16), decoder four ``upcat`` stages with skip connections and a final 1x1 conv.
- ``attention_unet``: MONAI's ``AttentionUnet`` (Oktay et al. 2018): every skip connection
  passes an additive attention gate driven by the coarser decoder features. Inputs divisible
  by the product of ``strides``.

Both route the bottleneck ``(B, C_deep, *spatial/R)`` to a classification head for
``classification`` and ``multitask``, and skip the decoder when no mask is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import AttentionUnet as MonaiAttentionUnet
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

    def layer_groups(self) -> dict[str, list[str]]:
        """Encoder levels ``conv_0``, ``down_1``..``down_4``, then ``decoder`` and ``head``."""
        groups = {name: [f"net.{name}"] for name in ("conv_0", "down_1", "down_2", "down_3", "down_4")}
        groups["decoder"] = [f"net.upcat_{i}" for i in range(4, 0, -1)] + ["net.final_conv"]
        return groups | ({"head": ["head"]} if self.head is not None else {})

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


@MODELS.register("attention_unet")
class AttentionUNet(nn.Module):
    """Attention U-Net for segmentation, classification or both.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: image-level classes.
        num_seg_classes: mask classes including background.
        task: ``classification``, ``segmentation`` or ``multitask``.
        channels: width of each level, shallowest first (``len(strides) + 1`` entries).
        strides: downsampling between consecutive levels.
        dropout: dropout inside the blocks and before the classification head.
    """

    TASKS = ("classification", "segmentation", "multitask")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) + 1 or len(strides) < 1:
            raise ValueError(f"channels {list(channels)} needs exactly one more entry than strides {list(strides)}")
        self.task = task
        self.net = MonaiAttentionUnet(
            spatial_dims,
            in_channels,
            num_seg_classes,
            channels=tuple(channels),
            strides=tuple(strides),
            dropout=dropout,
        )
        self.head = ClassificationHead(channels[-1], num_classes, dropout) if task != "segmentation" else None

    def _layers(self) -> list[tuple[str, nn.Module]]:
        """The nested ``AttentionLayer``s (path, module), outermost first; the last holds the bottom block."""
        layers, path, layer = [], "net.model.1", self.net.model[1]
        while True:
            layers.append((path, layer))
            if not isinstance(layer.submodule, nn.Sequential):
                return layers
            path, layer = f"{path}.submodule.1", layer.submodule[1]

    def layer_groups(self) -> dict[str, list[str]]:
        """``level1`` (full resolution) to the bottom level, then ``decoder`` and ``head``."""
        layers = self._layers()
        groups = {"level1": ["net.model.0"]}
        for index, (path, layer) in enumerate(layers):
            down = f"{path}.submodule.0" if isinstance(layer.submodule, nn.Sequential) else f"{path}.submodule"
            groups[f"level{index + 2}"] = [down]
        decoder = [f"{path}.{part}" for path, _ in layers for part in ("attention", "upconv", "merge")]
        groups["decoder"] = [*decoder, "net.model.2"]
        return groups | ({"head": ["head"]} if self.head is not None else {})

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` image, sizes divisible by the product of strides -> dict of logits."""
        top = self.net.model[0](image)
        mask, deepest = self._decode(self.net.model[1], top, decode=self.task != "classification")
        out = {}
        if self.head is not None:
            out["class_logits"] = self.head(deepest)
        if mask is not None:
            out["seg_logits"] = self.net.model[2](mask)
        return out

    def _decode(self, layer: nn.Module, x: torch.Tensor, decode: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """MONAI's ``AttentionLayer.forward``, also returning the bottleneck and able to skip decoding."""
        if isinstance(layer.submodule, nn.Sequential):
            lower, deepest = self._decode(layer.submodule[1], layer.submodule[0](x), decode)
        else:
            lower = deepest = layer.submodule(x)
        if not decode:
            return None, deepest
        from_lower = layer.upconv(lower)
        gated = layer.attention(g=from_lower, x=x)
        return layer.merge(torch.cat((gated, from_lower), dim=1)), deepest
