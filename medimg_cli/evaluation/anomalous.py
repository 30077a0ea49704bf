"""Anomaly detection on one split: image-level metrics at a threshold chosen on the val split,
with bootstrap CIs, pixel-level metrics where masks mark the abnormal regions, score histograms
and anomaly-map overlays.

An anomaly score is not a probability, so a decision needs a threshold; it is chosen on the
val split (Youden's J: the highest sensitivity + specificity), never on the split evaluated,
whose numbers it would flatter. The image-level metrics reuse ``classification_metrics`` with
the score as the abnormal class's column: its ranks give the AUC and average precision, the
threshold gives the confusion matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medimg_cli.data import Splits
from medimg_cli.data.anomaly import ABNORMAL, CLASS_NAMES
from medimg_cli.data.batches import TensorBatches
from medimg_cli.errors import ConfigError
from medimg_cli.evaluation import figures
from medimg_cli.evaluation.classification import (
    average_precision,
    classification_metrics,
    threshold_counts,
    youden_threshold,
)
from medimg_cli.evaluation.document import Evaluation, Settings
from medimg_cli.evaluation.intervals import Rule, add_classification
from medimg_cli.loop import evaluate
from medimg_cli.losses import TaskLoss
from medimg_cli.metrics import TaskMetrics, pixel_auc
from medimg_cli.speed import Speed

DECIDED = ("sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy")  # at the val threshold


def as_probs(scores: np.ndarray) -> np.ndarray:
    """``(..., N)`` scores as ``(..., N, 2)`` columns (normal, abnormal) for ``classification_metrics``:
    ranks and thresholds of the abnormal column are those of the score."""
    return np.stack([-scores, scores], axis=-1)


def decided_metrics(val: Mapping[str, Any], test: Mapping[str, Any]) -> dict[str, float]:
    """The val split's Youden threshold and the test metrics at it (``DECIDED``), as fractions.

    Args:
        val, test: ``TaskMetrics.cases()`` of the two splits (``label`` 1: abnormal, ``score``).
    """
    val_scores, val_labels = np.asarray(val["score"], dtype=float), np.asarray(val["label"])
    threshold = youden_threshold(val_scores, val_labels == ABNORMAL)
    scores, labels = np.asarray(test["score"], dtype=float), np.asarray(test["label"])
    found = classification_metrics(labels[None], as_probs(scores[None]), ABNORMAL, threshold)
    return {"threshold": threshold} | {name: float(found[name][0]) for name in DECIDED}


def split_cases(model: torch.nn.Module, batches: Any, loss: TaskLoss, speed: Speed) -> TaskMetrics:
    """One pass over a split (``batches`` of it): ``.cases()`` gives ``label`` and ``score``
    ``(N,)``, ``.pixel_values()`` the pixels' scores and truth where masks exist."""
    cases = TaskMetrics(loss.info)
    evaluate(model, batches, loss, speed, cases)
    return cases


def pixel_metrics(test: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]) -> dict:
    """Pixel AUC and average precision of the ``(scores, truth)`` pixels of the evaluated split,
    and their Dice thresholded where Dice is best on the ``val`` split's pixels, each pooled over
    the split's pixels (a single number: the pixels of one image are not independent cases)."""
    (scores, truth), (val_scores, val_truth) = test, val
    tps, fps, thresholds = threshold_counts(val_scores, val_truth)
    threshold = float(thresholds[np.argmax(2 * tps / (tps + fps + val_truth.sum()))])
    called = scores >= threshold
    return {
        "pixel_auc": pixel_auc(scores, truth),
        "pixel_ap": float(average_precision(scores[None], truth[None])[0]),
        "pixel_dice": float(2 * (called & truth).sum() / max(called.sum() + truth.sum(), 1)),
        "pixel_threshold": threshold,
    }


def anomaly_maps(model: torch.nn.Module, images: torch.Tensor, speed: Speed) -> torch.Tensor:
    """``(N, 1, *spatial)`` anomaly maps of ``(N, C, *spatial)`` images, on the CPU."""
    model.eval()
    with torch.no_grad(), speed.autocast():
        return model(speed.layout(images.to(speed.device)))["anomaly_map"].float().cpu()


