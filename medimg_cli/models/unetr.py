"""Transformer U-Nets from MONAI: ``unetr`` and ``swin_unetr``, in 2D and 3D.

- ``unetr`` (Hatamizadeh et al. 2022): a 12-layer ViT on 16-pixel patches; tokens of layers 3,
  6, 9 and 12, reshaped to ``(B, hidden, *S/16)``, feed a convolutional decoder with skip
  connections. Inputs: multiples of 16.
- ``swin_unetr`` (Hatamizadeh et al. 2022): a Swin Transformer encoder (shifted-window
  attention, four stages of patch merging, ``(B, 16 * feature_size, *S/32)`` at the bottom) with
  a convolutional decoder. Inputs: multiples of 32, at least 64 (the decoder's instance norm
  needs more than one bottleneck position).

The classification head pools the deepest features (ViT tokens of the last layer; the Swin
bottleneck). The decoder is skipped when no mask is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNETR as MonaiUNETR
from monai.networks.nets import SwinUNETR as MonaiSwinUNETR
from torch import nn

from medimg_cli.models import MODELS
from medimg_cli.models.heads import ClassificationHead


@MODELS.register("unetr")
class UNETR(nn.Module):
    """UNETR with a classification head on the last ViT layer.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: image-level classes.
        num_seg_classes: mask classes including background.
        task: ``classification``, ``segmentation`` or ``multitask``.
        image_size: spatial size of the images (from the data), multiples of 16.
        feature_size: width of the convolutional decoder.
        hidden_size: ViT token width.
        mlp_dim: ViT MLP width.
        num_heads: attention heads (must divide ``hidden_size``).
        dropout: dropout in the ViT and before the classification head.
    """

    TASKS = ("classification", "segmentation", "multitask")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        image_size: Sequence[int],
        feature_size: int = 16,
        hidden_size: int = 192,
        mlp_dim: int = 768,
        num_heads: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.task = task
        self.net = MonaiUNETR(
            in_channels,
            num_seg_classes,
            img_size=tuple(image_size),
            feature_size=feature_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_heads=num_heads,
            dropout_rate=dropout,
            spatial_dims=spatial_dims,
        )
        self.head = ClassificationHead(hidden_size, num_classes, dropout) if task != "segmentation" else None

    def layer_groups(self) -> dict[str, list[str]]:
        """``vit`` (the transformer encoder), ``decoder`` (every convolution) and ``head``."""
        decoder = [name for name, _ in self.net.named_children() if name != "vit"]
        return {"vit": ["net.vit"], "decoder": [f"net.{n}" for n in decoder]} | (
            {"head": ["head"]} if self.head is not None else {}
        )

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` image -> dict of logits; mirrors ``monai.networks.nets.UNETR.forward``."""
        net = self.net
        tokens, hidden = net.vit(image)
        deepest = net.proj_feat(tokens)  # (B, hidden, *S/16)
        out = {}
        if self.head is not None:
            out["class_logits"] = self.head(deepest)
        if self.task != "classification":
            enc2 = net.encoder2(net.proj_feat(hidden[3]))
            enc3 = net.encoder3(net.proj_feat(hidden[6]))
            enc4 = net.encoder4(net.proj_feat(hidden[9]))
            x = net.decoder5(deepest, enc4)
            x = net.decoder4(x, enc3)
            x = net.decoder3(x, enc2)
            out["seg_logits"] = net.out(net.decoder2(x, net.encoder1(image)))
        return out


@MODELS.register("swin_unetr")
class SwinUNETR(nn.Module):
    """Swin UNETR with a classification head on the Swin bottleneck.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: image-level classes.
        num_seg_classes: mask classes including background.
        task: ``classification``, ``segmentation`` or ``multitask``.
        image_size: spatial size of the images (from the data): multiples of 32, at least 64.
        feature_size: embedding width (multiple of 12); the bottleneck has 16x as many channels.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (clipped to the feature map).
        dropout: dropout in the Swin blocks and before the classification head.
    """

    TASKS = ("classification", "segmentation", "multitask")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        image_size: Sequence[int],
        feature_size: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if any(s % 32 or s < 64 for s in image_size):
            raise ValueError(
                f"image size {list(image_size)} must be multiples of 32 and at least 64, e.g. data.image_size=64"
            )
        self.task = task
        self.net = MonaiSwinUNETR(
            in_channels,
            num_seg_classes,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            feature_size=feature_size,
            drop_rate=dropout,
            spatial_dims=spatial_dims,
        )
        self.head = ClassificationHead(16 * feature_size, num_classes, dropout) if task != "segmentation" else None

    def layer_groups(self) -> dict[str, list[str]]:
        """``swin`` (the transformer encoder), ``decoder`` (every convolution) and ``head``."""
        decoder = [name for name, _ in self.net.named_children() if name != "swinViT"]
        return {"swin": ["net.swinViT"], "decoder": [f"net.{n}" for n in decoder]} | (
            {"head": ["head"]} if self.head is not None else {}
        )

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` image, multiples of 32 -> dict of logits; mirrors MONAI's forward."""
        net = self.net
        net._check_input_size(image.shape[2:])
        hidden = net.swinViT(image, net.normalize)
        out = {}
        if self.head is not None:
            out["class_logits"] = self.head(hidden[4])
        if self.task != "classification":
            x = net.decoder5(net.encoder10(hidden[4]), hidden[3])
            x = net.decoder4(x, net.encoder4(hidden[2]))
            x = net.decoder3(x, net.encoder3(hidden[1]))
            x = net.decoder2(x, net.encoder2(hidden[0]))
            out["seg_logits"] = net.out(net.decoder1(x, net.encoder1(image)))
        return out
