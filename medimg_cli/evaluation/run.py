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
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_average_precision, compute_roc_auc
from torch import nn

from medimg_cli.data import DataInfo, Splits
from medimg_cli.data.batches import TensorBatches
from medimg_cli.errors import ConfigError
from medimg_cli.evaluation import calibration, figures
from medimg_cli.evaluation.classification import OVERALL, PER_CLASS, classification_metrics, confusion_matrices
from medimg_cli.evaluation.explained import explain_cases
from medimg_cli.evaluation.segmentation import SEGMENTATION, case_metrics
from medimg_cli.evaluation.uncertainty import Predictions, predict, risk_coverage, sample_statistics
from medimg_cli.evaluation.written import write_masks, write_probabilities
from medimg_cli.fileio import columns_csv, write_atomic, write_json
from medimg_cli.reporting.stats import percentile_interval, resample_indices
from medimg_cli.speed import Speed

SUBGROUP_METRICS = ("accuracy", "balanced_accuracy", "f1", "auc", "dice", "hd95")


@dataclass
class Settings:
    """The ``eval`` config group (see ``conf/eval.yaml``)."""

    bootstrap: int = 2000
    seed: int = 0
    bins: int = 15
    temperature: bool = False
    uncertainty: str = "none"
    samples: int = 20
    subgroups: list[str] | None = None
    masks: bool = True
    explain: str | None = None
    target_layer: str | None = None
    cases: int = 8
    steps: int = 32
    overlap: float | None = None  # used by load_trained, which builds the sliding-window model
    save_probabilities: bool = False
    nsd_tolerance: float = 1.0


@dataclass
class Evaluation:
    """What one evaluation found: the JSON document, the rows of metrics.csv and per-case values."""

    document: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: dict[str, list] = field(default_factory=dict)  # classification columns of predictions.csv
    cases: dict[str, np.ndarray] = field(default_factory=dict)  # per-case arrays for the subgroups

    def add(self, metric: str, klass: str, value: float, interval: tuple[float, float, int], cases: int) -> None:
        low, high, _ = interval
        self.rows.append({"metric": metric, "class": klass, "value": value, "low": low, "high": high, "n": cases})


def _chunked(function: Callable[[np.ndarray], dict[str, np.ndarray]], indices: np.ndarray) -> dict[str, np.ndarray]:
    """``function`` over blocks of resample rows (bounded memory), concatenated."""
    parts = [function(indices[i : i + 250]) for i in range(0, len(indices), 250)]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _classification(
    result: Evaluation, probs: np.ndarray, labels: np.ndarray, names: tuple[str, ...], indices: np.ndarray
) -> None:
    """Overall and per-class metrics with CIs into ``result``."""
    point = classification_metrics(labels[None], probs[None])
    boot = _chunked(lambda i: classification_metrics(labels[i], probs[i]), indices)
    cases = len(labels)
    overall, per_class = {}, {}
    for name in OVERALL:
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


def _segmentation(result: Evaluation, values: dict[str, np.ndarray], indices: np.ndarray, unit: str) -> None:
    """Means over cases (per class, then over classes) with CIs into ``result``."""
    classes = values["dice"].shape[1]
    found = {}
    for name in SEGMENTATION:
        per_case = values[name]  # (N, C - 1)
        boot = per_case[indices].mean(axis=1)  # (R, C - 1)
        point = per_case.mean(axis=0)
        interval = percentile_interval(boot.mean(axis=1))
        found[name] = {"value": float(point.mean()), "low": interval[0], "high": interval[1]}
        result.add(name, "all", float(point.mean()), interval, len(per_case))
        for c in range(classes) if classes > 1 else ():
            result.add(name, str(c + 1), float(point[c]), percentile_interval(boot[:, c]), len(per_case))
    result.document.setdefault("metrics", {}).update(found)
    result.document["distance_unit"] = unit


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


def _validation_logits(model: nn.Module, data: Splits, info: DataInfo, batch_size: int, speed: Speed) -> torch.Tensor:
    """``(N, K)`` class logits of the val split, one pass (for temperature scaling)."""
    batches = TensorBatches(data.split("val"), batch_size, speed.device)
    return predict(model, batches, info, speed).logits[0]


