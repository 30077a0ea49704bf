"""The training loss of each task, built from the ``loss`` config group.

Classification: cross-entropy (binary cross-entropy per label when multi-label). Segmentation:
the ``loss.name`` loss from MONAI on softmax probabilities, background included (MONAI's
default): ``dice_ce`` (Dice + cross-entropy, nnU-Net's choice), ``dice_focal`` (Dice + focal,
for small structures) or ``tversky`` (Tversky index; ``beta > alpha`` weighs false negatives
more). Multitask sums the two, weighted by ``classification_weight`` and ``segmentation_weight``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss, TverskyLoss
from torch import nn

from medimg_cli.data import DataInfo
from medimg_cli.errors import check_arguments
from medimg_cli.registry import Registry

WEIGHT_KEYS = ("classification_weight", "segmentation_weight")  # the multitask weighting, every option
SEGMENTATION_LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
DEFAULT = {"name": "dice_ce"}  # runs saved before the loss group existed trained with it


@SEGMENTATION_LOSSES.register("dice_ce")
def dice_ce(dice_weight: float = 1.0, ce_weight: float = 1.0) -> nn.Module:
    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_ce=ce_weight)


@SEGMENTATION_LOSSES.register("dice_focal")
def dice_focal(dice_weight: float = 1.0, focal_weight: float = 1.0, gamma: float = 2.0) -> nn.Module:
    return DiceFocalLoss(
        to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_focal=focal_weight, gamma=gamma
    )


@SEGMENTATION_LOSSES.register("tversky")
def tversky(alpha: float = 0.3, beta: float = 0.7) -> nn.Module:
    return TverskyLoss(to_onehot_y=True, softmax=True, alpha=alpha, beta=beta)


class TaskLoss(nn.Module):
    """The loss of ``info.task`` from model logits, in fp32.

    Args:
        info: the dataset description (task, multi-label).
        cfg: the ``loss`` config (``DEFAULT`` when ``None``).
    """

    def __init__(self, info: DataInfo, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = dict(cfg or DEFAULT)
        self.info = info
        self.weights = {key: float(cfg.pop(key, 1.0)) for key in WEIGHT_KEYS}
        build = SEGMENTATION_LOSSES.get(cfg.pop("name"))  # unknown names list the valid ones
        check_arguments("loss", f"loss '{build.__name__}'", build, cfg)
        self.segmentation = build(**cfg)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar loss from logits and a batch with ``label`` ``(B,)`` and/or ``mask`` ``(B, 1, *spatial)``."""
        loss = torch.zeros((), device=batch["image"].device)
        if self.info.classifies:
            loss = loss + self.weights["classification_weight"] * self._classification(outputs, batch)
        if self.info.segments:
            seg = self.segmentation(outputs["seg_logits"].float(), batch["mask"].long())
            loss = loss + self.weights["segmentation_weight"] * seg
        return loss

    def _classification(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = outputs["class_logits"].float()
        if self.info.multilabel:
            return F.binary_cross_entropy_with_logits(logits, batch["label"])
        return F.cross_entropy(logits, batch["label"])
