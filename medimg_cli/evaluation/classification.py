"""Classification metrics for many bootstrap resamples at once, and ROC curves.

Every metric is computed from ``(R, N)`` label and prediction arrays (R resamples of N cases;
R = 1 for the point estimate), so 2000 resamples cost a few array operations rather than 2000
library calls. Definitions follow scikit-learn, which the tests compare against:

- per class k (one-vs-rest): precision TP/(TP+FP), recall (sensitivity) TP/(TP+FN),
  specificity TN/(TN+FP), F1 2TP/(2TP+FP+FN), each 0 when its denominator is 0;
- macro precision, recall, specificity and F1: the mean over the classes present in the labels
  or the predictions (``average="macro"``);
- balanced accuracy: the mean recall over the classes present in the labels;
- AUC: the Mann-Whitney rank statistic, binary on class 1, one-vs-rest macro for K > 2
  (``roc_auc_score(multi_class="ovr")``); NaN when a class it needs is absent.

A binary task with a positive class (the finding) reports what a clinical paper does instead
of macro means: sensitivity and specificity, PPV and NPV, the positive class's F1, AUC and
average precision (``average_precision_score``) of its probability, and balanced accuracy.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

PER_CLASS = ("precision", "recall", "specificity", "f1", "auc")
OVERALL = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auc")
BINARY = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auc", "ap")


def overall_names(positive: int | None) -> tuple[str, ...]:
    """The overall metrics ``classification_metrics`` returns: ``BINARY`` with a positive class."""
    return OVERALL if positive is None else BINARY


def predicted_classes(probs: np.ndarray, positive: int | None = None, threshold: float | None = None) -> np.ndarray:
    """Class predictions from ``(..., K)`` probabilities: the most probable class, or, with a
    ``threshold``, the positive class where its probability is at least the threshold."""
    if threshold is None or positive is None:
        return probs.argmax(axis=-1)
    return np.where(probs[..., positive] >= threshold, positive, 1 - positive)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Average precision of ``(R, N)`` scores for ``(R, N)`` booleans: the sum over distinct
    thresholds of precision times the recall gained (``average_precision_score``); NaN without positives."""
    found = np.full(scores.shape[0], np.nan)
    for row, (score, truth) in enumerate(zip(scores, positive, strict=True)):  # a sort per resample
        tps, fps, _ = threshold_counts(score, truth)
        if tps[-1] > 0:
            precision, recall = tps / (tps + fps), tps / tps[-1]
            found[row] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return found


def threshold_counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives ``(T,)`` at each distinct threshold of ``(N,)`` scores against
    ``(N,)`` booleans, highest threshold first, and those thresholds."""
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order].astype(float)
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last index of each distinct score
    return np.cumsum(positive)[last], np.cumsum(1 - positive)[last], scores[last]


def confusion_matrices(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``(R, K, K)`` counts from ``(R, N)`` labels and predictions; rows are true classes."""
    resamples = labels.shape[0]
    flat = (np.arange(resamples)[:, None] * num_classes + labels) * num_classes + preds
    counts = np.bincount(flat.ravel(), minlength=resamples * num_classes**2)
    return counts.reshape(resamples, num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)


def class_aucs(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC per class, ``(R, K)``, from ``(R, N)`` labels and ``(R, N, K)`` probabilities.

    Ties in the scores count one half (average ranks), as in the trapezoidal ROC area.
    """
    return np.stack([rank_auc(probs[..., k], labels == k) for k in range(probs.shape[-1])], axis=1)


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of ``(R, N)`` scores for ``(R, N)`` booleans, ``(R,)``: the
    Mann-Whitney statistic, ties counting one half (average ranks); NaN without both classes.
    One sort per row, so it serves millions of pixels as well as a few hundred cases."""
    n_pos = positive.sum(axis=1).astype(float)
    n_neg = positive.shape[1] - n_pos
    rank_sum = np.where(positive, rankdata(scores, axis=1), 0).sum(axis=1)
    aucs = np.full(scores.shape[0], np.nan)
    defined = (n_pos > 0) & (n_neg > 0)
    aucs[defined] = (rank_sum[defined] - n_pos[defined] * (n_pos[defined] + 1) / 2) / (n_pos[defined] * n_neg[defined])
    return aucs


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, positive: int | None = None, threshold: float | None = None
) -> dict[str, np.ndarray]:
    """Metrics of ``(R, N)`` integer labels and ``(R, N, K)`` class probabilities.

    Args:
        positive: the positive class of a binary task (then the ``BINARY`` metrics are about it).
        threshold: its probability from which a case is called positive; ``None``: the most probable class.

    Returns:
        overall metrics as ``(R,)`` arrays under the names of ``overall_names(positive)``, and
        per-class metrics as ``(R, K)`` arrays under ``class_<name>`` for the names of ``PER_CLASS``.
    """
    num_classes = probs.shape[-1]
    preds = predicted_classes(probs, positive, threshold)
    cm = confusion_matrices(labels, preds, num_classes).astype(float)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    true, predicted = cm.sum(axis=2), cm.sum(axis=1)
    fp, fn = predicted - tp, true - tp
    tn = labels.shape[1] - tp - fp - fn
    per_class = {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    present = (true + predicted) > 0
    found = {name: (values * present).sum(axis=1) / present.sum(axis=1) for name, values in per_class.items()}
    found["accuracy"] = tp.sum(axis=1) / labels.shape[1]
    in_labels = true > 0
    found["balanced_accuracy"] = (per_class["recall"] * in_labels).sum(axis=1) / in_labels.sum(axis=1)
    aucs = class_aucs(labels, probs)
    per_class["auc"] = aucs
    found["auc"] = aucs[:, 1] if num_classes == 2 else aucs.mean(axis=1)  # NaN if any class is absent
    if positive is not None:
        negative = 1 - positive
        found |= {"sensitivity": per_class["recall"][:, positive], "specificity": per_class["recall"][:, negative]}
        found |= {"ppv": per_class["precision"][:, positive], "npv": per_class["precision"][:, negative]}
        found |= {"f1": per_class["f1"][:, positive], "ap": average_precision(probs[..., positive], labels == positive)}
    names = overall_names(positive)
    return {name: found[name] for name in names} | {f"class_{name}": per_class[name] for name in PER_CLASS}


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points of ``(N,)`` scores against ``(N,)`` booleans, one per distinct threshold.

    Returns:
        false-positive rates, true-positive rates and thresholds, starting at (0, 0) with an
        infinite threshold, as ``sklearn.metrics.roc_curve(drop_intermediate=False)``.
    """
    tps, fps, thresholds = threshold_counts(scores, positive)
    tpr = np.r_[0.0, tps] / max(tps[-1], 1)
    fpr = np.r_[0.0, fps] / max(fps[-1], 1)
    return fpr, tpr, np.r_[np.inf, thresholds]


def youden_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The score threshold of ``(N,)`` scores that maximises sensitivity + specificity (Youden's J)
    against ``(N,)`` booleans; a case is positive from the threshold up."""
    fpr, tpr, thresholds = roc_curve(scores, positive)
    return float(thresholds[1:][np.argmax((tpr - fpr)[1:])])