def _subgroups(
    data: Splits, split: str, columns: list[str] | None, cases: dict[str, np.ndarray], settings: Settings
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
            for name, value, boot in _subgroup_metrics(cases, members, indices):
                low, high, _ = percentile_interval(boot)
                for key, item in zip(rows, (column, group, len(members), name, value, low, high), strict=True):
                    rows[key].append(item)
    return rows


def _subgroup_metrics(cases: dict[str, np.ndarray], members: np.ndarray, indices: np.ndarray):
    """``(metric, value, bootstrap values)`` of the cases ``members``."""
    if "probs" in cases:
        probs, labels = cases["probs"][members], cases["label"][members]
        point = classification_metrics(labels[None], probs[None])
        boot = _chunked(lambda i: classification_metrics(labels[i], probs[i]), indices)
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Metrics, calibration, confusion matrix and ROC of the class predictions; fills
    ``result.columns`` (predictions.csv) and ``result.cases``.

    Returns:
        per-case correctness and predictive entropy ``(N,)``, for the risk-coverage curve.
    """
    stats = sample_statistics(predictions.logits, temperature)
    probs = stats["probs"].numpy().astype(np.float64)
    _classification(result, probs, labels, names, indices)
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
    preds = probs.argmax(1)
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


def _segmentation_outputs(
    predictions: Predictions,
    masks: torch.Tensor,
    roi: torch.Tensor | None,
    num_classes: int,
    spacing: list[list[float]],
    batch_size: int,
    tolerance: float,
) -> dict[str, np.ndarray]:
    """Per-case, per-foreground-class Dice, IoU, HD95, ASD and NSD ``(N, C - 1)``, batch by batch,
    inside the ``(N, *spatial)`` ROI when there is one."""
    parts = [
        case_metrics(
            predictions.seg_labels[start : start + batch_size],
            masks[start : start + batch_size],
            num_classes,
            spacing[start : start + batch_size],
            None if roi is None else roi[start : start + batch_size],
            tolerance,
        )
        for start in range(0, len(masks), batch_size)
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in SEGMENTATION}


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


def _segmentation_split(
    result: Evaluation,
    out: Path,
    predictions: Predictions,
    data: Splits,
    split: str,
    info: DataInfo,
    settings: Settings,
    batch_size: int,
    indices: np.ndarray,
    ids: list[str],
) -> dict[str, np.ndarray]:
    """The segmentation metrics of ``split`` into ``result`` and the mask (and probability) files;
    returns the per-case values ``(N, C - 1)`` per metric."""
    tensors, count = data.split(split), len(ids)
    spacing = (data.pixel_spacing or {}).get(split) or [None] * count
    unit = "mm" if all(s is not None for s in spacing) else "pixels"
    spacing = [s if s is not None else [1.0] * info.spatial_dims for s in spacing]
    masks, roi = tensors["mask"][:, 0], _roi(tensors)
    values = _segmentation_outputs(
        predictions, masks, roi, info.num_seg_classes, spacing, batch_size, settings.nsd_tolerance
    )
    if info.num_seg_classes == 2:
        _pixel_scores(result, predictions.seg_probs, masks, roi)
    _segmentation(result, values, indices, unit)
    sizes = (data.sizes or {}).get(split)
    sizes = sizes if sizes and len(sizes) == count else None
    if settings.masks:
        write_masks(out / "masks", predictions.seg_labels, ids, spacing, info.num_seg_classes, sizes)
    if settings.save_probabilities:
        write_probabilities(out / "probabilities", predictions.seg_probs, ids, sizes)
    return values


def _pixel_scores(result: Evaluation, probs: torch.Tensor, masks: torch.Tensor, roi: torch.Tensor | None) -> None:
    """Pixel AUC and average precision of binary masks, pooled over every pixel inside the ROI of
    every case (as retinal-vessel papers report them); no bootstrap CI: pixels are not independent
    cases, and resampling cases would recompute a ranking of millions of pixels each time."""
    inside = roi.bool() if roi is not None else torch.ones_like(masks, dtype=torch.bool)
    scores, truth = probs[:, 1][inside].float(), (masks[inside] > 0).long()
    if truth.unique().numel() < 2:
        return  # both need foreground and background pixels
    auc, ap = float(compute_roc_auc(scores, truth)), float(compute_average_precision(scores, truth))
    for name, value in (("pixel_auc", auc), ("pixel_ap", ap)):
        result.add(name, "all", value, (math.nan, math.nan, 0), len(masks))
        result.document.setdefault("metrics", {})[name] = {"value": value, "low": math.nan, "high": math.nan}
    result.document["pixel_metrics"] = "pooled over the pixels inside the ROI of every case; no CI"


def _roi(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The split's ``(N, *spatial)`` region of interest, or ``None``."""
    return tensors["roi"][:, 0] if "roi" in tensors else None


def _model_task(info: DataInfo, task: str) -> DataInfo:
    """The data description for the model's task: a classifier evaluated on multitask data (to
    use the lesion masks in the pointing game) is scored as a classifier."""
    if task == info.task:
        return info
    if task == "multitask" or info.task != "multitask":
        raise ConfigError(f"a {task} model cannot be evaluated on data.task={info.task}; use data.task={task}")
    return dataclasses.replace(info, task=task)


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
    info, device = _model_task(data.info, payload["model"]["args"].get("task", data.info.task)), speed.device
    if info.multilabel:
        raise ConfigError(
            "medimg eval does not evaluate multi-label data (e.g. ChestMNIST) yet; "
            "the run's summary.json and test_predictions.csv hold its per-label metrics"
        )
    if settings.explain and not info.classifies:
        raise ConfigError("eval.explain needs a model that classifies (data.task classification or multitask)")
    tensors = data.split(split)
    count = len(tensors["image"])
    known_ids = (data.ids or {}).get(split)
    ids = list(known_ids) if known_ids and len(known_ids) == count else [f"case{i:05d}" for i in range(count)]
    indices = resample_indices(count, settings.bootstrap, settings.seed)
    result = Evaluation(document=dict(facts or {}))
    result.document.update(split=split, cases=count, bootstrap=settings.bootstrap, uncertainty=settings.uncertainty)
    batches = TensorBatches(tensors, batch_size, device)
    keep = settings.save_probabilities or info.num_seg_classes == 2  # pixel AUC and AP of binary masks
    predictions = predict(model, batches, info, speed, settings.uncertainty, settings.samples, settings.seed, keep)
    out.mkdir(parents=True, exist_ok=True)
    columns: dict[str, list] = {"case": list(range(count)), "id": ids}
    columns |= {c: list(v) for c, v in ((data.meta or {}).get(split) or {}).items()}
    cases: dict[str, np.ndarray] = {}
    if info.classifies:
        temperature = 1.0
        if settings.temperature:
            val_logits = _validation_logits(model, data, info, batch_size, speed)
            temperature = calibration.fit_temperature(val_logits, data.split("val")["label"])
        quality, uncertainty = _classification_outputs(
            result, out, predictions, tensors["label"].numpy(), info.class_names, temperature, indices, settings
        )
        columns |= result.columns
        cases |= result.cases
    if info.segments:
        values = _segmentation_split(result, out, predictions, data, split, info, settings, batch_size, indices, ids)
        cases |= values
        for name, per_case in values.items():
            suffixes = [""] if per_case.shape[1] == 1 else [f"_{c + 1}" for c in range(per_case.shape[1])]
            columns |= {f"{name}{s}": per_case[:, c].tolist() for c, s in enumerate(suffixes)}
        columns["mask_entropy"] = predictions.seg_entropy.tolist()
        if not info.classifies:  # the risk-coverage curve of a segmenter: Dice against mask entropy
            quality, uncertainty = torch.as_tensor(values["dice"].mean(axis=1)), predictions.seg_entropy
    _risk_coverage(result, out, uncertainty, quality, "accuracy" if info.classifies else "Dice", settings)
    write_atomic(out / "predictions.csv", columns_csv(columns))
    groups = _subgroups(data, split, settings.subgroups, cases, settings)
    if groups["column"]:
        write_atomic(out / "subgroups.csv", columns_csv(groups))
    result.document["subgroups"] = sorted(set(groups["column"]))
    if settings.explain:
        result.document["explain"] = explain_cases(
            out / "explain", model, payload, tensors, cases["probs"], ids, info.class_names, settings
        )
    write_atomic(out / "metrics.csv", columns_csv({k: [r[k] for r in result.rows] for k in result.rows[0]}))
    write_json(out / "metrics.json", result.document)
    return result.document
