"""``hybrid``: the seeds' proposed model, a CNN encoder refined by self-attention (Gomathi and Roopa Chandrika).

Shapes for ``channels=(c1, ..., cL)`` and an image ``(B, C, *S)``:

    encoder   f1 = [conv3-BN-ReLU] x 2 (image)               (B, c1, *S)
              fi = [conv3-BN-ReLU] x 2 (maxpool2 f(i-1))     (B, ci, *S / 2^(i-1))
    attention X = flatten(fL) + P                            (B, N, cL), N = prod(S / 2^(L-1))
              ``attention_layers`` pre-norm blocks, each
                X <- X + MHSA(LN(X)),  X <- X + MLP(LN(X))
              where every head computes A_ij = Q_i . K_j / sqrt(d_k) (Gomathi and Roopa Chandrika, eq. 3),
              softmax over j, and Output_i = sum_j A_ij V_j (eq. 4); heads are concatenated
              and projected (MONAI ``TransformerBlock``). P: learned position embedding.
              r = reshape(X)                                 (B, cL, *S / 2^(L-1))
    classify  global average pool (r), dropout, linear       (B, num_classes)
    segment   for i = L-1 .. 1:
                u = transposed conv 2x (previous)            (B, ci, *S / 2^(i-1))
                s = attention gate (g=u, x=fi) (Oktay et al.; ``attention_gates=true``) or fi
                d = [conv3-BN-ReLU] x 2 (concat(s, u))       (B, ci, *S / 2^(i-1))
              1x1 conv                                       (B, num_seg_classes, *S)

So attention acts twice: globally over spatial positions in the bottleneck, and as gates that
weight the skip connections by where the decoder is looking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import TransformerBlock, UpSample
from monai.networks.layers import Conv, Pool
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from medimg_cli.models import MODELS
from medimg_cli.models.heads import ClassificationHead, double_conv, task_groups


@MODELS.register("hybrid")
class Hybrid(nn.Module):
    """CNN encoder + multi-head self-attention bottleneck + attention-gated U-Net decoder.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: image-level classes.
        num_seg_classes: mask classes including background.
        task: ``classification``, ``segmentation`` or ``multitask``.
        image_size: spatial size of the images (from the data); multiples of ``2^(L-1)``.
        channels: width of each encoder stage (L stages, 2x pooling between them).
        attention_layers: self-attention blocks in the bottleneck.
        num_heads: attention heads (must divide ``channels[-1]``).
        mlp_ratio: MLP width of the attention blocks, as a multiple of ``channels[-1]``.
        attention_gates: gate the decoder's skip connections.
        dropout: dropout in the attention blocks and before the classification head.
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
        channels: Sequence[int] = (16, 32, 64),
        attention_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        attention_gates: bool = True,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        scale = 2 ** (len(channels) - 1)
        if any(s % scale for s in image_size):
            raise ValueError(f"image size {list(image_size)} is not a multiple of {scale} ({len(channels)} stages)")
        if channels[-1] % num_heads:
            raise ValueError(f"model.num_heads={num_heads} does not divide the bottleneck width {channels[-1]}")
        self.task = task
        widths = [in_channels, *channels]
        self.stages = nn.ModuleList(
            double_conv(spatial_dims, a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.grid = [s // scale for s in image_size]
        width = channels[-1]
        self.position = nn.Parameter(torch.zeros(1, math.prod(self.grid), width))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.attention = nn.ModuleList(
            TransformerBlock(width, int(width * mlp_ratio), num_heads, dropout_rate=dropout, qkv_bias=True)
            for _ in range(attention_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.head = ClassificationHead(width, num_classes, dropout) if task != "segmentation" else None
        self.decoder = None
        if task != "classification":
            self.decoder = nn.ModuleDict(
                {
                    "up": nn.ModuleList(
                        UpSample(spatial_dims, channels[i + 1], channels[i], scale_factor=2, mode="deconv")
                        for i in reversed(range(len(channels) - 1))
                    ),
                    "gates": nn.ModuleList(
                        AttentionBlock(spatial_dims, f_int=max(channels[i] // 2, 1), f_g=channels[i], f_l=channels[i])
                        if attention_gates
                        else nn.Identity()
                        for i in reversed(range(len(channels) - 1))
                    ),
                    "blocks": nn.ModuleList(
                        double_conv(spatial_dims, 2 * channels[i], channels[i])
                        for i in reversed(range(len(channels) - 1))
                    ),
                    "out": Conv[Conv.CONV, spatial_dims](channels[0], num_seg_classes, kernel_size=1),
                }
            )

    def layer_groups(self) -> dict[str, list[str]]:
        """``stage1``..``stageL``, ``attention`` (positions, blocks, norm), then ``head``/``decoder``."""
        groups = {f"stage{i + 1}": [f"stages.{i}"] for i in range(len(self.stages))}
        groups["attention"] = ["position", "attention", "norm"]
        return groups | task_groups(self)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *S)`` image -> dict of logits (see the module docstring for the shapes)."""
        features, x = [], image
        for index, stage in enumerate(self.stages):
            x = stage(x if index == 0 else self.pool(x))
            features.append(x)
        batch, width = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2) + self.position  # (B, N, cL)
        for block in self.attention:
            tokens = block(tokens)
        x = self.norm(tokens).transpose(1, 2).reshape(batch, width, *x.shape[2:])
        out = {}
        if self.head is not None:
            out["class_logits"] = self.head(x)
        if self.decoder is not None:
            skips = reversed(features[:-1])
            parts = zip(self.decoder["up"], self.decoder["gates"], self.decoder["blocks"], skips, strict=True)
            for up, gate, block, skip in parts:
                x = up(x)
                gated = gate(g=x, x=skip) if isinstance(gate, AttentionBlock) else skip
                x = block(torch.cat((gated, x), dim=1))
            out["seg_logits"] = self.decoder["out"](x)
        return out
