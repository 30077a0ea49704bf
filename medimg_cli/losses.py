"""The training loss of each task, built from the ``loss`` config group.

Classification: cross-entropy (binary cross-entropy per label when multi-label). Segmentation:
the ``loss.name`` loss from MONAI on softmax probabilities, background included (MONAI's
default): ``dice_ce`` (Dice + cross-entropy, nnU-Net's choice), ``dice_focal`` (Dice + focal,
for small structures) or ``tversky`` (Tversky index; ``beta > alpha`` weighs false negatives
more). Multitask sums the two, weighted by ``classification_weight`` and ``segmentation_weight``.
Registration: an image similarity of the warped moving image to the fixed one plus a smoothness
penalty of the displacement field (``registration_losses.py``). Anomaly detection: the
detector's own objective (``sample_loss``, e.g. reconstruction error),
averaged over the normal images of the batch only: abnormal images never train it, not even
through the validation loss that picks ``best.pt``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss, TverskyLoss
from torch import nn

from medimg_cli.data import DataInfo
from medimg_cli.errors import check_arguments
from medimg_cli.registration_losses import REGISTRATION_LOSSES
from medimg_cli.registry import Registry

WEIGHT_KEYS = ("classification_weight", "segmentation_weight")  # the multitask weighting, every option
SEGMENTATION_LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
DEFAULT = {"name": "dice_ce"}  # runs saved before the loss group existed trained with it


class SegmentationLoss(nn.Module):
    """A MONAI loss of ``(B, K, *spatial)`` logits and ``(B, 1, *spatial)`` label maps, and the same
    loss over a region of interest (``roi`` ``(B, 1, *spatial)``, 1 where pixels count).

    MONAI's compound losses take no region, so inside one the loss is rebuilt from its parts: the
    overlap term (Dice, Tversky) on softmax probabilities and one-hot targets that are zero outside
    the ROI, and the per-pixel term (cross-entropy, focal) averaged over the ROI's pixels. With
    an ROI of all ones both give the same value.

    Args:
        whole: the MONAI loss on logits and label maps, used without an ROI.
        overlap: ``(weight, loss of probabilities and one-hot targets)`` or ``None``.
        per_pixel: ``(weight, function (logits, one-hot) -> (B, 1, *spatial) losses)`` or ``None``.
    """

    def __init__(self, whole: nn.Module, overlap: tuple[float, nn.Module] | None, per_pixel=None) -> None:
        super().__init__()
        self.whole, self.overlap, self.per_pixel = whole, overlap, per_pixel

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, roi: torch.Tensor | None = None) -> torch.Tensor:
        if roi is None:
            return self.whole(logits, mask)
        roi = roi.to(logits.dtype)
        onehot = F.one_hot(mask[:, 0].long(), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        loss = torch.zeros((), device=logits.device)
        if self.overlap is not None:
            weight, overlap = self.overlap
            loss = loss + weight * overlap(logits.softmax(dim=1) * roi, onehot * roi)
        if self.per_pixel is not None:
            weight, per_pixel = self.per_pixel
            loss = loss + weight * (per_pixel(logits, onehot) * roi).sum() / roi.sum().clamp(min=1)
        return loss


def _cross_entropy(logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    return -(onehot * logits.log_softmax(dim=1)).sum(dim=1, keepdim=True)


@SEGMENTATION_LOSSES.register("dice_ce")
def dice_ce(dice_weight: float = 1.0, ce_weight: float = 1.0) -> nn.Module:
    return SegmentationLoss(
        DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_ce=ce_weight),
        (dice_weight, DiceLoss()),
        (ce_weight, _cross_entropy),
    )


@SEGMENTATION_LOSSES.register("dice_focal")
def dice_focal(dice_weight: float = 1.0, focal_weight: float = 1.0, gamma: float = 2.0) -> nn.Module:
    focal = FocalLoss(gamma=gamma, reduction="none")  # per-class sigmoid focal, as inside DiceFocalLoss
    return SegmentationLoss(
        DiceFocalLoss(to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_focal=focal_weight, gamma=gamma),
        (dice_weight, DiceLoss()),
        (focal_weight, lambda logits, onehot: focal(logits, onehot).mean(dim=1, keepdim=True)),
    )


@SEGMENTATION_LOSSES.register("tversky")
def tversky(alpha: float = 0.3, beta: float = 0.7) -> nn.Module:
    return SegmentationLoss(
        TverskyLoss(to_onehot_y=True, softmax=True, alpha=alpha, beta=beta), (1.0, TverskyLoss(alpha=alpha, beta=beta))
    )


class TaskLoss(nn.Module):
    """The loss of ``info.task`` from model logits, in fp32.

    Args:
        info: the dataset description (task, multi-label).
        cfg: the ``loss`` config (``None``: ``DEFAULT``, for registration its ``registration`` loss).
    """

    def __init__(self, info: DataInfo, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = dict(cfg or ({"name": "registration"} if info.registers else DEFAULT))
        self.info = info
        self.weights = {key: float(cfg.pop(key, 1.0)) for key in WEIGHT_KEYS}
        registry = REGISTRATION_LOSSES if info.registers else SEGMENTATION_LOSSES
        build = registry.get(cfg.pop("name"))  # unknown names list the valid ones
        if info.registers:  # what the data decides
            cfg |= {"spatial_dims": info.spatial_dims, "num_classes": info.num_seg_classes}
        check_arguments("loss", f"loss '{build.__name__}'", build, cfg)
        self.criterion = build(**cfg)  # the segmentation (or registration) loss

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar loss from logits and a batch with ``label`` ``(B,)`` and/or ``mask`` ``(B, 1, *spatial)``
        (and ``roi`` ``(B, 1, *spatial)`` when only some pixels count)."""
        if self.info.registers:
            return self.criterion(outputs, batch)
        if self.info.detects:
            normal = (batch["label"] == 0).float()
            return (outputs["sample_loss"].float() * normal).sum() / normal.sum().clamp(min=1)
        loss = torch.zeros((), device=batch["image"].device)
        if self.info.classifies:
            loss = loss + self.weights["classification_weight"] * self._classification(outputs, batch)
        if self.info.segments:
            seg = self.criterion(outputs["seg_logits"].float(), batch["mask"].long(), batch.get("roi"))
            loss = loss + self.weights["segmentation_weight"] * seg
        return loss

    def counted(self, batch: dict[str, torch.Tensor]) -> int:
        """How many samples of ``batch`` the loss averages over (all, or for anomaly detection the
        normal ones), to weight batches by."""
        return int((batch["label"] == 0).sum()) if self.info.detects else batch["image"].shape[0]

    def _classification(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = outputs["class_logits"].float()
        if self.info.multilabel:
            return F.binary_cross_entropy_with_logits(logits, batch["label"])
        return F.cross_entropy(logits, batch["label"])
