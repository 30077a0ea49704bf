"""MONAI's ``DynUNet``, the nnU-Net architecture, with its topology from the data plan.

``kernels``, ``strides`` and ``filters`` set to ``auto`` come from ``data/plan.py``'s
``network_plan`` (nnU-Net's rule: pool an axis while it is at least 8 voxels and not much coarser
than the finest, 32 filters doubling per stage up to 320 in 3D, 512 in 2D), from the dataset
plan when there is one, else from the input size. ``residual=true`` uses residual blocks in
every stage: the nearest MONAI has to nnU-Net's residual-encoder ("ResEnc") presets, which put
residual blocks in the encoder only and more of them per stage, so it is not the same network.
Segmentation only; inputs must be multiples of the product of the strides (patches are).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DynUNet as MonaiDynUNet
from torch import nn

from medimg_cli.models import MODELS


@MODELS.register("dynunet")
class DynUNet(nn.Module):
    """nnU-Net's U-Net for segmentation.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: unused (segmentation only).
        num_seg_classes: mask classes including background.
        task: ``segmentation``.
        kernels: per stage, the kernel size (one int, or one per axis).
        strides: per stage, the downsampling (one int, or one per axis; the first stage's is 1).
        filters: per stage, the width.
        residual: residual blocks in every stage.
    """

    TASKS = ("segmentation",)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        kernels: Sequence[int | Sequence[int]] = (3, 3, 3),
        strides: Sequence[int | Sequence[int]] = (1, 2, 2),
        filters: Sequence[int] = (32, 64, 128),
        residual: bool = False,
    ) -> None:
        super().__init__()
        if not len(kernels) == len(strides) == len(filters):
            raise ValueError(f"kernels, strides and filters need one entry per stage, got {len(kernels)}, "
                             f"{len(strides)} and {len(filters)}")  # fmt: skip
        self.task = task
        kernels, strides = [_axes(k) for k in kernels], [_axes(s) for s in strides]
        self.net = MonaiDynUNet(
            spatial_dims,
            in_channels,
            num_seg_classes,
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=list(filters),
            res_block=residual,
        )

    def layer_groups(self) -> dict[str, list[str]]:
        """Encoder stages ``input``, ``down_1``.. and ``bottleneck``, then ``decoder``."""
        groups = {"input": ["net.input_block"]}
        groups |= {f"down_{i + 1}": [f"net.downsamples.{i}"] for i in range(len(self.net.downsamples))}
        groups["bottleneck"] = ["net.bottleneck"]
        groups["decoder"] = ["net.upsamples", "net.output_block", "net.skip_layers", "net.deep_supervision_heads"]
        return groups

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` -> ``{"seg_logits": (B, num_seg_classes, *spatial)}``."""
        return {"seg_logits": self.net(image)}


def _axes(value: int | Sequence[int]) -> int | list[int]:
    """An int, or a config list as a plain list (MONAI takes either per stage)."""
    return value if isinstance(value, int) else [int(v) for v in value]
