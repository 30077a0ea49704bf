"""``transformer``: a Vision Transformer (Dosovitskiy et al. 2021) in 2D or 3D, MONAI's ``ViT``.

    image (B, C, *S) -> patches of ``patch_size`` -> tokens (B, N, hidden), N = prod(S / patch)
    -> ``num_layers`` pre-norm blocks [multi-head self-attention, MLP] with learned positions

Classification: mean of the final tokens, dropout, linear. Masks: the token grids of four
evenly spaced layers, reshaped to ``(B, hidden, *S/patch)``, go through the light decoder
(``medimg_cli.models.heads.LightDecoder``). Sizes come from ``preset`` (``tiny``, ``small``,
``base`` as in DeiT/ViT); ``hidden_size``, ``num_layers``, ``num_heads`` and ``mlp_dim``
override single values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ViT
from torch import nn

from medimg_cli.models import MODELS
from medimg_cli.models.heads import ClassificationHead, LightDecoder, task_groups

# preset -> (hidden_size, num_layers, num_heads, mlp_dim)
PRESETS = {"tiny": (192, 12, 3, 768), "small": (384, 12, 6, 1536), "base": (768, 12, 12, 3072)}


@MODELS.register("transformer")
class Transformer(nn.Module):
    """Vision Transformer with a classification head and/or a light mask decoder.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: image-level classes.
        num_seg_classes: mask classes including background.
        task: ``classification``, ``segmentation`` or ``multitask``.
        image_size: spatial size of the images (from the data), multiples of ``patch_size``.
        preset: ``tiny``, ``small`` or ``base``.
        patch_size: patch edge in pixels.
        hidden_size: token width (``None``: from the preset).
        num_layers: transformer blocks (``None``: from the preset).
        num_heads: attention heads (``None``: from the preset).
        mlp_dim: MLP width (``None``: from the preset).
        dropout: dropout in the blocks and before the classification head.
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
        image_size: Sequence[int],
        preset: str = "tiny",
        patch_size: int = 4,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        num_heads: int | None = None,
        mlp_dim: int | None = None,
        dropout: float = 0.1,
        decoder_channels: int = 32,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"model.preset={preset!r} must be one of {', '.join(PRESETS)}")
        defaults = PRESETS[preset]
        hidden_size, num_layers, num_heads, mlp_dim = (
            given if given is not None else default
            for given, default in zip((hidden_size, num_layers, num_heads, mlp_dim), defaults, strict=True)
        )
        bad = [s for s in image_size if s % patch_size]
        if bad:
            raise ValueError(f"image size {list(image_size)} is not a multiple of model.patch_size={patch_size}")
        self.task = task
        self.grid = [s // patch_size for s in image_size]
        self.vit = ViT(
            in_channels,
            img_size=tuple(image_size),
            patch_size=patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            dropout_rate=dropout,
            spatial_dims=spatial_dims,
            qkv_bias=True,
        )
        # the token grids fed to the decoder: four evenly spaced layers, the last one included
        self.taps = sorted({max(0, round(num_layers * k / 4) - 1) for k in (1, 2, 3, 4)})
        self.head = ClassificationHead(hidden_size, num_classes, dropout) if task != "segmentation" else None
        self.decoder = (
            LightDecoder(spatial_dims, [hidden_size] * len(self.taps), num_seg_classes, decoder_channels)
            if task != "classification"
            else None
        )

    def layer_groups(self) -> dict[str, list[str]]:
        """``embedding`` (patches and positions), ``block1``..``blockN``, ``norm``, then the heads."""
        groups = {"embedding": ["vit.patch_embedding"]}
        groups |= {f"block{i + 1}": [f"vit.blocks.{i}"] for i in range(len(self.vit.blocks))}
        return groups | {"norm": ["vit.norm"]} | task_groups(self)

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, hidden)`` tokens -> ``(B, hidden, *grid)`` feature map."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` image -> dict of logits (see ``medimg_cli.models``)."""
        tokens, hidden = self.vit(image)  # final tokens after the last norm, and every block's output
        out = {}
        if self.head is not None:
            out["class_logits"] = self.head(self._grid(tokens))
        if self.decoder is not None:
            maps = [self._grid(tokens if i == len(hidden) - 1 else hidden[i]) for i in self.taps]
            out["seg_logits"] = self.decoder(maps, image.shape[2:])
        return out
