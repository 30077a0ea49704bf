"""Registration networks from MONAI: a (moving, fixed) pair in, a dense displacement field out.

Every model takes ``image`` ``(B, 2C, *spatial)`` (the moving image's C channels, then the fixed
image's) and returns ``ddf`` ``(B, D, *spatial)`` in pixels and ``warped``, the moving image
resampled through it (``deformation.warp``):

- ``localnet``: MONAI's ``LocalNet`` (Hu et al. 2018), an encoder-decoder that sums displacement
  fields predicted at several scales; inputs divisible by ``2 ** max(extract_levels)``.
- ``voxelmorph``: MONAI's ``VoxelMorphUNet`` (Balakrishnan et al. 2019); ``integration_steps > 0``
  integrates its output as a stationary velocity field by scaling and squaring (``DVF2DDF``), the
  diffeomorphic variant, which cannot fold in the continuous limit.
- ``globalnet``: MONAI's ``GlobalNet``, an affine registration: the encoder regresses the affine
  matrix, whose displacement field it returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import DVF2DDF
from monai.networks.nets import GlobalNet, LocalNet, VoxelMorphUNet
from torch import nn

from medimg_cli.deformation import warp
from medimg_cli.models import MODELS


class Registration(nn.Module):
    """A network that maps the stacked pair to a field, and the warp of the moving image.

    Args:
        net: ``(B, 2C, *spatial) -> (B, D, *spatial)``.
        integration_steps: >0: ``net``'s output is a velocity field integrated in this many
            scaling-and-squaring steps; 0: it is the displacement itself.
    """

    TASKS = ("registration",)

    def __init__(self, net: nn.Module, integration_steps: int = 0) -> None:
        super().__init__()
        self.net = net
        self.integrate = DVF2DDF(num_steps=integration_steps) if integration_steps else None

    def layer_groups(self) -> dict[str, list[str]]:
        return {"net": ["net"]}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 2C, *spatial)`` pair -> ``ddf`` ``(B, D, *spatial)`` (pixels) and ``warped`` ``(B, C, *spatial)``."""
        field = self.net(image)
        ddf = self.integrate(field) if self.integrate is not None else field
        return {"ddf": ddf, "warped": warp(image[:, : image.shape[1] // 2], ddf)}


def _pair_channels(in_channels: int) -> int:
    if in_channels % 2:
        raise ValueError(f"a registration pair has an even number of channels (moving + fixed), got {in_channels}")
    return in_channels


@MODELS.register("localnet")
class RegistrationLocalNet(Registration):
    """``LocalNet`` with ``channels`` filters at the first level and fields summed at ``extract_levels``."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, num_seg_classes: int, task: str,
                 channels: int = 16, extract_levels: Sequence[int] = (0, 1, 2, 3)) -> None:  # fmt: skip
        net = LocalNet(spatial_dims, _pair_channels(in_channels), channels, tuple(extract_levels),
                       out_channels=spatial_dims)  # fmt: skip
        super().__init__(net)


@MODELS.register("voxelmorph")
class RegistrationVoxelMorph(Registration):
    """``VoxelMorphUNet`` with encoder widths ``channels`` and, optionally, diffeomorphic integration."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, num_seg_classes: int, task: str,
                 channels: Sequence[int] = (16, 32, 32, 32), final_channels: Sequence[int] = (16, 16),
                 integration_steps: int = 7) -> None:  # fmt: skip
        net = VoxelMorphUNet(spatial_dims, _pair_channels(in_channels), final_channels[0], tuple(channels),
                             (*final_channels, spatial_dims), final_conv_act=None)  # fmt: skip
        super().__init__(net, integration_steps)


@MODELS.register("globalnet")
class RegistrationGlobalNet(Registration):
    """``GlobalNet`` (affine) with ``channels`` filters at the first of ``depth`` levels."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, num_seg_classes: int, task: str,
                 image_size: Sequence[int], channels: int = 16, depth: int = 3) -> None:  # fmt: skip
        super().__init__(GlobalNet(list(image_size), spatial_dims, _pair_channels(in_channels), channels, depth))
