"""Evaluate a model on one split and write the eval folder: ``metrics.json`` and
``metrics.csv`` (every metric with its CI), ``predictions.csv`` (one row per case),
``confusion_matrix.csv``/``.png``, ``roc.png``, ``reliability.png``/``.csv``,
``risk_coverage.png``/``.csv``, ``subgroups.csv``, ``masks/`` and ``explain/``, as the task has them.

Confidence intervals are percentile bootstrap 95% intervals over the split's cases
(``eval.bootstrap`` resamples, seeded by ``eval.seed``), so they say how much a metric would
move on another test set of the same size from the same population; they do not cover
training randomness (``medimg benchmark`` with several seeds does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medimg_cli.data import DataInfo, Splits
from medimg_cli.data.batches import TensorBatches
from medimg_cli.errors import ConfigError
from medimg_cli.evaluation import calibration, figures
from medimg_cli.evaluation.anomalous import anomaly_outputs
from medimg_cli.evaluation.classification import (
    classification_metrics,
    confusion_matrices,
    predicted_classes,
    youden_threshold,
)
from medimg_cli.evaluation.document import Evaluation, Settings, unit_of
from medimg_cli.evaluation.explained import explain_cases
from medimg_cli.evaluation.intervals import Rule, add_classification, chunked
from medimg_cli.evaluation.modalities import missing_modality
from medimg_cli.evaluation.multilabel import multilabel_outputs
from medimg_cli.evaluation.registered import registration_outputs
from medimg_cli.evaluation.segmented import segmentation_split
from medimg_cli.evaluation.uncertainty import Predictions, predict, risk_coverage, sample_statistics
from medimg_cli.fileio import columns_csv, write_atomic, write_json
from medimg_cli.reporting.stats import percentile_interval, resample_indices
from medimg_cli.speed import Speed

SUBGROUP_METRICS = ("accuracy", "balanced_accuracy", "f1", "auc", "dice", "hd95")


def _calibration(result: Evaluation, probs: np.ndarray, labels: np.ndarray, indices: np.ndarray, bins: int) -> dict:
    """ECE and Brier score with CIs, and the reliability bins."""
    ece = calibration.expected_calibration_error(probs, labels, bins)
    brier = calibration.brier_score(probs, labels)
    ece_boot = np.array([calibration.expected_calibration_error(probs[i], labels[i], bins) for i in indices])
    onehot = np.eye(probs.shape[1])[labels]
    brier_boot = ((probs - onehot) ** 2).sum(axis=1)[indices].mean(axis=1)
    for name, value, boot in (("ece", ece, ece_boot), ("brier", brier, brier_boot)):
        interval = percentile_interval(boot)
        result.add(name, "all", value, interval, len(labels))
        result.document["calibration"][name] = {"value": value, "low": interval[0], "high": interval[1]}
    return calibration.reliability_bins(probs, labels, bins)


def _decision_rule(info: DataInfo, threshold: Any, val_probs: Callable[[], np.ndarray]) -> Rule:
    """``(positive class, threshold)`` of the class predictions: ``(None, None)`` (the most probable
    class) unless the task is binary with a positive class; ``eval.threshold`` a probability, or
    ``youden``: the one maximising sensitivity + specificity on the val split (never the split
    evaluated, whose numbers it would flatter)."""
    positive = info.positive_class if info.average == "binary" else None
    if threshold is None:
        return positive, None
    if positive is None:
        raise ConfigError(f"eval.threshold={threshold} applies to binary classification with a positive class")
    if threshold == "youden":
        probs, labels = val_probs()
        return positive, youden_threshold(probs[:, positive], labels == positive)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ConfigError(f"eval.threshold={threshold!r} must be null, youden or a probability in [0, 1]")
    return positive, float(threshold)


def _calibrated_rule(
    model: nn.Module, data: Splits, info: DataInfo, settings: Settings, batch_size: int, speed: Speed
) -> tuple[float, Rule]:
    """The temperature (``eval.temperature``: fitted on the val split, else 1) and the decision rule."""
    temperature = 1.0
    if settings.temperature:
        val_logits = _validation_logits(model, data, info, batch_size, speed)
        temperature = calibration.fit_temperature(val_logits, data.split("val")["label"])

    def val_probs() -> tuple[np.ndarray, np.ndarray]:
        logits = _validation_logits(model, data, info, batch_size, speed).cpu().double()
        return (logits / temperature).softmax(dim=1).numpy(), data.split("val")["label"].numpy()

    return temperature, _decision_rule(info, settings.threshold, val_probs)


def _decision_document(info: DataInfo, asked: Any, rule: Rule) -> dict[str, Any]:
    """How classes were called, for metrics.json: the positive class, the threshold and where it came from."""
    positive, threshold = rule
    how = "most probable class" if threshold is None else "youden on the val split" if asked == "youden" else "given"
    name = info.class_names[positive] if positive is not None else None
    return {"positive_class": name, "threshold": threshold, "rule": how}


def _validation_logits(model: nn.Module, data: Splits, info: DataInfo, batch_size: int, speed: Speed) -> torch.Tensor:
    """``(N, K)`` class logits of the val split, one pass (for temperature scaling)."""
    batches = TensorBatches(data.split("val"), batch_size, speed.device)
    return predict(model, batches, info, speed).logits[0]


def _subgroups(
    data: Splits, split: str, columns: list[str] | None, cases: dict[str, np.ndarray], settings: Settings, rule: Rule
) -> dict[str, list]:
    """Rows ``column, value, n, metric, value, low, high`` for each metadata subgroup."""
    meta = (data.meta or {}).get(split, {})
    chosen = data.subgroup_columns() if columns is None else [columns] if isinstance(columns, str) else list(columns)
    unknown = [c for c in chosen if c not in meta]
    if unknown:
        valid = ", ".join(meta) or "none (the data has no metadata columns)"
        raise ConfigError(f"eval.subgroups: {unknown[0]!r} is not a metadata column of the data; valid: {valid}")
    rows: dict[str, list] = {k: [] for k in ("column", "group", "n", "metric", "value", "low", "high")}
    for column in chosen:
        values = np.array(meta[column])
        for group in sorted(set(values)):
            members = np.flatnonzero(values == group)
            indices = resample_indices(len(members), settings.bootstrap, settings.seed)
            for name, value, boot in _subgroup_metrics(cases, members, indices, rule):
                low, high, _ = percentile_interval(boot)
                for key, item in zip(rows, (column, group, len(members), name, value, low, high), strict=True):
                    rows[key].append(item)
    return rows


def _subgroup_metrics(cases: dict[str, np.ndarray], members: np.ndarray, indices: np.ndarray, rule: Rule):
    """``(metric, value, bootstrap values)`` of the cases ``members``."""
    if "probs" in cases:
        probs, labels = cases["probs"][members], cases["label"][members]
        point = classification_metrics(labels[None], probs[None], *rule)
        boot = chunked(lambda i: classification_metrics(labels[i], probs[i], *rule), indices)
        for name in SUBGROUP_METRICS[:4]:
            yield name, float(point[name][0]), boot[name]
    for name in SUBGROUP_METRICS[4:]:
        if name in cases:
            per_case = cases[name][members].mean(axis=1)
            yield name, float(per_case.mean()), per_case[indices].mean(axis=1)


def _classification_outputs(
    result: Evaluation,
    out: Path,
    predictions: Predictions,
    labels: np.ndarray,
    names: tuple[str, ...],
    temperature: float,
    indices: np.ndarray,
    settings: Settings,
    rule: Rule,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Metrics, calibration, confusion matrix and ROC of the class predictions; fills
    ``result.columns`` (predictions.csv) and ``result.cases``.

    Returns:
        per-case correctness and predictive entropy ``(N,)``, for the risk-coverage curve.
    """
    stats = sample_statistics(predictions.logits, temperature)
    probs = stats["probs"].numpy().astype(np.float64)
    add_classification(result, probs, labels, names, indices, rule)
    result.document["calibration"] = {"temperature": temperature, "bins": settings.bins}
    if temperature != 1.0:
        plain = sample_statistics(predictions.logits)["probs"].numpy().astype(np.float64)
        result.document["calibration"]["before_temperature"] = {
            "ece": calibration.expected_calibration_error(plain, labels, settings.bins),
            "brier": calibration.brier_score(plain, labels),
        }
    bins = _calibration(result, probs, labels, indices, settings.bins)
    write_atomic(out / "reliability.csv", columns_csv({k: v.tolist() for k, v in bins.items()}))
    ece = result.document["calibration"]["ece"]["value"]
    figures.reliability_figure(out / "reliability.png", bins, ece, result.document["split"] + " split")
    preds = predicted_classes(probs, *rule)
    matrix = confusion_matrices(labels[None], preds[None], len(names))[0]
    table = {"true": list(names)} | {f"pred_{n}": matrix[:, k].tolist() for k, n in enumerate(names)}
    write_atomic(out / "confusion_matrix.csv", columns_csv(table))
    figures.confusion_figure(out / "confusion_matrix.png", matrix, names)
    aucs = np.array([result.document["per_class"][n]["auc"]["value"] for n in names])
    figures.roc_figure(out / "roc.png", probs, labels, names, aucs)
    correct = preds == labels
    result.columns = {"label": labels.tolist(), "prediction": preds.tolist(), "correct": correct.tolist()}
    result.columns |= {"confidence": probs.max(1).tolist()}
    result.columns |= {f"p_{n}": probs[:, k].tolist() for k, n in enumerate(names)}
    result.columns["entropy"] = stats["entropy"].tolist()
    if predictions.logits.shape[0] > 1:
        result.columns["variance"] = stats["variance"].tolist()
    result.cases = {"probs": probs, "label": labels}
    return torch.as_tensor(correct.astype(float)), stats["entropy"]