def write_figures(
    out: Path, model: torch.nn.Module, tensors: Mapping, cases: Mapping, threshold: float, speed: Speed, shown: int = 8
) -> None:
    """``score_histogram.png`` (normal and abnormal scores, the threshold) and ``anomaly_maps.png``:
    the ``shown`` highest-scoring abnormal images beside their maps (one colour scale for all, the
    99th percentile of their pixels at the top), the true region outlined where known."""
    scores, labels = cases["score"], cases["label"]
    figures.score_histogram(out / "score_histogram.png", scores, labels, threshold, CLASS_NAMES)
    chosen = [int(i) for i in np.argsort(-scores, kind="stable") if labels[i] == ABNORMAL][:shown]
    if not chosen:
        return
    maps = anomaly_maps(model, tensors["image"][chosen], speed)[:, 0]
    scaled = (maps / torch.quantile(maps.flatten()[:1_000_000], 0.99).clamp(min=1e-12)).clamp(max=1)
    titles = [f"score {scores[i]:.3g}" for i in chosen]
    masks = tensors["mask"][chosen] if "mask" in tensors else None
    figures.overlay_figure(
        out / "anomaly_maps.png", tensors["image"][chosen], [scaled], titles, ["anomaly map"], masks,
        "1: the 99th percentile of all maps",
    )  # fmt: skip


def anomaly_outputs(
    result: Evaluation,
    out: Path,
    model: torch.nn.Module,
    data: Splits,
    split: str,
    settings: Settings,
    speed: Speed,
    batch_size: int,
    indices: np.ndarray,
) -> tuple[dict[str, np.ndarray], Rule]:
    """Image metrics with CIs at the decision threshold, pixel metrics where masks exist, the
    figures; fills ``result.columns``. Returns the per-case values for the subgroups and the rule."""
    loss, tensors = TaskLoss(data.info), data.split(split)
    evaluated, val = (
        split_cases(model, TensorBatches(dict(data.split(name)), batch_size, speed.device), loss, speed)
        for name in (split, "val")
    )
    cases = evaluated.cases()
    scores, labels = cases["score"].double().numpy(), cases["label"].numpy()
    threshold = _threshold(settings.threshold, val.cases())
    rule, probs = (ABNORMAL, threshold), as_probs(scores)
    add_classification(result, probs, labels, CLASS_NAMES, indices, rule)
    how = "given" if isinstance(settings.threshold, (int, float)) else "youden on the val split"
    result.document["decision"] = {"positive_class": "abnormal", "threshold": threshold, "rule": how}
    if "mask" in tensors:
        found = pixel_metrics(evaluated.pixel_values(), val.pixel_values())
        result.document["decision"]["pixel_threshold"] = found.pop("pixel_threshold")
        for name, value in found.items():
            result.add(name, "all", value, (math.nan, math.nan, 0), len(labels))
            result.document["metrics"][name] = {"value": value, "low": math.nan, "high": math.nan}
    write_figures(out, model, tensors, {"score": scores, "label": labels}, threshold, speed, settings.cases)
    prediction = (scores >= threshold).astype(int)
    result.columns = {"label": labels.tolist(), "score": scores.tolist(), "prediction": prediction.tolist()}
    return {"probs": probs, "label": labels}, rule


def _threshold(asked: Any, val: Mapping[str, torch.Tensor]) -> float:
    """``eval.threshold`` for anomaly scores: a number as given, else (null, youden) Youden's on
    the ``val`` split's cases."""
    if isinstance(asked, bool) or not (asked is None or asked == "youden" or isinstance(asked, (int, float))):
        raise ConfigError(f"eval.threshold={asked!r}: anomaly scores take null, youden or a score threshold")
    if isinstance(asked, (int, float)):
        return float(asked)
    return youden_threshold(val["score"].double().numpy(), val["label"].numpy() == ABNORMAL)
