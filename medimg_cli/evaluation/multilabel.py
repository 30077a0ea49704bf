"""Multi-label evaluation (ChestMNIST-style data: independent 0/1 findings per image).

Each label is a binary task of its own, so it gets the binary metrics of
``classification.py`` at the MedMNIST protocol's threshold of 0.5: sensitivity, specificity,
PPV, NPV, F1, AUC and average precision, each with a bootstrap 95% CI over the cases; the
overall numbers are their macro means over the labels (a label whose AUC is undefined in a
resample, for want of a positive case, is left out of that resample's mean).
"""

from __future__ import annotations

import warnings

import numpy as np

from medimg_cli.evaluation.classification import BINARY, classification_metrics
from medimg_cli.evaluation.document import Evaluation
from medimg_cli.reporting.stats import percentile_interval

THRESHOLD = 0.5  # MedMNIST's multi-label protocol
PER_LABEL = ("sensitivity", "specificity", "ppv", "npv", "f1", "auc", "ap")
MEANS = ("accuracy", "f1", "auc", "sensitivity", "specificity")  # macro means over the labels


def _label_metrics(probs: np.ndarray, target: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
    """``(R + 1, L)`` per-label metrics: row 0 the point estimate, then one row per resample."""
    rows = np.concatenate([np.arange(len(target))[None], indices])
    found: dict[str, list[np.ndarray]] = {name: [] for name in BINARY}
    for label in range(target.shape[1]):
        scores = np.stack([1 - probs[:, label], probs[:, label]], axis=-1)
        values = classification_metrics(target[rows, label], scores[rows], positive=1, threshold=THRESHOLD)
        for name in BINARY:
            found[name].append(values[name])
    return {name: np.stack(columns, axis=1) for name, columns in found.items()}


def multilabel_outputs(
    result: Evaluation, probs: np.ndarray, target: np.ndarray, names: tuple[str, ...], indices: np.ndarray
) -> None:
    """Per-label and macro-mean metrics with CIs into ``result`` (``metrics.json``, ``metrics.csv``)
    and the ``label_<name>``, ``p_<name>`` columns of ``predictions.csv``.

    Args:
        probs: ``(N, L)`` sigmoid probabilities; target: ``(N, L)`` 0/1 labels; indices: ``(R, N)`` resamples.
    """
    values = _label_metrics(probs, target.astype(int), indices)
    cases = len(target)
    per_label: dict[str, dict] = {}
    for k, label in enumerate(names):
        per_label[label] = {"cases": int(target[:, k].sum())}
        for name in PER_LABEL:
            interval = percentile_interval(values[name][1:, k])
            per_label[label][name] = {"value": float(values[name][0, k]), "low": interval[0], "high": interval[1]}
            result.add(name, label, float(values[name][0, k]), interval, cases)
    overall = {}
    for name in MEANS:
        with warnings.catch_warnings():  # a resample where every label's AUC is undefined: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(values[name], axis=1)
        interval = percentile_interval(means[1:])
        overall[name] = {"value": float(means[0]), "low": interval[0], "high": interval[1]}
        result.add(name, "macro", float(means[0]), interval, cases)
    result.document |= {"metrics": overall, "per_label": per_label, "threshold": THRESHOLD}
    result.columns = {f"label_{n}": target[:, k].astype(int).tolist() for k, n in enumerate(names)}
    result.columns |= {f"p_{n}": probs[:, k].tolist() for k, n in enumerate(names)}


def per_label_summary(probs: np.ndarray, target: np.ndarray, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Each label's AUC, F1, sensitivity and specificity at 0.5, as ``summary.json`` keeps them."""
    values = _label_metrics(probs, target.astype(int), np.empty((0, len(target)), dtype=int))
    keep = ("auc", "f1", "sensitivity", "specificity")
    return {label: {name: float(values[name][0, k]) for name in keep} for k, label in enumerate(names)}
