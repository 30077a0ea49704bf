"""Metrics of the three tasks, accumulated over batches.

Classification: accuracy, macro F1 (over the classes present in labels or predictions, as
scikit-learn's ``f1_score(average="macro")``) and AUC (binary, or one-vs-rest macro average,
from MONAI). Segmentation: Dice and IoU per foreground class from MONAI, averaged over cases
then classes; an empty ground truth with an empty prediction scores 1 and with any predicted
foreground 0 (``ignore_empty=False``), so false positives on lesion-free images count.
Accuracy and F1 are a confusion matrix away, so they are computed here rather than through
a library that would need one-hot copies of every batch.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice, compute_iou, compute_roc_auc

from medimg_cli.data import DataInfo

CLASSIFICATION_METRICS = ("accuracy", "f1", "auc")
SEGMENTATION_METRICS = ("dice", "iou")


def task_metric_names(info: DataInfo) -> list[str]:
    """Names of the metrics ``TaskMetrics`` computes for ``info.task``, in table order."""
    return [*(CLASSIFICATION_METRICS if info.classifies else ()), *(SEGMENTATION_METRICS if info.segments else ())]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``(num_classes, num_classes)``: rows are true classes, columns predictions."""
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of ``(N,)`` predictions equal to ``(N,)`` targets."""
    return (pred == target).float().mean().item()


def macro_f1(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean F1 over classes that occur in ``target`` or ``pred``; F1 = 2TP / (2TP + FP + FN)."""
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    present = (cm.sum(0) + cm.sum(1)) > 0
    return (2 * tp / (2 * tp + fp + fn).clamp(min=1))[present].mean().item()


def roc_auc(probs: torch.Tensor, target: torch.Tensor) -> float:
    """AUC from ``(N, K)`` class probabilities: binary for K = 2, else one-vs-rest macro.

    Returns NaN when a class needed for the AUC is absent from ``target``.
    """
    num_classes = probs.shape[1]
    if num_classes == 2:
        if target.unique().numel() < 2:
            return math.nan
        return float(compute_roc_auc(probs[:, 1].cpu(), target.cpu()))
    if target.unique().numel() < num_classes:
        return math.nan
    onehot = F.one_hot(target.long(), num_classes).cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute_roc_auc(probs.cpu().float(), onehot, average="macro"))


def multilabel_metrics(probs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Metrics of ``(N, L)`` independent label probabilities against ``(N, L)`` 0/1 targets.

    Accuracy is the mean per-label accuracy at threshold 0.5 (the MedMNIST protocol), F1 the mean
    of the per-label binary F1, AUC the mean per-label AUC over labels with both values present.
    """
    pred, target = (probs > 0.5).long(), target.long()
    tp = (pred * target).sum(0).double()
    fp, fn = (pred * (1 - target)).sum(0).double(), ((1 - pred) * target).sum(0).double()
    aucs = [
        float(compute_roc_auc(probs[:, k].cpu().float(), target[:, k].cpu()))
        for k in range(target.shape[1])
        if target[:, k].unique().numel() == 2
    ]
    return {
        "accuracy": (pred == target).float().mean().item(),
        "f1": (2 * tp / (2 * tp + fp + fn).clamp(min=1)).mean().item(),
        "auc": float(np.mean(aucs)) if aucs else math.nan,
    }


class TaskMetrics:
    """Accumulates the metrics of a task over batches of model outputs.

    Args:
        info: the dataset description (task and class counts).
    """

    def __init__(self, info: DataInfo) -> None:
        self.info = info
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        # per-case (B, classes) values from MONAI's functions; its cumulative DiceMetric would
        # all-gather across DDP processes while only rank 0 evaluates
        self.dice: list[torch.Tensor] = []
        self.iou: list[torch.Tensor] = []

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        """Add one batch: logits from the model, ``label`` ``(B,)`` and ``mask`` ``(B, 1, *spatial)``."""
        if self.info.classifies:
            logits = outputs["class_logits"].detach().float()
            self.probs.append(logits.sigmoid() if self.info.multilabel else logits.softmax(dim=1))
            self.labels.append(batch["label"])
        if self.info.segments:
            k = self.info.num_seg_classes
            pred = F.one_hot(outputs["seg_logits"].argmax(dim=1), k).movedim(-1, 1)
            true = F.one_hot(batch["mask"][:, 0].long(), k).movedim(-1, 1)
            self.dice.append(compute_dice(pred, true, include_background=False, ignore_empty=False).float())
            self.iou.append(compute_iou(pred, true, include_background=False, ignore_empty=False).float())

    def cases(self) -> dict[str, torch.Tensor]:
        """Per-case values on the CPU: ``label`` ``(N,)`` (``(N, L)`` multi-label) and ``probs``
        ``(N, K)`` when classifying, ``dice`` and ``iou`` ``(N,)`` (mean over foreground classes)
        when segmenting. The means of ``dice`` and ``iou`` are ``compute``'s values."""
        found: dict[str, torch.Tensor] = {}
        if self.info.classifies:
            found["label"], found["probs"] = torch.cat(self.labels).cpu(), torch.cat(self.probs).cpu()
        if self.info.segments:
            found["dice"] = torch.cat(self.dice).mean(dim=1).cpu()
            found["iou"] = torch.cat(self.iou).mean(dim=1).cpu()
        return found

    def compute(self) -> dict[str, float]:
        """The accumulated metrics as plain floats (fractions in [0, 1])."""
        result: dict[str, float] = {}
        if self.info.classifies and self.info.multilabel:
            result.update(multilabel_metrics(torch.cat(self.probs), torch.cat(self.labels)))
        elif self.info.classifies:
            probs, labels = torch.cat(self.probs), torch.cat(self.labels)
            pred = probs.argmax(dim=1)
            result["accuracy"] = accuracy(pred, labels)
            result["f1"] = macro_f1(pred, labels, self.info.num_classes)
            result["auc"] = roc_auc(probs, labels)
        if self.info.segments:
            result["dice"] = torch.cat(self.dice).mean(dim=0).mean().item()
            result["iou"] = torch.cat(self.iou).mean(dim=0).mean().item()
        return result
