"""Metrics with percentile bootstrap CIs over the cases of a split, into an ``Evaluation``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medimg_cli.evaluation.classification import PER_CLASS, classification_metrics, overall_names
from medimg_cli.evaluation.document import Evaluation
from medimg_cli.reporting.stats import percentile_interval

Rule = tuple[int | None, float | None]  # (positive class, threshold) of the class predictions


def chunked(function: Callable[[np.ndarray], dict[str, np.ndarray]], indices: np.ndarray) -> dict[str, np.ndarray]:
    """``function`` over blocks of resample rows (bounded memory), concatenated."""
    parts = [function(indices[i : i + 250]) for i in range(0, len(indices), 250)]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def add_classification(
    result: Evaluation, probs: np.ndarray, labels: np.ndarray, names: tuple[str, ...], indices: np.ndarray, rule: Rule
) -> None:
    """Overall and per-class metrics with CIs into ``result``."""
    point = classification_metrics(labels[None], probs[None], *rule)
    boot = chunked(lambda i: classification_metrics(labels[i], probs[i], *rule), indices)
    cases = len(labels)
    overall, per_class = {}, {}
    for name in overall_names(rule[0]):
        interval = percentile_interval(boot[name])
        overall[name] = {"value": float(point[name][0]), "low": interval[0], "high": interval[1]}
        result.add(name, "all", float(point[name][0]), interval, cases)
    for k, klass in enumerate(names):
        per_class[klass] = {"cases": int((labels == k).sum())}
        for name in PER_CLASS:
            interval = percentile_interval(boot[f"class_{name}"][:, k])
            value = float(point[f"class_{name}"][0, k])
            per_class[klass][name] = {"value": value, "low": interval[0], "high": interval[1]}
            result.add(name, klass, value, interval, cases)
    result.document["metrics"] = overall
    result.document["per_class"] = per_class
