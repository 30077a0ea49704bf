"""Metrics of the three tasks, accumulated over batches.

Classification: accuracy, F1 (of the positive class for binary tasks, else macro over the classes
present in labels or predictions, as scikit-learn's ``f1_score``; ``metrics.average`` overrides)
and AUC (binary, or one-vs-rest macro average, from MONAI). Segmentation: Dice and IoU per
foreground class from MONAI, averaged over cases then classes; an empty ground truth with an
empty prediction scores 1 and with any predicted foreground 0 (``ignore_empty=False``), so false
positives on lesion-free images count. Accuracy and F1 are a confusion matrix away, so they are
computed here rather than through a library that would need one-hot copies of every batch.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice, compute_iou, compute_roc_auc

from medimg_cli.data import DataInfo
from medimg_cli.deformation import registration_cases
from medimg_cli.errors import ConfigError, unknown_choice
from medimg_cli.evaluation.classification import average_precision, rank_auc


@dataclass(frozen=True)
class Metric:
    """One reported number, as every output shows it.

    Attributes:
        key: its name in ``evaluate``'s results and ``summary.json``'s ``test``/``best``.
        column: its ``metrics.csv`` column (``val_<key>`` for validation metrics).
        header: its header in the per-epoch table of ``medimg train``.
        title: its title in ``medimg report``'s tables and plots.
        kind: ``epoch`` (the row index), ``train`` (measured while training), ``loss`` and
            ``quality`` (measured on the evaluated split) or ``timing``.
        scale: shown value = value x scale (100: fractions in percent).
        style: format of the shown value.
        higher: which way is better (``None``: neither); picks ``best.pt`` for ``trainer.monitor``.
        tasks: the tasks that have it (``None``: every task); ``pixel`` for the anomaly
            metrics that need masks of the abnormal regions.
        across: how processes' values combine under DDP: ``mean`` (sample-weighted), ``sum``
            (rates), ``rank0`` (measured by the process that evaluates).
        evaluated: whether ``evaluate`` measures it on a split (and the table's test row shows it).
        unit: what the stored value is in (``fraction``: in [0, 1], shown in percent), as
            machine-readable files say it.
    """

    key: str
    column: str
    header: str
    title: str
    kind: str
    scale: float = 1.0
    style: str = "{:.1f}"
    higher: bool | None = True
    tasks: tuple[str, ...] | None = None
    across: str = "rank0"
    evaluated: bool = True
    unit: str = "fraction"

    def show(self, value: float | None) -> str:
        """The table text of ``value`` (empty for missing or NaN)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return self.style.format(value * self.scale)


# The one specification of every per-epoch number, in metrics.csv's column order. metrics.csv,
# the train tables, the report's columns, trainer.monitor and the tests all derive from it;
# adding a metric is a row here plus its computation in TaskMetrics.compute.
METRICS = (
    Metric("epoch", "epoch", "epoch", "epoch", "epoch", style="{:.0f}", higher=None, evaluated=False, unit="epoch"),
    Metric("train_loss", "train_loss", "train loss", "Training loss", "train", style="{:.4f}", higher=False,
           across="mean", evaluated=False, unit="loss"),
    Metric("loss", "val_loss", "val loss", "Validation loss", "loss", style="{:.4f}", higher=False, unit="loss"),
    Metric("accuracy", "val_accuracy", "acc %", "Accuracy %", "quality", 100, tasks=("classification",)),
    Metric("f1", "val_f1", "F1 %", "F1 %", "quality", 100, tasks=("classification",)),
    Metric("auc", "val_auc", "AUC %", "AUC %", "quality", 100, tasks=("classification", "anomaly")),
    Metric("ap", "val_ap", "AP %", "Average precision %", "quality", 100, tasks=("anomaly",)),
    Metric("pixel_auc", "val_pixel_auc", "pixel AUC %", "Pixel AUC %", "quality", 100, tasks=("pixel",)),
    Metric("dice", "val_dice", "Dice %", "Dice %", "quality", 100, tasks=("segmentation", "registration")),
    Metric("iou", "val_iou", "IoU %", "IoU %", "quality", 100, tasks=("segmentation", "registration")),
    Metric("hd95", "val_hd95", "HD95 px", "HD95, pixels", "quality", style="{:.2f}", higher=False,
           tasks=("registration",), unit="pixels"),
    Metric("folding", "val_folding", "folding %", "Folding %", "quality", 100, style="{:.2f}", higher=False,
           tasks=("registration",)),
    Metric("jacobian_std", "val_jacobian_std", "Jac sd", "Jacobian determinant sd", "quality", style="{:.3f}",
           higher=False, tasks=("registration",), unit="ratio"),
    Metric("tre", "val_tre", "TRE px", "Target registration error, pixels", "quality", style="{:.2f}", higher=False,
           tasks=("landmarks",), unit="pixels"),
    Metric("epoch_seconds", "epoch_seconds", "epoch s", "Epoch time, s", "timing", style="{:.2f}", higher=False,
           evaluated=False, unit="s"),
    Metric("train_images_per_second", "train_images_per_second", "train img/s", "Training images/s", "timing",
           style="{:.0f}", across="sum", evaluated=False, unit="images/s"),
    Metric("seconds_per_image", "seconds_per_image", "s/img", "Processing s/image", "timing", style="{:.2e}",
           higher=False, unit="s"),
)  # fmt: skip
BY_KEY = {m.key: m for m in METRICS}
BY_COLUMN = {m.column: m for m in METRICS}
COLUMNS = tuple(m.column for m in METRICS)


def of_kind(*kinds: str) -> tuple[Metric, ...]:
    """The metrics of the given kinds, in specification order."""
    return tuple(m for m in METRICS if m.kind in kinds)


def task_metrics(info: DataInfo) -> tuple[Metric, ...]:
    """The quality metrics ``TaskMetrics`` computes for ``info.task``, in table order."""
    has = {
        "classification": info.classifies,
        "segmentation": info.segments,
        "anomaly": info.detects,
        "pixel": info.detects and info.num_seg_classes > 0,
        "registration": info.registers,
        "landmarks": info.registers and info.landmarks,
    }
    return tuple(m for m in of_kind("quality") if any(has[task] for task in m.tasks))


def task_metric_names(info: DataInfo) -> list[str]:
    """Keys of ``task_metrics(info)``."""
    return [m.key for m in task_metrics(info)]


def monitor_columns(info: DataInfo) -> list[str]:
    """The ``metrics.csv`` columns ``trainer.monitor`` may name for ``info.task``."""
    return [BY_KEY["loss"].column, *(m.column for m in task_metrics(info))]


def monitor_mode(column: str, valid: Iterable[str]) -> str:
    """``"min"`` or ``"max"``: which way ``column`` improves; names outside ``valid`` raise a ``ConfigError``."""
    valid = list(valid)
    if column not in valid:
        raise unknown_choice("trainer.monitor", column, valid)
    return "max" if BY_COLUMN[column].higher else "min"


def improves(value: float | None, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` (``mode`` ``min`` or ``max``); NaN never beats, and beats NaN."""
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if mode == "min" else value > best


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``(num_classes, num_classes)``: rows are true classes, columns predictions."""
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of ``(N,)`` predictions equal to ``(N,)`` targets."""
    return (pred == target).float().mean().item()


AVERAGES = ("binary", "macro", "weighted")


def f1_score(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, average: str = "macro", positive: int | None = None
) -> float:
    """F1 = 2TP / (2TP + FP + FN) of ``(N,)`` predictions, as scikit-learn's ``f1_score``:

    - ``binary``: of the class ``positive`` alone (a finding's F1, as papers on binary tasks report);
    - ``macro``: the mean over the classes that occur in ``target`` or ``pred``;
    - ``weighted``: the mean over classes weighted by their count in ``target``.
    """
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    per_class = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
    if average == "binary":
        return per_class[positive].item()
    if average == "weighted":
        support = cm.sum(1)
        return ((per_class * support).sum() / support.sum().clamp(min=1)).item()
    present = (cm.sum(0) + cm.sum(1)) > 0
    return per_class[present].mean().item()


def with_average(info: DataInfo, setting: str | None) -> DataInfo:
    """``info`` with F1 averaged as ``metrics.average`` says: ``auto`` (or ``None``) keeps the task's
    default, binary for two classes with a positive class, else macro."""
    if setting in (None, "auto"):
        return info
    if setting not in AVERAGES:
        raise unknown_choice("metrics.average", setting, ["auto", *AVERAGES])
    if setting == "binary" and info.positive_class is None:
        raise ConfigError("metrics.average=binary needs a binary classification task; use macro or weighted")
    if info.multilabel and setting != "macro":
        raise ConfigError(f"metrics.average={setting}: multi-label F1 is the macro mean of the per-label F1")
    return dataclasses.replace(info, average=setting)


def positive_class(info: DataInfo) -> dict[str, Any] | None:
    """``{"index", "name"}`` of the positive class in a binary task (as summary.json keeps it), else ``None``."""
    if info.positive_class is None:
        return None
    return {"index": info.positive_class, "name": info.class_names[info.positive_class]}


def f1_header(average: str | None, positive: str | None, percent: bool = True) -> str:
    """What the F1 column is: ``F1 % (pneumonia)`` for the binary F1 of class ``positive``,
    ``macro F1 %`` or ``weighted F1 %`` otherwise (``None``: a run from before the choice, macro)."""
    unit = " %" if percent else ""
    if average == "binary":
        return f"F1{unit} ({positive})"
    return f"{average or 'macro'} F1{unit}"


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


def pixel_auc(maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC of every pixel's anomaly score ``(P,)`` against its mask value ``(P,)`` (abnormal
    region or not), pooled over the images of a split as in the MedIAnomaly benchmark."""
    return float(rank_auc(maps[None], masks[None])[0])


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
        # anomaly detection: image scores, and pixel maps with the masks of abnormal regions
        self.scores: list[torch.Tensor] = []
        self.pixels: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.registered: list[dict[str, torch.Tensor]] = []  # registration: per-case field and label metrics

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        """Add one batch: logits from the model, ``label`` ``(B,)``, ``mask`` ``(B, 1, *spatial)`` and, when
        only some pixels count, ``roi`` ``(B, 1, *spatial)`` (1 inside)."""
        if self.info.registers:
            classes, landmarks = self.info.num_seg_classes, batch.get("landmarks")
            self.registered.append(registration_cases(outputs["ddf"], batch.get("mask"), classes, landmarks))
        if self.info.detects:
            self.scores.append(outputs["anomaly_score"].detach().float())
            self.labels.append(batch["label"])
            if "mask" in batch:  # pixel scores are ranked on the CPU (``pixel_auc``)
                self.pixels.append((outputs["anomaly_map"].detach().float().cpu(), batch["mask"].bool().cpu()))
        if self.info.classifies:
            logits = outputs["class_logits"].detach().float()
            self.probs.append(logits.sigmoid() if self.info.multilabel else logits.softmax(dim=1))
            self.labels.append(batch["label"])
        if self.info.segments:
            k = self.info.num_seg_classes
            pred = F.one_hot(outputs["seg_logits"].argmax(dim=1), k).movedim(-1, 1)
            true = F.one_hot(batch["mask"][:, 0].long(), k).movedim(-1, 1)
            if "roi" in batch:  # only pixels inside the region of interest count
                pred, true = pred * batch["roi"], true * batch["roi"]
            self.dice.append(compute_dice(pred, true, include_background=False, ignore_empty=False).float())
            self.iou.append(compute_iou(pred, true, include_background=False, ignore_empty=False).float())

    def cases(self) -> dict[str, torch.Tensor]:
        """Per-case values on the CPU: ``label`` ``(N,)`` (``(N, L)`` multi-label) and ``probs``
        ``(N, K)`` when classifying, ``dice`` and ``iou`` ``(N,)`` (mean over foreground classes)
        when segmenting. The means of ``dice`` and ``iou`` are ``compute``'s values."""
        found: dict[str, torch.Tensor] = {}
        if self.info.detects:
            found["label"], found["score"] = torch.cat(self.labels).cpu(), torch.cat(self.scores).cpu()
        if self.info.classifies:
            found["label"], found["probs"] = torch.cat(self.labels).cpu(), torch.cat(self.probs).cpu()
        if self.info.segments:
            found["dice"] = torch.cat(self.dice).mean(dim=1).cpu()
            found["iou"] = torch.cat(self.iou).mean(dim=1).cpu()
        for key, value in self._registered().items():
            found[key] = value.mean(dim=1) if value.dim() == 2 else value
        return found

    def _registered(self) -> dict[str, torch.Tensor]:
        """Registration's per-case values over the batches (``deformation.registration_cases``)."""
        if not self.registered:
            return {}
        return {key: torch.cat([part[key] for part in self.registered]) for key in self.registered[0]}

    def compute(self) -> dict[str, float]:
        """The accumulated metrics as plain floats (fractions in [0, 1])."""
        found: dict[str, torch.Tensor] = {}
        if self.info.detects:
            found["label"], found["score"] = torch.cat(self.labels), torch.cat(self.scores)
        if self.info.classifies:
            found["label"], found["probs"] = torch.cat(self.labels), torch.cat(self.probs)
        if self.info.segments:
            found["dice"], found["iou"] = torch.cat(self.dice), torch.cat(self.iou)
        found |= self._registered()
        result = quality_metrics(found, self.info.multilabel, self.info.average, self.info.positive_class)
        pixels = self.pixel_values()
        if pixels is not None:
            result["pixel_auc"] = pixel_auc(*pixels)
        return result

    def pixel_values(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Anomaly detection with masks: every pixel's score (float64) and whether it lies in an
        abnormal region, ``(P,)`` each over the split; else ``None``."""
        if not self.pixels:
            return None
        maps, masks = (torch.cat(part).flatten() for part in zip(*self.pixels, strict=True))
        return maps.double().numpy(), masks.numpy()


def quality_metrics(
    cases: Mapping[str, torch.Tensor], multilabel: bool = False, average: str = "macro", positive: int | None = None
) -> dict[str, float]:
    """The one computation of each quality metric, from per-case values.

    Args:
        cases: ``probs`` ``(N, K)`` and ``label`` ``(N,)`` (``(N, L)`` probabilities and 0/1
            labels when ``multilabel``) for classification; ``score`` ``(N,)`` anomaly scores
            and ``label`` ``(N,)`` (1: abnormal) for anomaly detection; ``dice`` and ``iou`` ``(N, C)`` per
            foreground class (or ``(N, 1)`` per-case means) for segmentation and registration,
            which adds ``hd95`` ``(N, C)`` and ``folding``, ``jacobian_std``, ``tre`` (landmarks) ``(N,)``.
        average, positive: how F1 is averaged and, for ``binary``, the positive class (``f1_score``).

    Returns:
        Fractions in [0, 1] keyed as ``METRICS``; segmentation averages over cases, then classes.
    """
    result: dict[str, float] = {}
    if "probs" in cases and multilabel:
        result.update(multilabel_metrics(cases["probs"], cases["label"]))
    elif "probs" in cases:
        probs, labels = cases["probs"], cases["label"]
        pred = probs.argmax(dim=1)
        result["accuracy"] = accuracy(pred, labels)
        result["f1"] = f1_score(pred, labels, probs.shape[1], average, positive)
        result["auc"] = roc_auc(probs, labels)
    if "score" in cases:  # anomaly detection: the abnormal class is the positive one
        scores, abnormal = cases["score"].double().cpu().numpy()[None], cases["label"].cpu().numpy()[None] == 1
        result["auc"] = float(rank_auc(scores, abnormal)[0])
        result["ap"] = float(average_precision(scores, abnormal)[0])
    for key in ("dice", "iou", "hd95", "folding", "jacobian_std", "tre"):
        if key in cases:
            result[key] = cases[key].mean(dim=0).mean().item()
    return result