def _risk_coverage(
    result: Evaluation, out: Path, uncertainty: torch.Tensor, quality: torch.Tensor, name: str, settings: Settings
) -> None:
    """The risk-coverage curve of ``(N,)`` per-case ``quality`` ordered by ``uncertainty``: CSV, figure, summary."""
    curve = risk_coverage(uncertainty, quality)
    write_atomic(out / "risk_coverage.csv", columns_csv({k: v.tolist() for k, v in curve.items()}))
    figures.risk_coverage_figure(out / "risk_coverage.png", curve, name, settings.uncertainty)
    result.document["risk_coverage"] = {
        "quality": name,
        "aurc": float((1 - curve["quality"]).mean()),  # area under the risk (1 - quality) curve
        "quality_at_80_percent": float(curve["quality"][int(np.ceil(0.8 * len(quality))) - 1]),
    }


def _model_task(info: DataInfo, task: str) -> DataInfo:
    """The data description for the model's task: a classifier evaluated on multitask data (to
    use the lesion masks in the pointing game) is scored as a classifier."""
    if task == info.task:
        return info
    if task == "multitask" or info.task != "multitask":
        raise ConfigError(f"a {task} model cannot be evaluated on data.task={info.task}; use data.task={task}")
    return dataclasses.replace(info, task=task)


