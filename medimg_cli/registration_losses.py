"""The registration loss (``loss=registration``): image similarity plus field smoothness, from MONAI.

``similarity`` compares the warped moving image with the fixed one: ``mse`` (same modality, same
intensities: the phantom), ``lncc`` (local normalised cross-correlation, robust to intensity
drifts between scans of one modality) or ``mutual_information`` (global, for different
modalities). ``regularization`` penalises the displacement field's roughness: ``diffusion``
(squared first derivatives, VoxelMorph's choice), ``bending`` (squared second derivatives) or
``none``. With ``label_weight > 0`` a Dice loss of the warped moving label map against the fixed
one joins (weak supervision by labels, as in Hu et al. 2018), when the pairs have labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.losses import (
    BendingEnergyLoss,
    DiceLoss,
    DiffusionLoss,
    GlobalMutualInformationLoss,
    LocalNormalizedCrossCorrelationLoss,
)
from torch import nn

from medimg_cli.deformation import warp
from medimg_cli.errors import unknown_choice
from medimg_cli.registry import Registry

# MONAI's DiffusionLoss and BendingEnergyLoss index with lists, which PyTorch warns about every step
warnings.filterwarnings("ignore", "Using a non-tuple sequence for multidimensional indexing", UserWarning)
REGISTRATION_LOSSES: Registry[Callable[..., nn.Module]] = Registry("registration loss")
SIMILARITIES = ("mse", "lncc", "mutual_information")
REGULARIZATIONS = ("diffusion", "bending", "none")


class RegistrationLoss(nn.Module):
    """``similarity(warped, fixed) + regularization_weight * roughness(ddf) + label_weight * Dice loss``.

    The model's outputs are ``warped`` ``(B, C, *spatial)`` and ``ddf`` ``(B, D, *spatial)``; the
    batch's ``image`` ``(B, 2C, *spatial)`` holds the fixed image in its second half and ``mask``
    ``(B, 2, *spatial)`` (optional) the moving and fixed label maps.
    """

    def __init__(self, similarity: nn.Module, roughness: nn.Module | None, weights: tuple[float, float], classes: int):
        super().__init__()
        self.similarity, self.roughness = similarity, roughness
        self.regularization_weight, self.label_weight = weights
        self.classes = classes
        self.dice = DiceLoss(include_background=False)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        warped, ddf = outputs["warped"].float(), outputs["ddf"].float()
        fixed = batch["image"][:, warped.shape[1] :].float()
        loss = self.similarity(warped, fixed)
        if self.roughness is not None and self.regularization_weight:
            loss = loss + self.regularization_weight * self.roughness(ddf)
        if self.label_weight and "mask" in batch:  # the one-hot moving labels warp smoothly (differentiable)
            moving = F.one_hot(batch["mask"][:, 0].long(), self.classes).movedim(-1, 1).float()
            fixed_labels = F.one_hot(batch["mask"][:, 1].long(), self.classes).movedim(-1, 1).float()
            loss = loss + self.label_weight * self.dice(warp(moving, ddf), fixed_labels)
        return loss


@REGISTRATION_LOSSES.register("registration")
def registration_loss(
    spatial_dims: int,
    num_classes: int,
    similarity: str = "mse",
    kernel_size: int = 7,
    regularization: str = "diffusion",
    regularization_weight: float = 0.1,
    label_weight: float = 0.0,
) -> nn.Module:
    """The loss of ``conf/loss/registration.yaml``; ``kernel_size``: LNCC's window, in pixels."""
    if similarity not in SIMILARITIES:
        raise unknown_choice("loss.similarity", similarity, SIMILARITIES)
    if regularization not in REGULARIZATIONS:
        raise unknown_choice("loss.regularization", regularization, REGULARIZATIONS)
    measure = {
        "mse": lambda: nn.MSELoss(),
        "lncc": lambda: LocalNormalizedCrossCorrelationLoss(spatial_dims=spatial_dims, kernel_size=kernel_size),
        "mutual_information": lambda: GlobalMutualInformationLoss(),
    }[similarity]()
    roughness = {"diffusion": DiffusionLoss, "bending": BendingEnergyLoss, "none": lambda: None}[regularization]()
    return RegistrationLoss(measure, roughness, (regularization_weight, label_weight), num_classes)