def _write_case_map(out: Path, data: Splits, split: str, ids: list[str]) -> None:
    """``cases.csv``: each anonymous case id beside its file's relative path (``eval.case_map``; the
    paths may identify patients, so the file is written only on request)."""
    names = (data.names or {}).get(split)
    if not names or len(names) != len(ids):
        raise ConfigError("eval.case_map=true needs a file source whose cases are whole files (not slices)")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "cases.csv", columns_csv({"id": ids, "file": names}))


def evaluate_split(
    model: nn.Module,
    payload: Mapping[str, Any],
    data: Splits,
    split: str,
    out: Path,
    settings: Settings,
    speed: Speed,
    batch_size: int,
    facts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``data``'s ``split`` and write the eval folder (see the module
    docstring) into ``out``. Returns the ``metrics.json`` document, which starts with ``facts``."""
    info = _model_task(data.info, payload["model"]["args"].get("task", data.info.task))
    if settings.explain and (not info.classifies or info.multilabel):
        raise ConfigError("eval.explain needs a single-label classifier (data.task classification or multitask)")
    tensors = data.split(split)
    count = len(tensors["image"])
    known_ids = (data.ids or {}).get(split)
    ids = list(known_ids) if known_ids and len(known_ids) == count else [f"case{i:05d}" for i in range(count)]
    if settings.case_map:
        _write_case_map(out, data, split, ids)
    indices = resample_indices(count, settings.bootstrap, settings.seed)
    result = Evaluation(document=dict(facts or {}))
    result.document.update(split=split, cases=count, bootstrap=settings.bootstrap, uncertainty=settings.uncertainty)
    out.mkdir(parents=True, exist_ok=True)
    columns: dict[str, list] = {"case": list(range(count)), "id": ids}
    columns |= {c: list(v) for c, v in ((data.meta or {}).get(split) or {}).items()}
    if info.detects:
        result.document["task"] = info.task
        cases, rule = anomaly_outputs(result, out, model, data, split, settings, speed, batch_size, indices)
    elif info.registers:
        cases, rule = registration_outputs(result, out, model, data, split, settings, speed, batch_size, indices, ids)
    else:
        cases, rule = _predicted_outputs(
            result, out, model, data, (split, ids), info, settings, speed, batch_size, indices
        )
    columns |= result.columns
    write_atomic(out / "predictions.csv", columns_csv(columns))
    groups = _subgroups(data, split, settings.subgroups, cases, settings, rule)
    if groups["column"]:
        write_atomic(out / "subgroups.csv", columns_csv(groups))
    result.document["subgroups"] = sorted(set(groups["column"]))
    if info.modalities > 1 and not info.registers:  # a pair's channels are moving then fixed, not modalities
        result.document["missing_modality"] = missing_modality(out, model, tensors, info, speed, batch_size)
    if settings.explain:
        result.document["explain"] = explain_cases(
            out / "explain", model, payload, tensors, cases["probs"], ids, info.class_names, settings
        )
    distance = result.document.get("distance_unit", "mm")
    rows = [row | {"unit": unit_of(row["metric"], distance)} for row in result.rows]  # fractions, not percent
    write_atomic(out / "metrics.csv", columns_csv({k: [r[k] for r in rows] for k in rows[0]}))
    write_json(out / "metrics.json", result.document)
    return result.document


def _predicted_outputs(
    result: Evaluation,
    out: Path,
    model: nn.Module,
    data: Splits,
    split_ids: tuple[str, list[str]],
    info: DataInfo,
    settings: Settings,
    speed: Speed,
    batch_size: int,
    indices: np.ndarray,
) -> tuple[dict[str, np.ndarray], Rule]:
    """The analyses of a classifier's or segmenter's predictions (metrics, calibration, masks,
    risk-coverage); fills ``result.columns``. Returns the per-case values for the subgroups and the
    decision rule. ``split_ids``: the split and its cases' anonymous ids."""
    split, ids = split_ids
    tensors = data.split(split)
    batches = TensorBatches(tensors, batch_size, speed.device)
    # probabilities for pixel AUC and AP of binary masks, and to resample back to the files' grid
    keep = settings.save_probabilities or info.num_seg_classes == 2 or any((data.originals or {}).get(split) or [])
    predictions = predict(model, batches, info, speed, settings.uncertainty, settings.samples, settings.seed, keep)
    cases: dict[str, np.ndarray] = {}
    columns: dict[str, list] = {}
    rule: Rule = (None, None)
    if info.multilabel:  # independent findings: per-label binary metrics, no softmax calibration
        probs = predictions.logits.double().sigmoid().mean(dim=0).numpy()
        multilabel_outputs(result, probs, tensors["label"].numpy(), info.class_names, indices)
        columns |= result.columns
    elif info.classifies:
        temperature, rule = _calibrated_rule(model, data, info, settings, batch_size, speed)
        result.document["decision"] = _decision_document(info, settings.threshold, rule)
        quality, uncertainty = _classification_outputs(
            result, out, predictions, tensors["label"].numpy(), info.class_names, temperature, indices, settings, rule
        )
        columns |= result.columns
        cases |= result.cases
    if info.segments:
        values = segmentation_split(result, out, predictions, data, split, info, settings, batch_size, indices, ids)
        cases |= values
        for name, per_case in values.items():
            suffixes = [""] if per_case.shape[1] == 1 else [f"_{c + 1}" for c in range(per_case.shape[1])]
            columns |= {f"{name}{s}": per_case[:, c].tolist() for c, s in enumerate(suffixes)}
        columns["mask_entropy"] = predictions.seg_entropy.tolist()
        if not info.classifies:  # the risk-coverage curve of a segmenter: Dice against mask entropy
            quality, uncertainty = torch.as_tensor(values["dice"].mean(axis=1)), predictions.seg_entropy
    if not info.multilabel:
        _risk_coverage(result, out, uncertainty, quality, "accuracy" if info.classifies else "Dice", settings)
    result.columns = columns
    return cases, rule
